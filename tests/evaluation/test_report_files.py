"""vlm evaluate --output writes every report file or none: a failure leaves the old report whole."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vlm.errors import VlmError
from vlm.evaluation import outputs

GT = {"total": {"total_price": "10,000"}, "menu": [{"nm": "Teh", "price": "8,000"}]}
OLD = {"report.md": "old report\n", "metrics.json": "{}\n", "per_document.csv": "old,csv\n", "chart.png": "old png"}


def _old_report(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in OLD.items():
        (folder / name).write_text(text)


def _state(folder: Path) -> dict[str, str]:
    return {p.name: (p.read_text() if p.is_file() else "<dir>") for p in sorted(folder.iterdir())}


def test_a_folder_where_a_report_file_goes_changes_nothing(tmp_path):
    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps({"id": "a", "prediction": json.dumps(GT), "ground_truth": GT}) + "\n")
    out = tmp_path / "report"
    _old_report(out)
    (out / "report.html").mkdir()
    before = _state(out)
    r = subprocess.run([sys.executable, "-m", "vlm.cli", "evaluate", "--predictions", str(preds), "--output", str(out)],
                       capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2
    assert f"{out / 'report.html'} is a directory" in r.stderr
    assert _state(out) == before  # no file replaced, no temp folder left


def test_a_write_that_fails_midway_replaces_nothing(tmp_path, monkeypatch):
    """A full disk on the third file (simulated: ENOSPC from fsync): the first two are not moved in either."""
    out = tmp_path / "report"
    _old_report(out)
    before = _state(out)
    calls = []
    real_fsync = os.fsync

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(outputs.os, "fsync", fsync)
    with pytest.raises(VlmError, match="No space left on device") as e:
        outputs.write_files(out, {"report.md": "new", "metrics.json": "{\"new\": 1}", "per_document.csv": "n",
                                  "chart.png": b"new"})
    assert str(out) in e.value.message and "old report files were kept" in e.value.hint
    assert _state(out) == before


def test_all_files_land_together(tmp_path):
    out = tmp_path / "report"
    _old_report(out)
    paths = outputs.write_files(out, {"report.md": "new", "extra.txt": "x"})
    assert [p.name for p in paths] == ["report.md", "extra.txt"]
    assert _state(out) == {**{k: v for k, v in OLD.items()}, "report.md": "new", "extra.txt": "x"}
