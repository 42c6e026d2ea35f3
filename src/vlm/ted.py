"""Zhang–Shasha tree edit distance for Donut's nTED, with Donut's costs.

Trees are built straight into flat postorder arrays (no node objects), the
leaf/leaf update costs come in one bulk ``rapidfuzz`` call, and the dynamic
programme runs over plain Python lists with the keyroot and leftmost-leaf
tables precomputed. Node labels follow Donut's ``construct_tree_from_dict``:
``"<root>"`` for the root, the key for a dict entry, ``"<subtree>"`` for each
dict in a list of dicts and ``"<leaf>{value}"`` for each scalar; a node counts
as a leaf when its label contains ``"<leaf>"`` (Donut's own test), and its
text is the label with every ``"<leaf>"`` removed.

Costs: inserting or removing a leaf costs the length of its text, any other
node 1; updating leaf to leaf costs the Levenshtein distance of the texts,
leaf to non-leaf (either way) 1 + the leaf's text length, non-leaf to non-leaf
0 when the labels match and 1 otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from rapidfuzz.distance import Levenshtein
from rapidfuzz.process import cdist

LEAF = "<leaf>"


@dataclass
class Tree:
    """A tree in postorder, 1-based (index 0 is unused padding)."""

    labels: list[str]
    is_leaf: list[bool]
    texts: list[str]
    cost: list[int]  # insert / remove cost of each node
    lml: list[int]  # leftmost leaf descendant of each node
    keyroots: list[int]

    @property
    def size(self) -> int:
        return len(self.labels) - 1

    def closed_form_insert_all(self) -> int:
        """TED(a bare root, this tree): the root maps to the root, every other node is inserted."""
        return sum(self.cost[1:-1])


def build_tree(data: Any) -> Tree:
    """Postorder arrays of Donut's tree for ``data`` (already normalised)."""
    labels, lml = [""], [0]

    def visit(value: Any, label: str) -> int:
        first = 0
        if isinstance(value, dict):
            for key, child in value.items():
                k = visit(child, key)
                first = first or k
        elif isinstance(value, list):
            if all(isinstance(item, dict) for item in value):
                for item in value:
                    k = visit(item, "<subtree>")
                    first = first or k
            else:
                for item in value:
                    labels.append(f"{LEAF}{item}")
                    lml.append(len(labels) - 1)
                    first = first or len(labels) - 1
        else:
            raise TypeError(f"cannot build a tree node from {type(value).__name__} under {label!r}")
        labels.append(label)
        lml.append(first or len(labels) - 1)
        # the leftmost leaf of a node is the leftmost leaf of its first child
        return lml[-1]

    visit(data, "<root>")
    is_leaf = [LEAF in s for s in labels]
    texts = [s.replace(LEAF, "") if leaf else s for s, leaf in zip(labels, is_leaf)]
    cost = [len(t) if leaf else 1 for t, leaf in zip(texts, is_leaf)]
    cost[0] = 0
    last: dict[int, int] = {}
    for k in range(1, len(labels)):
        last[lml[k]] = k
    return Tree(labels, is_leaf, texts, cost, lml, sorted(last.values()))


def update_matrix(t1: Tree, t2: Tree) -> np.ndarray:
    """(n1+1) x (n2+1) update costs (row and column 0 unused)."""
    n1, n2 = t1.size, t2.size
    ids: dict[str, int] = {}
    lab1 = np.array([ids.setdefault(s, len(ids)) for s in t1.labels[1:]], dtype=np.int64)
    lab2 = np.array([ids.setdefault(s, len(ids)) for s in t2.labels[1:]], dtype=np.int64)
    leaf1 = np.array(t1.is_leaf[1:], dtype=bool)
    leaf2 = np.array(t2.is_leaf[1:], dtype=bool)
    len1 = np.array(t1.cost[1:], dtype=np.int64)  # for leaves the cost is the text length
    len2 = np.array(t2.cost[1:], dtype=np.int64)
    u = np.zeros((n1 + 1, n2 + 1), dtype=np.int64)
    core = (lab1[:, None] != lab2[None, :]).astype(np.int64)
    core[np.ix_(~leaf1, leaf2)] = 1 + len2[leaf2][None, :]
    core[np.ix_(leaf1, ~leaf2)] = 1 + len1[leaf1][:, None]
    if leaf1.any() and leaf2.any():
        a = [t for t, f in zip(t1.texts[1:], t1.is_leaf[1:]) if f]
        b = [t for t, f in zip(t2.texts[1:], t2.is_leaf[1:]) if f]
        core[np.ix_(leaf1, leaf2)] = cdist(a, b, scorer=Levenshtein.distance, dtype=np.int32)
    u[1:, 1:] = core
    return u


def zhang_shasha(t1: Tree, t2: Tree, upd: list[list[int]]) -> int:
    """Zhang–Shasha edit distance of ``t1`` into ``t2`` under ``upd`` and the trees' insert/remove costs."""
    n1, n2 = t1.size, t2.size
    l1, l2, c1, c2 = t1.lml, t2.lml, t1.cost, t2.cost
    td = [[0] * (n2 + 1) for _ in range(n1 + 1)]
    fd = [[0] * (n2 + 1) for _ in range(n1 + 1)]
    # per keyroot of t2: its columns as (column, insert cost, leftmost-leaf - 1, on the keyroot's leftmost path)
    columns = []
    for j in t2.keyroots:
        lj = l2[j]
        columns.append((j, lj, [(dj, c2[dj], l2[dj] - 1, l2[dj] == lj) for dj in range(lj, j + 1)]))
    for i in t1.keyroots:
        li = l1[i]
        rows = [(di, c1[di], l1[di]) for di in range(li, i + 1)]
        base = fd[li - 1]
        for j, lj, cols in columns:
            acc = 0
            base[lj - 1] = 0
            for dj, ic, _, _ in cols:
                acc += ic
                base[dj] = acc
            prev = base
            accd = 0
            for di, dc, ldi in rows:
                row = fd[di]
                accd += dc
                row[lj - 1] = accd
                left = accd
                diag = prev[lj - 1]
                tdrow = td[di]
                if ldi == li:
                    urow = upd[di]
                    for dj, ic, lm, on_path in cols:
                        up = prev[dj]
                        v = up + dc
                        w = left + ic
                        if w < v:
                            v = w
                        if on_path:
                            w = diag + urow[dj]
                            if w < v:
                                v = w
                            tdrow[dj] = v
                        else:
                            w = base[lm] + tdrow[dj]
                            if w < v:
                                v = w
                        row[dj] = v
                        left = v
                        diag = up
                else:
                    frow = fd[ldi - 1]
                    for dj, ic, lm, _ in cols:
                        v = prev[dj] + dc
                        w = left + ic
                        if w < v:
                            v = w
                        w = frow[lm] + tdrow[dj]
                        if w < v:
                            v = w
                        row[dj] = v
                        left = v
                prev = row
    return td[n1][n2]


def same_tree(t1: Tree, t2: Tree) -> bool:
    return t1.labels == t2.labels and t1.lml == t2.lml


def tree_distance(t1: Tree, t2: Tree) -> int:
    """TED(t1 -> t2) with Donut's costs."""
    if same_tree(t1, t2):
        return 0
    if t1.size == 1:  # a bare root: the roots match, everything else is inserted
        return t2.closed_form_insert_all()
    if t2.size == 1:
        return t1.closed_form_insert_all()
    return zhang_shasha(t1, t2, update_matrix(t1, t2).tolist())
