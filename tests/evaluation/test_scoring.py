"""scoring: shared ground truths, memoised answers and the worker processes give exactly the plain values."""

from __future__ import annotations

import json
import multiprocessing
import os
import random

import pytest

from vlm.evaluation import metrics as M
from vlm.evaluation import scoring as S

ITEMS = ["Es Teh", "Nasi Goreng", "Kopi Susu", "Air Mineral"]


def _gt(r: random.Random) -> dict:
    rows = [{"nm": r.choice(ITEMS), "cnt": str(r.randint(1, 3)), "price": f"{r.randint(1, 40) * 500:,}"}
            for _ in range(r.randint(1, 4))]
    return {"menu": rows if len(rows) > 1 else rows[0], "total": {"total_price": f"{r.randint(5, 90) * 1000:,}"}}


def _answers(r: random.Random, gt: dict) -> str:
    """An answer's text: a copy, an edit, a refusal, an empty object or one of a few repeated outputs."""
    x = r.random()
    if x < 0.2:
        return json.dumps(gt)
    if x < 0.3:
        return "I cannot read this receipt."
    if x < 0.4:
        return "{}"
    if x < 0.6:  # the same few answers again and again: ties, and memo hits across documents
        return r.choice(['{"total": {"total_price": "5,000"}}', '{"menu": {"nm": "Es Teh", "price": "500"}}'])
    doc = json.loads(json.dumps(gt))
    doc["total"]["total_price"] = doc["total"]["total_price"].replace("0", str(r.randint(1, 9)), 1)
    return json.dumps(doc)


def _groups(n: int, seed: int = 0):
    """Two groups over n documents (a few distinct truths repeated), as ``score_groups`` takes them."""
    from vlm.evaluation.compare import read_answer

    r = random.Random(seed)
    truths = [_gt(r) for _ in range(n // 4 + 1)]
    gts = [json.loads(json.dumps(r.choice(truths))) for _ in range(n)]  # equal truths, separate objects
    texts = [[_answers(r, gt) for gt in gts] for _ in range(2)]
    answers = [[read_answer(t) for t in group] for group in texts]
    preds = [[a.value for a in group] for group in answers]
    valid = [[a.valid for a in group] for group in answers]
    other = [json.loads(json.dumps(gt)) for gt in gts]  # the second file's own copy of each truth
    return preds, [gts, other], valid, texts


def _plain(preds, gts, valid):
    return [M.score_documents(p, g, v) for p, g, v in zip(preds, gts, valid)]


def test_shared_and_memoised_equal_plain(monkeypatch):
    monkeypatch.setenv("VLM_WORKERS", "1")
    preds, gts, valid, texts = _groups(300)
    assert S.score_groups(preds, gts, valid, texts) == _plain(preds, gts, valid)
    assert S.score_groups(preds, gts, valid) == _plain(preds, gts, valid)  # no keys: no memo, truths shared


def test_truths_equal_as_objects_but_not_as_json_are_not_shared(monkeypatch):
    """``1 == 1.0`` in Python, but Donut's tree reads "1" and "1.0": each group keeps its own truth."""
    monkeypatch.setenv("VLM_WORKERS", "1")
    pred = {"total": {"total_price": "1"}}
    gts = [[{"total": {"total_price": 1}}], [{"total": {"total_price": 1.0}}]]
    got = S.score_groups([[pred], [pred]], gts, [[True], [True]], [["x"], ["x"]])
    assert got == _plain([[pred], [pred]], gts, [[True], [True]])
    assert got[0].ted_accuracy != got[1].ted_accuracy


def test_memo_keys_on_truth_and_validity(monkeypatch):
    """The same answer text meets two different truths, and once counts as invalid: three different rows."""
    monkeypatch.setenv("VLM_WORKERS", "1")
    pred = {"total": {"total_price": "5,000"}}
    gts = [{"total": {"total_price": "5,000"}}, {"total": {"total_price": "6,000"}},
           {"total": {"total_price": "5,000"}}]
    flags = [True, True, False]
    got = S.score_groups([[pred] * 3], [gts], [flags], [["same"] * 3])
    assert got == _plain([[pred] * 3], [gts], [flags])
    assert got[0].ted_accuracy[0] == 1.0 and got[0].ted_accuracy[1] < 1.0 and got[0].valid == flags


def test_workers_equal_serial_in_order(monkeypatch):
    """From POOL_FROM documents on, two workers; the parts come back in document order."""
    preds, gts, valid, texts = _groups(S.POOL_FROM + 17, seed=1)
    monkeypatch.setenv("VLM_WORKERS", "1")
    serial = S.score_groups(preds, gts, valid, texts)
    job = S._Job(preds, gts, valid, texts)
    ranges = S._ranges(len(preds[0]), 3)
    parts = S._parallel(job, ranges)  # the pool itself, not a silent fallback
    assert [d for part in parts for d in part[1]] == [M.score_document(p, g, v) for p, g, v in
                                                        zip(preds[1], gts[1], valid[1])]
    monkeypatch.setenv("VLM_WORKERS", "2")
    assert S.score_groups(preds, gts, valid, texts) == serial == _plain(preds, gts, valid)
    assert not multiprocessing.active_children()


def test_ranges_cover_in_order():
    assert S._ranges(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert S._ranges(2, 2) == [(0, 1), (1, 2)]


class _FailingInWorker(S._Job):
    def run(self, start, stop):
        if os.getpid() != self.parent:
            raise MemoryError("worker out of memory")
        return super().run(start, stop)


def test_worker_failure_falls_back_to_serial(monkeypatch):
    preds, gts, valid, texts = _groups(40, seed=2)
    job = _FailingInWorker(preds, gts, valid, texts)
    job.parent = os.getpid()
    with pytest.raises(S.WorkerError, match="MemoryError"):
        S._parallel(job, S._ranges(40, 2))
    assert not multiprocessing.active_children()

    monkeypatch.setattr(S, "_Job", _FailingInWorker)
    monkeypatch.setattr(_FailingInWorker, "parent", os.getpid(), raising=False)
    monkeypatch.setenv("VLM_WORKERS", "2")
    assert S.score_groups(preds, gts, valid, texts) == _plain(preds, gts, valid)


class _Interrupted(S._Job):
    """The parent is interrupted (Ctrl-C) while its worker is still busy."""

    def run(self, start, stop):
        if os.getpid() == self.parent:
            self.started.wait(30)
            raise KeyboardInterrupt
        self.started.set()
        multiprocessing.Event().wait(20)  # a worker that would run on
        self.finished.value = 1
        return []


def test_interrupt_stops_the_workers():
    job = _Interrupted([[None] * 4], [[{}] * 4], [[False] * 4], [None])
    job.parent, job.started, job.finished = os.getpid(), multiprocessing.Event(), multiprocessing.Value("i", 0)
    with pytest.raises(KeyboardInterrupt):
        S._parallel(job, S._ranges(4, 2))
    assert not multiprocessing.active_children()  # reaped, not left running
    assert job.finished.value == 0  # stopped, not waited for


def test_plain_switch_gives_the_same(monkeypatch):
    preds, gts, valid, texts = _groups(50, seed=3)
    monkeypatch.setenv("VLM_SCORE_PLAIN", "1")
    assert S.score_groups(preds, gts, valid, texts) == _plain(preds, gts, valid)


@pytest.mark.parametrize("doc", [
    {"menu": {"nm": "Tea", "price": "5"}},
    {"menu": [{"nm": "Tea"}, {}, {"nm": " ", "price": ""}, {"nm": "Tea"}]},
    {"menu": [{"nm": "Tea"}, "loose text", {"price": "5"}]},  # mixed: normalize keeps the text, rows the dicts
    {"menu": []}, {"menu": "Tea"}, {"total": {"total_price": "5"}}, {},
])
def test_menu_rows_from_the_normalised_document(doc):
    slow = M._menu_rows(doc)
    assert M._menu_rows(doc, M.normalize(doc)) == slow
    assert slow == [repr(M.normalize(r)) for r in
                    ([doc["menu"]] if isinstance(doc.get("menu"), dict) else doc.get("menu") or [])
                    if isinstance(r, dict) and M.normalize(r)]


def test_menu_row_keys_match_exactly_when_sorted_key_json_does():
    """Rows are matched by the repr of their normalised form: equal exactly when sorted-key JSON is equal,
    whatever order the keys came in (normalize orders them), nested sub rows included."""
    r = random.Random(5)
    names, values = ["nm", "cnt", "price", "unitprice", "sub", "etc"], ["Tea", "1", "5,000", "5.000", " ", "x'y\"", "é"]

    def row(depth=0):
        keys = r.sample(names, r.randint(1, 4))
        return {k: ([row(depth + 1) for _ in range(r.randint(1, 2))] if k == "sub" and depth < 2
                    else r.choice(values)) for k in keys}

    rows = [row() for _ in range(300)]
    rows += [dict(reversed(list(x.items()))) for x in rows[:100]]  # the same rows, keys in another order
    checked = 0
    for a, b in ((r.choice(rows), r.choice(rows)) for _ in range(3000)):
        same_json = json.dumps(M.normalize(a), sort_keys=True) == json.dumps(M.normalize(b), sort_keys=True)
        assert (M._menu_rows({"menu": [a]}) == M._menu_rows({"menu": [b]})) == same_json, (a, b)
        checked += same_json and list(a) != list(b)
    assert checked > 0  # some equal rows came with their keys in a different order


def test_trust_checks_in_workers_equal_serial(monkeypatch):
    """The consistency checks of every answer and truth run split over workers too: the same verdicts, checks
    and coverage curve as serially, and the pool really ran (a silent fallback would not call _parallel)."""
    from vlm.evaluation.compare import Group, evaluate_groups, read_answer
    from vlm.evaluation.consistency import check_document
    from vlm.evaluation.trust import check_counts

    r = random.Random(4)

    def receipt() -> dict:  # a receipt whose checks pass or fail: each count x unit price, sum and total
        rows = [{"nm": r.choice(ITEMS), "cnt": str(c), "unitprice": f"{u:,}",
                 "price": f"{c * u + r.choice([0, 0, 500]):,}"}
                for c, u in ((r.randint(1, 3), r.randint(1, 20) * 1000) for _ in range(r.randint(1, 3)))]
        sub = sum(int(x["price"].replace(",", "")) for x in rows) + r.choice([0, 0, 1000])
        return {"menu": rows, "sub_total": {"subtotal_price": f"{sub:,}"},
                "total": {"total_price": f"{sub + r.choice([0, 0, 2000]):,}"}}

    n = S.POOL_FROM + 9
    gts = [receipt() for _ in range(n)]
    groups = [Group(name, [str(k) for k in range(n)], [read_answer(json.dumps(receipt())) for _ in range(n)],
                    [json.loads(json.dumps(gt)) for gt in gts]) for name in ("a", "b")]
    monkeypatch.setenv("VLM_WORKERS", "1")
    serial = evaluate_groups(groups, resamples=100)
    calls = []
    real = S._parallel

    def spy(job, ranges):
        calls.append(type(job).__name__)
        return real(job, ranges)

    monkeypatch.setattr(S, "_parallel", spy)
    monkeypatch.setenv("VLM_WORKERS", "2")
    split = evaluate_groups(groups, resamples=100)
    assert calls == ["_Job", "_Statuses"]
    assert split == serial
    for g in groups:  # each row holds its own answer's checks, not a neighbour's or another group's
        assert [r["checks"] for r in split["per_document"][g.name]] == [
            {k: v.status for k, v in check_document(pred).items()} for pred in g.preds]
    assert split["ground_truth_checks"]["checks"] == check_counts(
        [{k: v.status for k, v in check_document(gt).items()} for gt in groups[0].gts])
    seen = {status for g in groups for row in split["per_document"][g.name] for status in row["checks"].values()}
    assert seen == {"pass", "fail", "n/a"}
    assert not multiprocessing.active_children()


@pytest.mark.parametrize("gt_price", ["31.000", "3<leaf>1.0"])  # the second: Donut's tree text is "31.0"
def test_a_shared_truth_gives_each_answer_its_own_number_keys(gt_price):
    """The truth's number keys are kept on its tree for the next group, but only for the same key function:
    an answer with unquoted decimals (31.000, read as printed) gets its own, in either group order."""
    from vlm.inference.parsing import parse_prediction

    gt = {"menu": [{"nm": "Nasi Campur", "price": gt_price}, {"nm": "Es Teh", "price": "31"}],
          "total": {"total_price": "62.000"}}
    texts = ['{"menu": [{"nm": "Nasi Campur", "price": "31,000"}, {"nm": "Es Teh", "price": "31"}]}',
             '{"menu": [{"nm": "Nasi Campur", "price": 31.000}, {"nm": "Es Teh", "price": 31.0}]}']
    preds = [parse_prediction(t).value for t in texts]
    fresh = [M.score_document(p, json.loads(json.dumps(gt))) for p in preds]
    for order in ([0, 1], [1, 0]):
        got = S.score_groups([[preds[k]] for k in order], [[gt], [gt]], [[True], [True]], [[texts[k]] for k in order])
        for g, k in enumerate(order):
            assert (got[g].ted_accuracy_numnorm[0], got[g].f1_numnorm[0]) == (
                fresh[k]["ted_accuracy_numnorm"], fresh[k]["f1_numnorm"]), (order, k)


def test_heap_frozen_nests_and_always_unfreezes():
    import gc

    assert gc.get_freeze_count() == 0
    with S.heap_frozen():
        assert gc.get_freeze_count() > 0
        with S.heap_frozen():
            pass
        assert gc.get_freeze_count() > 0  # the inner exit leaves the outer freeze in place
    assert gc.get_freeze_count() == 0
    with pytest.raises(KeyError), S.heap_frozen():
        raise KeyError("x")
    assert gc.get_freeze_count() == 0
