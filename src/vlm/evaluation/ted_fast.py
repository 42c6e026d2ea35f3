"""The Zhang–Shasha programme of ``ted``, compiled: in C (``vlm.evaluation._ted``) where it was built, else by numba.

Same trees, costs, band and answers as ``ted.zhang_shasha``: the distance is
exact whenever it is ``<= bound`` and an upper bound otherwise, so ``ted._search``
drives both the same way. It is the textbook programme over postorder arrays
(every keyroot pair, the root pair included, whose table reaches the band),
without the Python version's special loops, which only exist to cut
interpreter overhead. A cell outside the band reads as infinite; the
boundary row and column of each table (remove all, insert all) are always real.

Which build runs, first available first:

* ``vlm.evaluation._ted``, the C extension ``pip install`` builds from ``_ted.c`` (setup.py). It loads in
  about a millisecond, so it runs for any number of documents.
* numba (``_zs`` below, the same loops), where the C build is missing or ``VLM_TED=numba``. Loading numba
  and its cached build costs about two seconds per process, so ``metrics`` uses it only from
  ``COMPILE_FROM`` documents on. numba caches the machine code next to this file (or, where that is
  read-only, in numba's user cache); a machine that can cache nowhere compiles once per process.
* ``VLM_PURE_TED=1``, or neither build: the pure-Python programme, which gives the same distances
  (tests/test_metrics.py checks all three on random trees).

The C build also normalises documents and builds their trees (``c_normalize``, ``c_walk``), the
Python work per document that cost most once the programme itself was compiled; ``VLM_PURE_TED=1`` or
``VLM_PY_TREES=1`` turns that off (tests/test_c_walk.py checks it against the Python).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

_INF = 1 << 60
_kernel: Any = None  # the compiled function, False when unavailable


def _extension() -> Any:
    """The C build (``vlm.evaluation._ted``), or None where it was not built."""
    try:
        from vlm.evaluation import _ted
    except ImportError:
        return None
    return _ted


def c_kernel() -> Any:
    """The C build's ``zs``, or None (not built here, or switched off by ``VLM_PURE_TED`` / ``VLM_TED=numba``)."""
    if os.environ.get("VLM_PURE_TED") or os.environ.get("VLM_TED") == "numba":
        return None
    c = _extension()
    return c.zs if c else None


_c: Any = None  # the C build's module for the tree walk and normalize, False when unavailable


def _c_build() -> Any:
    global _c
    if _c is None:
        switched_off = os.environ.get("VLM_PURE_TED") or os.environ.get("VLM_PY_TREES")  # the latter: benchmarks
        _c = False if switched_off else (_extension() or False)
    return _c


def c_walk(data: Any, pairs: list | None) -> tuple | None:
    """``ted.build_tree``'s walk by the C build: the Tree's six lists, then the kernel's arrays (``arrays``) in
    one buffer and the leaf texts. None where the C build is missing, ``VLM_PURE_TED`` or ``VLM_PY_TREES`` is
    set, or ``data`` is not plain normalised data (dicts with str keys, lists, str leaves): the Python walk
    then builds it."""
    c = _c or _c_build()
    return c.tree(data, pairs, _LABELS) if c else None


def c_normalize(data: Any, scalars: frozenset) -> Any:
    """``metrics.normalize(data)`` by the C build, or None (no C build, switched off as for ``c_walk``, or not
    plain data: a dict or list subclass, a key that is not a str)."""
    c = _c or _c_build()
    return c.normalize(data, scalars) if c else None


def _compile() -> Any:
    """The compiled kernel (C, else numba), or False (neither there, switched off, or failing to compile)."""
    if os.environ.get("VLM_PURE_TED"):
        return False
    fn = c_kernel()
    if fn is not None:
        return fn
    try:
        import numba
    except ImportError:
        return False
    try:
        try:
            fn = numba.njit(cache=True, nogil=True)(_zs)
        except RuntimeError:  # no writable cache location: compile per process instead
            fn = numba.njit(nogil=True)(_zs)
        one, none = np.ones(2, dtype=np.int64), np.zeros(0, dtype=np.int64)
        fn(one, one[1:], one, one, -one, one, one[1:], one, one, -one, np.zeros((1, 1), np.int64), none, none, 2, 2)
    except Exception:  # a numba that cannot build it here: the interpreted programme gives the same answers
        return False
    return fn


def kernel() -> Any:
    global _kernel
    if _kernel is None:
        _kernel = _compile()
    return _kernel


def _zs(l1, kr1, c1, lab1, lp1, l2, kr2, c2, lab2, lp2, lev, k1, k2, dmax, imax):  # pragma: no cover - compiled
    """TED over postorder arrays (1-based, index 0 padding); only cells with ``-imax <= x - y <= dmax`` are computed.

    Per node: l = leftmost leaf, c = insert/remove cost, lab = label id, lp = its row in ``lev`` if a leaf (else
    -1); kr = keyroots. ``lev``: Levenshtein distances of the leaf texts; ``k1``/``k2`` (or empty): number keys
    of the leaves, equal keys updating for free.
    """
    inf = _INF
    n1 = l1.shape[0] - 1
    n2 = l2.shape[0] - 1
    td = np.full((n1 + 1, n2 + 1), inf, dtype=np.int64)
    fd = np.empty((n1 + 1, n2 + 1), dtype=np.int64)
    for i in kr1:
        li = l1[i]
        for j in kr2:
            lj = l2[j]
            if j < li - dmax or lj > i + imax:  # no cell of this table lies in the band
                continue
            fd[li - 1, lj - 1] = 0
            for y in range(lj, j + 1):
                fd[li - 1, y] = fd[li - 1, y - 1] + c2[y]
            for x in range(li, i + 1):
                fd[x, lj - 1] = fd[x - 1, lj - 1] + c1[x]
                lo = max(lj, x - dmax)
                hi = min(j, x + imax)
                lx = l1[x]
                # fd[x, lo - 1] is the boundary column or outside the band
                left = fd[x, lj - 1] if lo == lj else inf
                for y in range(lo, hi + 1):
                    # the cell above: the boundary row, or in the band of row x - 1
                    a = x - 1
                    up = fd[a, y] if (a == li - 1 or y - a <= imax) else inf
                    v = up + c1[x]
                    w = left + c2[y]
                    if w < v:
                        v = w
                    ly = l2[y]
                    if lx == li and ly == lj:  # both prefixes are whole trees
                        b = y - 1
                        diag = fd[a, b] if (a == li - 1 or b == lj - 1 or (a - b <= dmax and b - a <= imax)) else inf
                        # Donut's update cost of x into y (see ``ted.update_matrix``)
                        p = lp1[x]
                        q = lp2[y]
                        if p >= 0 and q >= 0:
                            upd = 0 if (k1.shape[0] > 0 and k1[p] == k2[q]) else lev[p, q]
                        elif p >= 0:
                            upd = 1 + c1[x]
                        elif q >= 0:
                            upd = 1 + c2[y]
                        else:
                            upd = 1 if lab1[x] != lab2[y] else 0
                        w = diag + upd
                        if w < v:
                            v = w
                        if v > inf:
                            v = inf
                        td[x, y] = v
                    else:
                        a2 = lx - 1
                        b2 = ly - 1
                        if a2 == li - 1 or b2 == lj - 1 or (a2 - b2 <= dmax and b2 - a2 <= imax):
                            w = fd[a2, b2] + td[x, y]
                            if w < v:
                                v = w
                        if v > inf:
                            v = inf
                    fd[x, y] = v
                    left = v
    return td[n1, n2]


_LABELS: dict[str, int] = {}  # key names -> ids, for the whole process (a vocabulary of keys, not of values)


def arrays(t: Any) -> tuple[np.ndarray, ...]:
    """(leftmost leaves, keyroots, costs, label ids, leaf rows) of a ``ted.Tree`` as arrays (cached on the tree)."""
    got = t._plans.get("arrays")
    if got is None and "raw" in t._plans:  # made by the C walk: views of its buffer, in this order
        n, nk = len(t.labels), len(t.keyroots)
        a = np.frombuffer(t._plans["raw"], dtype=np.int64)
        got = t._plans["arrays"] = (a[:n], a[n:n + nk], a[n + nk:2 * n + nk], a[2 * n + nk:3 * n + nk],
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
        cost = np.array(t.cost, dtype=np.int64)
        cost[0] = 0
        got = t._plans["arrays"] = (np.array(t.lml, dtype=np.int64), np.array(t.keyroots, dtype=np.int64), cost,
                                    np.array(lab, dtype=np.int64), np.array(rows, dtype=np.int64))
    return got


def leaf_texts(t: Any) -> list[str]:
    """The leaves' texts in postorder (the C walk made them on the way)."""
    got = t._plans.get("leaves")
    return [x for x, f in zip(t.texts, t.is_leaf) if f] if got is None else got


_NO_KEYS = np.zeros(0, dtype=np.int64)


def _numbered_keys(t: Any, key: Callable[[str], str]) -> tuple[dict[str, int], np.ndarray]:
    """(a number per distinct ``key`` of ``t``'s leaves, each leaf's number), kept on ``t`` for that ``key``."""
    got = t._plans.get("keys")
    if got is None or got[0] is not key:
        ids: dict[str, int] = {}
        numbers = np.array([ids.setdefault(k, len(ids)) for k in map(key, leaf_texts(t))], dtype=np.int64)
        got = t._plans["keys"] = (key, ids, numbers)
    return got[1], got[2]


def distances(fn: Any, t1: Any, t2: Any, key: Callable[[str], str] | None,
              search: Callable) -> tuple[int, int | None]:
    """``ted.tree_distances`` for two trees of more than one node each, with the compiled ``fn``."""
    from rapidfuzz.distance import Levenshtein
    from rapidfuzz.process import cdist

    a1, a2 = arrays(t1), arrays(t2)
    leaves1, leaves2 = leaf_texts(t1), leaf_texts(t2)  # in postorder: the rows of lev
    if leaves1 and leaves2:
        lev = cdist(leaves1, leaves2, scorer=Levenshtein.distance, dtype=np.int64)
    else:
        lev = np.zeros((max(len(leaves1), 1), max(len(leaves2), 1)), dtype=np.int64)
    n1, n2 = t1.size, t2.size

    def zs(_t1: Any, _t2: Any, keys: tuple, bound: int | None = None) -> int:
        dmax, imax = (n1 + n2, n1 + n2) if bound is None else ((bound + n1 - n2) // 2, (bound - n1 + n2) // 2)
        return int(fn(*a1, *a2, lev, *keys, dmax, imax))

    d = search(t1, t2, (_NO_KEYS, _NO_KEYS), zs=zs)
    if key is None:
        return d, None
    if not leaves1 or not leaves2:
        return d, d
    # the kernel only asks whether k1[p] == k2[q]: t2's keys numbered (cached: t2 is the ground truth, shared
    # by every group), and t1's keys by the same numbers, -1 for a key t2 lacks
    ids, k2 = _numbered_keys(t2, key)
    get = ids.get
    k1 = np.array([get(k, -1) for k in map(key, leaves1)], dtype=np.int64)
    if not ((k1[:, None] == k2[None, :]) & (lev > 0)).any():  # no new free update: the same distance
        return d, d
    return d, search(t1, t2, (k1, k2), d, zs)
