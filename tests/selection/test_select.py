"""`vlm select`: every checkpoint predicted, scored and ranked; selection.json and `--checkpoint best`.

The slow tests fine-tune the width-128 Qwen2-VL with the real `vlm train` (full fine-tuning, lr 2e-3, a
checkpoint every 4 steps, so the checkpoints write different answers), then check that `vlm select`'s ranking and
metrics equal scoring each checkpoint on its own with `vlm predict --checkpoint` and `vlm evaluate`, and that a
selection killed with SIGKILL resumes with only what is missing. The fast tests fake a run's folder (adapter files
with chosen bytes) and store the answers of its checkpoints in the store under the settings `vlm select` predicts
with, so the ranking, the tie wording, selection.json and its staleness checks run without a model.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from helpers import ENV, VLM, copy_run, run_vlm, sigkill_while_store_locked, vlm, write_receipts

N_DOCS = 20


# ---------------------------------------------------------------- a faked run (fast)


def _answer(i: int) -> dict:
    price = f"{i + 1},000"
    return {"menu": [{"nm": f"item {i}", "cnt": "1", "price": price}], "total": {"total_price": price}}


def _dataset(root: Path) -> Path:
    """N_DOCS validation receipts (no images are read: every answer is already stored)."""
    records = [{"id": f"validation-{i:05d}", "images": [],
                "messages": [{"role": "user", "content": "Extract the receipt as JSON."},
                             {"role": "assistant", "content": json.dumps(_answer(i))}]} for i in range(N_DOCS)]
    root.mkdir(parents=True)
    (root / "cord_validation.json").write_text(json.dumps(records))
    (root / "dataset_info.json").write_text(json.dumps({"cord_validation": {
        "file_name": "cord_validation.json", "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"}}}))
    return root


def _safetensors(payload: bytes) -> bytes:
    """A well-formed safetensors file holding ``payload`` as one uint8 tensor (its bytes tell checkpoints apart)."""
    header = json.dumps({"w": {"dtype": "U8", "shape": [len(payload)], "data_offsets": [0, len(payload)]}}).encode()
    return len(header).to_bytes(8, "little") + header + payload


def _adapter(folder: Path, weights: bytes, step: int | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text('{"r": 8}')
    (folder / "adapter_model.safetensors").write_bytes(_safetensors(weights))
    if step is not None:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))


def _store_answers(cfg: Path, store: Path, label: str, path: Path, answers: list[str], run: str = "saves/lora",
                   scores: list | None = None):
    """Store a checkpoint's answers as `vlm select` would have predicted them (same group and hashes)."""
    from vlm.data.records import ground_truth
    from vlm.inference.predict import _prepare
    from vlm.inference.store import Prediction, Store
    from vlm.selection.select import Candidate, SelectOptions, _spec

    candidate = Candidate(run, cfg, label, None, path, "adapter", "", f"select/{run}/{label}")
    spec = _spec(candidate, SelectOptions(store=store))
    _, _, docs, _, hashes = _prepare(spec)
    with Store(store, write=True) as s:
        s.put_many([Prediction(spec.group, "validation", d["id"], raw, None, None, [], ground_truth(d), **hashes,
                               scores=scores[k] if scores else None)
                    for k, (d, raw) in enumerate(zip(docs, answers))])


@pytest.fixture
def faked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A LoRA run: checkpoint-10 answers nothing, checkpoint-20 every receipt right, checkpoint-30 one wrong
    (the final adapter is checkpoint-30's bytes); every answer already stored."""
    monkeypatch.chdir(tmp_path)
    _dataset(tmp_path / "data")
    out = tmp_path / "saves" / "lora"
    for step, weights in ((10, b"w10"), (20, b"w20"), (30, b"w30")):
        _adapter(out / f"checkpoint-{step}", weights, step)
    _adapter(out, b"w30", 30)
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model_name_or_path: base\ntemplate: qwen2_vl\ndataset: cord_train\ndataset_dir: data\n"
                   "cutoff_len: 1024\nfinetuning_type: lora\noutput_dir: saves/lora\n")
    right = [json.dumps(_answer(i)) for i in range(N_DOCS)]
    store = tmp_path / "preds.sqlite"
    _store_answers(cfg, store, "checkpoint-10", out / "checkpoint-10", ["{}"] * N_DOCS)
    _store_answers(cfg, store, "checkpoint-20", out / "checkpoint-20", right)
    _store_answers(cfg, store, "checkpoint-30", out / "checkpoint-30", ["{}"] + right[1:])
    return tmp_path


def test_select_ranks_stored_checkpoints_and_calls_a_tie_a_tie(faked: Path):
    r = vlm("select", "run.yaml", "--store", "preds.sqlite", cwd=faked)
    assert "best by field F1: checkpoint-20 (step 20)" in r.stdout
    # checkpoint-30 differs from the best on one receipt of 20: the CI of its gap includes 0.
    assert "statistically tied: the 95% CI of the gap to checkpoint-20 includes 0 for final = checkpoint-30" in r.stdout
    assert "already predicted" in r.stderr and "predicting" not in r.stderr.replace("already predicted", "")
    result = json.loads(vlm("select", "run.yaml", "--store", "preds.sqlite", "--json", cwd=faked).stdout)
    rows = result["leaderboard"]
    assert [(r["label"], r["aliases"], r["step"]) for r in rows] == [
        ("checkpoint-20", [], 20), ("final", ["checkpoint-30"], 30), ("checkpoint-10", [], 10)]
    assert [r["tied"] for r in rows] == [False, True, False] and result["tie"]
    assert rows[2]["gap"]["ci95"][1] < 0  # checkpoint-10 is worse, and the data says so
    assert all(r["predicted"] == 0 and r["stored_before"] == N_DOCS for r in rows)
    # The metrics are vlm evaluate's for the same groups.
    report = json.loads(vlm("evaluate", "--groups", *(r["group"] for r in rows), "--store", "preds.sqlite",
                            "--split", "validation", "--json", cwd=faked).stdout)
    for row in rows:
        assert {k: report[row["group"]][k] for k in row["metrics"]} == row["metrics"]
    selection = json.loads((faked / "saves" / "lora" / "selection.json").read_text())
    assert selection["winner"]["label"] == "checkpoint-20" and selection["tied_with"] == ["final"]
    assert (faked / "saves" / "lora" / "selection.png").read_bytes()[:4] == b"\x89PNG"


def _sure_except(raw: str, unsure: list[str]):
    """Token scores for ``raw``, one token per character: probability 0.99, 0.3 over the values in ``unsure``."""
    import math

    from vlm.inference.token_scores import TokenScores

    low = {k for v in unsure for k in range(raw.index(f'"{v}"') + 1, raw.index(f'"{v}"') + 1 + len(v))}
    return TokenScores(tuple(math.log(0.3 if k in low else 0.99) for k in range(len(raw))),
                       tuple(range(1, len(raw) + 1)))


def test_coverage_at_a_precision_ranks_checkpoints_that_f1_cannot_tell_apart(faked: Path):
    """checkpoint-20 and checkpoint-30 give the same answers (five prices wrong), so the same F1; 20 is unsure
    of exactly its wrong prices, 30 is sure of them and unsure of five right names instead."""
    cfg, store, out = faked / "run.yaml", faked / "preds.sqlite", faked / "saves" / "lora"
    wrong = [dict(_answer(i), menu=[dict(_answer(i)["menu"][0], price="9,999")]) if i < 5 else _answer(i)
             for i in range(N_DOCS)]
    raws = [json.dumps(a) for a in wrong]
    assert run_vlm("select", "run.yaml", "--store", "preds.sqlite", "--metric", "coverage@0.95",
                   cwd=faked).stderr.count("needs token scores") == 1
    store.unlink()
    _store_answers(cfg, store, "checkpoint-10", out / "checkpoint-10", ["{}"] * N_DOCS,
                   scores=[_sure_except("{}", [])] * N_DOCS)
    _store_answers(cfg, store, "checkpoint-20", out / "checkpoint-20", raws,
                   scores=[_sure_except(r, ["9,999"] if i < 5 else []) for i, r in enumerate(raws)])
    _store_answers(cfg, store, "checkpoint-30", out / "checkpoint-30", raws,
                   scores=[_sure_except(r, [f"item {i}"] if 10 <= i < 15 else []) for i, r in enumerate(raws)])
    result = json.loads(vlm("select", "run.yaml", "--store", "preds.sqlite", "--metric", "coverage@0.95", "--json",
                            "--no-plot", cwd=faked).stdout)
    rows = {r["label"]: r for r in result["leaderboard"]}
    assert [r["label"] for r in result["leaderboard"]] == ["checkpoint-20", "final", "checkpoint-10"]
    assert rows["checkpoint-20"]["metrics"]["f1"] == rows["final"]["metrics"]["f1"] < 1
    # 20 keeps every field but its five unsure prices, all right; 30's sure fields hold its five wrong prices.
    assert rows["checkpoint-20"]["metrics"]["coverage@0.95"] == (4 * N_DOCS - 5) / (4 * N_DOCS)
    assert rows["final"]["metrics"]["coverage@0.95"] == 0.0
    assert rows["checkpoint-10"]["metrics"]["coverage@0.95"] == 0.0
    r = vlm("select", "run.yaml", "--store", "preds.sqlite", "--metric", "coverage@0.95", "--no-plot", cwd=faked)
    assert "best by coverage@0.95: checkpoint-20" in r.stdout


def test_checkpoint_best_uses_the_winner_and_refuses_a_stale_selection(faked: Path):
    from vlm.errors import VlmError
    from vlm.inference.predict import PredictSpec, resolve_settings

    out = faked / "saves" / "lora"
    spec = PredictSpec(group="g", config=Path("run.yaml"), checkpoint="best")
    with pytest.raises(VlmError, match="selection.json not found") as e:
        resolve_settings(spec)
    assert "run vlm select run.yaml first" in e.value.hint
    vlm("select", "run.yaml", "--store", "preds.sqlite", "--no-plot", cwd=faked)
    assert Path(resolve_settings(spec)["adapter_name_or_path"]).resolve() == out / "checkpoint-20"
    for which, folder in (("final", out), ("10", out / "checkpoint-10"), ("checkpoint-30", out / "checkpoint-30")):
        chosen = resolve_settings(PredictSpec(group="g", config=Path("run.yaml"), checkpoint=which))
        assert Path(chosen["adapter_name_or_path"]).resolve() == folder
    merge = json.loads(vlm("merge", "run.yaml", "--checkpoint", "best", "--dry-run", "--json", cwd=faked).stdout)
    assert merge["config"]["adapter_name_or_path"] == str((out / "checkpoint-20").resolve())
    with pytest.raises(VlmError, match=r"no complete checkpoint-7 .*checkpoint-10, checkpoint-20, checkpoint-30"):
        resolve_settings(PredictSpec(group="g", config=Path("run.yaml"), checkpoint="7"))

    (out / "checkpoint-20" / "adapter_model.safetensors").write_bytes(_safetensors(b"retrained"))
    with pytest.raises(VlmError, match="stale: the weights in .*checkpoint-20 changed") as e:
        resolve_settings(spec)
    assert "vlm select run.yaml again" in e.value.hint
    import shutil

    shutil.rmtree(out / "checkpoint-20")
    r = run_vlm("predict", "--group", "g", "--config", "run.yaml", "--checkpoint", "best", cwd=faked)
    assert r.returncode == 2 and "stale: its winner checkpoint-20" in r.stderr and "no longer exists" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_retrained_checkpoint_is_not_scored_from_its_old_predictions(faked: Path):
    (faked / "saves" / "lora" / "checkpoint-10" / "adapter_model.safetensors").write_bytes(_safetensors(b"new"))
    r = run_vlm("select", "run.yaml", "--store", "preds.sqlite", cwd=faked)
    assert r.returncode == 2
    assert "select/saves/lora/checkpoint-10 (20)" in r.stderr and "--overwrite" in r.stderr


def test_several_runs_share_one_leaderboard(faked: Path):
    """A second run whose checkpoint-5 holds checkpoint-20's weights (scored from its predictions, not predicted
    again) and whose checkpoint-15 gets 2 receipts of 20 wrong; ranked with the first run, also as a sweep."""
    out = faked / "saves" / "lora2"
    _adapter(out / "checkpoint-5", b"w20", 5)
    _adapter(out / "checkpoint-15", b"w15", 15)
    (faked / "run2.yaml").write_text((faked / "run.yaml").read_text().replace("saves/lora", "saves/lora2"))
    right = [json.dumps(_answer(i)) for i in range(N_DOCS)]
    _store_answers(faked / "run2.yaml", faked / "preds.sqlite", "checkpoint-15", out / "checkpoint-15",
                   ["{}", "{}"] + right[2:], run="saves/lora2")
    result = json.loads(vlm("select", "run.yaml", "run2.yaml", "--store", "preds.sqlite", "--json", cwd=faked).stdout)
    rows = [(r["run"], r["label"], r["tied"], r["reused_from"]) for r in result["leaderboard"]]
    assert rows == [("saves/lora2", "checkpoint-5", False, "saves/lora checkpoint-20"),
                    ("saves/lora", "checkpoint-20", True, None),  # the same predictions: a tie, by construction
                    ("saves/lora", "final", True, None), ("saves/lora2", "checkpoint-15", True, None),
                    ("saves/lora", "checkpoint-10", False, None)]
    assert {r["run"]: r["winner"]["label"] for r in result["runs"]} == {"saves/lora": "checkpoint-20",
                                                                       "saves/lora2": "checkpoint-5"}
    assert all(r["predicted"] == 0 for r in result["leaderboard"])
    board = json.loads((faked / "saves" / "leaderboard.json").read_text())
    assert board["winner"]["label"] == "checkpoint-5" and board["best_per_run"]["saves/lora"] == "checkpoint-20"
    assert json.loads((out / "selection.json").read_text())["winner"]["label"] == "checkpoint-5"

    (faked / "sweep").mkdir()
    points = [{"name": n, "config": c, "output_dir": o, "settings": {}, "status": "done", "exit_code": 0, "log": "",
               "started_at": None, "ended_at": None} for n, c, o in (("a", "run.yaml", "saves/lora"),
                                                                      ("b", "run2.yaml", "saves/lora2"))]
    (faked / "sweep" / "sweep_status.json").write_text(json.dumps({"version": 1, "command": "", "points": points}))
    r = vlm("select", "--sweep", "sweep", "--store", "preds.sqlite", "--no-plot", cwd=faked)
    assert "best of each run: saves/lora: checkpoint-20; saves/lora2: checkpoint-5" in r.stdout
    assert json.loads((faked / "sweep" / "leaderboard.json").read_text())["winner"]["run"] == "saves/lora2"


@pytest.mark.parametrize("setup, args, message", [
    ("no-output-dir", ["run.yaml"], "run.yaml has no output_dir"),
    ("empty", ["run.yaml"], "nothing to select in saves/none: no complete checkpoint-N and no final adapter"),
    ("", ["--sweep", "nowhere"], "sweep folder not found: nowhere"),
    ("sweep-no-status", ["--sweep", "sweep"], "sweep holds no run sweep (sweep_status.json not found)"),
    ("sweep-none-done", ["--sweep", "sweep"], "no finished point in sweep/sweep_status.json: a (failed), b (running)"),
    ("", ["run.yaml", "--checkpoints", "newest"], "--checkpoints 'newest' is not 'all' or 'last-N'"),
    ("", [], "no run to select from"),
])
def test_bad_input_is_one_clear_line(tmp_path: Path, setup: str, args: list[str], message: str):
    cfg = "model_name_or_path: base\ntemplate: qwen2_vl\ndataset_dir: data\n"
    (tmp_path / "run.yaml").write_text(cfg + ("" if setup == "no-output-dir" else "output_dir: saves/none\n"))
    if setup.startswith("sweep"):
        (tmp_path / "sweep").mkdir()
    if setup == "sweep-none-done":
        points = [{"name": n, "config": "run.yaml", "output_dir": "saves/none", "settings": {}, "status": s,
                   "exit_code": None, "log": "x.log", "started_at": None, "ended_at": None}
                  for n, s in (("a", "failed"), ("b", "running"))]
        status = {"version": 1, "command": "", "points": points}
        (tmp_path / "sweep" / "sweep_status.json").write_text(json.dumps(status))
    r = run_vlm("select", *args, "--store", "s.sqlite", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert message in " ".join(r.stderr.split()), r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "s.sqlite").exists()


def test_sweep_configs_reads_the_done_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from vlm.selection.select import sweep_configs

    monkeypatch.chdir(tmp_path)
    (tmp_path / "sweep").mkdir()
    points = []
    for name, status in (("p1", "done"), ("p2", "failed"), ("p3", "done"), ("p4", "pending")):
        (tmp_path / "sweep" / f"{name}.yaml").write_text("output_dir: x\n")
        points.append({"name": name, "config": f"sweep/{name}.yaml", "output_dir": f"saves/{name}", "settings": {},
                       "status": status, "exit_code": 0 if status == "done" else None, "log": "",
                       "started_at": None, "ended_at": None})
    (tmp_path / "sweep" / "sweep_status.json").write_text(json.dumps({"version": 1, "command": "", "points": points}))
    assert sweep_configs(Path("sweep")) == [Path("sweep/p1.yaml"), Path("sweep/p3.yaml")]


# ---------------------------------------------------------------- bad input and odd runs (review)


def test_a_final_model_that_is_an_earlier_checkpoint_keeps_that_step(faked: Path):
    """load_best_model_at_end (early stopping) saves the best checkpoint's weights as the final model at the last
    step: the row is placed and tie-broken at the step the weights come from, not the last one."""
    _adapter(faked / "saves" / "lora", b"w20", 30)
    rows = json.loads(vlm("select", "run.yaml", "--store", "preds.sqlite", "--json", "--no-plot",
                          cwd=faked).stdout)["leaderboard"]
    final = next(r for r in rows if r["label"] == "final")
    assert (final["aliases"], final["step"]) == (["checkpoint-20"], 20)
    assert next(r for r in rows if r["label"] == "checkpoint-30")["step"] == 30


def test_a_truncated_checkpoint_is_named_before_anything_is_predicted(faked: Path):
    weights = faked / "saves" / "lora" / "checkpoint-10" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-2])  # a copy or a save cut short
    for args in (["select", "run.yaml", "--store", "preds.sqlite"],
                 ["predict", "--group", "g", "--config", "run.yaml", "--checkpoint", "10", "--store", "p.sqlite"]):
        r = run_vlm(*args, cwd=faked)
        assert r.returncode == 2 and f"{weights.relative_to(faked)} is truncated or damaged" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and "bug" not in r.stderr
    assert not (faked / "saves" / "lora" / "selection.json").exists() and not (faked / "p.sqlite").exists()


def test_one_selection_per_run_at_a_time_and_a_warning_while_training(faked: Path):
    from vlm.fsutil import try_lock

    out = faked / "saves" / "lora"
    with try_lock(out / "vlm_select", note="pid 4242"):
        r = run_vlm("select", "run.yaml", "--store", "preds.sqlite", cwd=faked)
    assert r.returncode == 2 and "another vlm select is running on saves/lora (pid 4242)" in r.stderr, r.stderr
    assert not (out / "selection.json").exists()
    with try_lock(out / "vlm_train", note="pid 4343"):  # as vlm train holds it while it writes checkpoints
        r = vlm("select", "run.yaml", "--store", "preds.sqlite", "--no-plot", cwd=faked)
    assert "vlm train is still running on saves/lora (pid 4343): ranking the 3 checkpoint(s)" in r.stderr
    assert "still running" not in vlm("select", "run.yaml", "--store", "preds.sqlite", "--no-plot", cwd=faked).stderr


def test_checkpoint_best_warns_when_predicting_the_split_it_was_chosen_on(faked: Path, capsys):
    from vlm.inference.predict import PredictSpec, resolve_settings

    vlm("select", "run.yaml", "--store", "preds.sqlite", "--no-plot", cwd=faked)
    resolve_settings(PredictSpec(group="g", config=Path("run.yaml"), checkpoint="best", split="test"))
    assert "optimistic" not in capsys.readouterr().err
    resolve_settings(PredictSpec(group="g", config=Path("run.yaml"), checkpoint="best", split="validation"))
    err = " ".join(capsys.readouterr().err.split())
    assert "chosen on the validation split: its scores there are optimistic" in err


def test_a_full_checkpoint_retrained_in_place_is_not_taken_for_its_old_predictions(faked: Path):
    """A whole model's store hash was its path and config.json, which retraining in place keeps."""
    from vlm.inference.predict import PredictSpec, _prepare

    out = faked / "saves" / "full"
    for step in (4, 8):
        (out / f"checkpoint-{step}").mkdir(parents=True)
        (out / f"checkpoint-{step}" / "config.json").write_text('{"model_type": "qwen2_vl"}')
        (out / f"checkpoint-{step}" / "model.safetensors").write_bytes(_safetensors(b"old"))
        (out / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (faked / "full.yaml").write_text((faked / "run.yaml").read_text().replace("finetuning_type: lora",
                                                                             "finetuning_type: full")
                                     .replace("saves/lora", "saves/full"))
    spec = PredictSpec(group="g", config=Path("full.yaml"), checkpoint="4", split="validation")
    before = _prepare(spec)[4]["model_hash"]
    assert _prepare(PredictSpec(group="g", config=Path("full.yaml"), checkpoint="4",
                                split="validation"))[4]["model_hash"] == before  # the same weights: resumable
    (out / "checkpoint-4" / "model.safetensors").write_bytes(_safetensors(b"retrained"))
    spec = PredictSpec(group="g", config=Path("full.yaml"), checkpoint="4", split="validation")
    assert _prepare(spec)[4]["model_hash"] != before


def test_a_sweep_status_of_another_version_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from vlm.errors import VlmError
    from vlm.selection.select import sweep_configs

    monkeypatch.chdir(tmp_path)
    (tmp_path / "sweep").mkdir()
    status = {"version": 2, "points": {"a": {"config": "a.yaml", "state": "done"}}}
    (tmp_path / "sweep" / "sweep_status.json").write_text(json.dumps(status))
    with pytest.raises(VlmError, match="sweep_status.json has an unknown version 2"):
        sweep_configs(Path("sweep"))
    (tmp_path / "sweep" / "sweep_status.json").write_text("[1, 2]")
    with pytest.raises(VlmError, match="is not a sweep status file"):
        sweep_configs(Path("sweep"))


# ---------------------------------------------------------------- a real run (slow)

TRAIN = ["--method", "full", "--epochs", "12", "--batch-size", "4", "--learning-rate", "2e-3", "bf16=false",
         "gradient_accumulation_steps=1", "preprocessing_num_workers=1", "image_max_pixels=20000", "save_steps=4",
         "overwrite_output_dir=true", "warmup_ratio=0", "lr_scheduler_type=constant", "val_size=0",
         "eval_strategy=no", "logging_steps=2"]
PREDICT = ["--split", "validation", "--max-new-tokens", "24"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, medium_model: Path) -> Path:
    """The medium model fully fine-tuned on four receipts for 12 steps: checkpoint-4, -8, -12 and the final model."""
    root = tmp_path_factory.mktemp("select")
    (root / "model").symlink_to(medium_model)  # built once per run (conftest), only read
    write_receipts(root / "data")
    vlm("render-config", "run.yaml", "--model", str(root / "model"), "--dataset-dir", "data",
        "--output-dir", "saves/full", *TRAIN, cwd=root)
    vlm("train", "run.yaml", cwd=root)
    return root


@pytest.fixture
def trained(trained_run: Path, tmp_path: Path) -> Path:
    """This test's own copy of the trained run folder (the model stays shared), so no test sees another's writes."""
    return copy_run(trained_run, tmp_path / "select")


@pytest.mark.slow
def test_select_equals_predicting_and_evaluating_each_checkpoint(trained: Path):
    result = json.loads(vlm("select", "run.yaml", *PREDICT, "--json", cwd=trained).stdout)
    rows = result["leaderboard"]
    assert sorted(r["label"] for r in rows) == ["checkpoint-4", "checkpoint-8", "final"]
    assert next(r for r in rows if r["label"] == "final")["aliases"] == ["checkpoint-12"]  # predicted once
    assert len({(r["metrics"]["f1"], r["metrics"]["ted_accuracy"]) for r in rows}) > 1  # the checkpoints differ

    # Each checkpoint on its own: vlm predict --checkpoint, then vlm evaluate, in a store of their own.
    for which in ("4", "checkpoint-8", "final"):
        vlm("predict", "--group", f"alone-{which}", "--config", "run.yaml", "--checkpoint", which, *PREDICT,
            "--store", "alone.sqlite", cwd=trained)
    names = {"checkpoint-4": "alone-4", "checkpoint-8": "alone-checkpoint-8", "final": "alone-final"}
    report = json.loads(vlm("evaluate", "--groups", *names.values(), "--store", "alone.sqlite",
                            "--split", "validation", "--json", cwd=trained).stdout)
    for row in rows:
        alone = report[names[row["label"]]]
        assert {k: alone[k] for k in row["metrics"]} == row["metrics"], row["label"]
    steps = {"checkpoint-4": 4, "checkpoint-8": 8, "final": 12}
    by_hand = sorted(names, key=lambda k: (-report[names[k]]["f1"], -report[names[k]]["ted_accuracy"], steps[k]))
    assert [r["label"] for r in rows] == by_hand

    best = json.loads(vlm("predict", "--group", "best", "--config", "run.yaml", "--checkpoint", "best", *PREDICT,
                          "--store", "alone.sqlite", "--limit", "1", "--json", cwd=trained).stdout)
    assert (trained / best["model"]).resolve() == Path(rows[0]["path"])


def _rows(store: Path) -> dict[tuple[str, str], float]:
    with sqlite3.connect(store) as db:
        return {(g, d): t for g, d, t in db.execute("SELECT grp, doc_id, created FROM predictions")}


@pytest.mark.slow
def test_sigkill_mid_selection_then_rerun_predicts_only_what_is_missing(trained: Path):
    store = trained / "kill.sqlite"
    cmd = [*VLM, "select", "run.yaml", *PREDICT, "--batch-size", "1", "--store", str(store), "--no-plot"]
    proc = subprocess.Popen(cmd, cwd=trained, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if store.exists() and len(_rows(store)) >= 6:  # checkpoint-4's four receipts and two of checkpoint-8's
            break
        time.sleep(0.02)
    sigkill_while_store_locked(proc, store)
    before = _rows(store)
    assert 6 <= len(before) < 12, f"kill landed after {len(before)} predictions"

    result = json.loads(vlm(*cmd[len(VLM):], "--json", cwd=trained).stdout)
    done = {r["group"]: (r["stored_before"], r["predicted"]) for r in result["leaderboard"]}
    stored = {group: sum(g == group for g, _ in before) for group in done}
    assert stored["select/saves/full/checkpoint-4"] == 4 and stored["select/saves/full/checkpoint-8"] >= 2
    assert done == {group: (n, 4 - n) for group, n in stored.items()}
    after = _rows(store)
    assert len(after) == 12 and all(after[key] == before[key] for key in before)  # nothing redone
