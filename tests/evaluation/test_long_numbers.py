"""A number of more digits than Python's int() converts (4,300) is scored as text, not a crash of the whole run."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

from vlm.evaluation.metrics import number_key
from vlm.inference.parsing import parse_prediction

BIG = "1" * 5000
GT = {"total": {"total_price": "10,000"}, "menu": [{"nm": "Teh", "price": "8,000"}]}


def test_an_answer_with_a_huge_integer_is_scored_as_its_text(tmp_path):
    bare = '{"total": {"total_price": ' + BIG + '}, "menu": [{"nm": "Teh", "price": "8,000"}]}'
    quoted = json.dumps({"total": {"total_price": BIG}, "menu": [{"nm": "Teh", "price": "8,000"}]})
    for raw in (bare, quoted):
        parsed = parse_prediction(raw)
        assert parsed.valid and parsed.value["total"]["total_price"] == BIG
    files = []
    for name, raw in (("bare", bare), ("quoted", quoted)):
        files += ["--predictions", str(tmp_path / f"{name}.jsonl")]
        (tmp_path / f"{name}.jsonl").write_text(json.dumps({"id": "d", "prediction": raw, "ground_truth": GT}) + "\n")
    r = subprocess.run([sys.executable, "-m", "vlm.cli", "evaluate", *files, "--json", "--bootstrap", "100"],
                       capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    bare_scores, quoted_scores = json.loads(r.stdout).values()
    keys = ("valid_json", "ted_accuracy", "f1", "ted_accuracy_numnorm", "f1_numnorm")
    assert [bare_scores[k] for k in keys] == [quoted_scores[k] for k in keys]
    assert bare_scores["valid_json"] == 1.0 and 0 < bare_scores["f1"] < 1


def test_a_huge_ground_truth_and_a_huge_line_are_read(tmp_path):
    line_with_int = '{"id": "raw", "prediction": "{}", "ground_truth": {"total": {"total_price": ' + BIG + '}}}'
    path = tmp_path / "p.jsonl"
    path.write_text(line_with_int + "\n" + json.dumps({"id": "ok", "prediction": json.dumps(GT),
                                                       "ground_truth": GT}) + "\n")
    r = subprocess.run([sys.executable, "-m", "vlm.cli", "evaluate", "--predictions", str(path), "--json"],
                       capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    group = next(iter(json.loads(r.stdout).values()))
    assert group["valid_json"] == 1.0 and 0 < group["f1"] < 1


def test_number_key_strips_zeros_as_int_did():
    rng = random.Random(0)
    for _ in range(2000):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 30)))
        assert number_key(digits) == str(int(digits))
        assert number_key("-" + digits) == (str(-int(digits)) if int(digits) else "0")
    assert number_key("Rp 60.000") == "60000" and number_key("12,50") == "12.5"
    assert number_key("0" * 10 + BIG) == BIG
