"""Export an image + JSON dataset (CORD-v2 by default) to LLaMA-Factory's ShareGPT format.

Images are copied as their original encoded bytes: never re-encoded, so the written
files are byte-identical to the source; each is checked once, in the worker threads, to
prove it is whole: by its structure (``--verify-images structure``, the default: JPEG
segments to the end-of-image marker, PNG chunk CRCs) or also by decoding it
(``--verify-images full``), see ``vlm.data.images.verify_image``. Every file is written atomically,
each split under its own lock, and a rerun after a kill skips the images already on
disk and ends with output identical to an uninterrupted run. ``manifest.json`` is
merged under a lock, so it describes every split in the folder, whichever export
wrote it.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlm import __version__
from vlm.data.augment import augment_split
from vlm.data.images import CHECKS, image_info, verify_image
from vlm.data.manifest import MANIFEST, SPLITS, read_manifest, trusted_images
from vlm.data.records import qa_fields
from vlm.data.registry import register_dataset
from vlm.errors import VlmError
from vlm.fsutil import (
    atomic_write_bytes,
    atomic_write_json,
    ensure_dir,
    file_lock,
    remove_own_temps,
    sha256_bytes,
    sha256_file,
)
from vlm.output import progress as make_progress
from vlm.output import warn
from vlm.schema import prompt_hash

CORD_HUB_ID = "naver-clova-ix/cord-v2"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

@dataclass
class ExportSpec:
    """What to export and how: the source, its columns, and the prompt."""

    out_dir: Path
    source: str
    name: str
    prompt: str
    splits: tuple[str, ...]
    image_column: str = "image"
    target_column: str = "ground_truth"
    target_field: str | None = "gt_parse"
    limit: int | None = None
    workers: int = 2
    strict: bool = False
    augment: Any = None  # vlm.data.augment.AugmentSpec: extra copies of train images
    question_column: str | None = None  # QA datasets: a per-record question follows the prompt; text answers
    verify_images: str = "structure"  # how each image is checked before it is written: one of images.CHECKS


@dataclass
class SplitResult:
    split: str
    file: Path
    n_records: int
    skipped: list[dict[str, Any]] = field(default_factory=list)
    n_reused: int = 0
    augmented: dict[str, Any] | None = None


def load_split(source: str, split: str, image_column: str):
    """Load one split from a hub id or a local directory in the hub layout, images undecoded."""
    import datasets

    datasets.disable_progress_bars()  # vlm shows its own progress
    local = Path(source).expanduser()
    looks_local = local.exists() or not _HUB_ID.match(source)
    if looks_local and not local.is_dir():
        raise VlmError(
            f"source directory not found: {source}",
            hint="pass --source a directory laid out like the hub dataset (data/train-*.parquet ...), "
            f"or a hub id such as {CORD_HUB_ID}.",
        )
    try:
        ds = datasets.load_dataset(str(local) if looks_local else source, split=split)
    except ValueError as e:
        if "split" in str(e).lower() or "Unknown split" in str(e):
            raise VlmError(f"split {split!r} not found in {source}",
                           hint="choose --split from the splits it has.") from e
        raise VlmError(f"could not load {source}: {e}") from e
    except Exception as e:  # hub unreachable, missing files, bad layout
        if looks_local:
            raise _local_load_error(local, split, e) from e
        raise VlmError(
            f"could not load {source} split {split!r}: {type(e).__name__}: {e}",
            hint=f"no local directory {source!r} exists either. Offline? Download the dataset once and pass "
                 "--source LOCAL_DIR "
            "(a directory with data/{train,validation,test}-*.parquet).",
        ) from e
    if image_column not in ds.column_names:
        raise VlmError(f"{source} has no column {image_column!r} (columns: {', '.join(ds.column_names)})",
                       hint="name the image column with --image-column.")
    if isinstance(ds.features[image_column], datasets.Image):
        ds = ds.cast_column(image_column, datasets.Image(decode=False))
    return ds


def _local_load_error(local: Path, split: str, e: Exception) -> VlmError:
    """Why a local directory (which exists) did not load: an empty split, or the underlying reader's error."""
    files = sorted(local.glob(f"data/{split}-*.parquet")) or sorted(local.glob(f"**/{split}*.parquet"))
    try:
        import pyarrow.parquet as pq

        rows = sum(pq.read_metadata(f).num_rows for f in files)
    except Exception:  # unreadable metadata: report the loader's own error below
        rows = None
    if files and rows == 0:
        return VlmError(f"split {split!r} of {local} has no rows ({', '.join(f.name for f in files)})",
                        hint="export another split with --split, or fill the parquet file(s).")
    cause = e.__cause__ or e.__context__
    detail = f"{type(e).__name__}: {e}" + (f" ({type(cause).__name__}: {cause})" if cause else "")
    return VlmError(f"could not load split {split!r} from the local directory {local}: {detail}",
                    hint="it needs data/<split>-*.parquet files with an image column and a JSON target column.")


def _image_bytes(value: Any) -> bytes | memoryview | None:
    if isinstance(value, memoryview):
        return value
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        if value.get("path") and os.path.isfile(value["path"]):
            return Path(value["path"]).read_bytes()
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str) and os.path.isfile(value):
        return Path(value).read_bytes()
    return None


def _rows(ds, start: int, stop: int, image_column: str) -> list[dict[str, Any]]:
    """Rows ``start:stop`` as dicts. Encoded images come as zero-copy views of the Arrow buffers:
    converting 2.5 MB photos to Python objects row by row costs more than the export itself."""
    import pyarrow as pa

    table = ds.with_format("arrow")[start:stop]
    column = table.column(image_column)
    rows = table.drop_columns([image_column]).to_pylist()
    if pa.types.is_struct(column.type) and column.type.get_field_index("bytes") >= 0:
        structs = column.combine_chunks()
        data, paths = structs.field("bytes"), structs.field("path")
        for k, row in enumerate(rows):
            buf = data[k].as_buffer() if data[k].is_valid else None
            row[image_column] = memoryview(buf) if buf is not None else {"bytes": None, "path": paths[k].as_py()}
    else:
        for row, value in zip(rows, column.to_pylist()):
            row[image_column] = value
    return rows


def _target(value: Any, target_field: str | None) -> Any:
    """The JSON target of one record; raises ValueError with a reason when unusable."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"target is not valid JSON ({e.msg} at char {e.pos})") from None
    if target_field:
        if not isinstance(value, dict) or target_field not in value:
            raise ValueError(f"target has no field {target_field!r}")
        value = value[target_field]
    if not isinstance(value, (dict, list)):
        raise ValueError(f"target is a {type(value).__name__}, not a JSON object")
    return value


def _on_disk(path: Path, size: int, digest: str) -> bool:
    """An identical file is already there (a rerun after a kill): same size and sha256."""
    return path.is_file() and path.stat().st_size == size and sha256_file(path) == digest


def _write_image(path: Path, data: bytes | memoryview, digest: str, verified: bool, check: str) -> bool:
    """Check ``data`` by ``check`` unless ``verified``, then write it unless an identical file is there.
    True if reused.

    An image is checked before it is first written, so a file found on disk whose sha256 a
    previous export recorded as checked at least as strongly (``verified``) is reused without
    checking again. Images skip the fsync: the rename alone keeps a killed run from leaving a
    partial file, and a rerun re-verifies every existing image by size and sha256 before reusing it.
    """
    reused = _on_disk(path, len(data), digest)
    if not (reused and verified):
        verify_image(data, check)
    if not reused:
        atomic_write_bytes(path, data, fsync=False)
    return reused


def _process(spec: ExportSpec, split: str, index: int, row: dict[str, Any],
             trusted: dict[str, str] | None = None) -> dict[str, Any]:
    doc_id = f"{split}-{index:05d}"
    try:
        data = _image_bytes(row[spec.image_column])
        if not data:
            raise ValueError("record has no image bytes")
        ext, width, height = image_info(data)
        if spec.question_column:  # QA: a question per record and plain-text answers, not a JSON target

            question, answers = qa_fields(row, spec.question_column, spec.target_column)
        else:
            target = _target(row.get(spec.target_column), spec.target_field)
        digest = sha256_bytes(data)
        rel = Path("images") / split / f"{doc_id}.{ext}"
        reused = _write_image(spec.out_dir / rel, data, digest, verified=(trusted or {}).get(doc_id) == digest,
                              check=spec.verify_images)
    except (ValueError, KeyError) as e:
        return {"ok": False, "split": split, "index": index, "id": doc_id, "reason": str(e)}
    if spec.question_column:
        prompt, answer = f"{spec.prompt}\n{question}", answers[0]
    else:
        prompt, answer = spec.prompt, json.dumps(target, ensure_ascii=False, separators=(",", ":"))
    record = {
        "id": doc_id,
        "messages": [
            {"role": "user", "content": "<image>" + prompt},
            {"role": "assistant", "content": answer},
        ],
        # Absolute, so LLaMA-Factory finds the image whatever directory it starts in.
        "images": [str((spec.out_dir / rel).resolve())],
    }
    if spec.question_column:
        record["answers"] = answers  # every accepted answer, for ANLS; the first is the training target
    image = {"file": rel.as_posix(), "sha256": digest, "bytes": len(data), "format": ext,
             "width": width, "height": height}
    return {"ok": True, "id": doc_id, "record": record, "image": image, "reused": reused}


def _cause(reason: str) -> str:
    """A skip reason without its record-specific detail: 'target is not valid JSON (... at char 5)' -> the text
    before."""
    return re.split(r" \(|: ", reason, maxsplit=1)[0]


def summarize_skipped(skipped: list[dict[str, Any]]) -> str:
    """'2 x target is not valid JSON (e.g. train-00001), 1 x image does not decode (e.g. train-00004)'."""
    causes = Counter(_cause(s["reason"]) for s in skipped)
    example = {}
    for s in skipped:
        example.setdefault(_cause(s["reason"]), s["id"])
    return ", ".join(f"{n} x {cause} (e.g. {example[cause]})" for cause, n in causes.most_common())


def export_split(spec: ExportSpec, split: str, images: dict[str, Any], progress=None, ds=None,
                 trusted: dict[str, str] | None = None) -> SplitResult:
    """Export one split: images in parallel (each checked once, unless ``trusted`` holds its sha256),
    then the ShareGPT JSON file, atomically. Raises when no record is usable."""
    ds = ds if ds is not None else load_split(spec.source, split, spec.image_column)
    n = len(ds) if spec.limit is None else min(spec.limit, len(ds))
    task = progress.add_task(f"export {split}", total=n) if progress else None
    results: list[dict[str, Any]] = []
    window = max(1, spec.workers) * 4  # bounds the image bytes held in memory at once
    with ThreadPoolExecutor(max_workers=max(1, spec.workers)) as pool:
        for start in range(0, n, window):
            rows = _rows(ds, start, min(n, start + window), spec.image_column)
            futures = [pool.submit(_process, spec, split, start + k, row, trusted) for k, row in enumerate(rows)]
            for fut in futures:
                results.append(fut.result())
                if progress:
                    progress.advance(task)
    skipped = [{k: r[k] for k in ("split", "index", "id", "reason")} for r in results if not r["ok"]]
    good = [r for r in results if r["ok"]]
    if spec.strict and skipped:
        first = "; ".join(f"{s['id']}: {s['reason']}" for s in skipped[:3])
        raise VlmError(f"{len(skipped)} bad record(s) in {split} ({first})",
                       hint="drop --strict to skip and count bad records instead.", exit_code=1)
    if not good:
        raise VlmError(f"split {split}: all {n} record(s) were skipped, so no {spec.name}_{split}.json was written: "
                       f"{summarize_skipped(skipped)}",
                       hint="check --image-column, --target-column and --target-field against the source's columns.",
                       exit_code=1)
    for r in good:
        images[r["id"]] = r["image"]
    records, augmented = [r["record"] for r in good], None
    if spec.augment is not None and spec.augment.copies and split == "train":  # never validation/test

        extra, augmented = augment_split(spec.out_dir, split, spec.augment, good, images, spec.workers, progress)
        records += extra
    out_file = spec.out_dir / f"{spec.name}_{split}.json"
    atomic_write_json(out_file, records)
    return SplitResult(split, out_file, len(records), skipped, sum(r["reused"] for r in good), augmented)


def _remove_if_empty(created: list[Path]) -> None:
    """After a failed export: remove the folders it created, if nothing but its own lock files is in them."""
    for folder in sorted(created, key=lambda p: len(p.parts), reverse=True):
        if not folder.is_dir():
            continue
        entries = list(folder.rglob("*"))
        if any(e.is_file() and not (e.name.startswith(".") and e.name.endswith(".lock")) for e in entries):
            return
        for entry in sorted(entries, key=lambda p: len(p.parts), reverse=True):
            entry.unlink() if entry.is_file() else entry.rmdir()
        folder.rmdir()


def run_export(spec: ExportSpec, register: bool = True, show_progress: bool = True) -> dict[str, Any]:
    """Export every requested split, merge the manifest, and register the splits in ``dataset_info.json``."""
    spec.out_dir = spec.out_dir.resolve()
    if spec.verify_images not in CHECKS:
        raise VlmError(f"unknown image check {spec.verify_images!r}", hint=f"choose one of: {', '.join(CHECKS)}.")
    # Load every split before creating anything: a bad source leaves no trace.
    sources = {split: load_split(spec.source, split, spec.image_column) for split in spec.splits}
    created = ensure_dir(spec.out_dir, "output folder")
    manifest_path = spec.out_dir / MANIFEST
    previous = read_manifest(manifest_path)
    if previous and previous.get("name") not in (None, spec.name):
        raise VlmError(f"{spec.out_dir} already holds the export {previous['name']!r}, not {spec.name!r}",
                       hint="export into another folder (one manifest.json describes one dataset).")
    images: dict[str, Any] = {}
    results: list[SplitResult] = []
    try:
        with make_progress() if show_progress else nullcontext() as progress:
            for split in spec.splits:
                out_file = spec.out_dir / f"{spec.name}_{split}.json"
                with file_lock(out_file):  # two exports of one split take turns; other splits run in parallel
                    # Leftovers of a killed run's atomic writes: only our own temp names, only this split's.
                    remove_own_temps(spec.out_dir / "images" / split)
                    remove_own_temps(spec.out_dir, out_file.name)
                    results.append(export_split(spec, split, images, progress, ds=sources[split],
                                                trusted=trusted_images(previous, spec.verify_images)))
    except BaseException:
        _remove_if_empty(created)
        raise
    manifest = merge_manifest(manifest_path, spec, results, images)
    registered, unchanged = [], []
    if register:
        for r in results:
            entry_name = f"{spec.name}_{r.split}"
            reg = register_dataset(r.file, entry_name, spec.out_dir / "dataset_info.json")
            (registered if reg.changed else unchanged).append(entry_name)
    return {
        "out_dir": str(spec.out_dir),
        "manifest": str(manifest_path),
        "splits": {r.split: {"file": str(r.file), "records": r.n_records, "skipped": len(r.skipped),
                             "reused_images": r.n_reused, **({"augmented": r.augmented} if r.augmented else {})}
                   for r in results},
        "skipped": [s for s in manifest["skipped"] if s["split"] in {r.split for r in results}],
        "registered": registered,
        "already_registered": unchanged,
        "dataset_info": str(spec.out_dir / "dataset_info.json") if register else None,
    }


def merge_manifest(path: Path, spec: ExportSpec, results: list[SplitResult],
                   images: dict[str, Any]) -> dict[str, Any]:
    """Read the manifest (under its lock), replace the splits just exported, keep the others, write it back."""
    with file_lock(path):
        remove_own_temps(path.parent, path.name)  # a killed run's temp; writers hold this lock
        old = read_manifest(path)
        if old == {}:
            warn(f"{path} was not a readable manifest; it now describes only the splits exported now")
        old = old or {}
        done = {r.split for r in results}
        splits = {k: v for k, v in (old.get("splits") or {}).items() if k not in done}
        for r in results:
            splits[r.split] = {"file": r.file.name, "records": r.n_records, "skipped": len(r.skipped),
                               "file_sha256": sha256_file(r.file), "source": spec.source, "limit": spec.limit,
                               "prompt_sha256": prompt_hash(spec.prompt),
                               # every image of the split passed at least this check (reused ones, a stronger)
                               "images_verified": spec.verify_images}
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
