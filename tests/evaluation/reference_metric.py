"""A plain reference of Donut's CORD metric (clovaai/donut ``JSONParseEvaluator``) on the ``zss`` package.

Kept deliberately simple: ``zss.Node`` trees, cost callbacks on labels and a
pure-Python Levenshtein distance. It is the baseline that ``vlm.evaluation.metrics`` is
checked and timed against; do not optimise it.
"""

from __future__ import annotations

from typing import Any

import zss


def levenshtein(a: str, b: str) -> int:
    """Unit-cost insert/delete/substitute edit distance (no transpositions)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def normalize(data: Any) -> Any:
    if not data:
        return {}
    if isinstance(data, dict):
        out = {}
        for key in sorted(data.keys(), key=lambda k: (len(k), k)):
            value = normalize(data[key])
            if value:
                if not isinstance(value, list):
                    value = [value]
                out[key] = value
        return out
    if isinstance(data, list):
        if all(isinstance(item, dict) for item in data):
            return [n for n in (normalize(item) for item in data) if n]
        return [str(item).strip() for item in data if type(item) in {str, int, float} and str(item).strip()]
    return [str(data).strip()]


def flatten(data: Any) -> list[tuple[str, Any]]:
    pairs = []

    def walk(value, key=""):
        if type(value) is dict:
            for child_key, child in value.items():
                walk(child, f"{key}.{child_key}" if key else child_key)
        elif type(value) is list:
            for item in value:
                walk(item, key)
        else:
            pairs.append((key, value))

    walk(data)
    return pairs


def build(data: Any, name: str = "<root>") -> zss.Node:
    node = zss.Node(name)
    if isinstance(data, dict):
        for key, value in data.items():
            node.addkid(build(value, key))
    elif isinstance(data, list):
        if all(isinstance(item, dict) for item in data):
            for item in data:
                node.addkid(build(item, "<subtree>"))
        else:
            for item in data:
                node.addkid(zss.Node(f"<leaf>{item}"))
    else:
        raise TypeError(data)
    return node


def update_cost(a: zss.Node, b: zss.Node, key=None) -> int:
    la, lb = a.label, b.label
    leaf_a, leaf_b = "<leaf>" in la, "<leaf>" in lb
    if leaf_a and leaf_b:
        ta, tb = la.replace("<leaf>", ""), lb.replace("<leaf>", "")
        if key is not None and key(ta) == key(tb):
            return 0
        return levenshtein(ta, tb)
    if leaf_b:
        return 1 + len(lb.replace("<leaf>", ""))
    if leaf_a:
        return 1 + len(la.replace("<leaf>", ""))
    return int(la != lb)


def insert_remove_cost(node: zss.Node) -> int:
    return len(node.label.replace("<leaf>", "")) if "<leaf>" in node.label else 1


def ted(a: zss.Node, b: zss.Node, key=None) -> float:
    """Tree edit distance; with ``key``, leaves whose texts have equal keys update for free."""
    return zss.distance(a, b, get_children=zss.Node.get_children, insert_cost=insert_remove_cost,
                        remove_cost=insert_remove_cost, update_cost=lambda x, y: update_cost(x, y, key))


def ted_accuracy(pred: Any, gt: Any, key=None) -> float:
    """Donut's ``cal_acc``. Where TED({}, gt) is 0 (Donut divides by zero): 1.0 if TED(pred, gt) is 0, else 0.0."""
    p, g = build(normalize(pred)), build(normalize(gt))
    denom = ted(build(normalize({})), g)
    d = ted(p, g, key)
    if denom == 0:
        return 1.0 if d == 0 else 0.0
    return max(0.0, 1 - d / denom)


def f1_counts(pred: Any, gt: Any) -> tuple[int, int, int]:
    """(true positives, predicted pairs, gt pairs) as in Donut's ``cal_f1``."""
    p, g = flatten(normalize(pred)), flatten(normalize(gt))
    n_pred, n_gt, tp = len(p), len(g), 0
    for field in p:
        if field in g:
            tp += 1
            g.remove(field)
    return tp, n_pred, n_gt


def f1(preds: list[Any], gts: list[Any]) -> float:
    tp = fp_fn = 0
    for pred, gt in zip(preds, gts):
        t, n_pred, n_gt = f1_counts(pred, gt)
        tp += t
        fp_fn += (n_pred - t) + (n_gt - t)
    return tp / (tp + fp_fn / 2) if tp + fp_fn else 1.0
