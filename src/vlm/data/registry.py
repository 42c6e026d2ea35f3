"""Register exported datasets in a LLaMA-Factory ``dataset_info.json``, safely.

The file may belong to someone's LLaMA-Factory checkout, so registration keeps
every other entry and its key order, writes atomically under a file lock, keeps
a backup, and never touches a file it cannot parse. Registering the same entry
twice changes nothing, not even the file's bytes. A symlinked ``dataset_info.json``
stays a link: the file it points to is the one rewritten.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlm.errors import VlmError
from vlm.fsutil import atomic_write_bytes, file_lock, remove_own_temps

# LLaMA-Factory looks datasets up by name in dataset_info.json, and the name ends up in YAML and in file names.
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
SHAREGPT_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}


@dataclass
class Registration:
    name: str
    dataset_info: Path
    entry: dict[str, Any]
    changed: bool


def sharegpt_entry(data_json: Path, dataset_info: Path) -> dict[str, Any]:
    """A multimodal ShareGPT entry; the file name is relative when the JSON sits under the info file's folder.

    LLaMA-Factory joins ``file_name`` to its ``dataset_dir``, the folder that holds the name
    ``dataset_info.json`` (a link or not), so that folder is the base.
    """
    data_json, base = data_json.resolve(), dataset_info.absolute().parent.resolve()
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


def check_name(name: str) -> None:
    """Letters, digits, '_', '-' and '.', and no '..' (the name is used in YAML and beside file names)."""
    if not _NAME.match(name or "") or ".." in name:
        raise VlmError(f"invalid dataset name {name!r}",
                       hint="use only letters, digits, '_', '-' or '.' (no '..'), e.g. cord_train.")


def iter_json_list(path: Path, chunk: int = 1 << 20) -> Iterator[Any]:
    """The elements of the JSON list in ``path``, parsed one at a time (a large file is never held whole).

    Raises ValueError naming what is wrong and where (character offset).
    """
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8") as f:
        buf, pos, eof, offset = "", 0, False, 0

        def fill() -> bool:
            nonlocal buf, pos, eof, offset
            more = f.read(max(chunk, len(buf)))  # doubling keeps one huge record linear, not quadratic
            offset += pos
            buf, pos = buf[pos:] + more, 0
            eof = not more
            return bool(more)

        def skip_ws() -> str:
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    pos += 1
                if pos < len(buf) or not fill():
                    return buf[pos] if pos < len(buf) else ""

        fill()
        if buf.startswith("\ufeff"):
            raise ValueError("it starts with a UTF-8 byte-order mark, which LLaMA-Factory's JSON loader cannot "
                             "read; save it as UTF-8 without BOM")
        if skip_ws() != "[":
            raise ValueError("it is not a JSON list (ShareGPT files are a list of records)")
        pos += 1
        if skip_ws() == "]":
            pos += 1
        else:
            while True:
                while True:
                    try:
                        value, end = decoder.raw_decode(buf, pos)
                    except json.JSONDecodeError as e:
                        if not eof and fill():
                            continue
                        raise ValueError(f"invalid JSON at character {offset + e.pos}: {e.msg}") from None
                    # A number cut by the chunk ("-1." of "-1.5e10") parses as a shorter one: read on.
                    number = isinstance(value, (int, float)) and not isinstance(value, bool)
                    if number and not eof and not buf[end:].strip("0123456789.eE+-") and fill():
                        continue
                    break
                pos = end
                yield value
                sep = skip_ws()
                if sep == "]":
                    pos += 1
                    break
                if sep != ",":
                    raise ValueError(f"invalid JSON at character {offset + pos}: expected ',' or ']'"
                                     + (" (the file ends early)" if not sep else ""))
                pos += 1
                skip_ws()
        if skip_ws():
            raise ValueError(f"invalid JSON at character {offset + pos}: extra data after the list")


def _record_problem(record: Any) -> str | None:
    """Why a record is not a multimodal ShareGPT record (messages of role/content, images as paths), or None."""
    if not isinstance(record, dict):
        return f"it is a {type(record).__name__}, not an object"
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        return "it has no 'messages' list"
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
               for m in messages):
        return "each message needs a 'role' and a 'content' string"
    images = record.get("images", [])
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        return "'images' must be a list of paths"
    return None


def _check_data_json(data_json: Path) -> int:
    """Parse the whole file (streaming) and check every record's shape; returns the record count."""
    if not data_json.is_file():
        raise VlmError(f"dataset file not found: {data_json}",
                       hint="export it first: vlm save-cord-dataset-in-sharegpt-format DIR")
    n = 0
    try:
        for n, record in enumerate(iter_json_list(data_json), start=1):
            if problem := _record_problem(record):
                raise VlmError(f"{data_json}: record {n - 1} is not a ShareGPT record: {problem}",
                               hint="pass a ShareGPT file with 'messages' (role/content) and 'images' per record.")
    except UnicodeDecodeError as e:
        raise VlmError(f"{data_json} is not UTF-8 text (byte {e.start})", hint="save it as UTF-8.") from None
    except ValueError as e:
        raise VlmError(f"{data_json} is not a ShareGPT JSON list: {e}",
                       hint="pass a file written by the vlm export.") from None
    return n


def _resolve_link(info_path: Path) -> Path:
    """The file to rewrite: ``info_path`` itself, or what it links to (a dangling link is an error)."""
    if not info_path.is_symlink():
        return info_path
    target = Path(os.path.realpath(info_path))
    hint = "fix or remove the link, or pass --dataset-info with the real file."
    if not target.exists():
        raise VlmError(f"{info_path} is a dangling symlink (to {os.readlink(info_path)})", hint=hint)
    if not target.is_file():
        raise VlmError(f"{info_path} links to {target}, which is not a regular file", hint=hint)
    return target


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
    check_name(name)
    _check_data_json(data_json)
    info_path = Path(dataset_info) if dataset_info else data_json.parent / "dataset_info.json"
    if info_path.is_dir():
        info_path = info_path / "dataset_info.json"
    entry = sharegpt_entry(data_json, info_path)
    if info_path.is_symlink() and Path(os.path.realpath(info_path)).parent != info_path.absolute().parent.resolve():
        entry["file_name"] = str(data_json.resolve())  # relative would only be right beside one of the two names
    target = _resolve_link(info_path)  # written through, atomically; the link itself stays
    with file_lock(target):
        remove_own_temps(target.parent, target.name)  # a killed run's temp; writers hold this lock
        remove_own_temps(target.parent, target.name + ".bak")
        raw = target.read_bytes() if target.exists() else b""
        info = _load(info_path, raw)
        if info.get(name) == entry:
            return Registration(name, info_path, entry, changed=False)
        if name in info and not force:
            raise VlmError(f"{info_path} already has a different entry named {name!r}",
                           hint="choose another --name, or pass --force to replace that entry.")
        info[name] = entry  # an existing key keeps its place; a new one goes last
        if raw:
            atomic_write_bytes(target.with_name(target.name + ".bak"), raw)
        atomic_write_bytes(target, (json.dumps(info, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    return Registration(name, info_path, entry, changed=True)
