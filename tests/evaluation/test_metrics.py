"""Donut's CORD metric, hand-computed cases and a cross-check against the zss reference (tests/reference_metric.py)."""

from __future__ import annotations

import copy
import json
import random

import numpy as np
import pytest
import reference_metric as R
from rapidfuzz.distance import Levenshtein
from rapidfuzz.process import cdist

from vlm.evaluation import metrics as M
from vlm.evaluation import ted
from vlm.evaluation.ted import arrays, build_tree, leaf_texts, tree_distance
from vlm.schema import HEADER_FIELDS

TOTAL = {"total": {"total_price": "45,000"}}  # nodes: total 1, <subtree> 1, total_price 1, "45,000" 6 -> 9
TEA, KOPI = {"nm": "Tea", "price": "5"}, {"nm": "Kopi", "price": "12"}


@pytest.fixture(params=["c", "python"])
def engine(request, monkeypatch):
    """Each engine in turn: the C build (kernel, normalize, trees), then pure Python (as with ``VLM_PURE_TED=1``,
    or where no C compiler was at hand). The C build is not skipped: ``pip install -e .`` builds it wherever a
    C compiler is, CI included."""
    assert ted.c_build() is not None, "the C core is not built: rerun `make setup` (needs a C compiler)"
    if request.param == "python":
        monkeypatch.setattr(ted, "_C", None)
    assert (ted.kernel() is ted.zhang_shasha) == (request.param == "python")
    return request.param


def test_normalize_matches_donut():
    data = {"price": 5, "nm": " Tea ", "menu": {"nm": "x"}, "empty": "", "zero": 0, "blank": " ",
            "lst": [1, " ", "a", True, None, [2]], "dicts": [{}, {"a": ""}, {"b": "1"}], "b": True}
    assert M.normalize(data) == {
        "b": ["True"], "nm": ["Tea"], "lst": ["1", "a"], "menu": [{"nm": ["x"]}], "blank": [""],
        "dicts": [{"b": ["1"]}], "price": ["5"],
    }
    assert list(M.normalize(data)) == ["b", "nm", "lst", "menu", "blank", "dicts", "price"]  # by (len, key)
    assert M.normalize(None) == {} and M.normalize([]) == {} and M.normalize("x ") == ["x"]
    assert M.normalize(data) == R.normalize(data)


def test_flatten():
    data = M.normalize({"menu": [{"nm": "a", "sub": [{"nm": "b"}]}, {"nm": "c"}], "total": {"total_price": "5"}})
    assert M.flatten(data) == [("menu.nm", "a"), ("menu.sub.nm", "b"), ("menu.nm", "c"), ("total.total_price", "5")]
    assert M.flatten(data) == R.flatten(data)


def test_identical():
    gt = {"menu": [TEA, KOPI], **TOTAL}
    assert M.ted_distances(gt, copy.deepcopy(gt))[0] == 0
    assert M.ted_accuracy(gt, gt) == 1.0
    assert M.f1_counts(gt, gt) == (5, 5, 5)


def test_empty_prediction_scores_zero_and_denominator_is_closed_form():
    assert M.ted_distances({}, TOTAL) == (9, 9, 9)
    assert M.ted_accuracy({}, TOTAL) == 0.0 and M.ted_accuracy(None, TOTAL) == 0.0
    assert M.f1_counts({}, TOTAL) == (0, 0, 1)
    scores = M.score_documents([None], [TOTAL])
    assert scores.valid == [False] and scores.ted_accuracy == [0.0]
    assert M.aggregate(scores)["f1"] == 0.0 and M.aggregate(scores)["valid_json"] == 0.0


def test_leaf_edit():
    pred = {"total": {"total_price": "45,500"}}
    assert M.ted_distances(pred, TOTAL)[0] == 1  # one substituted character
    assert M.ted_accuracy(pred, TOTAL) == pytest.approx(1 - 1 / 9)
    assert M.f1_counts(pred, TOTAL) == (0, 1, 1)


def test_menu_dict_is_one_row():
    gt = {"menu": {"nm": "Tea", "price": "5"}}
    pred = {"menu": [{"price": "5", "nm": "Tea"}]}
    assert M.ted_accuracy(pred, gt) == 1.0
    assert M.f1_counts(pred, gt) == (2, 2, 2)
    assert M.menu_counts(pred, gt) == (1, 1, 1)


def test_reordered_menu_f1_invariant_ted_not():
    gt, pred = {"menu": [TEA, KOPI]}, {"menu": [KOPI, TEA]}
    assert M.f1_counts(pred, gt) == (4, 4, 4)
    assert M.menu_counts(pred, gt) == (2, 2, 2)
    # TED is ordered: the rows pair up by position; Tea->Kopi costs 4, "5"->"12" costs 2, twice.
    # Denominator: menu 1 + 2 x (<subtree> 1 + nm 1 + price 1) + Tea 3 + 5 1 + Kopi 4 + 12 2 = 17.
    assert M.ted_distances(pred, gt) == (12, 12, 17)
    assert M.ted_accuracy(pred, gt) == pytest.approx(5 / 17)


def test_nested_sub_items():
    gt = {"menu": [{"nm": "Nasi", "sub": [{"nm": "Egg"}]}]}
    pred = {"menu": [{"nm": "Nasi"}]}
    assert M.flatten(M.normalize(gt)) == [("menu.nm", "Nasi"), ("menu.sub.nm", "Egg")]
    # removing sub, its <subtree>, nm and "Egg" costs 1 + 1 + 1 + 3; the gt tree costs 13 to build
    assert M.ted_distances(pred, gt) == (6, 6, 13)
    assert M.ted_accuracy(pred, gt) == pytest.approx(7 / 13)
    assert M.f1_counts(pred, gt) == (1, 1, 2)
    assert M.field_counts(pred, gt) == {"menu.nm": (1, 1, 1), "menu.sub.nm": (0, 0, 1)}


def test_update_costs_leaf_and_non_leaf(engine):
    t1 = build_tree(M.normalize({"k": "abc"}))  # postorder: "abc", k, <root>
    t2 = build_tree(M.normalize({"k": "abd", "qq": {"z": "w"}}))  # "abd", k, "w", z, <subtree>, qq, <root>
    assert t1.labels[1:] == ["<leaf>abc", "k", "<root>"]
    assert t2.labels[1:] == ["<leaf>abd", "k", "<leaf>w", "z", "<subtree>", "qq", "<root>"]
    assert t2.cost[1:] == [3, 1, 1, 1, 1, 1, 1]  # insert/remove: leaf text length, else 1
    assert M.ted_distances({"k": "abc"}, {"k": "abd"})[0] == 1  # leaf/leaf: Levenshtein (not remove + insert, 6)
    assert M.ted_distances({"k": "abc"}, {"k": "xyz"})[0] == 3
    assert M.ted_distances({"k": "abc"}, {"j": "abc"})[0] == 1  # non-leaf: label equality
    assert M.ted_distances({"k": "abc", "j": "x"}, {"j": "x", "k": "abc"})[0] == 0  # the same after normalising
    # leaf/non-leaf costs 1 + the leaf's length: exactly removing one and inserting the other, so no distance
    # tells them apart (the reference, with that cost, agrees with the kernels on random trees below)
    # a value that turns from a leaf into a dict: keep a, "xyz"->"q" (3), insert <subtree> and key (2)
    assert M.ted_distances({"a": "xyz"}, {"a": {"xyz": "q"}})[0] == 5


def test_number_key_and_numnorm_variant():
    for s in ("60.000", "60,000", "60000", "Rp 60.000", "Rp. 60,000", "60 000", "IDR60000", "60.000,00", "$60,000.00"):
        assert M.number_key(s) == "60000", s
    assert M.number_key("12,50") == "12.5" and M.number_key("-5.000") == "-5000" and M.number_key("0,0") == "0"
    assert M.number_key("1 x") == "1 x" and M.number_key("Nasi Goreng") == "Nasi Goreng"
    assert M.number_key("12.3456") == "12.3456"
    pred = {"total": {"total_price": "45.000"}}
    d, d_num, denom = M.ted_distances(pred, TOTAL)
    assert (d, d_num, denom) == (1, 0, 9)
    assert M.f1_counts(pred, TOTAL) == (0, 1, 1) and M.f1_counts(pred, TOTAL, numnorm=True) == (1, 1, 1)
    summary = M.aggregate(M.score_documents([pred], [TOTAL]))
    assert summary["ted_accuracy"] == pytest.approx(8 / 9) and summary["ted_accuracy_numnorm"] == 1.0
    assert summary["f1"] == 0.0 and summary["f1_numnorm"] == 1.0


def test_header_exact_match():
    gt = {"total": {"total_price": "45,000", "cashprice": "50,000"}, "sub_total": [{"subtotal_price": "40,000"}]}
    pred = {"total": {"total_price": " 45,000 ", "cashprice": "50.000"}}
    assert M.header_matches(pred, gt) == {
        "sub_total.subtotal_price": False, "sub_total.tax_price": None, "total.total_price": True,
        "total.cashprice": False, "total.changeprice": None,
    }
    assert set(M.header_matches(None, {})) == set(HEADER_FIELDS) and not any(
        v is not None for v in M.header_matches(None, {}).values())
    scores = M.score_documents([pred, None], [gt, {"total": {"changeprice": "0"}}])
    summary = M.aggregate(scores)
    assert summary["header.total.total_price"] == 1.0 and summary["header.total.changeprice"] == 0.0
    assert summary["header.sub_total.tax_price"] is None


def test_menu_precision_recall_asymmetric():
    gt = {"menu": [TEA, KOPI, {"nm": "Roti", "price": "8"}, {"nm": "Susu", "price": "7"}]}
    pred = {"menu": [{"price": "5", "nm": "Tea"}, KOPI]}
    assert M.menu_counts(pred, gt) == (2, 2, 4)
    summary = M.aggregate(M.score_documents([pred], [gt]))
    assert summary["menu_precision"] == 1.0 and summary["menu_recall"] == 0.5
    assert summary["menu_f1"] == pytest.approx(2 / 3)
    over = M.aggregate(M.score_documents([gt], [pred]))  # the other way round
    assert over["menu_precision"] == 0.5 and over["menu_recall"] == 1.0
    assert M.menu_counts({"menu": [TEA, TEA]}, {"menu": [TEA]}) == (1, 2, 1)  # one match per row
    empty = M.aggregate(M.score_documents([{}], [{}]))
    assert empty["menu_precision"] is None and empty["menu_recall"] is None and empty["menu_f1"] == 1.0


def test_empty_ground_truth():
    assert M.ted_accuracy({}, {}) == 1.0 and M.ted_accuracy(None, {"a": ""}) == 1.0
    assert M.ted_accuracy({"a": "b"}, {}) == 0.0
    assert M.aggregate(M.score_documents([{}], [{}]))["f1"] == 1.0  # 0/0: nothing to find, nothing claimed
    assert R.ted_accuracy({}, {}) == 1.0 and R.ted_accuracy({"a": "b"}, {}) == 0.0


def test_aggregate_micro_f1_and_resampling():
    gts = [{"menu": [{"nm": "A"}, {"nm": "B"}]}, {"menu": [{"nm": "C"}, {"nm": "D"}]}]
    preds = [{"menu": [{"nm": "A"}]}, {"menu": [{"nm": "C"}, {"nm": "D"}, {"nm": "E"}]}]
    scores = M.score_documents(preds, gts)
    assert scores.f1 == [(1, 1, 2), (2, 3, 2)]
    summary = M.aggregate(scores)
    assert summary["f1"] == pytest.approx(3 / (3 + (1 + 1) / 2))  # tp / (tp + (fp + fn) / 2)
    assert summary["ted_accuracy"] == pytest.approx(np.mean(scores.ted_accuracy))
    assert set(summary) == {"valid_json", "ted_accuracy", "f1", "ted_accuracy_numnorm", "f1_numnorm",
                            *(f"header.{f}" for f in HEADER_FIELDS), "menu_precision", "menu_recall", "menu_f1"}
    first_twice = M.aggregate(scores, np.array([0, 0]))
    assert first_twice["f1"] == pytest.approx(2 / 3) and first_twice["ted_accuracy"] == scores.ted_accuracy[0]
    fields = M.field_breakdown(scores)
    assert fields["menu.nm"] == {"tp": 3, "n_pred": 4, "n_gt": 4, "precision": 0.75, "recall": 0.75, "f1": 0.75}
    assert M.field_breakdown(scores, [0])["menu.nm"]["recall"] == 0.5


# --- cross-check against the reference on random CORD-like trees -------------------------------------------

WORDS = ["Nasi Goreng", "Es Teh", "Kopi", "Ayam", "1 x", "2", "45,000", "45.000", "12,500", "Rp 5.000", "", " "]


def _price(r: random.Random) -> str:
    return r.choice(["{:,}", "{:,}", "Rp {:,}", "{}"]).format(r.randint(1, 90) * 500).replace(",", r.choice(",."))


def cord_like(r: random.Random) -> dict:
    rows = []
    for _ in range(r.randint(0, 5)):
        row = {"nm": r.choice(WORDS), "price": _price(r)}
        if r.random() < 0.5:
            row["cnt"] = r.choice(["1", "2 x", "1x"])
        if r.random() < 0.2:
            row["sub"] = [{"nm": r.choice(WORDS), "price": _price(r)} for _ in range(r.randint(1, 2))]
        rows.append(row)
    doc: dict = {"menu": rows if len(rows) != 1 or r.random() < 0.5 else rows[0]}
    if r.random() < 0.7:
        doc["sub_total"] = {"subtotal_price": _price(r), "tax_price": _price(r)}
    if r.random() < 0.8:
        doc["total"] = {"total_price": _price(r), **({"cashprice": _price(r)} if r.random() < 0.5 else {})}
    return doc


def mutate(r: random.Random, doc: dict) -> dict:
    doc = copy.deepcopy(doc)
    menu = doc.get("menu")
    if isinstance(menu, list) and menu and r.random() < 0.4:
        menu.pop(r.randrange(len(menu)))
    if isinstance(menu, list) and len(menu) > 1 and r.random() < 0.2:
        menu.reverse()
    if "total" in doc and r.random() < 0.5:
        doc["total"]["total_price"] = _price(r)
    if r.random() < 0.2:
        doc["sub_total"], doc["total"] = doc.get("total", {}), doc.get("sub_total", {})
    if r.random() < 0.1:
        doc["menu"] = [{"price": v, "nm": k} for k, v in (("a", "1"), ("b", "2"))]
    return doc


def odd_tree(r: random.Random, depth: int = 0):
    k = r.random()
    if depth > 3 or k < 0.35:
        return r.choice(["a", "ab", "", "  ", "x y", 1, 2.5, "abc", "<leaf>z"])
    if k < 0.7:
        return {r.choice(["nm", "cnt", "price", "sub", "menu", "<root>", "<leaf>k"]): odd_tree(r, depth + 1)
                for _ in range(r.randint(0, 4))}
    if k < 0.85:
        return [odd_tree(r, depth + 1) for _ in range(r.randint(0, 4))]
    return [{r.choice(["nm", "price"]): odd_tree(r, depth + 1)} for _ in range(r.randint(0, 3))]


def _pairs(n: int, seed: int):
    r = random.Random(seed)
    for k in range(n):
        if k % 3 == 2:
            yield {"x": odd_tree(r)}, {"x": odd_tree(r)}
        else:
            gt = cord_like(r)
            yield (mutate(r, gt) if r.random() < 0.8 else cord_like(r)), gt


@pytest.mark.parametrize("seed", range(4))
def test_matches_reference_on_random_trees(seed):
    for pred, gt in _pairs(60, seed):
        got = M.score_document(pred, gt)
        assert abs(got["ted_accuracy"] - R.ted_accuracy(pred, gt)) < 1e-9, (pred, gt)
        assert abs(got["ted_accuracy_numnorm"] - R.ted_accuracy(pred, gt, key=M.number_key)) < 1e-9, (pred, gt)
        assert got["f1"] == R.f1_counts(pred, gt)


def test_closed_form_denominator_equals_general_ted():
    r = random.Random(7)
    empty = R.build(R.normalize({}))
    for _ in range(80):
        gt = cord_like(r) if r.random() < 0.6 else {"x": odd_tree(r)}
        assert M.ted_distances({}, gt)[2] == R.ted(empty, R.build(R.normalize(gt)))


def test_distance_is_symmetric():
    r = random.Random(3)
    for _ in range(60):
        a, b = build_tree(M.normalize(cord_like(r))), build_tree(M.normalize(cord_like(r)))
        assert tree_distance(a, b) == tree_distance(b, a)


def test_prediction_nested_past_the_stack_is_invalid_not_a_crash():
    deep: dict = {}
    node = deep
    for _ in range(5000):
        node["a"] = {}
        node = node["a"]
    scores = M.score_documents([deep], [{"a": "x"}])
    assert scores.valid == [False] and scores.ted_accuracy == [0.0]


def _kernel_args(t1, t2, keys=None):
    """The arrays ``zs`` and ``zhang_shasha`` take for two trees (the number keys empty unless given)."""
    l1, l2 = leaf_texts(t1), leaf_texts(t2)
    lev = (cdist(l1, l2, scorer=Levenshtein.distance, dtype=np.int64) if l1 and l2
           else np.zeros((max(len(l1), 1), max(len(l2), 1)), dtype=np.int64))
    return (*arrays(t1), *arrays(t2), lev, *(keys or [np.zeros(0, dtype=np.int64)] * 2))


def test_band_search_is_exact_within_its_bound(engine):
    """The banded programme is exact when the distance fits the bound, an upper bound otherwise."""
    zs = ted.kernel()
    r = random.Random(11)
    checked = 0
    while checked < 60:
        gt = cord_like(r)
        a, b = build_tree(M.normalize(mutate(r, gt))), build_tree(M.normalize(gt))
        if a.size < 2 or b.size < 2 or min(a.cost[1:] + b.cost[1:]) < 1 or a.labels == b.labels:
            continue
        args = _kernel_args(a, b)
        d = zs(*args, *ted.band(a.size, b.size, None))
        assert d == tree_distance(a, b)
        for bound in {abs(a.size - b.size), d - 1, d, d + 3, 2 * d}:
            if bound >= abs(a.size - b.size):
                got = zs(*args, *ted.band(a.size, b.size, bound))
                assert got == d if d <= bound else got >= d, (bound, d, got)
        checked += 1


# --- issue 11: zeros and unquoted decimals ------------------------------------------------------------------------

def test_header_exact_match_treats_zero_as_donut_does():
    """Donut's normalisation drops a bare 0, so the main metrics see no changeprice; the header score agrees."""
    gt = {"total": {"total_price": "20,000", "cashprice": "20,000", "changeprice": "0"}}
    pred = {"total": {"total_price": "20,000", "cashprice": "20,000", "changeprice": 0}}
    doc = M.score_document(pred, gt)
    assert doc["f1"] == (2, 2, 3)  # the 0 is not a predicted pair
    assert doc["header"]["total.changeprice"] is False
    assert M.header_matches({"total": {"changeprice": "0"}}, gt)["total.changeprice"] is True
    assert M.header_matches(pred, {"total": {"changeprice": 0}})["total.changeprice"] is None  # gt 0: no field


def test_unquoted_thousands_decimal_is_read_as_printed_in_numnorm_only():
    """``31.000`` unquoted means 31000 on a CORD receipt: numnorm matches "31.000"; Donut's metric is unchanged."""
    from vlm.inference.parsing import parse_prediction

    gt = {"menu": [{"nm": "Nasi Campur", "price": "31.000"}], "total": {"total_price": "31.000"}}
    pred = parse_prediction('{"menu": [{"nm": "Nasi Campur", "price": 31.000}], "total": {"total_price": 31.000}}')
    doc = M.score_document(pred.value, gt)
    assert doc["f1_numnorm"] == (3, 3, 3) and doc["ted_accuracy_numnorm"] == 1.0
    plain = json.loads(json.dumps(pred.value))  # the same answer as plain floats: what Donut's metric sees
    assert doc["f1"] == R.f1_counts(plain, gt) == (1, 3, 3)
    assert doc["ted_accuracy"] == pytest.approx(R.ted_accuracy(plain, gt), abs=1e-12)


# --- the two engines: the C build and pure Python (vlm.evaluation.ted) ------------------------------------------

def test_each_engine_equals_the_reference(engine):
    """Both distances (plain and number-normalised) from each engine equal zss's, on random trees and CORD-like
    documents; the pairs that reach the programme (not equal, no bare root) are most of them."""
    from vlm.evaluation.ted import tree_distances

    checked = 0
    for pred, gt in _pairs(240, 5):
        a, b = build_tree(M.normalize(pred)), build_tree(M.normalize(gt))
        d, d_num = tree_distances(a, b, M.number_key)
        assert d == R.ted(R.build(R.normalize(pred)), R.build(R.normalize(gt))), (pred, gt)
        assert d_num == R.ted(R.build(R.normalize(pred)), R.build(R.normalize(gt)), key=M.number_key), (pred, gt)
        checked += a.size > 1 and b.size > 1 and a.labels != b.labels
    assert checked > 150


def test_trees_without_leaves(engine):
    """Trees of inner nodes only (not normalised data: normalize drops what has no leaf) still get zss's
    distance, with and without number keys."""
    from vlm.evaluation.ted import tree_distances

    for x, y in (({"a": [{}], "b": [{}]}, {"c": ["xy"]}), ({"c": ["12"]}, {"a": [{}]}), ({"a": [{}]}, {"b": [{}]})):
        want = R.ted(R.build(x), R.build(y))
        assert tree_distances(build_tree(x), build_tree(y), M.number_key) == (want, want), (x, y)


def test_documents_score_the_same_with_either_engine(monkeypatch):
    """Every per-document value, with the C build (kernel, normalize, trees) and in pure Python."""
    assert ted.c_build() is not None, "the C core is not built: rerun `make setup` (needs a C compiler)"
    pairs = list(_pairs(200, 6))
    fast = [M.score_document(p, g) for p, g in pairs]
    monkeypatch.setattr(ted, "_C", None)
    assert [M.score_document(p, g) for p, g in pairs] == fast


def test_pure_ted_switches_the_c_build_off():
    """VLM_PURE_TED=1 (read once, when vlm.evaluation.ted is imported): no C kernel, walk or normalize."""
    import os
    import subprocess
    import sys

    probe = ("from vlm.evaluation import metrics as M, ted\n"
             "a, b = ted.build_tree(M.normalize({'a': 'xy'})), ted.build_tree(M.normalize({'a': 'x', 'b': 'z'}))\n"
             "print(ted.c_build() is None, ted.kernel() is ted.zhang_shasha, 'raw' in a._cache, "
             "ted.tree_distances(a, b))")
    for extra, want in (({}, "False False True (3, None)"), ({"VLM_PURE_TED": "1"}, "True True False (3, None)")):
        env = {k: v for k, v in os.environ.items() if k != "VLM_PURE_TED"}
        r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env={**env, **extra})
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == want


def test_c_kernel_refuses_bad_arrays_instead_of_reading_past_them():
    """The C build checks every index it will read: a wrong dtype or an out-of-range node is an exception."""
    assert ted.c_build() is not None, "the C core is not built: rerun `make setup` (needs a C compiler)"
    zs = ted.c_build().zs
    t = build_tree(M.normalize({"menu": [{"nm": "Kopi", "price": "5,000"}]}))
    a = list(arrays(t))
    lev, none = np.zeros((2, 2), dtype=np.int64), np.zeros(0, dtype=np.int64)
    assert zs(*a, *a, lev, none, none, 99, 99) == 0
    with pytest.raises(TypeError, match="int64"):
        zs(a[0].astype(np.int32), *a[1:], *a, lev, none, none, 9, 9)
    for k, bad in ((0, 99), (1, 99), (4, 7)):  # a leftmost leaf past its node, a keyroot past the tree, a leaf row
        broken = [x.copy() for x in a]
        broken[k][-1] = bad
        with pytest.raises(ValueError):
            zs(*broken, *a, lev, none, none, 9, 9)
    with pytest.raises(ValueError, match="key per leaf"):
        zs(*a, *a, lev, np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64), 9, 9)


def test_c_kernel_survives_random_arrays():
    """Arbitrary int64 arrays and bands, mostly well-formed trees with extreme bands, some garbage: each call
    raises ValueError or gives a number, the same one every time, and never crashes (valgrind on this test:
    no invalid or uninitialised read in _ted.c)."""
    assert ted.c_build() is not None, "the C core is not built: rerun `make setup` (needs a C compiler)"
    zs = ted.c_build().zs
    r = np.random.default_rng(3)

    def ints(lo, hi, n):
        return r.integers(lo, hi, size=n).astype(np.int64)

    def tree(n, leaves):
        """(l, kr, c, lab, lp) of n nodes (index 0 padding): well-formed 4 times in 5, else random values."""
        if r.random() < 0.2:
            return [ints(-2, n + 2, n + 1) for _ in range(5)]
        lml = np.array([0] + [int(r.integers(1, x + 1)) for x in range(1, n + 1)], dtype=np.int64)
        return [lml, ints(1, n + 1, int(r.integers(0, n + 1))), ints(0, 4, n + 1), ints(0, 3, n + 1),
                ints(-1, leaves, n + 1)]

    answered = 0
    for _ in range(3000):
        rows, cols = int(r.integers(1, 4)), int(r.integers(1, 4))
        t1, t2 = tree(int(r.integers(0, 7)), rows), tree(int(r.integers(0, 7)), cols)
        keys = [np.zeros(0, np.int64)] * 2 if r.random() < 0.5 else [ints(0, 3, 4)] * 2
        band = [int(x) for x in r.choice([-(2**62), -3, 0, 2, 9, 2**62], size=2)]
        lev = ints(0, 5, (rows, cols))
        try:
            got = zs(*t1, *t2, lev, *keys, *band)
        except ValueError:
            continue
        assert isinstance(got, int) and zs(*t1, *t2, lev, *keys, *band) == got  # and the same answer again
        answered += 1
    assert answered > 1500  # most calls reached the loops
