"""The export's ``manifest.json``: what every split in an export folder holds, and how it was made.

One manifest describes the whole folder, whichever export wrote which split: it is merged under a
lock, so two exports of different splits (or a later export of one split) never drop the others'
entries. It also records which images were fully decoded when written, so a rerun can trust them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlm import __version__
from vlm.fsutil import atomic_write_json, file_lock, remove_own_temps, sha256_file
from vlm.schema import prompt_hash

if TYPE_CHECKING:
    from vlm.data.export import ExportSpec, SplitResult

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


def merge_manifest(path: Path, spec: ExportSpec, results: list[SplitResult],
                   images: dict[str, Any]) -> dict[str, Any]:
    """Read the manifest (under its lock), replace the splits just exported, keep the others, write it back."""
    with file_lock(path):
        remove_own_temps(path.parent, path.name)  # a killed run's temp; writers hold this lock
        old = read_manifest(path)
        if old == {}:
            from vlm.output import warn

            warn(f"{path} was not a readable manifest; it now describes only the splits exported now")
        old = old or {}
        done = {r.split for r in results}
        splits = {k: v for k, v in (old.get("splits") or {}).items() if k not in done}
        for r in results:
            splits[r.split] = {"file": r.file.name, "records": r.n_records, "skipped": len(r.skipped),
                               "file_sha256": sha256_file(r.file), "source": spec.source, "limit": spec.limit,
                               "prompt_sha256": prompt_hash(spec.prompt), "images_verified": VERIFIED}
        order = {name: i for i, name in enumerate(SPLITS)}
        splits = dict(sorted(splits.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
        kept_images = {k: v for k, v in (old.get("images") or {}).items() if k.split("-", 1)[0] not in done}
        kept_skipped = [s for s in old.get("skipped") or [] if isinstance(s, dict) and s.get("split") not in done]
        manifest = {
            "tool": "vlm",
            "version": __version__,
            "source": spec.source,
            "name": spec.name,
            "image_column": spec.image_column,
            "target_column": spec.target_column,
            "target_field": spec.target_field,
            "limit": spec.limit,
            "prompt": spec.prompt,
            "prompt_sha256": prompt_hash(spec.prompt),
            "splits": splits,
            "skipped": sorted(kept_skipped + [s for r in results for s in r.skipped],
                              key=lambda s: (order.get(s["split"], len(order)), s["index"])),
            "images": dict(sorted({**kept_images, **images}.items())),
        }
        augment = next((spec.augment.describe() for r in results if r.augmented), None) or (
            old.get("augment") if "train" not in done else None)
        if augment:
            manifest["augment"] = augment  # the policy of the train split's augmented copies
        if old.get("derived"):
            manifest["derived"] = old["derived"]  # vlm sweep --augment's datasets (vlm.data.augmented_dataset)
        atomic_write_json(path, manifest)
    return manifest
