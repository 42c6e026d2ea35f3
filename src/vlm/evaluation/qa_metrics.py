"""Short-answer metrics for document QA (DocVQA-style): ANLS and exact match, per document.

* **ANLS** (Average Normalized Levenshtein Similarity; Biten et al., ICCV 2019, the
  DocVQA standard): for one question with accepted answers ``a_1..a_n`` and a
  prediction ``p``, ``max_i s(a_i, p)`` where ``s = 1 - NL`` if ``NL < tau`` else 0,
  ``NL = levenshtein(a, p) / max(len(a), len(p))`` and ``tau = 0.5``. Both strings
  are normalised first as the DocVQA evaluator does: lower case, leading and
  trailing space stripped, inner runs of whitespace collapsed to one space. Two
  empty strings are identical (NL 0, score 1). The summary is the mean over
  documents.
* **exact match**: 1 when the normalised prediction equals one normalised accepted
  answer, else 0; the summary is the mean.

A document here is one exported record: one image and one question. ``score_qa``
keeps the per-document scores, so ``aggregate_qa(scores, indices)`` recomputes the
summary over any resample, which is what the paired bootstrap needs. It scores at most
the first ``MAX_ANSWER_CHARS`` characters of a prediction (the extraction task's cap): a
runaway generation costs a bounded time, and no answer to a short question is that long.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from rapidfuzz.distance import Levenshtein

from vlm.data.records import as_answers
from vlm.inference.parsing import MAX_ANSWER_CHARS

ANLS_THRESHOLD = 0.5


def normalize_answer(text: Any) -> str:
    """DocVQA's normalisation: lower case, stripped, whitespace runs collapsed."""
    return " ".join(str(text).lower().split())


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute, each cost 1), by rapidfuzz's bit-parallel C++: the pure-Python
    DP it replaced took about 5 minutes for a 50 MB answer against a 39-character one."""
    return Levenshtein.distance(a, b)


def similarity(answer: str, prediction: str, threshold: float = ANLS_THRESHOLD) -> float:
    """``1 - NL`` of two normalised strings, or 0 when NL reaches ``threshold``."""
    a, p = normalize_answer(answer), normalize_answer(prediction)
    longest = max(len(a), len(p))
    if longest == 0:
        return 1.0
    if abs(len(a) - len(p)) / longest >= threshold:  # the distance is at least the length difference: NL too
        return 0.0
    nl = levenshtein(a, p) / longest
    return 0.0 if nl >= threshold else 1.0 - nl


def anls(answers: Any, prediction: str | None, threshold: float = ANLS_THRESHOLD) -> float:
    """ANLS of one document: the best similarity over its accepted answers (a missing prediction is "")."""
    return max(similarity(a, prediction or "", threshold) for a in as_answers(answers))


def exact_match(answers: Any, prediction: str | None) -> float:
    """1.0 when the normalised prediction equals a normalised accepted answer."""
    p = normalize_answer(prediction or "")
    return float(any(normalize_answer(a) == p for a in as_answers(answers)))


@dataclass
class QAScores:
    """Per-document ANLS and exact match, in document order."""

    anls: np.ndarray
    exact_match: np.ndarray

    def __len__(self) -> int:
        return len(self.anls)


def score_qa(predictions: list[str | None], answers: list[Any], threshold: float = ANLS_THRESHOLD) -> QAScores:
    """Score every document; ``predictions[k]`` is the raw text answer to ``answers[k]``, of which at most the
    first ``MAX_ANSWER_CHARS`` characters are scored."""
    predictions = [p if p is None or len(p) <= MAX_ANSWER_CHARS else p[:MAX_ANSWER_CHARS] for p in predictions]
    return QAScores(np.array([anls(a, p, threshold) for p, a in zip(predictions, answers)], dtype=float),
                    np.array([exact_match(a, p) for p, a in zip(predictions, answers)], dtype=float))


def aggregate_qa(scores: QAScores, indices: Any = None) -> dict[str, float | None]:
    """Mean ANLS and exact match over all documents, or over ``indices`` (a bootstrap resample)."""
    if len(scores) == 0:
        return {"anls": None, "exact_match": None}
    idx = slice(None) if indices is None else indices
    return {"anls": float(scores.anls[idx].mean()), "exact_match": float(scores.exact_match[idx].mean())}
