"""Groups compared with different ground truths for a document are refused, however they were paired: files by
id, files by line, store groups; extraction and --task qa. Otherwise the delta measures the labels."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pytest

from vlm.errors import VlmError
from vlm.evaluation import qa
from vlm.evaluation.compare import evaluate_groups, group_from_file, groups_from_store
from vlm.inference.store import Prediction, Store

GTS = [{"menu": [{"nm": f"Item {k}", "cnt": "1", "price": f"{k},000"}], "total": {"total_price": f"{k},000"}}
       for k in range(1, 6)]
RELABELLED = {1: {"menu": [{"nm": "Item 1", "cnt": "2", "price": "2,000"}], "total": {"total_price": "2,000"}},
              3: {"menu": [{"nm": "Other", "cnt": "1", "price": "9,000"}], "total": {"total_price": "9,000"}}}


def _write(path: Path, gts: list, preds: list | None = None, ids: bool = True) -> Path:
    rows = []
    for k, gt in enumerate(gts):
        pred = json.dumps(gt) if preds is None else preds[k]
        rows.append({"id": f"doc{k}", "prediction": pred, "ground_truth": gt} if ids else
                    {"predict": pred, "label": json.dumps(gt)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _relabelled(gts: list) -> list:
    return [RELABELLED.get(k, gt) for k, gt in enumerate(gts)]


def _assert_refusal(e: pytest.ExceptionInfo, first: str, a: str, b: str, n: int, total: int) -> None:
    msg = str(e.value)
    assert f"groups {a} and {b} have different ground truths for document {first}" in msg, msg
    assert f"{n} of {total} documents differ" in msg, msg
    assert e.value.hint


def test_files_paired_by_id_with_different_labels_are_refused(tmp_path):
    a = group_from_file(_write(tmp_path / "a.jsonl", GTS))
    b = group_from_file(_write(tmp_path / "b.jsonl", _relabelled(GTS)))
    with pytest.raises(VlmError) as e:
        evaluate_groups([a, b], resamples=100)
    _assert_refusal(e, "'doc1'", "a", "b", 2, 5)
    assert "different labels" in e.value.hint


def test_only_the_shared_documents_are_compared(tmp_path):
    """A document only one group has is not paired, so its label cannot disagree."""
    a = group_from_file(_write(tmp_path / "a.jsonl", GTS))
    rows = [json.loads(line) for line in _write(tmp_path / "b.jsonl", GTS).read_text().splitlines()][:3]
    rows.append({"id": "extra", "prediction": "{}", "ground_truth": RELABELLED[3]})
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = evaluate_groups([a, group_from_file(tmp_path / "b.jsonl")], resamples=100)
    assert result["documents"] == 3


def test_files_paired_by_line_name_the_line_and_the_count(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = group_from_file(_write(tmp_path / "a" / "generated_predictions.jsonl", GTS, ids=False))
    b = group_from_file(_write(tmp_path / "b" / "generated_predictions.jsonl", _relabelled(GTS), ids=False))
    with pytest.raises(VlmError) as e:
        evaluate_groups([a, b], resamples=100)
    _assert_refusal(e, "2 (paired by line)", "a", "b", 2, 5)


def _store(path: Path, groups: dict[str, list]) -> Path:
    with Store(path, write=True) as s:
        for name, gts in groups.items():
            s.put_many([Prediction(name, "test", f"doc{k}", json.dumps(gt) if isinstance(gt, dict) else "x",
                                   None, None, [], gt) for k, gt in enumerate(gts)])
    return path


def test_store_groups_with_different_labels_are_refused(tmp_path):
    store = _store(tmp_path / "p.sqlite", {"before": GTS, "after": _relabelled(GTS)})
    with pytest.raises(VlmError) as e:
        evaluate_groups(groups_from_store(store, ["before", "after"], "test"), resamples=100)
    _assert_refusal(e, "'doc1'", "before", "after", 2, 5)


def test_a_store_group_against_a_file_with_other_labels_is_refused(tmp_path):
    store = _store(tmp_path / "p.sqlite", {"before": GTS})
    groups = groups_from_store(store, ["before"], "test") + [group_from_file(_write(tmp_path / "new.jsonl",
                                                                                    _relabelled(GTS)))]
    with pytest.raises(VlmError) as e:
        evaluate_groups(groups, resamples=100)
    _assert_refusal(e, "'doc1'", "before", "new", 2, 5)


ANSWERS = [["Kopi"], ["8,800", "8800"], ["Ramen"], ["35,000"]]


def _qa_file(path: Path, answers: list) -> Path:
    path.write_text("".join(json.dumps({"id": f"doc{k}", "prediction": a[0], "ground_truth": a}) + "\n"
                            for k, a in enumerate(answers)))
    return path


def test_qa_files_paired_by_id_with_different_answers_are_refused(tmp_path):
    a = qa.group_from_file(_qa_file(tmp_path / "a.jsonl", ANSWERS))
    b = qa.group_from_file(_qa_file(tmp_path / "b.jsonl", [ANSWERS[0], ANSWERS[1], ["Soba"], ANSWERS[3]]))
    with pytest.raises(VlmError) as e:
        qa.evaluate_qa([a, b], resamples=100)
    _assert_refusal(e, "'doc2'", "a", "b", 1, 4)


def test_qa_store_groups_with_different_answers_are_refused(tmp_path):
    store = _store(tmp_path / "p.sqlite", {"base": ANSWERS, "tuned": [["Teh"]] + ANSWERS[1:]})
    with pytest.raises(VlmError) as e:
        qa.evaluate_qa(qa.load_groups(store, ["base", "tuned"], None, "test"), resamples=100)
    _assert_refusal(e, "'doc0'", "base", "tuned", 1, 4)


def test_qa_store_and_file_with_the_same_answers_are_compared(tmp_path):
    """A stored answer list and the same answers in a file (one as a bare string) are the same labels."""
    store = _store(tmp_path / "p.sqlite", {"base": ANSWERS})
    path = tmp_path / "f.jsonl"
    path.write_text("".join(json.dumps({"id": f"doc{k}", "prediction": a[0],
                                        "ground_truth": a[0] if len(a) == 1 else a}) + "\n"
                            for k, a in enumerate(ANSWERS)))
    result = qa.evaluate_qa(qa.load_groups(store, ["base"], [path], "test"), resamples=100)
    assert result["documents"] == 4 and result["groups"]["f"]["anls"] == 1.0


def test_the_check_is_fast_on_10000_documents():
    """Plain equality of parsed values: 10,000 receipts x 2 groups, equal but separately parsed."""
    from vlm.evaluation.ground_truths import check_same_ground_truths

    gts = [{"menu": [{"nm": f"Item {k} {j}", "cnt": "1", "price": f"{j},000", "sub": [{"nm": "x", "price": "1"}]}
                     for j in range(6)],
            "sub_total": {"subtotal_price": "6,000", "tax_price": "600"},
            "total": {"total_price": "6,600", "cashprice": "10,000", "changeprice": "3,400"}} for k in range(10_000)]

    class G:
        def __init__(self, name, gts):
            self.name, self.gts, self.ids = name, gts, [f"d{k}" for k in range(len(gts))]

    a, b = G("a", gts), G("b", copy.deepcopy(gts))
    start = time.perf_counter()
    check_same_ground_truths([a, b])
    assert time.perf_counter() - start < 1.0
    b.gts[9_999] = {"menu": []}
    with pytest.raises(VlmError, match="1 of 10,000 documents differ"):
        check_same_ground_truths([a, b])
