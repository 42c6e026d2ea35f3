"""``vlm sweep``: the method axis, --print-commands, the status file, and --run (failures, kills, resume)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from helpers import ENV, ROOT, VLM, fake_cli, invoke, make_toy_dataset, run_vlm, write_config

from vlm.training.checkpoints import list_checkpoints

CORD = str(ROOT / "configs" / "cord.yaml")


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_method_is_a_sweep_axis(in_tmp: Path):
    """LoRA or full, the recipe's decision, as grid points; a full point takes no LoRA rank and appears once."""
    r = invoke("sweep", CORD, "--method", "lora,full", "--lora-rank", "8,16", "--out-dir", "sweep", "--json")
    assert r.exit_code == 0, r.output
    rows = {Path(row["config"]).stem: row for row in json.loads(r.stdout)}
    assert sorted(rows) == ["cord_full", "cord_lora_r16", "cord_lora_r8"]
    full = yaml.safe_load((in_tmp / "sweep" / "cord_full.yaml").read_text())
    lora = yaml.safe_load((in_tmp / "sweep" / "cord_lora_r16.yaml").read_text())
    assert full["finetuning_type"] == "full" and not any(k.startswith("lora_") for k in full)
    assert full["learning_rate"] == 1e-5 and full["freeze_vision_tower"] is True  # render-config --method full's keys
    assert (lora["finetuning_type"], lora["lora_rank"], lora["learning_rate"]) == ("lora", 16, 1e-4)
    assert len({row["output_dir"] for row in rows.values()}) == 3
    r = invoke("sweep", CORD, "--method", "full", "--lr", "1e-5,2e-5", "--out-dir", "sweep2", "--json")
    lrs = [yaml.safe_load(Path(row["config"]).read_text())["learning_rate"] for row in json.loads(r.stdout)]
    assert lrs == [1e-5, 2e-5]  # the grid's learning rate wins over the method's default


@pytest.mark.parametrize("args, message", [
    (["--method", "lora,lora"], "--method takes distinct methods"),
    (["--method", "dora"], "--method takes distinct methods"),
    (["--method", "full", "--lora-rank", "8"], "--lora-rank needs a LoRA config or --method lora"),
    (["--lr", "1e-4", "--run", "--print-commands"], "--run and --print-commands are alternatives"),
])
def test_bad_sweep_options_are_refused(in_tmp: Path, args: list[str], message: str):
    r = run_vlm("sweep", CORD, "--out-dir", "sweep", *args, cwd=in_tmp)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert not (in_tmp / "sweep" / "sweep_status.json").exists()


@pytest.mark.slow  # a vlm child process that loads LLaMA-Factory (about 6 s of CPU each)
def test_print_commands_for_a_scheduler(in_tmp: Path):
    r = run_vlm("sweep", CORD, "--lr", "1e-4,5e-5", "--method", "lora,full", "--out-dir", "sweep",
                "--print-commands", cwd=in_tmp)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 4 and all(shlex.split(line)[:2] == ["vlm", "train"] for line in lines)
    for line in lines:  # each names a config that exists and validates
        assert (in_tmp / shlex.split(line)[2]).is_file()
    assert not (in_tmp / "sweep" / "sweep_status.json").exists()  # printing runs nothing


@pytest.mark.slow  # a vlm child process that loads LLaMA-Factory (about 6 s of CPU each)
def test_a_damaged_status_file_is_refused_and_kept(in_tmp: Path):
    (in_tmp / "sweep").mkdir()
    status = in_tmp / "sweep" / "sweep_status.json"
    status.write_text("{not json", encoding="utf-8")
    r = run_vlm("sweep", CORD, "--lr", "1e-4", "--out-dir", "sweep", "--run", cwd=in_tmp)
    assert r.returncode == 2 and f"{Path('sweep') / 'sweep_status.json'} is not a sweep status file" in r.stderr
    assert status.read_text() == "{not json"


# ---------------------------------------------------------------- --run with a fake llamafactory-cli

FAKE_TRAIN = """
import json, pathlib, sys, yaml
cfg = yaml.safe_load(open(sys.argv[2]))
out = pathlib.Path(cfg["output_dir"])
print("training", out)
if cfg["learning_rate"] > 5e-4:
    print("RuntimeError: loss is nan")
    sys.exit(3)
(out / "adapter_model.safetensors").write_bytes(b"weights")
"""


@pytest.mark.slow
def test_a_failed_point_does_not_stop_the_others(tmp_path: Path, tiny_model: Path):
    data = make_toy_dataset(tmp_path / "data")
    base = write_config(tmp_path / "base.yaml", tiny_model, data, "saves/run")
    env = {**ENV, "VLM_LLAMAFACTORY_CLI": str(fake_cli(tmp_path / "llamafactory-cli", FAKE_TRAIN))}
    argv = [*VLM, "sweep", str(base), "--lr", "1e-3,1e-4", "--out-dir", "sweep", "--run", "--json",
            "--no-select"]  # the fake writes no real adapter to rank
    r = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 1, r.stderr[-3000:]
    doc = json.loads(r.stdout)
    assert (doc["done"], doc["failed"]) == (1, 1)
    failed, done = doc["points"]
    assert failed["name"] == "base_lr1e-3" and failed["status"] == "failed" and failed["exit_code"] == 3
    assert "see " + str(tmp_path / "saves" / "run_lr1e-3" / "train.log") in failed["error"]
    assert done["status"] == "done" and done["attempts"] == 1
    status = json.loads((tmp_path / "sweep" / "sweep_status.json").read_text())
    assert [p["status"] for p in status["points"]] == ["failed", "done"]

    # A rerun retries the failed point only; the done one is not trained again.
    r = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True)
    rows = {p["name"]: p for p in json.loads(r.stdout)["points"]}
    assert rows["base_lr1e-3"]["attempts"] == 2 and rows["base_lr1e-4"]["attempts"] == 1
    assert "sweep point 1/1: base_lr1e-3 (was failed)" in r.stderr

    # Another grid in the same folder: only its own points are counted (the failed row above is kept, not counted).
    r = subprocess.run([*argv[:6], "1e-4", *argv[7:]], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout)
    assert (doc["done"], doc["failed"], [p["name"] for p in doc["points"]]) == (1, 0, ["base_lr1e-4"])
    kept = json.loads((tmp_path / "sweep" / "sweep_status.json").read_text())["points"]
    assert [p["name"] for p in kept] == ["base_lr1e-4", "base_lr1e-3"]


# ---------------------------------------------------------------- --run for real, killed and resumed


def _children_training(config: Path) -> list[int]:
    """Pids of live processes whose command line names ``config``."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if str(config).encode() in cmdline and state != "Z":
                found.append(int(proc.name))
    return found


@pytest.mark.slow
def test_killed_sweep_resumes_and_ranks_the_runs(tmp_path: Path, tiny_model: Path):
    """SIGKILL during the second point, rerun: the first point is not trained again, the second continues from
    its newest checkpoint, and the leaderboard ranks both runs."""
    data = make_toy_dataset(tmp_path / "data")
    # 64 steps, a checkpoint every 16: the kill lands a few steps after the first one, with 48 steps to spare.
    base = write_config(tmp_path / "base.yaml", tiny_model, data, "saves/run", num_train_epochs=8, save_steps=16,
                        logging_steps=1)
    argv = [*VLM, "sweep", str(base), "--lr", "1e-4,2e-4", "--out-dir", "sweep", "--run", "--json",
            "--max-new-tokens", "8", "--checkpoints", "last-1"]
    first = subprocess.Popen(argv, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second_out = tmp_path / "saves" / "run_lr2e-4"
    deadline = time.monotonic() + 600
    while not list_checkpoints(second_out) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    training = _children_training(second_out / "vlm_resolved_config.yaml")
    os.kill(first.pid, signal.SIGKILL)
    _, err = first.communicate(timeout=60)
    assert first.returncode == -signal.SIGKILL, err[-3000:]
    assert training, "no training child was found for the second point"
    while _children_training(second_out / "vlm_resolved_config.yaml") and time.monotonic() < deadline:
        time.sleep(0.1)  # the child dies with its parent (PR_SET_PDEATHSIG); nothing trains on unseen
    assert not _children_training(second_out / "vlm_resolved_config.yaml"), "the training child outlived the sweep"
    status = json.loads((tmp_path / "sweep" / "sweep_status.json").read_text())
    assert [p["status"] for p in status["points"]] == ["done", "running"]
    assert not (second_out / "adapter_model.safetensors").exists(), "the second point finished before the kill"
    first_manifest = (tmp_path / "saves" / "run_lr1e-4" / "vlm_run.json").read_text()
    killed_at = list_checkpoints(second_out)[-1]

    r = subprocess.run(argv, cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout)
    rows = {p["name"]: p for p in doc["points"]}
    assert (tmp_path / "saves" / "run_lr1e-4" / "vlm_run.json").read_text() == first_manifest  # not retrained
    assert rows["base_lr2e-4"]["status"] == "done" and rows["base_lr2e-4"]["attempts"] == 2
    assert Path(rows["base_lr2e-4"]["resumed_from"]).name == killed_at.name
    assert "sweep point 1/1: base_lr2e-4 (was running)" in r.stderr
    board = doc["leaderboard"]
    assert board and {Path(row["config"]).stem for row in board["runs"]} == {"base_lr1e-4", "base_lr2e-4"}


# ---------------------------------------------------------------- review findings (S-A .. S-E)


@pytest.mark.slow  # a vlm child process that loads LLaMA-Factory (about 6 s of CPU each)
def test_ranking_options_are_checked_before_any_training(in_tmp: Path, toy_dataset: Path):
    """S-A: a bad --checkpoints or --split fails at once, not after hours of training."""
    write_config(in_tmp / "base.yaml", in_tmp / "no-model-needed", toy_dataset, "saves/run")
    r = run_vlm("sweep", "base.yaml", "--lr", "1e-4", "--out-dir", "sweep", "--run", "--checkpoints", "newest",
                cwd=in_tmp)
    assert r.returncode == 2 and "--checkpoints 'newest' is not 'all' or 'last-N'" in r.stderr, r.stderr
    r = run_vlm("sweep", "base.yaml", "--lr", "1e-4", "--out-dir", "sweep", "--run", "--split", "nosuch", cwd=in_tmp)
    assert r.returncode == 2 and "'cord_nosuch', which is not registered" in r.stderr, r.stderr
    assert not (in_tmp / "sweep" / "sweep_status.json").exists() and not (in_tmp / "saves").exists()


def test_growing_a_grid_keeps_the_configs_of_its_points(in_tmp: Path):
    """S-C: a point's header names the whole grid; adding a value must not make its config 'hold something else'
    (nor change the hash that marks it done)."""
    from vlm.sweep.grid import SweepPoint, body

    assert invoke("sweep", CORD, "--lr", "1e-4", "--out-dir", "sweep").exit_code == 0
    first = (in_tmp / "sweep" / "cord_lr1e-4.yaml").read_text()
    r = invoke("sweep", CORD, "--lr", "1e-4,2e-4", "--out-dir", "sweep")
    assert r.exit_code == 0, r.output
    assert (in_tmp / "sweep" / "cord_lr1e-4.yaml").read_text() == first
    regrown = first.replace("--lr 1e-4 ", "--lr 1e-4,2e-4 ")
    assert regrown != first and body(regrown) == body(first)
    point = SweepPoint("p", Path("p.yaml"), {}, {}, text=first)
    assert point.sha256 == SweepPoint("p", Path("p.yaml"), {}, {}, text=regrown).sha256


def test_a_second_sweep_writes_nothing_while_one_runs(in_tmp: Path):
    """S-E: the folder's lock is taken before any config is written."""
    import fcntl

    (in_tmp / "sweep").mkdir()
    with open(in_tmp / "sweep" / ".vlm_sweep.lock", "a+") as held:  # what a running sweep --run holds
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        held.write("pid 4242")
        held.flush()
        r = run_vlm("sweep", CORD, "--lr", "1e-4", "--out-dir", "sweep", "--run", cwd=in_tmp)
    assert r.returncode == 2 and "another vlm sweep --run is running in sweep (pid 4242)" in r.stderr, r.stderr
    assert sorted(p.name for p in (in_tmp / "sweep").iterdir()) == [".vlm_sweep.lock"]


def test_summary_counts_only_this_grid_and_tolerates_odd_rows():
    """S-B/S-D: a row without a status (another tool's, or another version's) does not crash the summary."""
    from vlm.sweep.run import summary

    status = {"points": [{"status": "done"}, {"status": "failed"}, {"name": "old_point"}]}
    assert summary(status, 1) == {"pending": 0, "running": 0, "done": 1, "failed": 0}
    assert summary(status, 3)["None"] == 1
