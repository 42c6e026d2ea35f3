"""Summaries over documents of the per-document scores of ``vlm.evaluation.metrics``: Donut's summary
metrics over all documents or any resample (``aggregate``), over many resamples at once (``resampled``, for
the paired bootstrap), and per key path (``field_breakdown``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

Counts = tuple[int, int, int]  # (matched, predicted, ground truth)


@dataclass
class DocScores:
    """Per-document results, index-aligned with the inputs (resample them with ``aggregate(.., indices)``)."""

    valid: list[bool]
    ted_accuracy: list[float]
    ted_accuracy_numnorm: list[float]
    f1: list[Counts]
    f1_numnorm: list[Counts]
    header: dict[str, list[bool | None]]
    menu: list[Counts]
    fields: list[dict[str, Counts]]
    # per document: True where the nTED distances are upper bounds (past ted.CELL_BUDGET), not exact
    ted_capped: list[bool] = field(default_factory=list)
    _arrays: dict[str, np.ndarray] | None = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.valid)

    def arrays(self) -> dict[str, np.ndarray]:
        """The per-document values as numpy arrays (built once)."""
        if self._arrays is None:
            a = {
                "valid": np.array(self.valid, dtype=float),
                "ted": np.array(self.ted_accuracy, dtype=float),
                "ted_num": np.array(self.ted_accuracy_numnorm, dtype=float),
                "f1": np.array(self.f1, dtype=np.int64).reshape(-1, 3),
                "f1_num": np.array(self.f1_numnorm, dtype=np.int64).reshape(-1, 3),
                "menu": np.array(self.menu, dtype=np.int64).reshape(-1, 3),
            }
            for path, values in self.header.items():
                a[f"applies:{path}"] = np.array([v is not None for v in values], dtype=np.int64)
                a[f"correct:{path}"] = np.array([v is True for v in values], dtype=np.int64)
            self._arrays = a
        return self._arrays


def _f1(tp: int, n_pred: int, n_gt: int) -> float:
    # tp / (tp + (fp + fn) / 2) == 2 tp / (n_pred + n_gt)
    return 1.0 if n_pred + n_gt == 0 else 2.0 * tp / (n_pred + n_gt)


def aggregate(scores: DocScores, indices: Any = None) -> dict[str, float | None]:
    """Summary metrics, over all documents or over ``indices`` (a resample, repeats allowed)."""
    a = scores.arrays()
    idx = slice(None) if indices is None else np.asarray(indices, dtype=np.int64)
    n = len(scores) if indices is None else len(idx)
    if n == 0:
        raise ValueError("no documents to aggregate")
    f1 = a["f1"][idx].sum(axis=0)
    f1n = a["f1_num"][idx].sum(axis=0)
    menu = a["menu"][idx].sum(axis=0)
    out: dict[str, float | None] = {
        "valid_json": float(a["valid"][idx].mean()),
        "ted_accuracy": float(a["ted"][idx].mean()),
        "f1": _f1(*f1.tolist()),
        "ted_accuracy_numnorm": float(a["ted_num"][idx].mean()),
        "f1_numnorm": _f1(*f1n.tolist()),
    }
    for path in scores.header:
        applies = int(a[f"applies:{path}"][idx].sum())
        out[f"header.{path}"] = float(a[f"correct:{path}"][idx].sum()) / applies if applies else None
    matched, n_pred, n_gt = menu.tolist()
    out["menu_precision"] = matched / n_pred if n_pred else None
    out["menu_recall"] = matched / n_gt if n_gt else None
    out["menu_f1"] = _f1(matched, n_pred, n_gt)
    return out


def draw_counts(indices: np.ndarray, n_docs: int) -> np.ndarray:
    """How often each document is drawn in each resample: (resamples x n_docs) floats."""
    rows = len(indices)
    flat = (np.arange(rows)[:, None] * n_docs + indices).ravel()
    return np.bincount(flat, minlength=rows * n_docs).reshape(rows, n_docs).astype(float)


def resampled(scores: DocScores, indices: np.ndarray, counts: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """``aggregate`` over every row of ``indices`` (resamples x documents) at once; NaN where it gives None.

    ``counts`` (``draw_counts(indices)``) can be shared by groups scored on the same draws.

    Bit for bit what ``aggregate`` gives row by row: the nTED means reduce each
    gathered row as ``aggregate`` does, and every other metric is a ratio of
    integer sums, which a float matrix product of the draw counts computes exactly.
    """
    a = scores.arrays()
    n = indices.shape[1]
    if n == 0:
        raise ValueError("no documents to aggregate")
    headers = list(scores.header)
    columns = [a["valid"][:, None], a["f1"], a["f1_num"], a["menu"]]
    columns += [np.stack([a[f"applies:{p}"], a[f"correct:{p}"]], axis=1) for p in headers]
    if counts is None:
        counts = draw_counts(indices, len(scores))
    sums = counts @ np.concatenate(columns, axis=1).astype(float)

    def f1(tp, n_pred, n_gt):
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n_pred + n_gt == 0, 1.0, 2.0 * tp / (n_pred + n_gt))

    def ratio(num, den):
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / den, np.nan)

    out = {
        "valid_json": sums[:, 0] / n,
        "ted_accuracy": a["ted"][indices].mean(axis=1),
        "f1": f1(sums[:, 1], sums[:, 2], sums[:, 3]),
        "ted_accuracy_numnorm": a["ted_num"][indices].mean(axis=1),
        "f1_numnorm": f1(sums[:, 4], sums[:, 5], sums[:, 6]),
    }
    for k, path in enumerate(headers):
        out[f"header.{path}"] = ratio(sums[:, 11 + 2 * k], sums[:, 10 + 2 * k])
    out["menu_precision"] = ratio(sums[:, 7], sums[:, 8])
    out["menu_recall"] = ratio(sums[:, 7], sums[:, 9])
    out["menu_f1"] = f1(sums[:, 7], sums[:, 8], sums[:, 9])
    return out


def field_breakdown(scores: DocScores, indices: Any = None) -> dict[str, dict[str, float | int]]:
    """Per key path: tp, n_pred, n_gt, precision, recall, f1 (precision or recall 0.0 where undefined)."""
    docs = range(len(scores)) if indices is None else [int(i) for i in indices]
    totals: dict[str, list[int]] = {}
    for k in docs:
        for path, counts in scores.fields[k].items():
            t = totals.setdefault(path, [0, 0, 0])
            for m in range(3):
                t[m] += counts[m]
    return {
        path: {"tp": tp, "n_pred": n_pred, "n_gt": n_gt, "precision": tp / n_pred if n_pred else 0.0,
               "recall": tp / n_gt if n_gt else 0.0, "f1": _f1(tp, n_pred, n_gt)}
        for path, (tp, n_pred, n_gt) in sorted(totals.items())
    }
