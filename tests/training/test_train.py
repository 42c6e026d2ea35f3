"""``vlm train`` and ``vlm merge``: launch plans, live progress, interrupt and resume, exit codes.

Training and merging run the real ``llamafactory-cli`` on the tiny Qwen2-VL. A fake
child (via ``VLM_LLAMAFACTORY_CLI``) stands in only for a failing exit code and for
signal forwarding to the child's process group.
"""

from __future__ import annotations

import glob
import io
import json
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from helpers import ENV, VLM, fake_cli, invoke, make_toy_dataset, write_config
from rich.console import Console

from vlm.errors import VlmError
from vlm.lf.progress import (
    TrainerLogTail,
    TrainProgress,
    parse_lines,
    progress_from_file,
    progress_line,
    render_progress,
)
from vlm.training.checkpoints import list_checkpoints

TOTAL_STEPS = 64  # write_config: 8 samples, batch 1, 8 epochs
RECORDED_LOG = [
    {"current_steps": 1, "total_steps": 8, "loss": 6.9584, "lr": 5e-05, "epoch": 0.25, "percentage": 12.5,
     "elapsed_time": "0:00:01", "remaining_time": "0:00:07"},
    {"current_steps": 4, "total_steps": 8, "loss": 6.9541, "lr": 3.125e-05, "epoch": 1.0, "percentage": 50.0,
     "elapsed_time": "0:00:04", "remaining_time": "0:00:04"},
    {"current_steps": 4, "total_steps": 8, "eval_loss": 6.9742, "epoch": 1.0, "percentage": 50.0,
     "elapsed_time": "0:00:05", "remaining_time": "0:00:05"},
    {"current_steps": 8, "total_steps": 8, "loss": 6.9576, "lr": 6.25e-06, "epoch": 2.0, "percentage": 100.0,
     "elapsed_time": "0:00:09", "remaining_time": "0:00:00"},
]


@pytest.fixture
def workdir(tmp_path: Path, toy_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path / "run.yaml", tmp_path / "no-model-needed", toy_dataset, "saves/run")
    return tmp_path


# ---------------------------------------------------------------- launch plans


def test_dry_run_single_node(workdir: Path):
    r = invoke("train", "run.yaml", "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    plan = json.loads(r.stdout)
    resolved = workdir / "saves" / "run" / "vlm_resolved_config.yaml"
    assert Path(plan["argv"][0]).name == "llamafactory-cli" and Path(plan["argv"][0]).is_file()
    assert plan["argv"][1:] == ["train", str(resolved)]
    assert plan["env"] == {}
    text = invoke("train", "run.yaml", "--dry-run").stdout
    assert text.strip() == shlex.join(plan["argv"])
    assert not (workdir / "saves").exists()  # a dry run writes nothing


def test_dry_run_multi_node(workdir: Path):
    r = invoke("train", "run.yaml", "--nnodes", "2", "--node-rank", "0", "--master-addr", "10.0.0.1",
               "--nproc-per-node", "8", "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["env"] == {
        "FORCE_TORCHRUN": "1", "NNODES": "2", "NODE_RANK": "0", "MASTER_ADDR": "10.0.0.1", "NPROC_PER_NODE": "8",
        "MASTER_PORT": "29500"}
    text = invoke("train", "run.yaml", "--nproc-per-node", "4", "--master-port", "29600", "--dry-run").stdout
    assert text.startswith("FORCE_TORCHRUN=1 MASTER_PORT=29600 NPROC_PER_NODE=4 ")
    assert json.loads(invoke("train", "run.yaml", "--ray", "--dry-run", "--json").stdout)["env"] == {"USE_RAY": "1"}
    ds = json.loads(invoke("train", "run.yaml", "deepspeed=ds.json", "--dry-run", "--json").stdout)
    assert ds["env"] == {"FORCE_TORCHRUN": "1"}  # LLaMA-Factory runs DeepSpeed only under torchrun
    from vlm.training.train import TrainSpec, prepare

    preset = prepare(TrainSpec(Path("run.yaml"), deepspeed="z3")).config["deepspeed"]
    assert Path(preset).is_absolute() and Path(preset).name == "ds_z3.json" and Path(preset).is_file()


@pytest.mark.parametrize("args, message", [
    (["--nnodes", "2"], "--nnodes 2 needs --master-addr"),
    (["--nnodes", "2", "--node-rank", "2", "--master-addr", "h"], "--node-rank 2 must be between 0 and 1"),
    (["--ray", "--nproc-per-node", "2"], "--ray cannot be combined"),
])
def test_scale_out_options_are_checked(workdir: Path, args: list[str], message: str):
    with pytest.raises(VlmError, match=message):
        invoke("train", "run.yaml", "--dry-run", *args)


def test_checkpoints_decide_resume(workdir: Path):
    out = workdir / "saves" / "run"
    with pytest.raises(VlmError, match="no complete checkpoint-N") as e:
        invoke("train", "run.yaml", "--resume", "--dry-run")
    assert "without --resume" in e.value.hint
    (out / "checkpoint-10").mkdir(parents=True)
    (out / "checkpoint-10" / "trainer_state.json").write_text("{}")
    (out / "checkpoint-20").mkdir()  # cut short: no trainer_state.json
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-10"]
    with pytest.raises(VlmError, match="already has checkpoints") as e:
        invoke("train", "run.yaml", "--dry-run")
    assert "--resume" in e.value.hint
    assert invoke("train", "run.yaml", "overwrite_output_dir=true", "--dry-run").exit_code == 0


# ---------------------------------------------------------------- preflight


def test_preflight_checks_registration_and_every_image(toy_dataset: Path):
    from vlm.training.train import check_datasets

    cfg = {"dataset": "cord_train", "eval_dataset": "cord_validation", "dataset_dir": str(toy_dataset)}
    assert check_datasets(cfg) == []
    with pytest.raises(VlmError, match="'cord_trian' is not registered") as e:
        check_datasets({**cfg, "dataset": "cord_trian"})
    assert "cord_train, cord_validation, cord_test" in e.value.message
    for image in sorted((toy_dataset / "images" / "validation").iterdir()):
        image.unlink()
    with pytest.raises(VlmError, match="dataset 'cord_validation': 2 of 2 images are missing") as e:
        check_datasets(cfg)
    assert "validation-00000.jpg" in e.value.message
    assert "vlm save-cord-dataset-in-sharegpt-format" in e.value.hint


@pytest.mark.slow
def test_token_budget_refuses_truncation_unless_allowed(tiny_model: Path, toy_dataset: Path):
    from vlm.training.train import check_token_budget

    cfg = {"model_name_or_path": str(tiny_model), "template": "qwen2_vl", "dataset": "cord_train",
           "dataset_dir": str(toy_dataset), "image_max_pixels": 65536, "cutoff_len": 64}
    with pytest.raises(VlmError, match=r"8 of 8 samples exceed cutoff_len=64") as e:
        check_token_budget(cfg, allow_truncation=False)
    assert "--allow-truncation" in e.value.hint
    assert check_token_budget(cfg, allow_truncation=True)["n_over"] == 8
    assert check_token_budget({**cfg, "cutoff_len": 4096}, allow_truncation=False)["n_over"] == 0


# ---------------------------------------------------------------- progress


def test_progress_from_a_recorded_trainer_log(tmp_path: Path):
    log = tmp_path / "trainer_log.jsonl"
    lines = [json.dumps(r) for r in RECORDED_LOG]
    log.write_text("\n".join(lines[:2]) + "\n" + lines[2][:25])  # the trainer is mid-write
    tail, state = TrainerLogTail(log), TrainProgress()
    for record in tail.read():
        state.update(record)
    assert (state.step, state.total, state.loss, state.eval_loss) == (4, 8, 6.9541, None)
    with open(log, "a") as f:
        f.write(lines[2][25:] + "\n" + lines[3] + "\n")
    for record in tail.read():
        state.update(record)
    assert (state.step, state.loss, state.lr, state.eval_loss, state.epoch) == (8, 6.9576, 6.25e-06, 6.9742, 2.0)
    assert state.remaining == "0:00:00" and tail.read() == []
    assert progress_from_file(log) == state

    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(render_progress(state))
    shown = console.file.getvalue()
    for text in ("step 8/8 (100%)", "loss 6.9576", "lr 6.25e-06", "eval loss 6.9742", "epoch 2.00", "ETA 0:00:00"):
        assert text in shown and text in progress_line(state)

    log.write_text(lines[0] + "\n")  # replaced by a fresh run (overwrite_output_dir)
    assert [r["current_steps"] for r in tail.read()] == [1]


# ---------------------------------------------------------------- real runs


@pytest.fixture(scope="module")
def interrupted_and_resumed(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> dict:
    """Train on the tiny model, SIGINT ``vlm train`` once a checkpoint exists, then ``--resume``."""
    root = tmp_path_factory.mktemp("resume")
    data = make_toy_dataset(root / "data")
    config = write_config(root / "run.yaml", tiny_model, data, "saves/run")  # 8 samples x 8 epochs = 64 steps
    out = root / "saves" / "run"
    t0 = time.monotonic()
    child = subprocess.Popen([*VLM, "train", str(config)], cwd=root, env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    while not glob.glob(str(out / "checkpoint-*" / "trainer_state.json")) and child.poll() is None:
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    _, first_err = child.communicate(timeout=120)
    first = {"code": child.returncode, "stderr": first_err, "seconds": time.monotonic() - t0,
             "manifest": json.loads((out / "vlm_run.json").read_text()),
             "checkpoint": max(int(p.name.split("-")[1]) for p in list_checkpoints(out)),
             "steps_logged": progress_from_file(out / "trainer_log.jsonl").step}
    refused = subprocess.run([*VLM, "train", str(config)], cwd=root, env=ENV, capture_output=True, text=True)
    t1 = time.monotonic()
    resumed = subprocess.run([*VLM, "train", str(config), "--resume"], cwd=root, env=ENV, capture_output=True,
                             text=True)
    return {"out": out, "config": config, "first": first, "refused": refused, "resumed": resumed,
            "resume_seconds": time.monotonic() - t1}


@pytest.mark.slow
def test_interrupt_then_resume_continues_the_step_count(interrupted_and_resumed: dict):
    run, out = interrupted_and_resumed, interrupted_and_resumed["out"]
    first = run["first"]
    assert first["code"] == 130, first["stderr"][-3000:]
    assert first["manifest"]["exit_code"] == 130 and first["manifest"]["ended_at"]
    assert first["steps_logged"] < TOTAL_STEPS, "the run finished before it could be interrupted"
    assert "--resume" in run["refused"].stderr and run["refused"].returncode == 2

    assert run["resumed"].returncode == 0, run["resumed"].stderr[-3000:]
    ckpt = first["checkpoint"]
    steps = [r["current_steps"] for r in parse_lines((out / "trainer_log.jsonl").read_text())]
    assert steps[-1] == TOTAL_STEPS and any(s > ckpt for s in steps)
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == TOTAL_STEPS
    manifest = json.loads((out / "vlm_run.json").read_text())
    assert manifest["resumed_from"] == str(out / f"checkpoint-{ckpt}") and manifest["exit_code"] == 0
    assert manifest["config"]["resume_from_checkpoint"] == manifest["resumed_from"]
    assert manifest["config"]["overwrite_output_dir"] is False
    assert set(manifest["versions"]) == {"vlm", "llamafactory", "transformers", "torch", "peft", "datasets"}
    assert manifest["dataset_manifest_sha256"] and manifest["argv"][1] == "train"
    resolved = yaml.safe_load((out / "vlm_resolved_config.yaml").read_text())
    assert resolved["resume_from_checkpoint"] == manifest["resumed_from"]
    assert Path(resolved["dataset_dir"]).is_absolute()
    assert f"step {TOTAL_STEPS}/{TOTAL_STEPS} (100%)" in run["resumed"].stderr
    print(f"\ninterrupted after {first['seconds']:.1f}s; resume took {run['resume_seconds']:.1f}s")


@pytest.mark.slow
def test_merge_the_trained_adapter(interrupted_and_resumed: dict, tmp_path: Path):
    config, export = interrupted_and_resumed["config"], tmp_path / "merged"
    assert interrupted_and_resumed["resumed"].returncode == 0
    r = subprocess.run([*VLM, "merge", str(config), "--export-dir", str(export), "--json"],
                       cwd=config.parent, env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout)
    assert doc["argv"][1] == "export" and doc["config"]["export_legacy_format"] is False
    assert (export / "config.json").is_file() and list(export.glob("*.safetensors"))
    merge_cfg = yaml.safe_load((export / "vlm_merge_config.yaml").read_text())
    assert merge_cfg["adapter_name_or_path"] == str(interrupted_and_resumed["out"])
    assert merge_cfg["finetuning_type"] == "lora" and merge_cfg["export_device"] == "cpu"


@pytest.mark.slow
def test_failing_child_exit_code_propagates(tmp_path: Path, tiny_model: Path, toy_dataset: Path):
    fake = fake_cli(tmp_path / "llamafactory-cli", "import sys\nfor i in range(30):\n    print(f'line {i}')\n"
                    "print('RuntimeError: out of memory')\nsys.exit(3)\n")
    config = write_config(tmp_path / "run.yaml", tiny_model, toy_dataset, str(tmp_path / "out"))
    r = subprocess.run([*VLM, "train", str(config)], env={**ENV, "VLM_LLAMAFACTORY_CLI": str(fake)},
                       capture_output=True, text=True)
    assert r.returncode == 3, r.stderr[-3000:]
    assert "RuntimeError: out of memory" in r.stderr and "line 29" in r.stderr and "line 5\n" not in r.stderr
    assert f"full log: {tmp_path / 'out' / 'train.log'}" in r.stderr
    assert json.loads((tmp_path / "out" / "vlm_run.json").read_text())["exit_code"] == 3


@pytest.mark.slow
def test_sigterm_stops_the_childs_process_group(tmp_path: Path, tiny_model: Path, toy_dataset: Path):
    pids = tmp_path / "pids.json"
    fake = fake_cli(tmp_path / "llamafactory-cli", f"""
import json, signal, subprocess, sys, time
grandchild = subprocess.Popen(["sleep", "300"])
def stop(signum, frame):
    open({str(tmp_path / 'signal')!r}, "w").write(signal.Signals(signum).name)
    sys.exit(1)
signal.signal(signal.SIGINT, stop)
signal.signal(signal.SIGTERM, stop)
json.dump({{"child": __import__("os").getpid(), "grandchild": grandchild.pid}}, open({str(pids)!r}, "w"))
time.sleep(300)
""")
    config = write_config(tmp_path / "run.yaml", tiny_model, toy_dataset, str(tmp_path / "out"))
    vlm = subprocess.Popen([*VLM, "train", str(config)], env={**ENV, "VLM_LLAMAFACTORY_CLI": str(fake)},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not pids.is_file() and time.monotonic() < deadline and vlm.poll() is None:
        time.sleep(0.1)
    time.sleep(0.3)  # let the fake install its handlers
    vlm.send_signal(signal.SIGTERM)
    _, err = vlm.communicate(timeout=60)
    assert vlm.returncode == 130, err[-3000:]
    assert (tmp_path / "signal").read_text() == "SIGINT"  # forwarded to the child's group as Ctrl-C
    grandchild = json.loads(pids.read_text())["grandchild"]
    for _ in range(50):
        if not alive(grandchild):
            break
        time.sleep(0.1)
    else:
        pytest.fail("the grandchild survived: the signal did not reach the whole process group")


def alive(pid: int) -> bool:
    """Running, not merely a zombie waiting for a reaper."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# ---------------------------------------------------------------- issue 12


def test_second_train_on_one_output_dir_is_refused(workdir: Path):
    """D10: while one vlm train holds output_dir (here: this test process holds its lock), another is refused
    at once, before the preflight, with the holder named."""
    import fcntl

    out = workdir / "saves" / "run"
    out.mkdir(parents=True)
    with open(out / ".vlm_train.lock", "a+") as held:  # what a running vlm train holds
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        held.write("pid 4242")
        held.flush()
        with pytest.raises(VlmError, match=f"another vlm train is running on {out} \\(pid 4242\\)") as e:
            invoke("train", "run.yaml")
    assert "output_dir=" in e.value.hint
    assert sorted(p.name for p in out.iterdir()) == [".vlm_train.lock"]  # no config, log or manifest written


def test_unwritable_output_dir_fails_before_the_preflight(workdir: Path):
    """D13: an output_dir that cannot be created is named at once (the config's model does not even exist)."""
    (workdir / "saves").write_text("a file where a folder should be")
    r = subprocess.run([*VLM, "train", "run.yaml"], cwd=workdir, env=ENV, capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "output_dir" in r.stderr and str(workdir / "saves") in r.stderr and "bug" not in r.stderr


def test_validate_names_an_image_that_does_not_decode(workdir: Path, toy_dataset: Path):
    """D9: a cut image (good header) is named by the checks vlm validate and vlm train run."""
    image = toy_dataset / "images" / "train" / "train-00003.jpg"
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 3])
    with pytest.raises(VlmError, match="1 of 8 images do not decode") as e:
        invoke("validate", "run.yaml")
    assert str(image) in e.value.message


@pytest.mark.slow
def test_stats_names_a_truncated_image(tmp_path: Path, tiny_model: Path, toy_dataset: Path):
    """D9: vlm stats decodes an example's pixels; a cut file is named instead of a bare OSError."""
    import random

    from PIL import Image

    image = toy_dataset / "images" / "train" / "train-00000.jpg"
    noise = random.Random(0).randbytes(256 * 256 * 3)  # a photo-like payload: the header is a small part of it
    Image.frombytes("RGB", (256, 256), noise).save(image, quality=90)
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 3])
    with Image.open(image) as im:
        assert im.size == (256, 256)  # the header still reads: only decoding the pixels finds the cut
    config = write_config(tmp_path / "run.yaml", tiny_model, toy_dataset, str(tmp_path / "out"))
    r = subprocess.run([*VLM, "stats", str(config)], env=ENV, capture_output=True, text=True)
    assert r.returncode == 2, r.stderr[-2000:]
    assert str(image) in r.stderr and "bug" not in r.stderr


@pytest.mark.slow
def test_resume_hint_keeps_the_overrides(tmp_path: Path, tiny_model: Path, toy_dataset: Path):
    """D20: after Ctrl-C, the printed command continues the same run: overrides and options included."""
    started = tmp_path / "started"
    fake = fake_cli(tmp_path / "llamafactory-cli", f"import pathlib, time\npathlib.Path({str(started)!r}).touch()\n"
                                                   "time.sleep(300)\n")
    config = write_config(tmp_path / "run.yaml", tiny_model, toy_dataset, str(tmp_path / "out"))
    vlm = subprocess.Popen([*VLM, "train", str(config), "num_train_epochs=3", "learning_rate=5e-5",
                            "--nproc-per-node", "1"], env={**ENV, "VLM_LLAMAFACTORY_CLI": str(fake)},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not started.exists() and time.monotonic() < deadline and vlm.poll() is None:
        time.sleep(0.1)
    vlm.send_signal(signal.SIGINT)
    _, err = vlm.communicate(timeout=60)
    assert vlm.returncode == 130, err[-3000:]
    hint = " ".join(err.split("Continue with:")[1].split())
    assert hint.startswith(f"vlm train {config} num_train_epochs=3 learning_rate=5e-5 --nproc-per-node 1 --resume")


# ---------------------------------------------------------------- early stopping (issue 13)


@pytest.mark.slow
def test_early_stopping_passes_through_to_the_trainer(tmp_path: Path, tiny_model: Path, toy_dataset: Path):
    """LLaMA-Factory's early_stopping_steps reaches the Trainer: with a learning rate too small to move any weight
    the eval loss never improves, so patience 1 stops the run at its second evaluation, not after 24 steps."""
    config = write_config(tmp_path / "run.yaml", tiny_model, toy_dataset, str(tmp_path / "out"), learning_rate=1e-12,
                          num_train_epochs=4, val_size=0.25, eval_strategy="steps", eval_steps=1, save_steps=1,
                          per_device_eval_batch_size=2, early_stopping_steps=1, metric_for_best_model="eval_loss",
                          load_best_model_at_end=True)
    r = subprocess.run([*VLM, "train", str(config)], env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    evals = [row["eval_loss"] for row in state["log_history"] if "eval_loss" in row]
    assert state["global_step"] == 2 and state["max_steps"] == 24 and len(evals) == 2, state["log_history"]
    assert evals[1] >= evals[0] and state["best_model_checkpoint"].endswith("checkpoint-1")
