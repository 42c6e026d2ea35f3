"""The Zhang–Shasha programme of ``vlm.evaluation.ted`` in Python: the C build's ``_ted.zs``, cell for cell.

It runs where no C compiler was at hand, or with ``VLM_PURE_TED=1``; ``vlm.evaluation.ted`` picks the one
that is there (``kernel()``) and re-exports ``zhang_shasha``. tests/test_c_walk.py holds the two to the
same value under any band, tests/test_metrics.py to the zss reference.
"""

from __future__ import annotations

from itertools import accumulate

import numpy as np

INF = 1 << 60  # a cell outside the band; no real distance comes near it


def zhang_shasha(l1, kr1, c1, lab1, lp1, l2, kr2, c2, lab2, lp2, lev, k1, k2, dmax: int, imax: int,
                 lev_lo=None) -> int:
    """TED of tree 1 into tree 2 over the cells with ``-imax <= x - y <= dmax``: ``_ted.zs`` in Python.

    Per tree (``arrays``, 1-based postorder, index 0 padding): l = leftmost leaf, kr = keyroots, c = insert /
    remove cost, lab = label id, lp = row among the leaves or -1. ``lev``: the leaves' Levenshtein distances
    (with ``lev_lo``, row p holds those of the leaves ``lev_lo[p]`` on, a window covering the band);
    ``k1``/``k2`` (or empty): number keys of the leaves, two leaves with equal keys updating for free.

    The textbook programme: per keyroot pair (i, j), the forest distances fd of the prefixes of their subtrees,
    and the tree distance td of every pair of nodes on their leftmost paths. Band: a mapping that removes at
    most ``dmax`` nodes and inserts at most ``imax`` only passes through cells (x, y) with ``-imax <= x - y
    <= dmax`` (x - y = nodes removed before x - nodes inserted before y), so the others read as INF. Each value
    computed is still the cost of some mapping, so under ``band(n1, n2, b)`` (every node costing at least 1)
    the result is exact whenever the distance is ``<= b`` and an upper bound otherwise. The boundary row and
    column of each table (remove all, insert all) are always real.

    Memory: td and fd hold the band only, row x the ``width`` columns from ``off[x]`` on (``ted.band_cells``).
    The boundary row and column (sums of costs) are read as differences of prefix sums, so a table starts at
    its first row with a cell in the band and walks no row or column outside it: a large document against a
    similar one costs memory and time linear in its size.
    """
    l1, kr1, c1, lab1, lp1, l2, kr2, c2, lab2, lp2, lev, k1, k2 = (
        np.asarray(a).tolist() for a in (l1, kr1, c1, lab1, lp1, l2, kr2, c2, lab2, lp2, lev, k1, k2))
    keys = len(k1) > 0
    n1, n2 = len(l1) - 1, len(l2) - 1
    wide = n1 + n2 + 1  # as the C build clamps the band (the same cells: |x - y| <= n1 + n2 anyway)
    dmax, imax = max(-wide, min(dmax, wide)), max(-wide, min(imax, wide))
    width = max(1, min(dmax + imax + 1, n2 + 1))  # an empty band reads no cell
    off = [max(0, min(x - dmax, n2 + 1 - width)) for x in range(n1 + 1)]
    lev_lo = [0] * len(lev) if lev_lo is None else np.asarray(lev_lo).tolist()
    lev_w = len(lev[0]) if lev else 0
    td = [[INF] * width for _ in range(n1 + 1)]
    fd = [[0] * width for _ in range(n1 + 1)]
    pre1, pre2 = list(accumulate(c1[1:], initial=0)), list(accumulate(c2[1:], initial=0))  # costs of 1..x
    many = len(kr2) >= 64
    if many:  # a large document: the keyroot pairs in the band found in numpy (a loop over all cost more)
        kra = np.array(kr2, dtype=np.int64)
        lka = np.array(l2, dtype=np.int64)[kra]
    for i in kr1:
        li = l1[i]
        # tree 2's keyroots j whose table with i has a cell in the band, in order
        js = (kra[(kra >= li - dmax) & (lka <= i + imax)].tolist() if many
              else [j for j in kr2 if j >= li - dmax and l2[j] <= i + imax])
        for j in js:
            lj = l2[j]
            r0, c0 = pre2[lj - 1], pre1[li - 1]  # boundary row: pre2[y] - r0; boundary column: pre1[x] - c0
            for x in range(max(li, lj - imax), i + 1):  # rows before lj - imax hold no cell of the band
                if x - dmax > j:  # this row and every later one lie past the band
                    break
                ox, ax = off[x], x - 1
                row, trow = fd[x], td[x]
                cx, a = c1[x], l1[x] - 1
                lo, hi = max(lj, x - dmax), min(j, x + imax)
                up_hi = hi if x == li else min(hi, x - 1 + imax)  # above[y] is real (in the band) up to here
                if ax == li - 1:  # the row above is the boundary row: its cells lo..hi, as a row of fd
                    above, oa = [pre2[y] - r0 for y in range(lo, hi + 1)], lo
                else:
                    above, oa = fd[ax], off[ax]
                left = pre1[x] - c0 if lo == lj else INF
                # Each cell: remove x, insert y, or (below) map x to y; written as `if w < v: v = w` rather than
                # min(), which costs a call per cell and made this loop twice as slow.
                if a != li - 1:  # x is off i's leftmost path: or the prefixes before x's and y's subtrees,
                    # then those subtrees' tree distance (from an earlier pair)
                    fa, of = fd[a], off[a]
                    for y in range(lo, hi + 1):
                        v = (above[y - oa] if y <= up_hi else INF) + cx
                        w = left + c2[y]
                        if w < v:
                            v = w
                        b = l2[y] - 1
                        if b == lj - 1:
                            w = pre1[a] - c0 + trow[y - ox]
                            if w < v:
                                v = w
                        elif -imax <= a - b <= dmax:  # fd[a][b] is in the band
                            w = fa[b - of] + trow[y - ox]
                            if w < v:
                                v = w
                        if v > INF:
                            v = INF
                        row[y - ox] = left = v
                    continue
                p = lp1[x]
                for y in range(lo, hi + 1):
                    v = (above[y - oa] if y <= up_hi else INF) + cx
                    w = left + c2[y]
                    if w < v:
                        v = w
                    ly = l2[y]
                    if ly == lj:  # both prefixes are whole trees: map x to y, for their tree distance
                        q = lp2[y]
                        if p >= 0 and q >= 0:
                            if keys and k1[p] == k2[q]:
                                upd = 0
                            else:
                                k = q - lev_lo[p]
                                if not 0 <= k < lev_w:
                                    raise ValueError("lev's window (lev_lo) leaves out a pair of leaves in the band")
                                upd = lev[p][k]
                        elif p >= 0 or q >= 0:
                            upd = 1 + (cx if p >= 0 else c2[y])
                        else:
                            upd = lab1[x] != lab2[y]
                        if x == li:  # the cell up-left: on the boundary row, the boundary column, or in the band
                            w = pre2[y - 1] - r0 + upd
                        elif y == lj:
                            w = pre1[ax] - c0 + upd
                        elif -imax <= x - y <= dmax:
                            w = above[y - 1 - oa] + upd
                        else:
                            w = INF
                        if w < v:
                            v = w
                        if v > INF:
                            v = INF
                        trow[y - ox] = v
                    else:  # y is off j's leftmost path: or the boundary row before y's subtree, then td[x][y]
                        w = pre2[ly - 1] - r0 + trow[y - ox]
                        if w < v:
                            v = w
                        if v > INF:
                            v = INF
                    row[y - ox] = left = v
    return td[n1][n2 - off[n1]] if -imax <= n1 - n2 <= dmax else INF
