"""--task qa scores text. A prediction that is another JSON value is scored by its compact JSON text and counted;
an accepted answer is a string or a number (its JSON text), never a bool, null or object (refused by line)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vlm.data.records import qa_fields
from vlm.errors import VlmError
from vlm.evaluation import qa

# (prediction, ground truth, ANLS, not text)
ROWS = [
    (["a"], "a", 0.0, True),  # '["a"]' is not "a"
    (42, "42", 1.0, True),  # a number reads as its JSON text
    (42, 42, 1.0, True),  # ... and so does an accepted answer that is a number
    ("1.5", [1.50, "one and a half"], 1.0, False),
    (True, "true", 1.0, True),
    ({"a": 1}, '{"a":1}', 1.0, True),  # compact: no spaces after ':' and ','
    (None, "null", 1.0, True),
    ("plain text", ["Plain  Text"], 1.0, False),
]


def _file(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps({"id": f"q{k}", "prediction": p, "ground_truth": gt}) + "\n"
                            for k, (p, gt, *_) in enumerate(rows)))
    return path


def test_non_text_predictions_are_scored_by_their_compact_json_and_counted(tmp_path):
    result = qa.evaluate_qa([qa.group_from_file(_file(tmp_path / "g.jsonl", ROWS))], resamples=100)
    rows = result["per_document"]["g"]
    assert [r["anls"] for r in rows] == [r[2] for r in ROWS]
    assert [r["prediction"] for r in rows] == ['["a"]', "42", "42", "1.5", "true", '{"a":1}', "null", "plain text"]
    assert rows[2]["answers"] == ["42"] and rows[3]["answers"] == ["1.5", "one and a half"]
    assert result["groups"]["g"]["predictions"]["non_text"] == sum(r[3] for r in ROWS)
    assert "6 predictions were not text" in qa.markdown(result)


def test_the_count_is_printed_and_in_the_json(tmp_path):
    path = _file(tmp_path / "g.jsonl", ROWS)
    r = subprocess.run([sys.executable, "-m", "vlm.cli", "evaluate", "--task", "qa", "--predictions", str(path),
                        "--json", "--bootstrap", "100"], capture_output=True, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["g"]["predictions"]["non_text"] == 6
    assert "group g: 6 predictions were not text" in " ".join(r.stderr.split())


def test_text_predictions_are_not_counted(tmp_path):
    result = qa.evaluate_qa([qa.group_from_file(_file(tmp_path / "g.jsonl", [("42", "42"), ("x", ["x"])]))],
                            resamples=100)
    assert result["groups"]["g"]["predictions"]["non_text"] == 0 and result["groups"]["g"]["anls"] == 1.0


@pytest.mark.parametrize(("gt", "kind"), [(True, "JSON true"), (None, "JSON null"), (["a", False], "JSON false"),
                                          ({"a": "b"}, "a JSON object"), (["a", ["b"]], "a list inside"),
                                          ([], "empty")])
def test_accepted_answers_that_are_not_strings_or_numbers_are_refused_by_line(gt, kind, tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_text(json.dumps({"id": "q0", "prediction": "a", "ground_truth": "a"}) + "\n"
                    + json.dumps({"id": "q1", "prediction": "a", "ground_truth": gt}) + "\n")
    with pytest.raises(VlmError) as e:
        qa.group_from_file(path)
    assert f"{path}:2:" in str(e.value) and kind in str(e.value), str(e.value)
    assert "string or a number" in e.value.hint


def test_the_export_reads_answers_by_the_same_rule():
    assert qa_fields({"q": "How much?", "a": [42, " 1.5 ", "x"]}, "q", "a") == ("How much?", ["42", "1.5", "x"])
    with pytest.raises(ValueError, match="JSON true"):
        qa_fields({"q": "Paid?", "a": [True]}, "q", "a")
