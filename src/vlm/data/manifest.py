"""The export's ``manifest.json``: what every split in an export folder holds, and how it was made.

One manifest describes the whole folder, whichever export wrote which split: it is merged under a
lock, so two exports of different splits (or a later export of one split) never drop the others'
entries. It also records how each split's images were checked when written (``images_verified``: one of
``vlm.data.images.CHECKS``), so a rerun can trust those checked at least as strongly as it is asked to.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlm.data.images import CHECKS

MANIFEST = "manifest.json"
SPLITS = ("train", "validation", "test")


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest as a dict; None when there is none, {} when it cannot be read."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):  # not ours to interpret; the merge replaces it (with a warning)
        return {}
    return manifest if isinstance(manifest, dict) else {}


def trusted_images(manifest: dict[str, Any] | None, check: str) -> dict[str, str]:
    """id -> sha256 of the images a previous export checked at least as strongly as ``check`` before writing them.

    A split written before the structure check recorded ``"decoded"``: it is not trusted, since a decode alone
    accepts some JPEGs cut just before their end marker (the decoder pads the missing bytes); those images are
    checked again, once.
    """
    manifest = manifest or {}
    strong_enough = set(CHECKS[CHECKS.index(check):])  # CHECKS runs from weakest to strongest
    verified = {name for name, s in (manifest.get("splits") or {}).items()
                if isinstance(s, dict) and s.get("images_verified") in strong_enough}
    return {doc_id: entry.get("sha256") for doc_id, entry in (manifest.get("images") or {}).items()
            if isinstance(entry, dict) and doc_id.rsplit("-", 1)[0] in verified}
