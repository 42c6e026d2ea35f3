"""Augmentation's limits: a bounded number of copies, announced with its disk cost, streamed, and workers that die
with the export however it is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vlm.data import augment
from vlm.data.augment import MAX_COPIES, AugmentSpec
from vlm.errors import VlmError

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_copies_are_bounded():
    AugmentSpec(copies=MAX_COPIES)
    for n in (MAX_COPIES + 1, 20_000, -1):
        with pytest.raises(VlmError, match=f"0 to {MAX_COPIES} copies"):
            AugmentSpec(copies=n)


def test_a_huge_augment_is_refused_before_any_work(tmp_path):
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "vlm.cli", "save-cord-dataset-in-sharegpt-format", str(tmp_path / "out"),
                        "--source", str(tmp_path / "nowhere"), "--augment", "1000000000"],
                       capture_output=True, text=True, env=ENV)
    assert r.returncode == 2 and f"0 to {MAX_COPIES} copies" in r.stderr
    assert not (tmp_path / "out").exists() and time.monotonic() - t0 < 30


def test_the_disk_room_is_said_and_checked(tmp_path, monkeypatch, capsys):
    exported = [{"image": {"bytes": 2_000_000}} for _ in range(10)]
    spec = AugmentSpec(copies=5)
    augment._check_room(tmp_path, "train", exported, spec, 50, 50)
    assert "50 copies (5 of each of 10 images), 50 to make, about 100 MB on disk" in capsys.readouterr().err
    monkeypatch.setattr(augment.shutil, "disk_usage", lambda _: type("U", (), {"free": 10_000_000})())
    with pytest.raises(VlmError, match="needs about 100 MB"):
        augment._check_room(tmp_path, "train", exported, spec, 50, 50)


class _Pool:
    """Counts how many tasks are submitted and not yet collected."""

    def __init__(self):
        self.outstanding = self.most = 0

    def submit(self, fn, item):
        self.outstanding += 1
        self.most = max(self.most, self.outstanding)
        pool = self

        class Done:
            def result(self):
                pool.outstanding -= 1
                return fn(item)

        return Done()


def test_work_is_streamed_not_submitted_at_once():
    pool = _Pool()
    assert list(augment._bounded_map(pool, lambda x: x * 2, list(range(1000)), 8)) == [2 * x for x in range(1000)]
    assert pool.most == 8


def _descendants(pid: int) -> set[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        kids = {c for c, pp in parents.items() if pp == p}
        todo += list(kids - found)
        found |= kids
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killing_an_augmenting_export_leaves_no_worker(sig, tmp_path):
    source = tmp_path / "sample"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_cord_sample.py"), str(source), "--photo-like",
                    "--train", "6", "--validation", "1", "--test", "1"], check=True, capture_output=True)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "vlm.cli", "save-cord-dataset-in-sharegpt-format", str(out),
                             "--source", str(source), "--split", "train", "--augment", "20", "--workers", "2"],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: set[int] = set()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        workers = _descendants(proc.pid)
        if len(workers) >= 2 and any((out / "images" / "train_aug").glob("*.jpg")):
            break  # the pool and the resource tracker are up, and copies are being made
        time.sleep(0.2)
    assert proc.poll() is None and workers, "the export finished (or failed) before it could be killed"
    proc.send_signal(sig)
    proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.2)
    left = [p for p in workers if _alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, f"{len(left)} of {len(workers)} worker processes outlived the killed export"
