"""Register exported datasets in a LLaMA-Factory ``dataset_info.json``, safely.

The file may belong to someone's LLaMA-Factory checkout, so registration keeps
every other entry and its key order, writes atomically under a file lock, keeps
a backup, and never touches a file it cannot parse. Registering the same entry
twice changes nothing, not even the file's bytes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlm.errors import VlmError
from vlm.fsutil import atomic_write_bytes, file_lock

SHAREGPT_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}


@dataclass
class Registration:
    name: str
    dataset_info: Path
    entry: dict[str, Any]
    changed: bool


def sharegpt_entry(data_json: Path, dataset_info: Path) -> dict[str, Any]:
    """A multimodal ShareGPT entry; the file name is relative when the JSON sits under the info file's folder."""
    data_json, base = data_json.resolve(), dataset_info.resolve().parent
    try:
        file_name = data_json.relative_to(base).as_posix()
    except ValueError:
        file_name = str(data_json)
    return {
        "file_name": file_name,
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": dict(SHAREGPT_TAGS),
    }


def _check_data_json(data_json: Path) -> None:
    if not data_json.is_file():
        raise VlmError(f"dataset file not found: {data_json}",
                       hint="export it first: vlm save-cord-dataset-in-sharegpt-format DIR")
    with open(data_json, "rb") as f:
        head = f.read(1 << 16).lstrip()
    if not head.startswith(b"["):
        raise VlmError(f"{data_json} is not a ShareGPT JSON list", hint="pass a file written by the vlm export.")
    if head != b"[]" and b'"messages"' not in head:
        raise VlmError(f"{data_json} has no 'messages' field in its first record",
                       hint="pass a ShareGPT file with 'messages' and 'images' per record.")


def _load(path: Path, raw: bytes) -> dict[str, Any]:
    try:
        info = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        where = f" (line {e.lineno}, column {e.colno})" if isinstance(e, json.JSONDecodeError) else ""
        raise VlmError(f"{path} is not valid JSON{where}; it was left untouched",
                       hint="fix the file by hand (or restore dataset_info.json.bak) and rerun.") from None
    if not isinstance(info, dict):
        raise VlmError(f"{path} must hold a JSON object of dataset entries; it was left untouched")
    return info


def register_dataset(data_json: str | os.PathLike, name: str, dataset_info: str | os.PathLike | None = None,
                     *, force: bool = False) -> Registration:
    """Add (or confirm) the entry ``name`` for ``data_json`` in ``dataset_info``.

    ``dataset_info`` defaults to ``dataset_info.json`` beside ``data_json``, which makes the
    exported folder usable as LLaMA-Factory's ``dataset_dir`` without any checkout.
    """
    data_json = Path(data_json)
    if not name or any(c in name for c in ",/\\ \t\n"):
        raise VlmError(f"invalid dataset name {name!r}", hint="use letters, digits, '_', '-' or '.', e.g. cord_train.")
    _check_data_json(data_json)
    info_path = Path(dataset_info) if dataset_info else data_json.parent / "dataset_info.json"
    if info_path.is_dir():
        info_path = info_path / "dataset_info.json"
    entry = sharegpt_entry(data_json, info_path)
    with file_lock(info_path):
        raw = info_path.read_bytes() if info_path.exists() else b""
        info = _load(info_path, raw)
        if info.get(name) == entry:
            return Registration(name, info_path, entry, changed=False)
        if name in info and not force:
            raise VlmError(f"{info_path} already has a different entry named {name!r}",
                           hint="choose another --name, or pass --force to replace that entry.")
        info[name] = entry  # an existing key keeps its place; a new one goes last
        if raw:
            atomic_write_bytes(info_path.with_name(info_path.name + ".bak"), raw)
        atomic_write_bytes(info_path, (json.dumps(info, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    return Registration(name, info_path, entry, changed=True)
