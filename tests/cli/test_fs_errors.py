"""Issue 12, D13: ordinary file-system problems get one line naming the path and the reason, in every command.

Each case runs the real console entry point (``python -m vlm.cli``), so the error goes through
``vlm.cli.main`` exactly as a user sees it: exit 2, no traceback, no "this is a bug" catch-all.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from helpers import make_toy_dataset
from helpers import run_vlm as vlm


@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with an export, a plain file, a folder, a text file posing as a store, and a real store."""
    root = tmp_path_factory.mktemp("fs")
    make_toy_dataset(root / "data")
    (root / "a_file").write_text("not a folder")
    (root / "a_dir").mkdir()
    (root / "notes.sqlite").write_text("my notes, not a database\n")
    with sqlite3.connect(root / "empty.sqlite") as db:
        db.execute("create table t (x)")
    (root / "run.yaml").write_text(f"model_name_or_path: m\ndataset: cord_train\ndataset_dir: {root / 'data'}\n"
                                   f"template: qwen2_vl\ndo_train: true\noutput_dir: {root / 'a_file' / 'out'}\n")
    return root


CASES = {
    "export into a file": (["save-cord-dataset-in-sharegpt-format", "a_file/out", "--source", "data"], "a_file"),
    "register into /proc": (["register-dataset", "data/cord_train.json", "--name", "x", "--dataset-info",
                             "/proc/vlm-test/dataset_info.json"], "/proc/vlm-test"),
    "render-config onto a folder": (["render-config", "a_dir"], "a_dir"),
    "train into a file": (["train", "run.yaml"], "a_file"),
    "predict with a folder as store": (["predict", "--group", "g", "--store", "a_dir", "--dataset-dir", "data",
                                        "--model", "m"], "a_dir"),
    "predict with a text file as store": (["predict", "--group", "g", "--store", "notes.sqlite", "--dataset-dir",
                                           "data", "--model", "m"], "notes.sqlite"),
    "evaluate --output a file": (["evaluate", "--groups", "g", "--store", "empty.sqlite", "--output", "a_file"],
                                 "a_file"),
    "export-predictions from a text file": (["export-predictions", "--group", "g", "out.jsonl", "--store",
                                             "notes.sqlite"], "notes.sqlite"),
}


# render-config validates what it writes, loading LLaMA-Factory in the child process (about 6 s of CPU).
LOADS_LLAMAFACTORY = {"render-config onto a folder"}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in LOADS_LLAMAFACTORY else c
                                  for c in CASES])
def test_file_system_problems_name_the_path(place: Path, case: str):
    args, path = CASES[case]
    before = {p: p.read_bytes() for p in place.rglob("*") if p.is_file()}
    r = vlm(*args, cwd=place)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and path in lines[0], r.stderr[-2000:]
    assert "bug" not in r.stderr and "Traceback" not in r.stderr
    after = {p: p.read_bytes() for p in place.rglob("*") if p.is_file() and not p.name.endswith(".lock")}
    assert after == {p: b for p, b in before.items() if not p.name.endswith(".lock")}  # nothing changed


def test_export_predictions_onto_a_folder(place: Path):
    r = vlm("export-predictions", "--group", "g", "a_dir", "--store", "empty.sqlite", cwd=place)
    assert r.returncode == 2 and "a_dir" in r.stderr and "bug" not in r.stderr
    assert list((place / "a_dir").iterdir()) == []
