"""QA groups (ground truths that are accepted answers) under the default extraction task are refused with a hint
to use --task qa: the CORD metrics scored them without complaint, menu rows F1 1.000 for a model with no JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vlm.errors import VlmError
from vlm.evaluation.compare import evaluate_groups, group_from_file, groups_from_store
from vlm.inference.store import Prediction, Store

ANSWERS = [["Kopi Susu"], ["8,800", "8800"], ["Ramen"], ["35,000", "35000"]]
PREDS = ["kopi susu", "8800", "ramen", "35,000"]  # text, no JSON at all


def evaluate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vlm.cli", "evaluate", "--json", "--bootstrap", "100", *args],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _qa_file(path: Path) -> Path:
    path.write_text("".join(json.dumps({"id": f"q{k}", "prediction": p, "ground_truth": a}) + "\n"
                            for k, (p, a) in enumerate(zip(PREDS, ANSWERS))))
    return path


def test_a_qa_file_under_the_default_task_is_refused_with_the_hint(tmp_path):
    path = _qa_file(tmp_path / "vanilla.jsonl")
    r = evaluate("--predictions", str(path))
    assert r.returncode == 2, r.stdout
    out = json.loads(r.stdout)
    assert "group vanilla: the ground truths are short answers" in out["error"] and "'q0'" in out["error"]
    assert "--task qa" in out["hint"]
    r = evaluate("--predictions", str(path), "--task", "qa")  # the same file where it belongs
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["vanilla"]["anls"] == 1.0


def test_qa_store_groups_under_the_default_task_are_refused(tmp_path):
    store = tmp_path / "p.sqlite"
    with Store(store, write=True) as s:
        for group in ("base", "tuned"):
            s.put_many([Prediction(group, "test", f"q{k}", p, None, "not JSON", [], a)
                        for k, (p, a) in enumerate(zip(PREDS, ANSWERS))])
    with pytest.raises(VlmError, match="group base: the ground truths are short answers") as e:
        evaluate_groups(groups_from_store(store, ["base", "tuned"], "test"), resamples=100)
    assert "--task qa" in e.value.hint


def test_a_llamafactory_file_of_a_qa_export_gets_the_hint(tmp_path):
    """LLaMA-Factory's label is the first answer's text, not JSON: refused as before, now pointing at --task qa."""
    path = tmp_path / "generated_predictions.jsonl"
    path.write_text("".join(json.dumps({"prompt": "p", "predict": p, "label": a[0]}) + "\n"
                            for p, a in zip(PREDS, ANSWERS)))
    with pytest.raises(VlmError, match="the ground truth is not a JSON object") as e:
        group_from_file(path)
    assert "--task qa" in (e.value.hint or "")


def test_extraction_groups_are_not_mistaken_for_qa(tmp_path):
    gts = [{"total": {"total_price": "1,000"}}, {"menu": [{"nm": "Kopi"}]}]
    path = tmp_path / "a.jsonl"
    path.write_text("".join(json.dumps({"id": f"d{k}", "prediction": "no json", "ground_truth": g}) + "\n"
                            for k, g in enumerate(gts)))
    result = evaluate_groups([group_from_file(path)], resamples=100)
    assert result["documents"] == 2 and result["groups"]["a"]["valid_json"] == 0.0
