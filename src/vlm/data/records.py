"""Exported records and what each is scored against, for every stage after the export.

A record is one ShareGPT example as ``vlm export`` writes it: ``messages`` (the prompt with ``<image>``, then
the target), ``images``, and for a QA dataset every accepted answer under ``answers``. Prediction stores the
ground truth read here, and evaluation and the reports read the same records, so the rule lives in one place.
"""

from __future__ import annotations

import gzip
import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vlm.errors import VlmError
from vlm.lf.data import read_dataset_info, read_records


def _json_kind(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return f"JSON {json.dumps(value)}"
    if isinstance(value, dict):
        return "a JSON object"
    if isinstance(value, (list, tuple)):
        return "a list inside the list of answers"
    return f"a {type(value).__name__}"


def answer_text(value: Any) -> str:
    """One accepted answer as text: a string as it is, a number as its JSON text (42 -> "42", 1.50 -> "1.5").

    QA answers are text; a number in a dataset or a predictions file is read as JSON writes it. A bool, a null or
    an object is no answer (``str()`` made "True" or "None" of them, which no model writes): ValueError.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return json.dumps(value)
    shown = json.dumps(value, ensure_ascii=False, default=str)
    raise ValueError(f"an accepted answer must be a string or a number, not {_json_kind(value)} "
                     f"({shown[:40]}{'...' if len(shown) > 40 else ''})")


def as_answers(value: Any) -> list[str]:
    """Accepted answers as a list of strings: one answer, or a non-empty list of them (``answer_text`` each)."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError("the list of accepted answers is empty")
        return [answer_text(v) for v in value]
    return [answer_text(value)]


def qa_fields(row: dict[str, Any], question_column: str, answers_column: str) -> tuple[str, list[str]]:
    """(question, accepted answers) of one dataset row; ValueError with a reason when unusable."""
    question = row.get(question_column)
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"record has no question in column {question_column!r}")
    value = row.get(answers_column)
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:  # a list stored as a JSON string
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    answers = [a.strip() for a in as_answers(value)] if value is not None else []
    if not answers or not all(answers):
        raise ValueError(f"record has no answer in column {answers_column!r}")
    return question.strip(), answers


def ground_truth(doc: dict[str, Any]) -> Any:
    """What a prediction is scored against: a QA record's accepted answers, else the JSON target."""
    if "answers" in doc:
        return doc["answers"]
    return json.loads(doc["messages"][1]["content"])


def load_documents(dataset_dir: str, dataset: str) -> list[dict[str, Any]]:
    """The exported ShareGPT records of one registered dataset."""
    info_path, info = read_dataset_info(dataset_dir)
    if dataset not in info:
        raise VlmError(f"dataset {dataset!r} is not registered in {info_path}",
                       hint=f"registered: {', '.join(info) or 'none'}; pass --dataset NAME.")
    records = read_records(Path(dataset_dir) / info[dataset]["file_name"])
    for i, rec in enumerate(records):
        rec.setdefault("id", f"{dataset}-{i:05d}")
    return records


GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"


def jsonl_lines(path: Path, what: str = "prediction file") -> Iterator[tuple[int, str]]:
    """(line number, text) of each line of a JSONL file, read lazily (a huge answer is read once).

    Reads UTF-8 with or without a byte-order mark, and gzip-compressed files (``.jsonl.gz``, told by their first
    bytes). Anything else gets an error naming the path and what it really is: a folder, a FIFO or a device, an
    encoding that is not UTF-8.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise VlmError(f"{what} not found: {path}") from None
    except OSError as e:
        raise VlmError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if stat.S_ISDIR(mode):
        raise VlmError(f"{what} {path} is a directory", hint="pass the JSONL file inside it, e.g. "
                                                          f"{path}/generated_predictions.jsonl.")
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else \
            "not a regular file"
        raise VlmError(f"{what} {path} is {kind}, not a file", hint="write the predictions to a JSONL file first.")
    with open(path, "rb") as f:
        compressed = f.read(2) == GZIP_MAGIC
    n = 0
    try:
        with (gzip.open if compressed else open)(path, "rb") as f:  # bytes: each line decoded on its own
            for n, raw in enumerate(f, 1):
                if n == 1 and raw.startswith(UTF8_BOM):
                    raw = raw[len(UTF8_BOM):]
                yield n, raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise VlmError(f"{what} {path} is not UTF-8 text (line {n}: byte {e.object[e.start:e.start + 1]!r} at "
                       f"column {e.start + 1})", hint="save it as UTF-8 JSONL, one JSON object per line.") from None
    except (gzip.BadGzipFile, EOFError) as e:
        raise VlmError(f"{what} {path} is a damaged gzip file: {e}", hint="decompress it again, or pass the JSONL.") \
            from None
