"""The export's ``manifest.json``: what every split in an export folder holds, and how it was made.

One manifest describes the whole folder, whichever export wrote which split: it is merged under a
lock, so two exports of different splits (or a later export of one split) never drop the others'
entries. It also records which images were fully decoded when written, so a rerun can trust them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
SPLITS = ("train", "validation", "test")
VERIFIED = "decoded"  # a split's images_verified value: every image was fully decoded when it was written


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest as a dict; None when there is none, {} when it cannot be read."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):  # not ours to interpret; the merge replaces it (with a warning)
        return {}
    return manifest if isinstance(manifest, dict) else {}


def trusted_images(manifest: dict[str, Any] | None) -> dict[str, str]:
    """id -> sha256 of the images a previous export decoded fully before writing them."""
    manifest = manifest or {}
    verified = {name for name, s in (manifest.get("splits") or {}).items()
                if isinstance(s, dict) and s.get("images_verified") == VERIFIED}
    return {doc_id: entry.get("sha256") for doc_id, entry in (manifest.get("images") or {}).items()
            if isinstance(entry, dict) and doc_id.rsplit("-", 1)[0] in verified}
