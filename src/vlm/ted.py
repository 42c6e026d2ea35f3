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


def build_tree(data: Any, mirror: bool = False) -> Tree:
    """Postorder arrays of Donut's tree for ``data`` (already normalised); ``mirror`` reverses every child order."""
    step = -1 if mirror else 1
    labels, lml = [""], [0]

    def visit(value: Any, label: str) -> int:
        first = 0
        if isinstance(value, dict):
            for key, child in list(value.items())[::step]:
                k = visit(child, key)
                first = first or k
        elif isinstance(value, list):
            if all(isinstance(item, dict) for item in value):
                for item in value[::step]:
                    k = visit(item, "<subtree>")
                    first = first or k
            else:
                for item in value[::step]:
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


def _first_child_end(t: Tree) -> int:
    """Postorder index of the root's first child (its subtree is nodes 1..that index)."""
    return max(k for k in range(1, t.size) if t.lml[k] == 1)


def zhang_shasha(t1: Tree, t2: Tree, upd: list[list[int]]) -> int:
    """Zhang–Shasha edit distance of ``t1`` into ``t2`` under ``upd`` and the trees' insert/remove costs.

    Both roots are ``"<root>"`` and each tree has more than one node. An optimal
    mapping then always maps root to root (mapping them costs 0, and dropping
    any other use of a root never costs more), so the distance is the forest
    distance of the two roots' children. Hence, besides the final pair, the
    root keyroot of either tree only needs the part of its table that covers its
    first child's subtree (the tree distances found there are the only ones read
    later). Keyroots of two nodes (a key over one value, the commonest shape)
    get their own loops without per-row or per-pair set-up.
    """
    n1, n2 = t1.size, t2.size
    l1, l2, c1, c2 = t1.lml, t2.lml, t1.cost, t2.cost
    end1, end2 = _first_child_end(t1), _first_child_end(t2)
    td = [[0] * (n2 + 1) for _ in range(n1 + 1)]
    fd = [[0] * (n2 + 1) for _ in range(n1 + 1)]
    p1 = [0] * (n1 + 1)
    for k in range(1, n1 + 1):
        p1[k] = p1[k - 1] + c1[k]

    def col_plan(j: int, last: int) -> tuple:
        lj = l2[j]
        cum = [0]
        for dj in range(lj, last + 1):
            cum.append(cum[-1] + c2[dj])
        generic = [(dj, c2[dj], l2[dj] - 1, l2[dj] == lj) for dj in range(lj, last + 1)]
        # for a two-node keyroot on the t1 side: (column, insert cost, on path, base value, base value at lm)
        paired = [(dj, c2[dj], l2[dj] == lj, cum[dj - lj + 1], cum[l2[dj] - lj]) for dj in range(lj, last + 1)]
        return j, lj, last - lj + 1 == 2 and last == j, cum, generic, paired

    def row_plan(i: int, last: int) -> tuple:
        li = l1[i]
        generic = [(di, c1[di], l1[di]) for di in range(li, last + 1)]
        # for a two-node keyroot on the t2 side: (row, remove cost, on path, cumulative removes before l(row))
        paired = [(di, c1[di], l1[di] == li, p1[l1[di] - 1] - p1[li - 1]) for di in range(li, last + 1)]
        return i, li, last - li + 1 == 2 and last == i, generic, paired

    plans2 = [col_plan(j, j if j != n2 else end2) for j in t2.keyroots]
    plans1 = [row_plan(i, i if i != n1 else end1) for i in t1.keyroots]
    for i, li, small_i, rows, rows_paired in plans1:
        base = fd[li - 1]
        for j, lj, small_j, cum, cols_j, cols_paired in plans2:
            if i == n1 and j == n2:
                break
            if small_i:
                _pair_small_rows(li, i, c1[li], c1[i], upd[li], upd[i], td[li], td[i], cols_paired)
            elif small_j:
                _pair_small_cols(lj, j, c2[lj], c2[j], upd, td, rows_paired)
            else:
                base[lj - 1:lj + len(cum) - 1] = cum
                _pair(li, lj, base, rows, cols_j, fd, td, upd)
    # the final pair: the roots' children forests, in full
    _, lj, _, cum, cols_j, _ = col_plan(n2, n2 - 1)
    fd[0][0:len(cum)] = cum
    _pair(1, 1, fd[0], row_plan(n1, n1 - 1)[3], cols_j, fd, td, upd)
    return fd[n1 - 1][n2 - 1]


def _pair_small_rows(a, k, da, dk, ua, uk, ta, tk, cols):
    """Keyroot pair whose t1 side is a node ``k`` over a single node ``a``."""
    va = da
    vk = da + dk
    bprev = 0
    for dj, ic, on_path, bj, blm in cols:
        v = bj + da
        w = va + ic
        if w < v:
            v = w
        if on_path:
            w = bprev + ua[dj]
            if w < v:
                v = w
            ta[dj] = v
            x = v + dk
            w = vk + ic
            if w < x:
                x = w
            w = va + uk[dj]
            if w < x:
                x = w
            tk[dj] = x
        else:
            w = blm + ta[dj]
            if w < v:
                v = w
            x = v + dk
            w = vk + ic
            if w < x:
                x = w
            w = blm + tk[dj]
            if w < x:
                x = w
        va = v
        vk = x
        bprev = bj


def _pair_small_cols(b, k, ib, ik, upd, td, rows):
    """Keyroot pair whose t2 side is a node ``k`` over a single node ``b``."""
    pb = ib
    pk = ib + ik
    accd = 0
    for di, dc, on_path, dbase in rows:
        prevd = accd
        accd += dc
        v = pb + dc
        w = accd + ib
        if w < v:
            v = w
        x = pk + dc
        tdrow = td[di]
        if on_path:
            urow = upd[di]
            w = prevd + urow[b]
            if w < v:
                v = w
            tdrow[b] = v
            w = v + ik
            if w < x:
                x = w
            w = pb + urow[k]
            if w < x:
                x = w
            tdrow[k] = x
        else:
            w = dbase + tdrow[b]
            if w < v:
                v = w
            w = v + ik
            if w < x:
                x = w
            w = dbase + tdrow[k]
            if w < x:
                x = w
        pb = v
        pk = x


def _pair(li, lj, base, rows, cols_j, fd, td, upd):
    """One keyroot pair, row by row, over the generic recurrence."""
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
            for dj, ic, lm, on_path in cols_j:
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
            for dj, ic, lm, _ in cols_j:
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
