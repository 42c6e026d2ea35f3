"""Odd --predictions files: read what can be read (gzip, a byte-order mark), name the path and the real reason
for the rest, never a Python exception name or a generic hint."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

GT = {"total": {"total_price": "10,000"}}
ROWS = [{"id": f"d{i}", "prediction": json.dumps(GT if i % 2 else {"total": {"total_price": "9"}}), "ground_truth": GT}
        for i in range(4)]
TEXT = "".join(json.dumps(r) + "\n" for r in ROWS)
QA_TEXT = "".join(json.dumps({"id": f"q{i}", "prediction": "ten", "ground_truth": ["ten", "10"]}) + "\n"
                  for i in range(4))


def evaluate(path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vlm.cli", "evaluate", "--predictions", str(path), "--json",
                           "--bootstrap", "100", *extra], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.fixture
def plain_scores(tmp_path):
    path = tmp_path / "plain.jsonl"
    path.write_text(TEXT, encoding="utf-8")
    r = evaluate(path)
    assert r.returncode == 0, r.stderr
    return next(iter(json.loads(r.stdout).values()))


@pytest.mark.parametrize("kind", ["gzip", "bom"])
def test_readable_variants_score_like_the_plain_file(kind, tmp_path, plain_scores):
    path = tmp_path / ("p.jsonl.gz" if kind == "gzip" else "p.jsonl")
    if kind == "gzip":
        path.write_bytes(gzip.compress(TEXT.encode("utf-8")))
    else:
        path.write_bytes(b"\xef\xbb\xbf" + TEXT.encode("utf-8"))
    r = evaluate(path)
    assert r.returncode == 0, r.stderr
    assert next(iter(json.loads(r.stdout).values())) == plain_scores


def _odd(kind: str, tmp_path: Path, text: str) -> Path:
    if kind == "latin-1":
        path = tmp_path / "p.jsonl"
        lines = text.splitlines(keepends=True)
        path.write_bytes(lines[0].encode() + lines[1].replace("1", "caf\u00e9", 1).encode("latin-1"))
    elif kind == "directory":
        path = tmp_path / "run"
        path.mkdir()
    elif kind == "fifo":
        path = tmp_path / "pipe"
        os.mkfifo(path)
    elif kind == "device":
        path = Path("/dev/null")
    else:
        path = tmp_path / "p.jsonl.gz"
        path.write_bytes(gzip.compress(text.encode())[:-12])  # cut short
    return path


@pytest.mark.parametrize(("kind", "reason"), [("latin-1", "is not UTF-8 text (line 2"), ("directory", "is a directory"),
                                              ("fifo", "is a FIFO"), ("device", "is a device"),
                                              ("cut-gzip", "damaged gzip")])
@pytest.mark.parametrize("task", ["extraction", "qa"])
def test_unreadable_files_are_named_with_the_reason(kind, reason, task, tmp_path):
    path = _odd(kind, tmp_path, QA_TEXT if task == "qa" else TEXT)
    r = evaluate(path, "--task", task)
    assert r.returncode == 2, r.stderr
    error = json.loads(r.stdout)["error"]
    assert str(path) in error and reason in error, error
    assert "Error:" not in error and "this is a bug" not in r.stderr
