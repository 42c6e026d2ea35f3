"""Failures under --json still print one JSON object on stdout, and an empty value (an unset shell variable)
is refused before anything is read or written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vlm.cli", *args], cwd=cwd, env=ENV, capture_output=True, text=True)


# One failing call per command that takes --json: a missing file, a bad store, a usage error.
FAILING = [
    ("evaluate", "--predictions", "missing.jsonl"),
    ("evaluate", "--groups", "a", "--store", "no-such-folder/"),
    ("validate", "missing.yaml"),
    ("stats", "missing.yaml"),
    ("render-config", "out.yaml", "not_a_key_value"),
    ("train", "missing.yaml"),
    ("merge", "missing.yaml"),
    ("sweep", "missing.yaml", "--lr", "1e-4"),
    ("select", "missing.yaml"),
    ("predict", "--group", "g", "--config", "missing.yaml"),
    ("parity", "--config", "missing.yaml", "--backends", "transformers,transformers"),
    ("save-cord-dataset-in-sharegpt-format", "out", "--source", "no-such-folder/"),
    ("register-dataset", "missing.json", "--name", "x"),
    ("evaluate", "--no-such-option"),  # a usage error, from click
]


@pytest.mark.parametrize("args", FAILING, ids=lambda a: " ".join(a))
def test_a_failure_under_json_prints_one_json_object(args, tmp_path):
    r = run(*args, "--json", cwd=tmp_path)
    assert r.returncode != 0, r.stdout
    doc = json.loads(r.stdout)  # the whole of stdout is one JSON document
    assert doc["ok"] is False and doc["error"] and doc["exit_code"] == r.returncode
    assert "hint" in doc
    assert "error" in r.stderr.lower()  # the person reading the terminal still sees it


def test_without_json_stdout_stays_empty(tmp_path):
    r = run("evaluate", "--predictions", "missing.jsonl", cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == "" and "missing.jsonl" in r.stderr


def _predictions(folder: Path) -> Path:
    path = folder / "p.jsonl"
    gt = {"total": {"total_price": "10,000"}}
    path.write_text("".join(json.dumps({"id": f"d{i}", "prediction": json.dumps(gt), "ground_truth": gt}) + "\n"
                            for i in range(3)))
    return path


@pytest.mark.parametrize("flag", [["--output", ""], ["--output="]])
def test_an_empty_output_is_refused_and_the_working_directory_untouched(flag, tmp_path):
    preds = _predictions(tmp_path)
    mine = {name: f"my own {name}\n" for name in ("report.md", "metrics.json", "per_document.csv", "report.html")}
    for name, text in mine.items():
        (tmp_path / name).write_text(text)
    before = sorted(p.name for p in tmp_path.iterdir())
    r = run("evaluate", "--predictions", str(preds), *flag, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "--output is empty" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert {name: (tmp_path / name).read_text() for name in mine} == mine


def test_an_empty_positional_argument_is_refused(tmp_path):
    r = run("register-dataset", "", "--name", "x", "--json", cwd=tmp_path)
    assert r.returncode == 2 and "argument 1 of register-dataset is empty" in json.loads(r.stdout)["error"]
    assert list(tmp_path.iterdir()) == []


def test_an_empty_value_after_the_double_dash_is_not_an_option(tmp_path):
    """Arguments after ``--`` are the user's own (e.g. overrides); only option values are checked."""
    from vlm.cli import empty_argument

    assert empty_argument(["render-config", "x.yaml", "--", ""]) is None
    assert empty_argument(["evaluate", "--output", ""]) == "--output"
