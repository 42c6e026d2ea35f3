"""Zhang–Shasha tree edit distance for Donut's nTED, with Donut's costs: one programme, in C and in Python.

Trees are flat postorder arrays (no node objects). Node labels follow Donut's
``construct_tree_from_dict``: ``"<root>"`` for the root, the key for a dict
entry, ``"<subtree>"`` for each dict in a list of dicts and ``"<leaf>{value}"``
for each scalar; a node counts as a leaf when its label contains ``"<leaf>"``
(Donut's own test), and its text is the label with every ``"<leaf>"`` removed.

Costs: inserting or removing a leaf costs the length of its text, any other
node 1; updating leaf to leaf costs the Levenshtein distance of the texts,
leaf to non-leaf (either way) 1 + the leaf's text length, non-leaf to non-leaf
0 when the labels match and 1 otherwise.

The programme runs in C (``vlm.evaluation._ted.zs``, built from ``_ted.c`` by ``pip install``) or, where no
compiler was at hand, as ``zhang_shasha`` (``vlm.evaluation.ted_kernel``): the same cells, band and answers
(tests/test_metrics.py holds each to the zss reference, tests/test_c_walk.py each to the other under any band).
The C build also normalises documents and builds their trees (``_walk.c``); ``VLM_PURE_TED=1`` turns the whole
build off, for pure Python everywhere.

Exact shortcuts on top of the textbook programme: identical trees, a bare root
on either side (closed form), and a band search for similar trees (``_search``).

Memory: the kernel's tables hold only the band (rows x band width), and so do the leaves' Levenshtein
distances for large documents (``_Lev``), so a large document against a similar one costs memory linear in
its size. A pass whose band would take more than ``CELL_BUDGET`` cells (two large, very different documents)
is not run: the distance is then searched under the widest band that fits, and where that cannot prove it
exact, the least upper bound found is reported and flagged (``bounded_distances``, ``_beyond_budget``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import numpy as np
from rapidfuzz.distance import Levenshtein
from rapidfuzz.process import cdist

from vlm.evaluation.ted_kernel import zhang_shasha as zhang_shasha  # the programme in Python, re-exported

try:
    from vlm.evaluation import _ted
except ImportError:  # built without a C compiler: zhang_shasha (ted_kernel) gives the same values
    _ted = None

LEAF = "<leaf>"
# The most cells of each of the kernel's two tables in one pass (8 Mi: 64 MiB each in C, about 400 MB for both in
# pure Python): what bounds the memory and time of one document. A whole table of a 400-row receipt fits, and so
# does the band of a 3,000-row document against a similar one; past it, ``_beyond_budget`` gives an upper bound.
CELL_BUDGET = 1 << 23
LEV_WHOLE = 1 << 20  # up to this many pairs of leaves, their Levenshtein distances are computed as one matrix
# The C build, or None where it is missing or VLM_PURE_TED=1 (read once: each document asks several times).
_C: Any = None if os.environ.get("VLM_PURE_TED") else _ted
_LABELS: dict[str, int] = {}  # key names -> ids, for the whole process (a vocabulary of keys, not of values)
_NO_KEYS = np.zeros(0, dtype=np.int64)


def c_build() -> Any:
    """``vlm.evaluation._ted`` (``zs``, ``tree``, ``normalize``), or None: not built, or ``VLM_PURE_TED=1``."""
    return _C


@dataclass
class Tree:
    """A tree in postorder, 1-based (index 0 is unused padding)."""

    labels: list[str]
    is_leaf: list[bool]
    texts: list[str]
    cost: list[int]  # insert / remove cost of each node
    lml: list[int]  # leftmost leaf descendant of each node
    keyroots: list[int]
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def size(self) -> int:
        return len(self.labels) - 1

    def closed_form_insert_all(self) -> int:
        """TED(a bare root, this tree): the root maps to the root, every other node is inserted."""
        return sum(self.cost[1:-1])


def build_tree(data: Any, pairs: list[tuple[str, Any]] | None = None) -> Tree:
    """Postorder arrays of Donut's tree for ``data`` (already normalised).

    ``pairs``, when given, receives ``metrics.flatten(data)`` on the way: the ``(dotted key path, leaf)`` pairs
    are the tree's leaves in order, so one walk makes both. The C build's walk makes the same arrays (and the
    kernel's, see ``arrays``) for plain normalised data; anything else it hands back to the walk below.
    """
    got = _C.tree(data, pairs, _LABELS) if _C else None
    if got is not None:
        t = Tree(*got[:6])
        t._cache["raw"], t._cache["leaves"] = got[6:]  # the kernel's arrays and leaf texts, made on the way
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


def arrays(t: Tree) -> tuple[np.ndarray, ...]:
    """The kernel's view of ``t`` (cached on it): int64 arrays of the leftmost leaves, the keyroots, the costs,
    the label ids (-1 for leaves) and each node's row among the leaves (-1 for inner nodes)."""
    got = t._cache.get("arrays")
    if got is None and "raw" in t._cache:  # made by the C walk: views of its buffer, in this order
        n, nk = len(t.labels), len(t.keyroots)
        a = np.frombuffer(t._cache["raw"], dtype=np.int64)
        got = t._cache["arrays"] = (a[:n], a[n:n + nk], a[n + nk:2 * n + nk], a[2 * n + nk:3 * n + nk],
                                    a[3 * n + nk:])
    elif got is None:
        ids = _LABELS
        # only inner nodes' labels are compared (leaves update by their texts): no leaf text enters the vocabulary
        lab = [-1 if leaf else ids.setdefault(s, len(ids)) for s, leaf in zip(t.labels, t.is_leaf)]
        rows, k = [], 0
        for leaf in t.is_leaf:
            rows.append(k if leaf else -1)
            k += leaf
        rows[0] = -1
        got = t._cache["arrays"] = (np.array(t.lml, dtype=np.int64), np.array(t.keyroots, dtype=np.int64),
                                    np.array(t.cost, dtype=np.int64), np.array(lab, dtype=np.int64),
                                    np.array(rows, dtype=np.int64))
    return got


def leaf_texts(t: Tree) -> list[str]:
    """The leaves' texts in postorder (the C walk made them on the way)."""
    got = t._cache.get("leaves")
    return [x for x, f in zip(t.texts, t.is_leaf) if f] if got is None else got


def kernel() -> Callable[..., int]:
    """The programme that runs: the C build's ``zs``, else ``zhang_shasha`` (same arguments, same values)."""
    return _C.zs if _C else zhang_shasha


def band(n1: int, n2: int, bound: int | None) -> tuple[int, int]:
    """(dmax, imax) for trees of ``n1`` and ``n2`` nodes: the most removals and insertions that a mapping of
    cost ``<= bound`` can make, every node costing at least 1; no band (wider than both trees) for None."""
    if bound is None:
        return n1 + n2, n1 + n2
    return (bound + n1 - n2) // 2, (bound - n1 + n2) // 2


def band_cells(n1: int, n2: int, bound: int | None) -> int:
    """Cells in each of the kernel's two tables under ``band(n1, n2, bound)``: (n1 + 1) x the band's width."""
    dmax, imax = band(n1, n2, bound)
    return (n1 + 1) * max(1, min(dmax + imax + 1, n2 + 1))


def widest_bound(n1: int, n2: int) -> int:
    """The largest bound whose band fits ``CELL_BUDGET`` (for trees whose whole table does not)."""
    b = CELL_BUDGET // (n1 + 1) - 1  # the band's width is at most bound + 1 ...
    while band_cells(n1, n2, b + 1) <= CELL_BUDGET:  # ... and one less where band() rounds down
        b += 1
    return b


class _Lev:
    """The leaves' Levenshtein distances (rows: tree 1's leaves in postorder, columns: tree 2's), as the kernel
    reads them under a band: the whole matrix up to ``LEV_WHOLE`` pairs (every receipt of CORD's size), else
    per leaf of tree 1 the window of tree 2's leaves that its band reaches, so that a large document costs
    memory in proportion to its band here too. ``get(dmax, imax)``: (matrix, the windows' first columns or None).
    """

    def __init__(self, t1: Tree, t2: Tree, leaves1: list[str], leaves2: list[str]) -> None:
        self.leaves1, self.leaves2, self.last = leaves1, leaves2, None
        if not leaves1 or not leaves2:
            self.whole = np.zeros((max(len(leaves1), 1), max(len(leaves2), 1)), dtype=np.int64)
        elif len(leaves1) * len(leaves2) <= LEV_WHOLE:
            self.whole = cdist(leaves1, leaves2, scorer=Levenshtein.distance, dtype=np.int64)
        else:
            self.whole = None
            self.at1, self.at2 = (np.flatnonzero(arrays(t)[4] >= 0) for t in (t1, t2))  # each leaf's node

    def get(self, dmax: int, imax: int) -> tuple[np.ndarray, np.ndarray | None]:
        if self.whole is not None:
            return self.whole, None
        if self.last is None or self.last[0] < dmax or self.last[1] < imax:  # a wider band covers a narrower
            self.last = (dmax, imax, *self._windows(dmax, imax))
        return self.last[2], self.last[3]

    def _windows(self, dmax: int, imax: int) -> tuple[np.ndarray, np.ndarray]:
        # leaf p (node x) meets the leaves of tree 2 at nodes x - dmax .. x + imax: a window that only moves
        # right as p does, so a block of rows is one rectangle of cdist, cut into the rows' windows
        lo = np.searchsorted(self.at2, self.at1 - dmax, "left")
        hi = np.maximum(np.searchsorted(self.at2, self.at1 + imax, "right"), lo)
        width = max(1, int((hi - lo).max()))
        out = np.zeros((len(lo), width), dtype=np.int64)
        for s in range(0, len(lo), 256):
            e = min(s + 256, len(lo))
            a, b = int(lo[s]), int(hi[e - 1])
            if b > a:
                block = cdist(self.leaves1[s:e], self.leaves2[a:b], scorer=Levenshtein.distance, dtype=np.int64)
                cols = (lo[s:e] - a)[:, None] + np.arange(width)
                got = np.take_along_axis(block, np.minimum(cols, b - a - 1), axis=1)
                out[s:e] = np.where(cols < (hi[s:e] - a)[:, None], got, 0)
        return out, lo.astype(np.int64)


def _search(t1: Tree, t2: Tree, run: Callable[[int | None], int], upper: int | None = None) -> tuple[int, bool]:
    """(the distance, True), searched in a narrow band first; ``run(bound)``: the kernel under ``band(.., bound)``.

    The first pass bounds the distance by a small guess. If it finds a mapping
    within the guess, that is the distance; otherwise the mapping's cost bounds
    the distance and a second pass under that bound is exact. ``upper``, a known
    bound, replaces the guess. Needs every node to cost at least 1 (an empty leaf
    costs 0); otherwise the full table is computed. A pass whose band would take
    more than ``CELL_BUDGET`` cells is not run: ``_beyond_budget`` answers instead.
    """
    n1, n2 = t1.size, t2.size

    def fits(bound: int | None) -> bool:
        return band_cells(n1, n2, bound) <= CELL_BUDGET

    if min(t1.cost[1:]) < 1 or min(t2.cost[1:]) < 1:
        return (run(None), True) if fits(None) else _beyond_budget(t1, t2, run, upper, proven=False)
    if upper is None:
        low = max(abs(n1 - n2), abs(sum(t1.cost) - sum(t2.cost)))  # the distance is at least this
        guess = max(2 * low, 16)
        if guess >= n1 + n2:
            if fits(None):
                return run(None), True
        elif fits(guess):
            d = run(guess)
            if d <= guess:
                return d, True
            upper = d
    if upper is not None and fits(upper if upper < n1 + n2 else None):
        return run(upper if upper < n1 + n2 else None), True
    return _beyond_budget(t1, t2, run, upper)


def _beyond_budget(t1: Tree, t2: Tree, run: Callable[[int | None], int], upper: int | None,
                   proven: bool = True) -> tuple[int, bool]:
    """The distance where the exact search needs more than ``CELL_BUDGET`` cells: the kernel under the widest
    band that fits, exact (True) when the mapping it finds lies within that band's bound (and ``proven``:
    every node costs at least 1); otherwise (d, False), d the least of that mapping's cost, ``upper`` and the
    closed form (the roots kept, everything else removed and inserted), an upper bound of the distance."""
    n1, n2 = t1.size, t2.size
    best = t1.closed_form_insert_all() + t2.closed_form_insert_all()
    if upper is not None:
        best = min(best, upper)
    cap = widest_bound(n1, n2)
    if cap >= abs(n1 - n2):  # else no mapping lies in the band: the kernel would give INF
        d = run(cap)
        if proven and d <= cap:
            return d, True
        best = min(best, d)
    return best, False


def same_tree(t1: Tree, t2: Tree) -> bool:
    return t1.labels == t2.labels and t1.lml == t2.lml


def tree_distance(t1: Tree, t2: Tree) -> int:
    """TED(t1 -> t2) with Donut's costs."""
    return tree_distances(t1, t2)[0]


def _numbered_keys(t: Tree, key: Callable[[str], str]) -> tuple[dict[str, int], np.ndarray]:
    """(a number per distinct ``key`` of ``t``'s leaves, each leaf's number), kept on ``t`` for that ``key``."""
    got = t._cache.get("keys")
    if got is None or got[0] is not key:
        ids: dict[str, int] = {}
        numbers = np.array([ids.setdefault(k, len(ids)) for k in map(key, leaf_texts(t))], dtype=np.int64)
        got = t._cache["keys"] = (key, ids, numbers)
    return got[1], got[2]


def _new_free_update(leaves1: list[str], k1: np.ndarray, leaves2: list[str], k2: np.ndarray) -> bool:
    """Whether a leaf of tree 1 and one of tree 2 have equal keys but different texts (a cost that keys make
    0): per key, tree 2's texts, so linear in the leaves (the pairs, as a matrix, are not)."""
    texts: dict[int, set[str]] = {}
    for k, text in zip(k2.tolist(), leaves2):
        texts.setdefault(k, set()).add(text)
    for k, text in zip(k1.tolist(), leaves1):
        got = texts.get(k)
        if got is not None and (len(got) > 1 or text not in got):
            return True
    return False


def tree_distances(t1: Tree, t2: Tree, key: Callable[[str], str] | None = None) -> tuple[int, int | None]:
    """TED(t1 -> t2), and with ``key`` also the TED in which two leaves with equal ``key(text)`` update for free."""
    return bounded_distances(t1, t2, key)[:2]


def bounded_distances(t1: Tree, t2: Tree, key: Callable[[str], str] | None = None) -> tuple[int, int | None, bool]:
    """``tree_distances``, and whether both are exact: False where a search needed more than ``CELL_BUDGET``
    cells, and a distance is the upper bound ``_beyond_budget`` gives.

    The second distance reuses the first whenever no pair of different leaf
    texts across the trees shares a key (the costs are then equal), and
    otherwise searches under the first as its bound.
    """
    if same_tree(t1, t2):
        return 0, (0 if key else None), True
    if t1.size == 1 or t2.size == 1:
        # a bare root: the roots match and everything else is inserted (or removed)
        d = t2.closed_form_insert_all() if t1.size == 1 else t1.closed_form_insert_all()
        return d, (d if key else None), True
    a1, a2 = arrays(t1), arrays(t2)
    leaves1, leaves2 = leaf_texts(t1), leaf_texts(t2)  # in postorder: the rows and columns of lev
    lev, zs, n1, n2 = _Lev(t1, t2, leaves1, leaves2), kernel(), t1.size, t2.size

    def runner(k1: np.ndarray, k2: np.ndarray) -> Callable[[int | None], int]:
        def run(bound: int | None) -> int:
            dmax, imax = band(n1, n2, bound)
            m, lo = lev.get(dmax, imax)
            return int(zs(*a1, *a2, m, k1, k2, dmax, imax, *(() if lo is None else (lo,))))
        return run

    d, exact = _search(t1, t2, runner(_NO_KEYS, _NO_KEYS))
    if key is None:
        return d, None, exact
    if not leaves1 or not leaves2:
        return d, d, exact
    # the kernel only asks whether k1[p] == k2[q]: t2's keys numbered (cached: t2 is the ground truth, shared
    # by every group), and t1's keys by the same numbers, -1 for a key t2 lacks
    ids, k2 = _numbered_keys(t2, key)
    get = ids.get
    k1 = np.array([get(k, -1) for k in map(key, leaves1)], dtype=np.int64)
    if not _new_free_update(leaves1, k1, leaves2, k2):  # no new free update: the same distance
        return d, d, exact
    d_num, exact_num = _search(t1, t2, runner(k1, k2), d)
    return d, d_num, exact and exact_num
