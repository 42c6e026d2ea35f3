"""vlm evaluate's trust outputs: verdicts per group, accuracy by verdict, the coverage curve, label-error
candidates, and what lands in report.md, --json and on disk. Expected values are worked out by hand from
tests/trust_fixtures.py (its docstring says which document is which)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from helpers import VLM
from trust_fixtures import GTS, make_store

from vlm.evaluation.compare import evaluate_groups, groups_from_store
from vlm.evaluation.metrics import f1_counts
from vlm.evaluation.trust import coverage_curve, label_error_candidates


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("trust"))


@pytest.fixture(scope="module")
def result(store) -> dict:
    return evaluate_groups(groups_from_store(store, ["vanilla-model", "finetuned-model"], "test"), resamples=100)


def _ted(result, group):
    return {r["id"]: r["ted_accuracy"] for r in result["per_document"][group]}


def test_verdicts_and_accuracy_by_verdict(result):
    verdicts = {g: {r["id"]: r["verdict"] for r in rows} for g, rows in result["per_document"].items()}
    assert verdicts["vanilla-model"] == {"doc0": "inconsistent", "doc1": "consistent", "doc2": "inconsistent",
                                         "doc3": "unchecked", "doc4": "consistent", "doc5": "unchecked"}
    assert verdicts["finetuned-model"] == {"doc0": "consistent", "doc1": "inconsistent", "doc2": "consistent",
                                           "doc3": "consistent", "doc4": "consistent", "doc5": "unchecked"}
    tuned = result["groups"]["finetuned-model"]
    assert tuned["consistent"] == pytest.approx(4 / 6)
    acc = tuned["consistency"]["accuracy"]
    assert acc["consistent"] == {"documents": 4, "ted_accuracy": 1.0, "f1": 1.0}
    bad = result["per_document"]["finetuned-model"][1]["prediction"]
    tp, n_pred, n_gt = f1_counts(bad, GTS[1])
    assert acc["inconsistent"]["documents"] == 1
    assert acc["inconsistent"]["f1"] == pytest.approx(2 * tp / (n_pred + n_gt)) and tp < n_gt
    assert acc["inconsistent"]["ted_accuracy"] == pytest.approx(_ted(result, "finetuned-model")["doc1"])
    checks = tuned["consistency"]["checks"]
    assert (checks["line_price"]["pass"], checks["line_price"]["fail"]) == (1, 1)  # doc0 passes, doc1 fails
    assert result["ground_truth_checks"]["consistent"] == pytest.approx(5 / 6)  # doc5's truth: no check applies
    assert result["ground_truth_checks"]["checks"]["total"] == {
        "description": "subtotal + tax + service - discount = total", "pass": 4, "fail": 0, "n/a": 2,
        "pass_rate": 1.0}
    # the fenced answer's repair is recorded (it only lowers confidence)
    assert result["per_document"]["finetuned-model"][3]["repairs"] == ["code_fence"]


def test_coverage_curve_adds_back_by_confidence(result):
    ted = _ted(result, "finetuned-model")
    curve = result["groups"]["finetuned-model"]["consistency"]["coverage_curve"]
    # doc0, doc2, doc4 pass with no repair; doc3 passes after one repair; doc5 unchecked; doc1 fails one check
    # (and passes none).
    assert [p["documents"] for p in curve] == [3, 4, 5, 6]
    assert [p["confidence"] for p in curve] == [[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0], [0, 1, 1, 0]]
    assert curve[2]["ted_accuracy"] == pytest.approx((4 + ted["doc5"]) / 5)
    assert curve[-1]["ted_accuracy"] == pytest.approx(result["groups"]["finetuned-model"]["ted_accuracy"])
    vanilla = result["groups"]["vanilla-model"]["consistency"]["coverage_curve"]
    vted = _ted(result, "vanilla-model")
    # doc1, doc4 consistent; doc3 ({}) and doc5 unchecked; doc0 fails two checks; doc2 is not JSON.
    assert [p["documents"] for p in vanilla] == [2, 4, 5, 6]
    assert vanilla[1]["ted_accuracy"] == pytest.approx((2 + vted["doc3"] + vted["doc5"]) / 4)


def test_coverage_curve_ties_make_one_point():
    curve = coverage_curve([(0,), (1,), (0,)], [1.0, 0.0, 0.5], [(1, 1, 1), (0, 1, 1), (1, 2, 2)])
    assert [(p["documents"], p["ted_accuracy"], p["f1"]) for p in curve] == [(2, 0.75, 2 * 2 / 6), (3, 0.5, 4 / 8)]


def test_label_error_candidates(result):
    assert label_error_candidates(result) == [
        {"id": "doc5", "field": "total.total_price", "ground_truth": "25,500", "predicted": "25,000", "groups": 2}]


def _result_for(preds_by_group: dict[str, list], gts: list) -> dict:
    from vlm.evaluation.compare import Group, read_answer

    groups = [Group(name, [f"d{i}" for i in range(len(gts))], [read_answer(json.dumps(p)) for p in preds], gts)
              for name, preds in preds_by_group.items()]
    return evaluate_groups(groups, resamples=100)


def test_label_errors_need_agreement_and_two_groups():
    gt = {"menu": [{"nm": "Teh", "price": "8,000"}], "total": {"total_price": "8,000"}}
    same = {"menu": [{"nm": "Teh", "price": "8,000"}, {"nm": "Es", "price": "1"}],
            "total": {"total_price": "8,000", "tax_price": "800"}}
    other = {"menu": [{"nm": "Teh", "price": "8,000"}, {"nm": "Es", "price": "1"}],
             "total": {"total_price": "8,000", "tax_price": "880"}}
    # Both read a tax line the truth lacks: a candidate. The extra menu row is not (its row number is the model's).
    assert label_error_candidates(_result_for({"a": [same], "b": [same]}, [gt])) == [
        {"id": "d0", "field": "total.tax_price", "ground_truth": None, "predicted": "800", "groups": 2}]
    assert label_error_candidates(_result_for({"a": [same], "b": [other]}, [gt])) == []  # they disagree
    assert label_error_candidates(_result_for({"a": [same]}, [gt])) == []  # one group: every error would count
    assert label_error_candidates(_result_for({"a": [same], "b": [None]}, [gt])) == []  # b is not JSON


def test_cli_json_report_md_and_files(store, tmp_path):
    out = tmp_path / "report"
    r = subprocess.run([*VLM, "evaluate", "--groups", "vanilla-model", "finetuned-model", "--store", str(store),
                        "--output", str(out), "--bootstrap", "100", "--label-errors", "5", "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["finetuned-model"]["consistent"] == pytest.approx(4 / 6)
    assert data["finetuned-model"]["consistency"]["counts"] == {"consistent": 4, "inconsistent": 1, "unchecked": 1}
    assert data["label_errors"] == [
        {"id": "doc5", "field": "total.total_price", "ground_truth": "25,500", "predicted": "25,000", "groups": 2}]
    md = (out / "report.md").read_text()
    assert "## Consistency checks" in md
    assert "| total | subtotal + tax + service - discount = total | 100.0% of 4 |" in md
    assert "| doc5 | total.total_price | 25,500 | 25,000 |" in md
    assert (out / "coverage.png").read_bytes().startswith(b"\x89PNG")
    html = (out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "data:image/jpeg;base64," in html
    assert "http://" not in html and "https://" not in html  # self-contained: nothing to fetch
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["groups"]["vanilla-model"]["consistency"]["counts"]["inconsistent"] == 2
    # without --label-errors the JSON keeps its old shape
    plain = subprocess.run([*VLM, "evaluate", "--groups", "vanilla-model", "finetuned-model", "--store", str(store),
                            "--bootstrap", "100", "--json"], capture_output=True, text=True)
    assert set(json.loads(plain.stdout)) == {"vanilla-model", "finetuned-model"}


def test_report_html_escapes_what_models_write(tmp_path):
    evil = '</script><script>alert(1)</script><img src=x onerror=alert(2)>'
    gt = {"menu": [{"nm": "Teh", "price": "8,000"}], "total": {"total_price": "8,000"}}
    pred = {"menu": [{"nm": evil, "price": "8,000"}], "total": {"total_price": "8,000"}}
    from vlm.evaluation.outputs import write_extraction_report

    result = _result_for({"a": [pred], "b": [pred]}, [gt])
    write_extraction_report(result, tmp_path, label_error_candidates(result), 20)
    html = (tmp_path / "report.html").read_text()
    assert evil not in html and "<script>alert" not in html and "<img src=x" not in html
    assert html.count("<script") == 2  # the data block and the renderer, nothing injected


def test_alignments_made_for_candidates_are_reused_by_the_report(result, tmp_path):
    """The HTML rows built from the candidates' alignments equal those aligned afresh; each is used once."""
    from vlm.evaluation.html_report import document_rows

    aligned: dict = {}
    candidates = label_error_candidates(result, aligned)
    assert candidates == label_error_candidates(result)
    assert aligned and set(aligned) <= {(g, k) for g in result["per_document"] for k in range(result["documents"])}
    assert document_rows(result, candidates, {}, tmp_path, aligned) == document_rows(result, candidates, {}, tmp_path)
    assert aligned == {}
