"""The prediction store keeps what it holds.

It is never seen without its tables (issue 10, item 5); ``--overwrite`` deletes no row before a new one
replaces it (issue 12, D1); a failing ``vlm predict`` leaves a SQLite file that is not a store, or a new
path, untouched (D5); ``evaluate`` and ``export-predictions`` read a store on read-only storage (D15).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ENV, VLM, make_toy_dataset

GROUP = "vanilla-model"


def _tables(path: Path) -> set[str] | str:
    """The tables a reader sees in ``path``, or the error it gets."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            db.close()
    except sqlite3.Error as e:
        return f"{type(e).__name__}: {e}"


def test_new_store_is_never_seen_without_its_tables(tmp_path: Path):
    """Look at the store's path at every call and return while ``Store`` creates it (deterministic: one thread)."""
    from vlm.inference.store import Store

    path = tmp_path / "runs" / "preds.sqlite"
    seen: list[tuple[str, str, set[str] | str]] = []

    def look(frame, event, arg):  # the interpreter runs a profile function with profiling off: no recursion
        if path.exists():
            what = getattr(arg, "__qualname__", None) if event.startswith("c_") else frame.f_code.co_name
            seen.append((event, str(what), _tables(path)))

    sys.setprofile(look)
    try:
        try:
            store = Store(path, write=True)
        except TypeError:  # the store before issue 10 had no write flag: it created the file on open
            store = Store(path)
    finally:
        sys.setprofile(None)
    store.close()
    bad = [s for s in seen if not (isinstance(s[2], set) and {"predictions", "runs"} <= s[2])]
    assert not bad, f"a reader saw {path} without its tables at: {bad[:3]}"
    assert seen, "the store never appeared while Store ran, so nothing was checked"
    assert sorted(p.name for p in path.parent.iterdir()) == ["preds.sqlite"]  # no temp file left behind


def _predict_cmd(tiny_model: Path, data: Path, store: Path, *extra: str) -> list[str]:
    return [*VLM, "predict", "--group", GROUP, "--backend", "auto", "--model", str(tiny_model),
            "--dataset-dir", str(data), "--split", "test", "--limit", "2", "--store", str(store),
            "--work-dir", str(store.parent / "work"), "--max-new-tokens", "8", "--batch-size", "2", *extra,
            "template=qwen2_vl", "image_max_pixels=16384", "cutoff_len=1024"]


def _rows(store: Path) -> dict[str, tuple[str, float]]:
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        return {r[0]: (r[1], r[2]) for r in db.execute("SELECT doc_id, raw, created FROM predictions WHERE grp=?",
                                                       (GROUP,))}
    finally:
        db.close()


@pytest.fixture(scope="module")
def predicted(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The toy dataset and a store holding the tiny model's predictions for its 2 test documents."""
    root = tmp_path_factory.mktemp("store")
    data = make_toy_dataset(root / "data")
    store = root / "preds.sqlite"
    r = subprocess.run(_predict_cmd(tiny_model, data, store), env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(_rows(store)) == ["test-00000", "test-00001"]
    return data, store


def _copy_dataset(src: Path, dst: Path) -> Path:
    """A copy of an exported dataset whose records point at the copy's own images."""
    shutil.copytree(src, dst)
    for file in dst.glob("cord_*.json"):
        file.write_text(file.read_text(encoding="utf-8").replace(str(src.resolve()), str(dst.resolve())),
                        encoding="utf-8")
    return dst


@pytest.mark.slow
def test_overwrite_that_fails_mid_run_keeps_every_stored_row(tmp_path: Path, tiny_model: Path, predicted):
    data, stored = predicted
    store = tmp_path / "preds.sqlite"
    shutil.copyfile(stored, store)
    before = _rows(store)
    broken = _copy_dataset(data, tmp_path / "data")
    (broken / "images" / "test" / "test-00001.jpg").unlink()  # the run plans fine, then cannot read this image

    r = subprocess.run(_predict_cmd(tiny_model, broken, store, "--overwrite"), env=ENV, capture_output=True,
                       text=True)
    assert r.returncode != 0 and "test-00001.jpg" in r.stderr, r.stderr[-1500:]  # failed on the image, as planned
    assert _rows(store) == before, f"--overwrite lost or changed stored rows; stderr: {r.stderr[-1500:]}"


@pytest.mark.slow
def test_overwrite_of_part_of_a_group_made_otherwise_is_refused_before_deleting(tmp_path: Path, tiny_model: Path,
                                                                                 predicted):
    data, stored = predicted
    store = tmp_path / "preds.sqlite"
    shutil.copyfile(stored, store)
    before = _rows(store)

    r = subprocess.run([*_predict_cmd(tiny_model, data, store, "--overwrite"), "--limit", "1",
                        "--max-new-tokens", "9"], env=ENV, capture_output=True, text=True)
    assert r.returncode == 2, r.stderr[-1500:]
    assert _rows(store) == before, f"a refused --overwrite deleted rows; stderr: {r.stderr[-1500:]}"
    assert "--limit" in r.stderr and "test-00001" in r.stderr, r.stderr[-1500:]  # says which row and how to fix


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_predict_refuses_a_sqlite_file_that_is_not_a_store_and_leaves_it_unchanged(tmp_path: Path, tiny_model: Path):
    data = make_toy_dataset(tmp_path / "data")
    folder = tmp_path / "mine"
    folder.mkdir()
    notes = folder / "notes.sqlite"
    db = sqlite3.connect(notes)
    with db:
        db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        db.execute("INSERT INTO notes (text) VALUES ('keep me')")
    db.close()
    digest = _sha256(notes)

    r = subprocess.run(_predict_cmd(tiny_model, data, notes), env=ENV, capture_output=True, text=True)
    assert r.returncode == 2, r.stderr[-1500:]
    assert "not a vlm prediction store" in r.stderr, r.stderr[-1500:]
    assert _sha256(notes) == digest, "predict modified a SQLite file that is not a store"
    assert sorted(p.name for p in folder.iterdir()) == ["notes.sqlite"]  # no -wal, -shm or temp file either


@pytest.mark.slow  # loads LLaMA-Factory to find that the model is missing
def test_predict_that_fails_before_generating_creates_no_store(tmp_path: Path, tiny_model: Path):
    data = make_toy_dataset(tmp_path / "data")
    folder = tmp_path / "runs"
    store = folder / "preds.sqlite"
    # Fails after planning, when the generator loads the model (the old code had created the store by then) ...
    cmd = _predict_cmd(tmp_path / "no-such-model", data, store)
    no_model = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    # ... and fails while reading the inputs.
    no_dataset = subprocess.run([*_predict_cmd(tiny_model, data, store), "--dataset", "cord_nope"], env=ENV,
                                capture_output=True, text=True)
    assert no_model.returncode != 0 and no_dataset.returncode == 2, no_model.stderr[-1500:] + no_dataset.stderr[-1500:]
    assert not store.exists(), f"a failed predict created {store}; stderr: {no_model.stderr[-1500:]}"
    assert not folder.exists() or not any(folder.iterdir()), sorted(p.name for p in folder.iterdir())


def _drop_override_caps() -> None:
    """In the child, before exec: root loses the capabilities that let it ignore file modes
    (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER), so a 0444 file in a 0555 folder is as
    read-only to it as on read-only storage. Dropped from the bounding set, so exec keeps them off."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2, 3):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def _read_only_run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True,
                          preexec_fn=_drop_override_caps if os.geteuid() == 0 else None)


def test_evaluate_and_export_read_a_store_on_read_only_storage(tmp_path: Path):
    from vlm.inference.store import Prediction, Store

    ro = tmp_path / "ro"
    ro.mkdir()
    store = ro / "preds.sqlite"
    truth = [{"menu": [{"nm": f"item {i}", "cnt": "1", "price": f"{i + 1}0,000"}],
             "total": {"total_price": f"{i + 1}0,000"}} for i in range(3)]
    try:
        opened = Store(store, write=True)
    except TypeError:  # the store before issues 10 and 12 had no write flag: it opened read-write
        opened = Store(store)
    with opened as s:
        for group, answer in (("vanilla-model", lambda t: {"total": t["total"]}), ("finetuned-model", lambda t: t)):
            s.put_many([Prediction(group, "test", f"test-{i:05d}", json.dumps(answer(t)), answer(t), None, [], t)
                        for i, t in enumerate(truth)])
    assert sorted(p.name for p in ro.iterdir()) == ["preds.sqlite"]
    store.chmod(0o444)
    ro.chmod(0o555)
    digest = _sha256(store)
    out = tmp_path / "out"
    out.mkdir()
    try:
        try:
            probe = _read_only_run([sys.executable, "-c", f"open({str(ro / 'probe')!r}, 'w')"])
        except subprocess.SubprocessError as e:  # root without CAP_SETPCAP cannot drop capabilities
            pytest.skip(f"cannot make a read-only folder here: {e}")
        if probe.returncode == 0:
            pytest.skip("cannot make a read-only folder here (file modes are not enforced for this user)")

        ev = _read_only_run([*VLM, "evaluate", "--groups", "vanilla-model", "finetuned-model", "--store", str(store),
                             "--bootstrap", "100", "--json"])
        assert ev.returncode == 0, ev.stderr[-1500:]
        groups = json.loads(ev.stdout)
        assert groups["vanilla-model"]["documents"] == groups["finetuned-model"]["documents"] == 3
        assert groups["finetuned-model"]["ted_accuracy"] == 1.0 > groups["vanilla-model"]["ted_accuracy"]

        exported = out / "finetuned.jsonl"
        ex = _read_only_run([*VLM, "export-predictions", "--group", "finetuned-model", str(exported),
                             "--store", str(store)])
        assert ex.returncode == 0, ex.stderr[-1500:]
        lines = [json.loads(x) for x in exported.read_text().splitlines()]
        assert [x["id"] for x in lines] == ["test-00000", "test-00001", "test-00002"]
        assert [x["ground_truth"] for x in lines] == truth

        assert _sha256(store) == digest
        assert sorted(p.name for p in ro.iterdir()) == ["preds.sqlite"]
    finally:
        ro.chmod(0o755)
