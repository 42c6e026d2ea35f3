"""The forgetting check: ANLS and exact match by hand, and QA export -> register -> evaluate through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ENV, ROOT, VLM


@pytest.mark.parametrize("a, b, distance", [("kitten", "sitting", 3), ("", "abc", 3), ("flaw", "lawn", 2),
                                             ("same", "same", 0)])
def test_levenshtein(a, b, distance):
    from vlm.evaluation.qa_metrics import levenshtein

    assert levenshtein(a, b) == levenshtein(b, a) == distance


@pytest.mark.parametrize("answers, prediction, expected", [
    (["Paris"], "paris", 1.0),  # case
    (["New York"], "  new   YORK ", 1.0),  # whitespace: stripped, runs collapsed
    (["abcd"], "abce", 0.75),  # NL = 1/4
    (["abc"], "abd", 1 - 1 / 3),  # NL = 1/3 < 0.5
    (["ab"], "ac", 0.0),  # NL = 0.5 reaches the threshold: 0, not 0.5
    (["abcd"], "abxy", 0.0),  # NL = 2/4
    (["abcde"], "abxye", 0.6),  # NL = 2/5
    (["kitten", "sitting"], "sittin", 1 - 1 / 7),  # best of several: kitten NL 2/6 (0.667), sitting NL 1/7
    (["60.000", "60000"], "60000", 1.0),
    ("Paris", None, 0.0),  # no prediction scores as ""
    ([""], "", 1.0),  # both empty: identical
])
def test_anls_hand_computed(answers, prediction, expected):
    from vlm.evaluation.qa_metrics import anls

    assert anls(answers, prediction) == pytest.approx(expected)


def test_exact_match_and_aggregate_over_a_resample():
    import numpy as np

    from vlm.evaluation.qa_metrics import aggregate_qa, exact_match, score_qa

    assert exact_match(["New York", "NYC"], " nyc ") == 1.0
    assert exact_match(["New York"], "New-York") == 0.0
    scores = score_qa(["paris", "abce", "zzz"], [["Paris"], "abcd", ["rome"]])
    assert scores.anls.tolist() == [1.0, 0.75, 0.0] and scores.exact_match.tolist() == [1.0, 0.0, 0.0]
    assert aggregate_qa(scores) == {"anls": pytest.approx(1.75 / 3), "exact_match": pytest.approx(1 / 3)}
    assert aggregate_qa(scores, np.array([0, 0, 1])) == {"anls": pytest.approx(2.75 / 3),
                                                         "exact_match": pytest.approx(2 / 3)}


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_qa_workflow_export_register_evaluate(tmp_path: Path):
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_qa_sample.py"), str(tmp_path / "qa"),
                        "--train", "2", "--validation", "1", "--test", "10"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "data"
    r = subprocess.run([*VLM, "export", str(out), "--source", str(tmp_path / "qa"), "--name", "docvqa",
                        "--prompt", "Answer with a few words.", "--question-column", "question",
                        "--target-column", "answers", "--split", "test", "--json"],
                       capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr
    records = json.loads((out / "docvqa_test.json").read_text())
    assert len(records) == 10
    for rec in records:
        user, assistant = rec["messages"]
        assert user["content"].startswith("<image>Answer with a few words.\n") and user["content"].endswith("?")
        assert assistant["content"] == rec["answers"][0]  # plain text, not JSON
    assert any(not rec["answers"][0].startswith(("{", "[", '"')) for rec in records)
    r = subprocess.run([*VLM, "register-dataset", str(out / "docvqa_test.json"), "--name", "general_qa",
                        "--json"], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr
    assert "general_qa" in json.loads((out / "dataset_info.json").read_text())

    from vlm.data.records import ground_truth

    assert ground_truth(records[0]) == records[0]["answers"]  # what vlm predict stores for a QA record
    # Base model right everywhere; the fine-tune answers the total to every question (the forgetting).
    base = _write(tmp_path / "base.jsonl", [{"id": r["id"], "prediction": r["answers"][-1].upper(),
                                             "ground_truth": r["answers"]} for r in records])
    tuned = _write(tmp_path / "tuned.jsonl", [{"id": r["id"], "prediction": "zzzzzzzzzzzzzzzzzzzzzzz",
                                               "ground_truth": r["answers"]} for r in records])
    r = subprocess.run([*VLM, "evaluate", "--task", "qa", "--predictions", str(base), "--predictions", str(tuned),
                        "--output", str(tmp_path / "report"), "--json"], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["base"]["anls"] == 1.0 and result["base"]["exact_match"] == 1.0
    assert result["tuned"]["anls"] == 0.0
    assert result["tuned"]["delta"]["anls"] == {"delta": -1.0, "ci95": [-1.0, -1.0]}
    assert result["verdicts"] == {"tuned": "forgetting"}
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| ANLS (τ=0.5) | 1.000 | 0.000 | -1.000 [-1.000, -1.000] |" in report
    assert {p.name for p in (tmp_path / "report").iterdir()} >= {"report.md", "metrics.json", "per_document.csv",
                                                                  "chart.png"}
    r = subprocess.run([*VLM, "evaluate", "--task", "qa", "--predictions", str(base), "--predictions", str(tuned)],
                       capture_output=True, text=True, env=ENV)
    assert r.returncode == 0 and "forgetting" in r.stdout and "95% paired-bootstrap" in r.stdout


def test_qa_groups_from_the_store_get_paired_cis(tmp_path: Path):
    """Stored QA predictions (ground truth = the accepted answers, as vlm predict stores them) evaluate with CIs."""
    from vlm.evaluation.compare import bootstrap_delta
    from vlm.evaluation.qa import evaluate_qa, load_groups
    from vlm.evaluation.qa_metrics import aggregate_qa, score_qa
    from vlm.inference.store import Prediction, Store

    answers = [["Kopi Susu"], ["8,800", "8800"], ["RAMEN YA"], ["35,000", "35000"], ["Croissant"], ["12,000", "12000"]]
    preds = {"vanilla": ["kopi susu", "8800", "RAMEN", "35,000", "croissant", "12.000"],
             "tuned": ["kopi", "8,800", "{}", "35000", "Croissant", "1"]}
    store = tmp_path / "p.sqlite"
    with Store(store, write=True) as s:
        for group, raws in preds.items():
            s.put_many([Prediction(group, "test", f"test-{k:05d}", raw, None, "not JSON", [], answers[k])
                        for k, raw in enumerate(raws)])
    result = evaluate_qa(load_groups(store, ["vanilla", "tuned"], None, "test"), resamples=200, seed=0)
    want = {g: aggregate_qa(score_qa(p, answers)) for g, p in preds.items()}
    assert result["groups"]["vanilla"]["anls"] == pytest.approx(want["vanilla"]["anls"])
    ci = bootstrap_delta(score_qa(preds["vanilla"], answers), score_qa(preds["tuned"], answers), 6, 200, 0,
                         aggregate=aggregate_qa)
    assert result["groups"]["tuned"]["delta"]["anls"]["ci95"] == list(ci["anls"])
    assert result["groups"]["tuned"]["delta"]["anls"]["delta"] == pytest.approx(
        want["tuned"]["anls"] - want["vanilla"]["anls"])
