"""Line a prediction up with its ground truth, field by field, for people to read.

``align(gt, pred)`` gives key/value rows: one per ground-truth field (with the
prediction's value or nothing), then the prediction's extra fields. Menu rows are
paired by item name first (difflib's longest matching blocks), so one skipped row
does not make every later row look wrong. Each row has a status: ``correct``,
``wrong``, ``missing`` (in the ground truth only) or ``extra`` (in the prediction
only); a wrong value carries its character diff against the truth.

This is a reading aid and the source of label-error candidates, not a metric:
the scores stay Donut's (``vlm.evaluation.metrics``).
"""

from __future__ import annotations

import json
from difflib import SequenceMatcher
from functools import lru_cache
from typing import Any

from vlm.evaluation.consistency import as_rows as _rows

CORRECT, WRONG, MISSING, EXTRA = "correct", "wrong", "missing", "extra"
LIST_GROUPS = ("menu", "void_menu")  # groups that hold item rows (a single row may be stored as a dict)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _leaves(value: Any, path: str) -> list[tuple[str, str]]:
    """(path, text) for every leaf of a dict row; nested row lists (``sub``) are indexed."""
    out: list[tuple[str, str]] = []
    if isinstance(value, dict):
        for key, inner in value.items():
            if isinstance(inner, (dict, list)) and _rows(inner):
                for k, row in enumerate(_rows(inner)):
                    out += _leaves(row, f"{path}.{key}[{k}]")
            elif inner not in (None, "", [], {}):
                out.append((f"{path}.{key}", _text(inner)))
    elif value not in (None, "", [], {}):
        out.append((path, _text(value)))
    return out


def _pair_rows(gt_rows: list[dict], pred_rows: list[dict]) -> list[tuple[int | None, int | None]]:
    """Pairs of (gt index, pred index) by item name; unpaired rows get None on the other side."""
    names = [[_text(r.get("nm", "")).lower() for r in rows] for rows in (gt_rows, pred_rows)]
    pairs: list[tuple[int | None, int | None]] = []
    for op, g0, g1, p0, p1 in SequenceMatcher(None, names[0], names[1], autojunk=False).get_opcodes():
        if op == "equal" or op == "replace":  # replaced rows are the same line read differently
            n = min(g1 - g0, p1 - p0)
            pairs += [(g0 + k, p0 + k) for k in range(n)]
            pairs += [(g, None) for g in range(g0 + n, g1)] + [(None, p) for p in range(p0 + n, p1)]
        elif op == "delete":
            pairs += [(g, None) for g in range(g0, g1)]
        else:
            pairs += [(None, p) for p in range(p0, p1)]
    return pairs


def _paired_leaves(gt: dict, pred: dict) -> list[tuple[str, str | None, str | None, str | None]]:
    """(path, gt text, pred text, the field's path in the prediction) of every field; a paired row's path is
    numbered as the truth's row, its prediction path as the prediction's."""
    out: list[tuple[str, str | None, str | None, str | None]] = []
    keys = list(gt) + [k for k in pred if k not in gt]
    for key in keys:
        g, p = gt.get(key), pred.get(key)
        if key in LIST_GROUPS or isinstance(g, list) or isinstance(p, list):
            g_rows, p_rows = _rows(g), _rows(p)
            # the prediction path follows the prediction's own shape (what prediction_fields numbers): a single
            # row the truth holds as a list is not indexed in the prediction unless its key is a list group
            indexed = key in LIST_GROUPS or isinstance(p, list)

            def own(pi: int) -> str:
                return f"{key}[{pi}]" if indexed else key

            for gi, pi in _pair_rows(g_rows, p_rows):
                if gi is not None and pi is not None:
                    out += _merge(_leaves(g_rows[gi], f"{key}[{gi}]"), _leaves(p_rows[pi], f"{key}[{gi}]"),
                                  (f"{key}[{gi}]", own(pi)))
                elif gi is not None:
                    out += [(path, text, None, None) for path, text in _leaves(g_rows[gi], f"{key}[{gi}]")]
                else:
                    out += [(path, None, text, own(pi) + path[len(f"{key}[+{pi}]"):])
                            for path, text in _leaves(p_rows[pi], f"{key}[+{pi}]")]
        else:
            out += _merge(_leaves(g, key) if g is not None else [], _leaves(p, key) if p is not None else [])
    return out


def _merge(g: list[tuple[str, str]], p: list[tuple[str, str]],
           renumber: tuple[str, str] | None = None) -> list[tuple[str, str | None, str | None, str | None]]:
    pv = dict(p)
    gv = dict(g)

    def pred_path(path: str) -> str:
        return path if renumber is None else renumber[1] + path[len(renumber[0]):]

    return ([(path, text, pv.get(path), pred_path(path) if path in pv else None) for path, text in g]
            + [(path, None, text, pred_path(path)) for path, text in p if path not in gv])


def prediction_fields(pred: Any) -> list[tuple[str, str]]:
    """(path, text) of every field of a prediction, in its own order, numbered as ``align``'s ``pred_path``."""
    pred = pred if isinstance(pred, dict) else {}
    return [(path, p) for _, _, p, path in _paired_leaves({}, pred) if p is not None and path is not None]


@lru_cache(maxsize=65536)  # the same misreadings recur across documents and groups; callers do not modify it
def char_diff(truth: str, found: str) -> list[list[str]]:
    """``[[op, text], ...]`` turning ``truth`` into ``found``: ``=`` kept, ``-`` only in truth, ``+`` only found."""
    segs: list[list[str]] = []
    for op, a0, a1, b0, b1 in SequenceMatcher(None, truth, found, autojunk=False).get_opcodes():
        if op == "equal":
            segs.append(["=", truth[a0:a1]])
            continue
        if a1 > a0:
            segs.append(["-", truth[a0:a1]])
        if b1 > b0:
            segs.append(["+", found[b0:b1]])
    return segs


def align(gt: Any, pred: Any) -> list[dict[str, Any]]:
    """Rows ``{"path", "gt", "pred", "status"[, "diff"][, "pred_path"]}``: ground-truth fields first, then extras.
    ``pred_path``: where a predicted field is in the prediction (its row numbered as the prediction's).

    ``pred`` ``None`` (not JSON) is an empty prediction: every field is missing.
    """
    gt = gt if isinstance(gt, dict) else {}
    pred = pred if isinstance(pred, dict) else {}
    rows = []
    for path, g, p, pred_path in _paired_leaves(gt, pred):
        if g is None:
            status = EXTRA
        elif p is None:
            status = MISSING
        else:
            status = CORRECT if g == p else WRONG
        row: dict[str, Any] = {"path": path, "gt": g, "pred": p, "status": status}
        if status == WRONG:
            row["diff"] = char_diff(g, p)
        if pred_path is not None:
            row["pred_path"] = pred_path
        rows.append(row)
    return rows
