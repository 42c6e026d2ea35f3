"""Derived train datasets for ``vlm sweep --augment``: the original train records plus N augmented copies of each.

``vlm sweep --augment 0,2`` asks "does augmentation help?", so every point must train on the same originals and
differ only in the copies. From an export folder (``dataset_dir`` with ``dataset_info.json`` and the export's
``manifest.json``) and its train dataset (e.g. ``cord_train``) this makes ``cord_train_aug2``: the train records
that are not augmented copies (an export made with ``--augment`` holds some; the manifest names them by their
``source``) followed by N copies of each, made by ``vlm.data.augment`` exactly as ``export --augment`` makes them.
A copy is a pure function of (seed, policy, source document and bytes, copy index) and its file name carries a
hash of that identity, so copies already on disk are reused, including those an ``export --augment`` with the
same seed and policy made: a rerun costs nothing. ``cord_train_aug0`` is the originals alone, made only when the
export's train file holds copies (otherwise "0" is the export's own train dataset, unchanged).

A name stands for one recipe: the default policy and seed give ``<name>_aug<N>``, others add them
(``cord_train_aug2_heavy_s1``), so a later sweep with another seed never rewrites the data an earlier run
trained on. The derived file is registered in ``dataset_info.json`` (atomically, under its lock, every other
entry kept) and recorded in ``manifest.json`` under ``derived`` (base, policy, seed, per copy its source and
transforms). The base file, validation, test and the user's images are never written.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlm.data.augment import AugmentSpec, augment_split
from vlm.data.images import image_info
from vlm.data.manifest import MANIFEST, read_manifest
from vlm.data.registry import iter_json_list, register_dataset
from vlm.errors import VlmError
from vlm.fsutil import atomic_write_json, dumps_json, file_lock, remove_own_temps, sha256_bytes
from vlm.lf.data import dataset_names, read_dataset_info

DEFAULT_POLICY, DEFAULT_SEED = "medium", 0
# cord_train_aug2, cord_train_aug2_heavy_s1: what derived_name writes.
_DERIVED = re.compile(r"(?P<stem>.+)_train_aug\d+(?:_(?:light|medium|heavy))?(?:_s\d+)?")


@dataclass
class BaseTrain:
    """The export's train dataset that a derived one starts from, read and checked."""

    dataset_dir: Path
    name: str
    file: Path
    split: str
    originals: list[dict[str, Any]]  # the records that are not augmented copies, in file order
    copies_in_base: int  # augmented copies the export itself put into the file


def derived_name(base: BaseTrain, copies: int, policy: str = DEFAULT_POLICY, seed: int = DEFAULT_SEED) -> str:
    """The dataset a sweep point with ``copies`` trains on (the base itself for 0 when the base has no copies)."""
    if copies == 0:
        return f"{base.name}_aug0" if base.copies_in_base else base.name
    return (f"{base.name}_aug{copies}" + (f"_{policy}" if policy != DEFAULT_POLICY else "")
            + (f"_s{seed}" if seed != DEFAULT_SEED else ""))


def describe(base: BaseTrain, copies: int, policy: str = DEFAULT_POLICY,
             seed: int = DEFAULT_SEED) -> tuple[str, str]:
    """(the dataset's name, one line saying what it holds) for a sweep point's config header."""
    name = derived_name(base, copies, policy, seed)
    if name == base.name:
        return name, f"{name}, the export's {len(base.originals)} train records (no augmented copies)"
    if not copies:
        return name, f"{name} = the {len(base.originals)} originals of {base.name}, without its augmented copies"
    return name, (f"{name} = the {len(base.originals)} originals of {base.name} + {copies} augmented copies of "
                  f"each (policy {policy}, seed {seed})")


def split_dataset_name(train: str, split: str) -> str:
    """``cord_validation`` for (``cord_train``, validation) and for (``cord_train_aug2``, validation): a derived
    dataset is scored on its export's splits."""
    match = _DERIVED.fullmatch(train)
    return f"{match['stem'] if match else train.rsplit('_', 1)[0]}_{split}"


def read_base(cfg: dict[str, Any]) -> BaseTrain:
    """The config's train dataset, checked to be the train split of a vlm export whose images are all there."""
    dataset_dir = Path(cfg.get("dataset_dir") or "data")  # LLaMA-Factory's default
    names = dataset_names(cfg.get("dataset"))
    if len(names) != 1:
        raise VlmError(f"--augment needs a config that trains on one dataset, not {cfg.get('dataset')!r}",
                       hint="set dataset: to the export's train dataset, e.g. dataset: cord_train.")
    export_hint = f"export the data with vlm export (or vlm save-cord-dataset-in-sharegpt-format) into {dataset_dir}"
    manifest_path = dataset_dir / MANIFEST
    manifest = read_manifest(manifest_path)
    if manifest is None:
        raise VlmError(f"{manifest_path} not found: --augment derives datasets only from a folder vlm exported",
                       hint=f"{export_hint}, or drop --augment.")
    if manifest.get("tool") != "vlm" or not isinstance(manifest.get("splits"), dict):
        raise VlmError(f"{manifest_path} was not written by vlm export; --augment needs vlm's manifest",
                       hint=f"{export_hint}, or drop --augment.")
    _, info = read_dataset_info(dataset_dir, where="dataset_dir ", hint=export_hint)
    name = (manifest.get("derived") or {}).get(names[0], {}).get("base", names[0])  # a derived config: its base
    entry = info.get(name)
    if not isinstance(entry, dict):
        raise VlmError(f"dataset {name!r} is not registered in {dataset_dir / 'dataset_info.json'}",
                       hint=f"{export_hint}, or set dataset: to its train dataset.")
    file_name = entry.get("file_name")
    path = dataset_dir / str(file_name)
    if entry.get("formatting") != "sharegpt" or not str(file_name).endswith(".json") or not path.is_file():
        raise VlmError(f"dataset {name!r} is not a local ShareGPT JSON list ({file_name or 'no file_name'}); "
                       "--augment derives datasets only from vlm's exported files",
                       hint=f"{export_hint}, or drop --augment.")
    split = next((s for s, v in manifest["splits"].items() if isinstance(v, dict) and v.get("file") == path.name
                  and path.parent.resolve() == dataset_dir.resolve()), None)
    if split is None:
        raise VlmError(f"{path} is not a split of the export in {dataset_dir} (its manifest.json does not list it)",
                       hint=f"{export_hint}, or drop --augment.")
    if split != "train":
        raise VlmError(f"dataset {name!r} is the {split} split; --augment adds copies to train data only",
                       hint="set dataset: to the export's train dataset, e.g. dataset: cord_train.")
    try:
        records = list(iter_json_list(path))
    except (ValueError, UnicodeDecodeError) as e:
        raise VlmError(f"{path} is not a ShareGPT JSON list: {e}", hint=f"{export_hint}.") from None
    copies = {k for k, v in (manifest.get("images") or {}).items() if isinstance(v, dict) and "source" in v}
    originals = []
    for i, r in enumerate(records):
        if not (isinstance(r, dict) and isinstance(r.get("id"), str) and isinstance(r.get("images"), list)
                and len(r["images"]) == 1 and isinstance(r["images"][0], str)):
            raise VlmError(f"{path}: record {i} is not a vlm export record (an id and one image)",
                           hint=f"{export_hint}.")
        if r["id"] not in copies:
            originals.append(r)
            image = _image_path(dataset_dir, r)
            if not image.is_file():
                raise VlmError(f"{image} (the image of {r['id']} in {path}) is missing",
                               hint=f"restore it, or {export_hint}.")
    return BaseTrain(dataset_dir, name, path, split, originals, len(records) - len(originals))


def _image_path(dataset_dir: Path, record: dict[str, Any]) -> Path:
    return dataset_dir / record["images"][0]  # LLaMA-Factory's media_dir defaults to dataset_dir; absolute stays


def make_derived(base: BaseTrain, copies: int, policy: str = DEFAULT_POLICY, seed: int = DEFAULT_SEED,
                 workers: int | None = None, progress=None) -> dict[str, Any]:
    """Make (or confirm) the derived dataset for ``copies``, register it and record it; returns a summary
    (``name``, ``records``, ``originals``, ``copies``, ``made``, ``reused``, ``changed``)."""
    spec = AugmentSpec(copies, policy, seed)
    name = derived_name(base, copies, policy, seed)
    summary = {"name": name, "base": base.name, "copies_per_image": copies, "originals": len(base.originals),
               "records": len(base.originals), "copies": 0, "made": 0, "reused": 0, "changed": False, "file": None}
    if name == base.name:
        return summary  # 0 copies of an export without copies: its own train dataset
    dataset_dir = base.dataset_dir.resolve()
    exported = []  # what augment_split takes: id, record, and the source image (file, sha256, size)
    for r in base.originals:
        path = _image_path(dataset_dir, r)
        try:
            data = path.read_bytes()
            ext, width, height = image_info(data)
        except (OSError, ValueError) as e:
            raise VlmError(f"{path} (the image of {r['id']} in {base.file}) cannot be read: {e}",
                           hint="restore it, or re-export the data.") from None
        exported.append({"id": r["id"], "record": r, "image": {"file": str(path), "sha256": sha256_bytes(data),
                                                                "bytes": len(data), "width": width, "height": height,
                                                                "format": ext}})
    out_file = dataset_dir / f"{name}.json"
    images: dict[str, Any] = {}
    with file_lock(out_file):  # two sweeps deriving the same dataset take turns; the second reuses everything
        remove_own_temps(dataset_dir, out_file.name)
        extra, made = [], {"made": 0, "reused": 0}
        if copies:
            workers = workers or max(1, min(8, os.cpu_count() or 1))
            extra, made = augment_split(dataset_dir, base.split, spec, exported, images, workers, progress)
        records = base.originals + extra
        text = dumps_json(records)
        changed = not out_file.is_file() or out_file.read_bytes() != text.encode("utf-8")
        if changed:
            atomic_write_json(out_file, records)
        file_sha256 = sha256_bytes(text.encode("utf-8"))
    changed |= _register(out_file, name, dataset_dir)
    changed |= _record(dataset_dir, name, {
        "base": base.name, "split": base.split, "file": out_file.name, "file_sha256": file_sha256,
        "records": len(records), "originals": len(base.originals), "copies_per_image": copies,
        "augment": spec.describe() if copies else None, "images": images})
    summary.update(records=len(records), copies=len(extra), made=made["made"], reused=made["reused"],
                   changed=changed, file=str(out_file))
    return summary


def _register(out_file: Path, name: str, dataset_dir: Path) -> bool:
    """Register the derived file; an entry of that name for another file is someone else's: refuse."""
    try:
        return register_dataset(out_file, name, dataset_dir / "dataset_info.json").changed
    except VlmError as e:
        if "already has a different entry" not in e.message:
            raise
        raise VlmError(f"{dataset_dir / 'dataset_info.json'} already has an entry {name!r} for another file; "
                       "it was left untouched",
                       hint=f"rename or remove that entry, or point the config at a copy of {dataset_dir}.") from None


def _record(dataset_dir: Path, name: str, entry: dict[str, Any]) -> bool:
    """Put the derived dataset into ``manifest.json`` under ``derived``, under the lock every manifest writer
    holds; unchanged bytes stay unwritten."""
    path = dataset_dir / MANIFEST
    entry = json.loads(json.dumps(entry))  # as read back (tuples become lists), so an unchanged entry compares equal
    with file_lock(path):
        manifest = read_manifest(path) or {}
        derived = dict(manifest.get("derived") or {})
        if derived.get(name) == entry:
            return False
        derived[name] = entry
        manifest["derived"] = dict(sorted(derived.items()))
        atomic_write_json(path, manifest)
    return True
