"""A group never holds two runs' settings: the check runs inside the write transaction, and vlm evaluate refuses a
group that holds them anyway (a store written by an older vlm)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest

from vlm.errors import VlmError
from vlm.inference.store import Prediction, Store

GT = {"total": {"total_price": "10,000"}}


def _rows(ids, gen_hash):
    return [Prediction("g", "test", d, json.dumps(GT), GT, None, [], GT, 0.1, "model", None, "prompt", gen_hash)
            for d in ids]


def test_a_second_run_with_other_settings_cannot_commit_into_the_group(tmp_path):
    path = tmp_path / "p.sqlite"
    first, second = Store(path, write=True), Store(path, write=True)  # both planned on an empty group
    first.put_many(_rows(["a", "b"], "max_new_tokens=32"))
    with pytest.raises(VlmError, match="made with other settings by another run"):
        second.put_many(_rows(["c", "d"], "max_new_tokens=64"))
    second.put_many(_rows(["c"], "max_new_tokens=32"))  # the same settings still go in
    assert sorted(first.done_ids("g", "test")) == ["a", "b", "c"]
    assert first.settings_in("g", "test") == {("model", None, "prompt", "max_new_tokens=32"): 3}
    first.close()
    second.close()


def test_an_overwrite_replaces_its_own_documents(tmp_path):
    path = tmp_path / "p.sqlite"
    with Store(path, write=True) as s:
        s.put_many(_rows(["a", "b"], "old"))
        with pytest.raises(VlmError):
            s.put_many(_rows(["a"], "new"))  # not an --overwrite run: b and a are someone else's
        s.put_many(_rows(["a"], "new"), replaceable={"a", "b"})  # --overwrite of a and b, chunk by chunk
        s.put_many(_rows(["b"], "new"), replaceable={"a", "b"})
        assert s.settings_in("g", "test") == {("model", None, "prompt", "new"): 2}


def test_evaluate_refuses_a_group_of_mixed_settings(tmp_path):
    path = tmp_path / "p.sqlite"
    with Store(path, write=True) as s:
        s.put_many(_rows(["a", "b", "c"], "max_new_tokens=32"))
        s.put_many(_rows(["d", "e", "f"], "max_new_tokens=32"))
    with sqlite3.connect(path) as db:  # as an older vlm could leave it
        db.execute("UPDATE predictions SET gen_hash='max_new_tokens=64' WHERE doc_id IN ('e', 'f')")
    r = subprocess.run([sys.executable, "-m", "vlm.cli", "evaluate", "--groups", "g", "--store", str(path)],
                       capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2
    assert "holds predictions made with 2 different settings (4, 2 rows)" in r.stderr
    assert "--overwrite" in r.stderr
