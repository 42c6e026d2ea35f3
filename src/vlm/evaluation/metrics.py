"""Donut's CORD metrics (clovaai/donut ``JSONParseEvaluator``), fast, plus a few diagnostic extras.

Standard (as in Donut):

* **nTED accuracy** per document: ``max(0, 1 - TED(pred, gt) / TED({}, gt))`` on
  Donut's normalised trees (see ``vlm.evaluation.ted`` for the tree and the costs); the
  summary is the mean over documents. ``TED({}, gt)`` is computed in closed form
  (the insert costs of every non-root node of gt). Donut divides by zero when the
  ground truth normalises to nothing; here such a document scores 1.0 when the
  prediction's tree equals the ground truth's and 0.0 otherwise.
* **field F1** (Donut ``cal_f1``): the flattened ``(key path, value)`` pairs of
  prediction and ground truth matched as multisets; micro-averaged over documents
  as ``tp / (tp + (fp + fn) / 2)``. With nothing predicted and nothing to find
  (0/0) it is 1.0, mirroring the nTED rule.

Extras, reported under their own keys and never replacing the standard ones:

* ``*_numnorm``: numbers compared by value as printed (``"60.000"``, ``"60,000"``,
  ``"Rp 60000"`` are equal; see ``number_key``). For F1 the values are replaced
  by their key; for nTED two leaves with equal keys update at cost 0 (insert
  and remove costs, hence the denominator, are unchanged).
* ``header.<group.key>``: exact match of each of ``HEADER_FIELDS`` (stripped
  strings equal; a group stored as a list uses its first dict) over the
  documents whose ground truth has the field (``None`` where none has).
* ``menu_precision`` / ``menu_recall`` / ``menu_f1``: whole ``menu`` rows matched
  one to one (multiset of normalised rows). Precision is undefined (``None``)
  without predicted rows, recall without gt rows; F1 over neither is 1.0.

* ``field_breakdown``: per key path (``menu.nm``, ``total.total_price``) the
  matched / predicted / gt pair counts behind F1, with P/R/F1.

One document's tree edit distance may take at most ``ted.CELL_BUDGET`` cells per table: past it (two large,
very different trees) the distance reported is an upper bound, so the nTED accuracy a lower bound, and the
document is flagged (``ted_capped``; ``vlm.evaluation.ted._beyond_budget`` gives the rule).

A ``None`` prediction (invalid JSON) is scored as ``{}``. ``score_documents``
keeps every per-document count, so ``aggregate(scores, indices)`` (``vlm.evaluation.summary``) recomputes
the summary over any resample (a paired bootstrap draws the same indices for
two groups).
"""

from __future__ import annotations

import re
from collections import Counter, _count_elements  # the C helper behind Counter(iterable), since Python 3.2
from functools import lru_cache
from itertools import repeat
from typing import Any, NamedTuple

from vlm.evaluation.summary import Counts, DocScores
from vlm.evaluation.summary import aggregate as aggregate  # re-exported: callers score and summarise from here
from vlm.evaluation.summary import draw_counts as draw_counts
from vlm.evaluation.summary import field_breakdown as field_breakdown
from vlm.evaluation.summary import resampled as resampled
from vlm.evaluation.ted import Tree, bounded_distances, build_tree, c_build, tree_distances
from vlm.inference.tolerant_json import Num
from vlm.schema import HEADER_FIELDS

# Donut keeps list items of these types (``Num`` is a parsed float that remembers its literal).
_SCALARS = frozenset({str, int, float, Num})
_STR = {str}


def normalize(data: Any) -> Any:
    """Donut's ``normalize_dict``: sorted keys, empty values dropped, every value a list of strings or dicts.

    The C build (``vlm.evaluation._ted.normalize``, see ``ted.c_build``) gives the same for plain data, and
    hands anything else (a dict or list subclass, a key that is not a str) back to the Python below.
    """
    c = c_build()
    got = c.normalize(data, _SCALARS) if c else None
    return _normalize(data) if got is None else got


def _normalize(data: Any) -> Any:
    if not data:
        return {}
    if isinstance(data, dict):
        if set(map(type, data)) != _STR:  # only Python callers can pass other keys; match them as str
            data = {str(k): v for k, v in data.items()}
        out = {}
        for key in sorted(sorted(data), key=len):  # by (length, key): Donut's order, with no Python call per key
            value = data[key]
            if type(value) is str:  # the commonest value, inline: what normalize(value) gives
                if value:
                    out[key] = [value.strip()]
                continue
            value = _normalize(value)
            if value:
                out[key] = value if isinstance(value, list) else [value]
        return out
    if isinstance(data, list):
        if all(map(isinstance, data, repeat(dict))):
            return [n for n in (_normalize(item) for item in data) if n]
        return [str(item).strip() for item in data if type(item) in _SCALARS and str(item).strip()]
    return [str(data).strip()]


def literals(data: Any) -> dict[str, str]:
    """The printed form of every unquoted decimal in ``data``: ``{"31.0": "31.000"}`` (Donut's metric sees "31.0").

    The number-normalised variants read ``31.000`` as printed (31000 in CORD's receipts), not as 31.
    """
    out: dict[str, str] = {}
    todo = [data]
    while todo:
        v = todo.pop()
        if type(v) is dict:
            todo.extend(v.values())
        elif type(v) is list:
            todo.extend(v)
        elif type(v) is Num:
            out[str(v).strip()] = v.literal
    return out


def flatten(data: Any) -> list[tuple[str, Any]]:
    """Donut's ``flatten``: ``(dotted key path, leaf)`` pairs; list items share their parent's key."""
    pairs: list[tuple[str, Any]] = []
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:  # depth first, in document order
        value, key = stack.pop()
        if type(value) is dict:
            stack.extend((v, f"{key}.{k}" if key else k) for k, v in reversed(list(value.items())))
        elif type(value) is list:
            stack.extend((v, key) for v in reversed(value))
        else:
            pairs.append((key, value))
    return pairs


_CURRENCY = re.compile(r"^(?:rp\.?|idr|usd|us\$|rm|s\$|\$|€|£|¥|₩)|(?:rp\.?|idr|usd|rm|\$|€|£|¥|₩)$", re.IGNORECASE)
_NUMBER = re.compile(r"([-+]?)(\d{1,3}(?:[.,]\d{3})+|\d+)(?:[.,](\d{1,2}))?")


@lru_cache(maxsize=65536)
def number_key(text: str) -> str:
    """``text``'s number, canonical (``"Rp 60.000"`` -> ``"60000"``, ``"12,50"`` -> ``"12.5"``); other text unchanged.

    Currency marks and spaces are dropped; ``.`` or ``,`` before groups of three
    digits separate thousands, before one or two final digits they mark decimals.
    """
    s = "".join(text.split())
    s = _CURRENCY.sub("", _CURRENCY.sub("", s, count=1), count=1)
    m = _NUMBER.fullmatch(s)
    if not m:
        return text
    sign, whole, frac = m.groups()
    frac = (frac or "").rstrip("0")
    # Leading zeros stripped as text: int() refuses strings of over 4,300 digits (a runaway answer can hold one).
    number = (whole.replace(".", "").replace(",", "").lstrip("0") or "0") + (f".{frac}" if frac else "")
    return number if sign != "-" or number == "0" else f"-{number}"


def ted_distances(pred: Any, gt: Any) -> tuple[int, int, int]:
    """(TED(pred, gt), the same with numbers normalised, TED({}, gt)) on normalised trees."""
    tp, tg = build_tree(normalize(pred)), build_tree(normalize(gt))
    d, d_num = tree_distances(tp, tg, number_key)
    return d, d_num, tg.closed_form_insert_all()


def _accuracy(d: int, denom: int) -> float:
    if denom == 0:
        return 1.0 if d == 0 else 0.0
    return max(0.0, 1.0 - d / denom)


def ted_accuracy(pred: Any, gt: Any, numnorm: bool = False) -> float:
    """Donut's nTED accuracy of one document."""
    d, d_num, denom = ted_distances(pred, gt)
    return _accuracy(d_num if numnorm else d, denom)


def _pair_counts(p: list, g: list) -> Counts:
    return sum((Counter(p) & Counter(g)).values()), len(p), len(g)


def f1_counts(pred: Any, gt: Any, numnorm: bool = False) -> Counts:
    """Donut ``cal_f1`` counts for one document: (matched pairs, predicted pairs, gt pairs)."""
    p, g = flatten(normalize(pred)), flatten(normalize(gt))
    if numnorm:
        p, g = [(k, number_key(v)) for k, v in p], [(k, number_key(v)) for k, v in g]
    return _pair_counts(p, g)


def field_counts(pred: Any, gt: Any) -> dict[str, Counts]:
    """Per key path (``menu.nm``, ``total.total_price``): (matched, predicted, gt) pairs."""
    return _field_counts(flatten(normalize(pred)), flatten(normalize(gt)))


def _field_counts(p: list, g: list) -> dict[str, Counts]:
    cp, cg = Counter(p), Counter(g)
    return _fields_of(cp, cg, cp & cg)


def _fields_of(cp: dict, cg: dict, common: dict, gt_paths: dict[str, int] | None = None) -> dict[str, Counts]:
    """``_field_counts`` from the pair counts and their intersection (``score_document`` has them at hand);
    ``gt_paths``: ``_path_counts(cg)``, where the caller keeps it."""
    out: dict[str, list[int]] = {}
    for (path, _), n in cp.items():
        out.setdefault(path, [0, 0, 0])[1] += n
    for path, n in (_path_counts(cg) if gt_paths is None else gt_paths).items():
        out.setdefault(path, [0, 0, 0])[2] += n
    for pair, n in common.items():
        out[pair[0]][0] += n
    return {k: (v[0], v[1], v[2]) for k, v in out.items()}


def _path_counts(counts: dict) -> dict[str, int]:
    """Pairs per key path, in the order the paths first occur."""
    out: dict[str, int] = {}
    for (path, _), n in counts.items():
        out[path] = out.get(path, 0) + n
    return out


def _tally(items: list) -> dict:
    """``Counter(items)`` as a plain dict (Counter's Python-level set-up cost more than the counting)."""
    out: dict = {}
    _count_elements(out, items)
    return out


def _common(a: dict, b: dict) -> dict:
    """``Counter(a) & Counter(b)`` for counts above zero: the pairs both hold, each as often as both hold it."""
    return {p: (n if n < m else m) for p, n in a.items() if (m := b.get(p))}


def _header_value(doc: Any, path: str) -> str | None:
    """The field's text as Donut's normalisation keeps it: a bare ``0`` (or ``0.0``) is dropped there, so here too."""
    group, key = path.split(".", 1)
    g = doc.get(group) if isinstance(doc, dict) else None
    if isinstance(g, list):
        g = next((item for item in g if isinstance(item, dict)), None)
    v = g.get(key) if isinstance(g, dict) else None
    if isinstance(v, list):  # Donut keeps a 0 inside a list
        v = next((str(x).strip() for x in v if type(x) in _SCALARS and str(x).strip()), None)
    elif not v:
        return None
    if type(v) not in _SCALARS:
        return None
    return str(v).strip() or None


def header_matches(pred: Any, gt: Any) -> dict[str, bool | None]:
    """Per header field: exact match of the stripped strings, ``None`` where gt lacks the field."""
    out: dict[str, bool | None] = {}
    for path in HEADER_FIELDS:
        want = _header_value(gt, path)
        out[path] = None if want is None else _header_value(pred, path) == want
    return out


# A normalised row's repr identifies it: normalize() orders every dict's keys by the key set alone, and
# its values are only strings, lists and dicts. (It was sorted-key JSON, with the same equalities, slower.)
_ROW_KEY = repr


def _menu_rows(doc: Any, normalized: Any = None) -> list[str]:
    """Each menu row, normalised, as sorted-key JSON; ``normalized``: ``normalize(doc)``, when at hand."""
    menu = doc.get("menu") if isinstance(doc, dict) else None
    if isinstance(normalized, dict) and (type(menu) is dict or (type(menu) is list and all(
            type(r) is dict for r in menu))):
        # the rows normalize(doc) kept are exactly these (a list of dicts keeps its non-empty ones)
        return [_ROW_KEY(n) for n in normalized.get("menu", ())]
    rows = [menu] if isinstance(menu, dict) else menu if isinstance(menu, list) else []
    normed = (normalize(r) for r in rows if isinstance(r, dict))
    return [_ROW_KEY(n) for n in normed if n]


def menu_counts(pred: Any, gt: Any) -> Counts:
    """(matched rows, predicted rows, gt rows); each row matches at most one row on the other side."""
    return _pair_counts(_menu_rows(pred), _menu_rows(gt))


def _numnorm_key(lits: dict[str, str], gt_texts: set[str]):
    """``number_key``, reading the prediction's unquoted decimals as printed (where no gt leaf has that text)."""
    lits = {t: lit for t, lit in lits.items() if t not in gt_texts}
    if not lits:
        return number_key
    return lambda text: number_key(lits.get(text, text))


class Truth(NamedTuple):
    """The ground-truth side of a document, prepared once (every group scored on it shares it)."""

    tree: Tree
    flat: list[tuple[str, Any]]  # flatten(normalize(gt))
    flat_num: list[tuple[str, str]]  # the same with number_key values
    texts: frozenset[str]  # its leaf texts
    denom: int  # TED({}, gt)
    header: dict[str, str | None]  # _header_value per HEADER_FIELDS path
    menu: list[str]  # _menu_rows
    counts: dict  # _tally(flat), shared by every group scored on this truth
    counts_num: dict  # _tally(flat_num)
    paths: dict[str, int]  # _path_counts(counts)


def prepare_truth(gt: Any) -> Truth:
    ng = normalize(gt)
    flat: list[tuple[str, Any]] = []
    tree = build_tree(ng, flat)  # flat == flatten(ng), from the same walk
    flat_num = [(k, number_key(v)) for k, v in flat]
    counts = _tally(flat)
    return Truth(tree, flat, flat_num, frozenset(v for _, v in flat),
                 tree.closed_form_insert_all(), {path: _header_value(gt, path) for path in HEADER_FIELDS},
                 _menu_rows(gt, ng), counts, _tally(flat_num), _path_counts(counts))


def score_document(pred: dict | None, gt: Any, valid: bool | None = None,
                   truth: Truth | None = None) -> dict[str, Any]:
    """Every per-document value for one prediction (``None`` = no object, scored as ``{}``).

    ``valid`` (default: a prediction was given) is what the ``valid_json`` share counts; ``truth``:
    ``prepare_truth(gt)`` when the caller already has it.
    """
    p, valid = ({}, False if valid is None else valid) if pred is None else (pred, True if valid is None else valid)
    t = prepare_truth(gt) if truth is None else truth
    fp: list[tuple[str, Any]] = []
    try:
        np_ = normalize(p)
        tp = build_tree(np_, fp)  # fp == flatten(np_), from the same walk
    except RecursionError:  # nested past Python's stack (parse_prediction caps depth; raw dicts may not be)
        p, np_, tp, valid, fp = {}, {}, build_tree({}), False, []
    lits = literals(p) if p else {}
    key = _numnorm_key(lits, t.texts) if lits else number_key
    d, d_num, exact = bounded_distances(tp, t.tree, key)
    cp = _tally(fp)
    common = _common(cp, t.counts)
    return {
        "valid": valid,
        "ted_accuracy": _accuracy(d, t.denom),
        "ted_accuracy_numnorm": _accuracy(d_num, t.denom),
        "f1": (sum(common.values()), len(fp), len(t.flat)),
        "f1_numnorm": (sum(_common(_tally([(k, key(v)) for k, v in fp]), t.counts_num).values()), len(fp),
                       len(t.flat_num)),
        "header": {path: None if want is None else _header_value(p, path) == want for path, want in t.header.items()},
        "menu": _pair_counts(_menu_rows(p, np_), t.menu),
        "fields": _fields_of(cp, t.counts, common, t.paths),
        "ted_capped": not exact,  # past ted.CELL_BUDGET: both nTED accuracies are lower bounds
    }


def score_documents(preds: list[dict | None], gts: list[Any], valid: list[bool] | None = None) -> DocScores:
    """Score each prediction against its ground truth; ``valid`` overrides what counts as valid JSON."""
    if len(preds) != len(gts) or (valid is not None and len(valid) != len(preds)):
        raise ValueError(f"{len(preds)} predictions for {len(gts)} ground truths")
    return doc_scores([score_document(p, g, None if valid is None else valid[k])
                       for k, (p, g) in enumerate(zip(preds, gts))])


def doc_scores(docs: list[dict[str, Any]]) -> DocScores:
    """``score_document`` results, in order, as one ``DocScores``."""
    return DocScores(
        valid=[d["valid"] for d in docs],
        ted_accuracy=[d["ted_accuracy"] for d in docs],
        ted_accuracy_numnorm=[d["ted_accuracy_numnorm"] for d in docs],
        f1=[d["f1"] for d in docs],
        f1_numnorm=[d["f1_numnorm"] for d in docs],
        header={path: [d["header"][path] for d in docs] for path in HEADER_FIELDS},
        menu=[d["menu"] for d in docs],
        fields=[d["fields"] for d in docs],
        ted_capped=[d["ted_capped"] for d in docs],
    )
