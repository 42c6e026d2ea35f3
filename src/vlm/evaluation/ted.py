"""Zhang–Shasha tree edit distance for Donut's nTED, with Donut's costs.

Trees are built straight into flat postorder arrays (no node objects), the
leaf/leaf update costs come in one bulk ``rapidfuzz`` call, and the dynamic
programme runs over plain Python lists with the keyroot and leftmost-leaf
tables precomputed (and cached on the tree). Node labels follow Donut's
``construct_tree_from_dict``: ``"<root>"`` for the root, the key for a dict
entry, ``"<subtree>"`` for each dict in a list of dicts and ``"<leaf>{value}"``
for each scalar; a node counts as a leaf when its label contains ``"<leaf>"``
(Donut's own test), and its text is the label with every ``"<leaf>"`` removed.

Costs: inserting or removing a leaf costs the length of its text, any other
node 1; updating leaf to leaf costs the Levenshtein distance of the texts,
leaf to non-leaf (either way) 1 + the leaf's text length, non-leaf to non-leaf
0 when the labels match and 1 otherwise.

Exact shortcuts on top of the textbook algorithm (each argued where it lives):
identical trees; a bare root on either side (closed form); the root-to-root
mapping (``zhang_shasha``); and a band search for similar trees (``_search``).
"""

# The inner loops spell out ``if w < v: v = w`` on purpose: it is markedly faster than calling min().
# ruff: noqa: PLR1730

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, NamedTuple

import numpy as np
from rapidfuzz.distance import Levenshtein
from rapidfuzz.process import cdist

from vlm.evaluation import ted_fast

LEAF = "<leaf>"
_INF = 1 << 60


@dataclass
class Tree:
    """A tree in postorder, 1-based (index 0 is unused padding)."""

    labels: list[str]
    is_leaf: list[bool]
    texts: list[str]
    cost: list[int]  # insert / remove cost of each node
    lml: list[int]  # leftmost leaf descendant of each node
    keyroots: list[int]
    _plans: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def size(self) -> int:
        return len(self.labels) - 1

    def closed_form_insert_all(self) -> int:
        """TED(a bare root, this tree): the root maps to the root, every other node is inserted."""
        return sum(self.cost[1:-1])


def build_tree(data: Any, pairs: list[tuple[str, Any]] | None = None) -> Tree:
    """Postorder arrays of Donut's tree for ``data`` (already normalised).

    ``pairs``, when given, receives ``metrics.flatten(data)`` on the way: the ``(dotted key path, leaf)`` pairs
    are the tree's leaves in order, so one walk makes both. The C build's walk (``ted_fast.c_walk``) makes
    the same arrays where it is installed; it hands back anything but normalised data to the walk below.
    """
    got = ted_fast.c_walk(data, pairs)
    if got is not None:
        t = Tree(*got[:6])
        t._plans["raw"], t._plans["leaves"] = got[6:]  # the kernel's arrays and leaf texts, made on the way
        return t
    labels, lml = [""], [0]

    def leaves(items: list, path: str) -> int:
        """Scalar values as leaves, in bulk; the index of the first (the leftmost leaf of their parent)."""
        start = len(labels)
        labels.extend([f"{LEAF}{item}" for item in items])
        lml.extend(range(start, start + len(items)))
        if pairs is not None:
            pairs.extend([(path, item) for item in items])
        return start

    def visit(value: Any, label: str, path: str) -> None:
        first = 0  # the leftmost leaf of a node is that of its first child, or the node itself
        if isinstance(value, dict):
            for key, child in value.items():
                at = f"{path}.{key}" if path else key
                if type(child) is list and child and not isinstance(child[0], dict):
                    # a key over its values, the commonest node, without a visit() call: the same nodes
                    start = leaves(child, at)  # the key node follows its leaves (postorder)
                    labels.append(key)
                    lml.append(start)
                else:
                    visit(child, key, at)
                first = first or lml[-1]
        elif isinstance(value, list):
            if all(map(isinstance, value, repeat(dict))):
                for item in value:
                    visit(item, "<subtree>", path)
                    first = first or lml[-1]
            else:  # not empty (an empty list takes the branch above)
                first = leaves(value, path)
        else:
            raise TypeError(f"cannot build a tree node from {type(value).__name__} under {label!r}")
        labels.append(label)
        lml.append(first or len(labels) - 1)

    visit(data, "<root>", "")
    is_leaf = [LEAF in s for s in labels]
    texts = [s.replace(LEAF, "") if leaf else s for s, leaf in zip(labels, is_leaf)]
    cost = [len(t) if leaf else 1 for t, leaf in zip(texts, is_leaf)]
    cost[0] = 0
    last: dict[int, int] = {}
    for k in range(1, len(labels)):
        last[lml[k]] = k  # a keyroot is the highest node with its leftmost leaf
    return Tree(labels, is_leaf, texts, cost, lml, sorted(last.values()))


def update_matrix(t1: Tree, t2: Tree) -> np.ndarray:
    """(n1+1) x (n2+1) update costs (row and column 0 unused)."""
    ids: dict[str, int] = {}
    lab1 = np.array([ids.setdefault(s, len(ids)) for s in t1.labels[1:]], dtype=np.int64)
    lab2 = np.array([ids.setdefault(s, len(ids)) for s in t2.labels[1:]], dtype=np.int64)
    leaf1, leaf2 = np.array(t1.is_leaf[1:], dtype=bool), np.array(t2.is_leaf[1:], dtype=bool)
    len1, len2 = np.array(t1.cost[1:], dtype=np.int64), np.array(t2.cost[1:], dtype=np.int64)  # leaves: text length
    core = (lab1[:, None] != lab2[None, :]).astype(np.int64)
    core[np.ix_(~leaf1, leaf2)] = 1 + len2[leaf2][None, :]
    core[np.ix_(leaf1, ~leaf2)] = 1 + len1[leaf1][:, None]
    if leaf1.any() and leaf2.any():
        a = [t for t, f in zip(t1.texts[1:], t1.is_leaf[1:]) if f]
        b = [t for t, f in zip(t2.texts[1:], t2.is_leaf[1:]) if f]
        core[np.ix_(leaf1, leaf2)] = cdist(a, b, scorer=Levenshtein.distance, dtype=np.int32)
    u = np.zeros((t1.size + 1, t2.size + 1), dtype=np.int64)
    u[1:, 1:] = core
    return u


def _first_child_end(t: Tree) -> int:
    """Postorder index of the root's first child (its subtree is nodes 1..that index)."""
    return max(k for k in range(1, t.size) if t.lml[k] == 1)


class ColPlan(NamedTuple):
    """What the loops walk for keyroot ``j`` of the column tree (``t2``)."""

    j: int
    lj: int  # l(j), its leftmost leaf
    last: int  # the last column of its table (j, or the root's first child's end for the root)
    small: bool  # a two-node keyroot (a key over one value): closed-form loops
    cum: list[int]  # insert costs summed from lj: the table's first row
    cols: list[tuple[int, int, int, bool]]  # (column, insert cost, l(column) - 1, on the leftmost path)
    # for a two-node keyroot on the row side: (column, insert cost, on path, base value, base value at lm)
    cols_paired: list[tuple[int, int, bool, int, int]]
    path: list[int]  # the keyroot's leftmost path


class ColPlans(NamedTuple):
    small: list[ColPlan]  # two-node keyroots, in postorder
    small_keys: list[int]  # their j, for bisecting the band
    small_quads: list[tuple[int, int, int, int]]  # (j - 1, j, cost of j - 1, cost of j)
    big: list[ColPlan]  # the other keyroots
    final: ColPlan  # the roots' children forests


class RowPlan(NamedTuple):
    """What the loops walk for keyroot ``i`` of the row tree (``t1``)."""

    i: int
    li: int
    last: int
    small: bool
    rows: list[tuple[int, int, int, int]]  # (row, remove cost, l(row), removes from li up to row)
    # for a two-node keyroot on the column side:
    # (row, remove cost, on path, removes before l(row), removes up to row), counted from li
    rows_paired: list[tuple[int, int, bool, int, int]]
    path: list[int]


class RowPlans(NamedTuple):
    keyroots: list[RowPlan]
    final: RowPlan


# A plan from its fields in order, without the Python-level __new__ of a NamedTuple (a tree builds one per
# keyroot, and building them is a tenth of scoring a document).
_plan = tuple.__new__


def _col_plans(t: Tree) -> ColPlans:
    """Per keyroot j of ``t`` as the column tree: the tuples its loops walk (cached on the tree)."""
    if "cols" not in t._plans:
        l, c, n = t.lml, t.cost, t.size

        def plan(j: int, last: int) -> ColPlan:
            lj = l[j]
            cum = [0]
            for dj in range(lj, last + 1):
                cum.append(cum[-1] + c[dj])
            generic = [(dj, c[dj], l[dj] - 1, l[dj] == lj) for dj in range(lj, last + 1)]
            # for a two-node keyroot on the row side: (column, insert cost, on path, base value, base value at lm)
            paired = [(dj, c[dj], l[dj] == lj, cum[dj - lj + 1], cum[l[dj] - lj]) for dj in range(lj, last + 1)]
            path = [dj for dj in range(lj, last + 1) if l[dj] == lj]  # the keyroot's leftmost path
            return _plan(ColPlan, (j, lj, last, last - lj == 1 and last == j, cum, generic, paired, path))

        plans = [plan(j, j if j != n else _first_child_end(t)) for j in t.keyroots]
        small = [p for p in plans if p.small]
        quads = [(p.j - 1, p.j, c[p.j - 1], c[p.j]) for p in small]
        t._plans["cols"] = ColPlans(small, [p.j for p in small], quads, [p for p in plans if not p.small],
                                    plan(n, n - 1))
    return t._plans["cols"]


def _row_plans(t: Tree) -> RowPlans:
    """Per keyroot i of ``t`` as the row tree: the tuples its loops walk (cached on the tree)."""
    if "rows" not in t._plans:
        l, c, n = t.lml, t.cost, t.size
        p = [0] * (n + 1)
        for k in range(1, n + 1):
            p[k] = p[k - 1] + c[k]

        def plan(i: int, last: int) -> RowPlan:
            li = l[i]
            generic = [(di, c[di], l[di], p[di] - p[li - 1]) for di in range(li, last + 1)]
            # for a two-node keyroot on the column side:
            # (row, remove cost, on path, removes before l(row), removes up to row), counted from li
            paired = [(di, c[di], l[di] == li, p[l[di] - 1] - p[li - 1], p[di] - p[li - 1])
                      for di in range(li, last + 1)]
            path = [di for di in range(li, last + 1) if l[di] == li]
            return _plan(RowPlan, (i, li, last, last - li == 1 and last == i, generic, paired, path))

        t._plans["rows"] = RowPlans([plan(i, i if i != n else _first_child_end(t)) for i in t.keyroots],
                                    plan(n, n - 1))
    return t._plans["rows"]


def zhang_shasha(t1: Tree, t2: Tree, upd: list[list[int]], bound: int | None = None) -> int:
    """Zhang–Shasha edit distance of ``t1`` into ``t2`` under ``upd`` and the trees' insert/remove costs.

    Both roots are ``"<root>"`` and each tree has more than one node. An optimal
    mapping then always maps root to root (mapping them costs 0, and dropping
    any other use of a root never costs more), so the distance is the forest
    distance of the two roots' children. Hence, besides the final pair, the
    root keyroot of either tree only needs the part of its table that covers its
    first child's subtree (the tree distances found there are the only ones read
    later). Keyroots of two nodes (a key over one value, the commonest shape)
    get their own loops without per-row or per-pair set-up; they are visited
    before the larger keyroots, which only read tree distances of keyroots
    inside them.

    ``bound`` (every node costing at least 1): only mappings that delete at most
    ``dmax = (bound + n1 - n2) // 2`` and insert at most ``imax = (bound - n1 + n2) // 2``
    nodes are searched. A mapped pair (x, y) of such a mapping, and every cell
    (x, y) its computation passes through, has ``-imax <= x - y <= dmax`` in
    postorder (x - y = nodes removed before x - nodes inserted before y), so
    cells and keyroot pairs outside that band are skipped (read as infinite).
    Every value computed is still the cost of a valid mapping, so the result is
    the exact distance whenever that is ``<= bound``, and an upper bound otherwise.
    """
    n1, n2 = t1.size, t2.size
    c1, c2 = t1.cost, t2.cost
    dmax, imax = (n1 + n2, n1 + n2) if bound is None else ((bound + n1 - n2) // 2, (bound - n1 + n2) // 2)
    td = [[_INF] * (n2 + 1) for _ in range(n1 + 1)]
    fd = [[0] * (n2 + 1) for _ in range(n1 + 1)]
    small_js, small_keys, small_quads, big_js, final_cols = _col_plans(t2)
    plans1, final_rows = _row_plans(t1)

    def run(li, last_i, rows, lj, last_j, cum, cols_j) -> None:
        base = fd[li - 1]
        base[lj - 1:last_j + 1] = cum
        if last_i - lj <= dmax and li - last_j >= -imax:
            _pair(li, lj, base, rows, cols_j, fd, td, upd)
        else:
            _pair_banded(li, lj, last_j, base, rows, cols_j, fd, td, upd, dmax, imax)

    banded = bound is not None
    for i, li, last_i, small_i, rows, rows_paired, path_i in plans1:
        lo, hi = li - dmax, last_i + imax  # a pair is visited when some row - column lies in [-imax, dmax]
        # two-node column keyroots (last_j = j, lj = j - 1) in the band are a contiguous run
        window = slice(bisect_left(small_keys, lo), bisect_right(small_keys, hi + 1))
        if small_i:  # two-node keyroots on both sides: the 2 x 2 table in closed form
            _pairs_two_by_two(c1[li], c1[i], upd[li], upd[i], td[li], td[i], small_quads[window])
        for j, lj, last_j, small_j, cum, cols_j, cols_paired, path_j in big_js if small_i else [
                *small_js[window], *big_js]:
            if last_j < lo or lj > hi or (i == n1 and j == n2):
                continue
            if small_i:
                start = max(li - dmax, lj) - lj
                stop = min(i + imax, last_j) - lj + 1
                _pair_small_rows(li, i, c1[li], c1[i], upd[li], upd[i], td[li], td[i],
                                 cols_paired[start:stop], start > 0, cum[start])
            elif small_j:
                start = max(lj - imax, li) - li
                stop = min(j + dmax, last_i) - li + 1
                _pair_small_cols(lj, j, c2[lj], c2[j], upd, td, rows_paired[start:stop], start > 0)
            elif banded:
                # a pair only yields the tree distances of its two leftmost paths: keep those in the band
                # (none: skip the pair) and compute only the rows and columns up to the last of them
                mx = _last_in_band(path_i, path_j, -imax, dmax)
                if mx:
                    my = _last_in_band(path_j, path_i, -dmax, imax)
                    run(li, mx, rows[:mx - li + 1], lj, my, cum[:my - lj + 2], cols_j[:my - lj + 1])
            else:
                run(li, last_i, rows, lj, last_j, cum, cols_j)
    # the final pair: the roots' children forests, in full
    run(1, n1 - 1, final_rows.rows, 1, n2 - 1, final_cols.cum, final_cols.cols)
    return fd[n1 - 1][n2 - 1]


def _last_in_band(path: list[int], other: list[int], lo: int, hi: int) -> int:
    """The last x of ``path`` with some y of ``other`` (sorted) such that ``lo <= x - y <= hi``; 0 if none."""
    for x in reversed(path):
        k = bisect_left(other, x - hi)
        if k < len(other) and other[k] <= x - lo:
            return x
    return 0


def _pairs_two_by_two(da, dk, ua, uk, ta, tk, quads):
    """Keyroot pairs of a node k over a leaf a (row side) with each node L over a leaf b in ``quads``."""
    dak = da + dk
    for b, el, ib, il in quads:
        ab = da + ib  # a -> b
        w = ua[b]
        if w < ab:
            ab = w
        al = ab + il  # a -> L(b)
        w = ib + ua[el]
        if w < al:
            al = w
        w = da + ib + il
        if w < al:
            al = w
        kb = ab + dk  # K(a) -> b
        w = da + uk[b]
        if w < kb:
            kb = w
        w = dak + ib
        if w < kb:
            kb = w
        kl = al + dk  # K(a) -> L(b)
        w = kb + il
        if w < kl:
            kl = w
        w = ab + uk[el]
        if w < kl:
            kl = w
        ta[b] = ab
        ta[el] = al
        tk[b] = kb
        tk[el] = kl


def _pair_small_rows(a, k, da, dk, ua, uk, ta, tk, cols, cut, bprev):
    """Keyroot pair whose row side is a node ``k`` over a single node ``a``; ``cut``: columns before are skipped."""
    va, vk = (_INF, _INF) if cut else (da, da + dk)
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


def _pair_small_cols(b, k, ib, ik, upd, td, rows, cut):
    """Keyroot pair whose column side is a node ``k`` over a single node ``b``; ``cut``: rows before are skipped."""
    pb, pk = (_INF, _INF) if cut else (ib, ib + ik)
    for di, dc, on_path, dbase, acc in rows:
        v = pb + dc
        w = acc + ib
        if w < v:
            v = w
        x = pk + dc
        tdrow = td[di]
        if on_path:
            urow = upd[di]
            w = acc - dc + urow[b]
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


def _pair_banded(li, lj, last_j, base, rows, cols_j, fd, td, upd, dmax, imax):
    """``_pair`` restricted to the cells with ``-imax <= row - column <= dmax``; the others read as infinite.

    Rows before the band are not visited (they read as an infinite row), rows
    after it are not needed by any row in it. Within a row only the band is
    written (and one infinite cell after it, read by the next row); reads of
    earlier rows check that the cell lies in that row's band, which also leaves
    out the removal-only column where it is outside (such cells are on no
    optimal path either).
    """
    first = max(lj - imax - li, 0)
    prev = fd[li - 1] if first == 0 else _inf_row(len(base))
    skipped = li + first  # rows li .. skipped-1 lie wholly outside the band
    for di, dc, ldi, accd in rows[first:max(last_j + dmax - li + 1, 0)]:
        row = fd[di]
        row[lj - 1] = accd
        lo, hi = di - dmax, di + imax
        if hi >= last_j:
            hi = last_j
        else:
            row[hi + 1] = _INF
        if lo <= lj:
            lo, left, diag = lj, accd, prev[lj - 1]
        else:
            left, diag = _INF, prev[lo - 1]
        tdrow = td[di]
        if ldi == li:
            urow = upd[di]
            for dj, ic, lm, on_path in cols_j[lo - lj:hi - lj + 1]:
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
            r = ldi - 1
            if r >= skipped:
                frow, flo, fhi = fd[r], r - dmax, r + imax
            elif r == li - 1:
                frow, flo, fhi = base, -1, last_j
            else:
                frow, flo, fhi = _inf_row(len(base)), -1, last_j
            for dj, ic, lm, _ in cols_j[lo - lj:hi - lj + 1]:
                v = prev[dj] + dc
                w = left + ic
                if w < v:
                    v = w
                if flo <= lm <= fhi:
                    w = frow[lm] + tdrow[dj]
                    if w < v:
                        v = w
                row[dj] = v
                left = v
        prev = row


_INF_ROWS: dict[int, list[int]] = {}


def _inf_row(n: int) -> list[int]:
    row = _INF_ROWS.get(n)
    if row is None:
        row = _INF_ROWS[n] = [_INF] * n
    return row


def _pair(li, lj, base, rows, cols_j, fd, td, upd):
    """One keyroot pair, row by row: the forest distances of the prefixes of both keyroots' subtrees."""
    prev = base
    for di, dc, ldi, accd in rows:
        row = fd[di]
        row[lj - 1] = left = accd
        diag = prev[lj - 1]
        tdrow = td[di]
        if ldi == li:  # the row node is on the row keyroot's leftmost path
            urow = upd[di]
            for dj, ic, lm, on_path in cols_j:
                up = prev[dj]
                v = up + dc
                w = left + ic
                if w < v:
                    v = w
                if on_path:  # both nodes head their prefixes: a tree distance
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


def _search(t1: Tree, t2: Tree, upd: Any, upper: int | None = None, zs: Callable = zhang_shasha) -> int:
    """The exact distance, searched in a narrow band first (see ``zhang_shasha``'s ``bound``).

    The first pass bounds the distance by a small guess. If it finds a mapping
    within the guess, that is the distance; otherwise the mapping's cost bounds
    the distance and a second pass under that bound is exact. ``upper``, a known
    bound, replaces the guess. Needs every node to cost at least 1 (an empty leaf
    costs 0); otherwise the full table is computed. ``zs`` runs the programme:
    ``zhang_shasha`` over ``upd`` (update costs as lists), or the compiled one
    (``vlm.evaluation.ted_fast``, whose ``upd`` says which leaves update for free).
    """
    n1, n2 = t1.size, t2.size
    if min(t1.cost[1:]) < 1 or min(t2.cost[1:]) < 1:
        return zs(t1, t2, upd)
    if upper is None:
        low = max(abs(n1 - n2), abs(sum(t1.cost) - sum(t2.cost)))  # the distance is at least this
        guess = max(2 * low, 16)
        if guess >= n1 + n2:
            return zs(t1, t2, upd)
        d = zs(t1, t2, upd, guess)
        if d <= guess:
            return d
        upper = d
    return zs(t1, t2, upd, upper if upper < n1 + n2 else None)


def same_tree(t1: Tree, t2: Tree) -> bool:
    return t1.labels == t2.labels and t1.lml == t2.lml


def tree_distance(t1: Tree, t2: Tree) -> int:
    """TED(t1 -> t2) with Donut's costs."""
    return tree_distances(t1, t2)[0]


def tree_distances(t1: Tree, t2: Tree, key: Callable[[str], str] | None = None,
                   compiled: bool = True) -> tuple[int, int | None]:
    """TED(t1 -> t2), and with ``key`` also the TED in which two leaves with equal ``key(text)`` update for free.

    The second distance reuses the first whenever no pair of different leaf
    texts across the trees shares a key (the cost matrices are then equal), and
    otherwise searches under the first as its bound. ``compiled``: use numba's
    build of the programme where it is available (``vlm.evaluation.ted_fast``; same distances).
    """
    if same_tree(t1, t2):
        return 0, (0 if key else None)
    if t1.size == 1 or t2.size == 1:
        # a bare root: the roots match and everything else is inserted (or removed)
        d = t2.closed_form_insert_all() if t1.size == 1 else t1.closed_form_insert_all()
        return d, (d if key else None)
    fn = ted_fast.kernel() if compiled else False
    if fn:
        return ted_fast.distances(fn, t1, t2, key, _search)
    u = update_matrix(t1, t2)
    upd = u.tolist()
    d = _search(t1, t2, upd)
    if key is None:
        return d, None
    leaves1 = [k for k in range(1, t1.size + 1) if t1.is_leaf[k]]
    leaves2 = [k for k in range(1, t2.size + 1) if t2.is_leaf[k]]
    if not leaves1 or not leaves2:
        return d, d
    ids: dict[str, int] = {}
    k1 = np.array([ids.setdefault(key(t1.texts[k]), len(ids)) for k in leaves1], dtype=np.int64)
    k2 = np.array([ids.setdefault(key(t2.texts[k]), len(ids)) for k in leaves2], dtype=np.int64)
    free = (k1[:, None] == k2[None, :]) & (u[np.ix_(leaves1, leaves2)] > 0)
    if not free.any():
        return d, d
    for r, c in zip(*np.nonzero(free)):
        upd[leaves1[r]][leaves2[c]] = 0
    return d, _search(t1, t2, upd, d)
