"""One large document (thousands of menu rows, inside the parser's caps) costs memory linear in its size, not
quadratic: the kernel's tables and the leaves' Levenshtein distances hold only the band (vlm.evaluation.ted);
where even the band would pass ``ted.CELL_BUDGET``, the distance is an upper bound, flagged per document and
per group (docs/evaluation.md#large-documents). Both engines give the same values throughout.
"""

from __future__ import annotations

import json
import os
import random
import resource
import subprocess
import sys

import numpy as np
import pytest
from test_metrics import _kernel_args, _pairs

from vlm.evaluation import metrics as M
from vlm.evaluation import ted
from vlm.evaluation.ted import arrays, build_tree, leaf_texts

ITEMS = ["Nasi Goreng", "Es Teh Manis", "Ayam Bakar Madu", "Kopi Susu", "Air Mineral", "Sate Ayam"]
LIMIT = 1_500_000_000  # bytes of address space for the child: the 3,000-row document needed 7 GB before


def receipt(rows: int, seed: int = 0) -> dict:
    r = random.Random(seed)
    return {"menu": [{"nm": r.choice(ITEMS), "cnt": str(r.randint(1, 3)), "price": f"{r.randint(2, 120) * 500:,}"}
                     for _ in range(rows)], "total": {"total_price": "1,000"}}


def edited(gt: dict, every: int) -> dict:
    """``gt`` with the thousands comma of every ``every``-th row's price printed as a dot (one character each)."""
    doc = json.loads(json.dumps(gt))
    for k, row in enumerate(doc["menu"]):
        if k % every == 3:
            row["price"] = row["price"].replace(",", ".")
    return doc


def evaluate_limited(tmp_path, pred: dict, gt: dict, pure: bool) -> tuple[subprocess.CompletedProcess, float]:
    """``vlm evaluate --json`` of one document in a child process held to ``LIMIT`` bytes of address space; the
    result and the child's CPU seconds."""
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps({"id": "big", "prediction": json.dumps(pred), "ground_truth": gt}) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "VLM_PURE_TED"}
    env.update(HF_HUB_OFFLINE="1", OPENBLAS_NUM_THREADS="1", **({"VLM_PURE_TED": "1"} if pure else {}))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    got = subprocess.run([sys.executable, "-m", "vlm.cli", "evaluate", "--json", "--predictions", str(path)],
                         capture_output=True, text=True, env=env, timeout=300,
                         preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT)))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return got, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


@pytest.mark.parametrize("pure", [False, True], ids=["c", "python"])
def test_a_3000_row_document_scores_exactly_in_bounded_memory(tmp_path, pure):
    """3,000 rows as the answer and as the truth (21,006 nodes each), ten prices printed differently: the
    exact distance (10; 0 with numbers normalised) under 1.5 GB, in seconds. Before, the tables took
    (n1 + 1) x (n2 + 1) cells: MemoryError (7 GB in C, more in Python)."""
    gt = receipt(3000)
    pred = edited(gt, 300)
    got, cpu = evaluate_limited(tmp_path, pred, gt, pure)
    assert got.returncode == 0, got.stdout[-2000:] + got.stderr[-2000:]
    result = json.loads(got.stdout)["big"]
    denom = M.prepare_truth(gt).denom
    assert result["ted_accuracy"] == 1 - 10 / denom and result["ted_accuracy_numnorm"] == 1.0
    assert "ted_capped" not in result and "memory budget" not in got.stderr
    assert cpu < 60


def test_two_large_different_documents_are_capped_and_flagged(tmp_path):
    """3,000 rows against the same rows shuffled: the exact search would need a band of ~20,000 columns, so the
    distance is the upper bound under the widest band that fits CELL_BUDGET; the group counts the document,
    and the warning names it. In a second, under 1.5 GB."""
    gt = receipt(3000)
    pred = json.loads(json.dumps(gt))
    random.Random(1).shuffle(pred["menu"])
    got, cpu = evaluate_limited(tmp_path, pred, gt, pure=False)
    assert got.returncode == 0, got.stdout[-2000:] + got.stderr[-2000:]
    result = json.loads(got.stdout)["big"]
    assert result["ted_capped"] == {"documents": 1, "ids": ["big"]}
    assert "1 document too large for an exact tree edit distance" in got.stderr and "(big)" in got.stderr
    truth, tree = M.prepare_truth(gt), build_tree(M.normalize(pred))
    d, _, exact = ted.bounded_distances(tree, truth.tree, M.number_key)
    assert not exact and result["ted_accuracy"] == max(0.0, 1 - d / truth.denom) > 0
    assert d <= tree.closed_form_insert_all() + truth.tree.closed_form_insert_all()
    assert cpu < 30


def _documents(n: int, seed: int, rows: int = 60):
    """CORD-like pairs, and pairs of 10 to ``rows`` rows (a receipt against an edited or reordered copy)."""
    yield from _pairs(n, seed)
    r = random.Random(seed)
    for k in range(n // 4):
        gt = receipt(r.randint(10, rows), seed + k)
        pred = edited(gt, r.randint(1, 5))
        if k % 2:
            r.shuffle(pred["menu"])
        yield pred, gt


@pytest.fixture
def small_budget(monkeypatch):
    """A budget that documents of 10 to 60 rows pass, so the capped search runs in a test's time."""
    monkeypatch.setattr(ted, "CELL_BUDGET", 4000)


def test_past_the_budget_both_engines_give_the_same_upper_bound(small_budget, monkeypatch):
    """Under a small budget: the same distances and flags from the C build and from pure Python; an exact
    distance wherever the flag is off, an upper bound (never below it, never above the closed form) where on."""
    checked = capped = 0
    for pred, gt in _documents(200, 3):
        t1, t2 = build_tree(M.normalize(pred)), build_tree(M.normalize(gt))
        c = ted.bounded_distances(t1, t2, M.number_key)
        with monkeypatch.context() as m:
            m.setattr(ted, "_C", None)
            assert ted.bounded_distances(t1, t2, M.number_key) == c, (pred, gt)
            m.setattr(ted, "CELL_BUDGET", 1 << 40)
            d, d_num, exact = ted.bounded_distances(t1, t2, M.number_key)
        assert exact
        if c[2]:
            assert c[:2] == (d, d_num), (pred, gt)
        else:
            closed = t1.closed_form_insert_all() + t2.closed_form_insert_all()
            assert d <= c[0] <= closed and d_num <= c[1] <= closed, (pred, gt)
            capped += 1
        checked += 1
    assert checked > 200 and capped > 10


def test_score_documents_counts_capped_documents(small_budget):
    gt = receipt(60)
    pred = json.loads(json.dumps(gt))
    random.Random(2).shuffle(pred["menu"])
    scores = M.score_documents([pred, gt, None], [gt, gt, gt])
    assert scores.ted_capped == [True, False, False]
    assert scores.ted_accuracy[1] == 1.0 and scores.ted_accuracy[2] == 0.0


def test_lev_windows_give_what_the_whole_matrix_gives(monkeypatch):
    """Large documents get the leaves' distances per row, a window covering the band (``ted._Lev``): the kernel
    reads the same values as from the whole matrix, in either engine, under any band."""
    r = random.Random(8)
    none = np.zeros(0, dtype=np.int64)
    checked = 0
    for pred, gt in _documents(100, 4, rows=25):
        t1, t2 = build_tree(M.normalize(pred)), build_tree(M.normalize(gt))
        l1, l2 = leaf_texts(t1), leaf_texts(t2)
        if t1.size < 2 or t2.size < 2 or not l1 or not l2:
            continue
        whole = _kernel_args(t1, t2)[10]
        monkeypatch.setattr(ted, "LEV_WHOLE", 0)
        windows = ted._Lev(t1, t2, l1, l2)
        wide = t1.size + t2.size
        for band in [(wide, wide)] + [(r.randint(-3, wide), r.randint(-3, wide)) for _ in range(4)]:
            lev, lo = windows.get(*band)
            assert lo is not None and lev.shape[1] <= len(l2)
            want = ted.zhang_shasha(*arrays(t1), *arrays(t2), whole, none, none, *band)
            assert ted.zhang_shasha(*arrays(t1), *arrays(t2), lev, none, none, *band, lo) == want, band
            assert ted.c_build().zs(*arrays(t1), *arrays(t2), lev, none, none, *band, lo) == want, band
        checked += 1
    assert checked > 80


def test_c_kernel_refuses_windows_that_miss_the_band():
    """A window (``lev_lo``) that leaves out a pair of leaves the band reaches is a ValueError in both engines,
    never a read past the row; so is a first column outside tree 2's leaves."""
    t = build_tree(M.normalize({"menu": [{"nm": "Kopi", "price": "5,000"}, {"nm": "Teh", "price": "4,000"}]}))
    u = build_tree(M.normalize({"menu": [{"nm": "Kopi", "price": "5,500"}, {"nm": "Tea", "price": "4,000"}]}))
    a1, a2, none = list(arrays(t)), list(arrays(u)), np.zeros(0, dtype=np.int64)
    lev = np.ones((4, 1), dtype=np.int64)  # one column per row: too narrow for a wide band
    lo = np.zeros(4, dtype=np.int64)
    for zs in (ted.c_build().zs, ted.zhang_shasha):
        with pytest.raises(ValueError, match="window"):
            zs(*a1, *a2, lev, none, none, 99, 99, lo)
    with pytest.raises(ValueError, match="lev_lo"):
        ted.c_build().zs(*a1, *a2, lev, none, none, 99, 99, np.full(4, 99, dtype=np.int64))
    with pytest.raises(ValueError, match="lev_lo"):
        ted.c_build().zs(*a1, *a2, lev, none, none, 99, 99, np.zeros(3, dtype=np.int64))


def test_c_kernel_survives_random_windows():
    """Random trees, bands and windows: a ValueError or a number, the same every time (valgrind on this test:
    no invalid read in _ted.c)."""
    zs = ted.c_build().zs
    g = np.random.default_rng(5)
    answered = 0
    for _ in range(2000):
        n1, n2 = int(g.integers(1, 8)), int(g.integers(1, 8))
        t1 = [np.array([0] + [int(g.integers(1, x + 1)) for x in range(1, n1 + 1)], dtype=np.int64),
              g.integers(1, n1 + 1, int(g.integers(0, n1 + 1))).astype(np.int64),
              g.integers(0, 4, n1 + 1).astype(np.int64), g.integers(0, 3, n1 + 1).astype(np.int64),
              g.integers(-1, 3, n1 + 1).astype(np.int64)]
        t2 = [np.array([0] + [int(g.integers(1, y + 1)) for y in range(1, n2 + 1)], dtype=np.int64),
              g.integers(1, n2 + 1, int(g.integers(0, n2 + 1))).astype(np.int64),
              g.integers(0, 4, n2 + 1).astype(np.int64), g.integers(0, 3, n2 + 1).astype(np.int64),
              g.integers(-1, 4, n2 + 1).astype(np.int64)]
        lev = g.integers(0, 5, (3, int(g.integers(1, 4)))).astype(np.int64)
        lo = g.integers(-1, n2 + 2, 3).astype(np.int64)
        band = [int(x) for x in g.choice([-(2**62), -3, 0, 2, 9, 2**62], size=2)]
        try:
            got = zs(*t1, *t2, lev, np.zeros(0, np.int64), np.zeros(0, np.int64), *band, lo)
        except ValueError:
            continue
        assert isinstance(got, int) and zs(*t1, *t2, lev, np.zeros(0, np.int64), np.zeros(0, np.int64),
                                           *band, lo) == got
        answered += 1
    assert answered > 500
