"""The C build's normalize and tree walk (vlm.evaluation._ted.normalize / .tree) against the Python they replace,
and the C kernel under any band.

Scoring uses them wherever the C extension is built, so every other test runs them; these check that they
give exactly what the Python gives (values, key order, node arrays, flatten pairs, the kernel's arrays), on
CORD-shaped documents and on odd values, and that anything but plain data is handed back to the Python.
"""

from __future__ import annotations

import random

import pytest
from test_metrics import _pairs, cord_like, mutate

from vlm.evaluation import metrics as M
from vlm.evaluation import ted
from vlm.evaluation.ted import arrays, build_tree, leaf_texts
from vlm.inference.tolerant_json import Num

ODD_VALUES = ["", " ", "1", " a ", "\u3000x\u2003", "\x1cz\x1f", "<leaf>", "a<leaf>b<leaf>", "29,500", "é",
              3, 0, -1, 1.5, 0.0, float("nan"), float("inf"), None, True, False, Num("31.000"), Num("0.0")]
ODD_KEYS = ["nm", "price", "menu", "<leaf>", "a<leaf>b", "", "x.y", "b", "aa", "B", "é", "ab"]


@pytest.fixture
def c_build():
    c = ted.c_build()
    assert c, "vlm.evaluation._ted is not built: rerun `make setup` (needs a C compiler)"
    return c


@pytest.fixture
def python_only(monkeypatch):
    """A context in which normalize and build_tree run their Python code (as with no C build)."""
    def run(fn, *args):
        with monkeypatch.context() as m:
            m.setattr(ted, "_C", None)
            return fn(*args)
    return run


def odd(r: random.Random, depth: int = 0):
    x = r.random()
    if depth > 4 or x < 0.3:
        return r.choice(ODD_VALUES)
    if x < 0.65:
        return {r.choice(ODD_KEYS): odd(r, depth + 1) for _ in range(r.randint(0, 5))}
    if x < 0.85:
        return [odd(r, depth + 1) for _ in range(r.randint(0, 4))]
    return [{r.choice(ODD_KEYS): odd(r, depth + 1)} for _ in range(r.randint(1, 3))]


def documents(n: int, seed: int):
    r = random.Random(seed)
    for k in range(n):
        yield odd(r) if k % 2 else mutate(r, cord_like(r))


def outcome(fn, *args):
    try:
        return "ok", repr(fn(*args))  # repr: the key order counts too
    except Exception as e:  # noqa: BLE001 - the same exception type is part of the contract
        return type(e).__name__


def tree_fields(t):
    return t.labels, t.is_leaf, t.texts, t.cost, t.lml, t.keyroots, [a.tolist() for a in arrays(t)], leaf_texts(t)


def test_c_normalize_equals_python(c_build, python_only):
    checked = 0
    for doc in documents(4000, 1):
        assert outcome(M.normalize, doc) == python_only(outcome, M.normalize, doc), doc
        checked += c_build.normalize(doc, M._SCALARS) is not None
    assert checked > 3000  # most of them really went through C


def test_c_normalize_fails_as_deep_as_python(c_build, python_only):
    deep: object = "x"
    for _ in range(3000):
        deep = {"a": [deep]}
    assert outcome(M.normalize, deep) == python_only(outcome, M.normalize, deep) == "RecursionError"


def test_c_walk_equals_python(c_build, python_only):
    checked = 0
    for doc in documents(4000, 2):
        data = M.normalize(doc)
        for pairs in ([("before", "x")], None):
            fast_pairs = None if pairs is None else list(pairs)
            fast = tree_fields(build_tree(data, fast_pairs))
            slow_pairs = None if pairs is None else list(pairs)
            slow = python_only(lambda: tree_fields(build_tree(data, slow_pairs)))
            assert fast == slow and fast_pairs == slow_pairs, data
        checked += "raw" in build_tree(data)._cache
    assert checked == 4000  # every normalised document took the C walk


def test_c_walk_hands_anything_else_back_with_pairs_untouched(c_build, python_only):
    """A dict subclass, a key that is not a str, or a leaf that is not a str: the C walk declines and leaves
    the pairs as they were; build_tree then walks in Python, for the Python's result."""
    class Sub(dict):
        pass

    for data in ({"a": ["x"], "b": Sub(c=["y"])}, {"a": ["x"], 1: ["y"]}, {"a": ["x", 3]}, [["x"]],
                 {"a": [{"b": ["x"]}, "c"]}):
        pairs = [("before", "x")]
        assert c_build.tree(data, pairs, {}) is None and pairs == [("before", "x")], data
        slow_pairs: list = []
        assert outcome(lambda: tree_fields(build_tree(data, []))) == python_only(
            outcome, lambda: tree_fields(build_tree(data, slow_pairs))), data
    class SubList(list):
        pass

    for doc in ({"a": Sub(b="1")}, {"a": SubList(["1"])}, {1: "x", "1": "y"}):
        assert c_build.normalize(doc, M._SCALARS) is None, doc
        assert outcome(M.normalize, doc) == python_only(outcome, M.normalize, doc), doc


def test_documents_score_the_same_with_and_without_the_c_walk(c_build, python_only):
    for pred, gt in _pairs(150, 9):
        assert M.score_document(pred, gt) == python_only(M.score_document, pred, gt), (pred, gt)


def test_c_kernel_equals_the_python_programme_under_any_band(c_build):
    """The C kernel skips the rows and the part of the boundary row that no cell in the band reads; under any
    band, keys or none, its value is still exactly that of ``ted.zhang_shasha``, the pure-Python programme,
    upper bounds included. (A boundary row cut one cell too short gave 4 where they give 22.)"""
    import numpy as np
    from test_metrics import _kernel_args

    r = random.Random(21)
    checked = 0
    for pred, gt in _pairs(600, 13):
        t1, t2 = build_tree(M.normalize(pred)), build_tree(M.normalize(gt))
        if t1.size < 2 or t2.size < 2:
            continue
        keys = None
        l1, l2 = leaf_texts(t1), leaf_texts(t2)
        if l1 and l2 and r.random() < 0.5:
            keys = [np.array([r.randrange(3) for _ in leaves], dtype=np.int64) for leaves in (l1, l2)]
        args, wide = _kernel_args(t1, t2, keys), t1.size + t2.size
        for band in [(wide, wide)] + [(r.randint(-3, wide), r.randint(-3, wide)) for _ in range(6)]:
            assert c_build.zs(*args, *band) == ted.zhang_shasha(*args, *band), (pred, gt, band)
        checked += 1
    assert checked > 350
