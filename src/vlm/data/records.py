"""Exported records and what each is scored against, for every stage after the export.

A record is one ShareGPT example as ``vlm export`` writes it: ``messages`` (the prompt with ``<image>``, then
the target), ``images``, and for a QA dataset every accepted answer under ``answers``. Prediction stores the
ground truth read here, and evaluation and the reports read the same records, so the rule lives in one place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlm.errors import VlmError
from vlm.lf.data import read_dataset_info, read_records


def as_answers(value: Any) -> list[str]:
    """Accepted answers as a list of strings: one string, or a list of them."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (str, int, float)) for v in value):
        return [str(v) for v in value]
    raise ValueError(f"accepted answers must be a string or a non-empty list of strings, not {value!r:.60}")


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
