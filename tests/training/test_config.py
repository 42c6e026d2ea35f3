"""Configs: the rendered recipe, overrides, validation with LLaMA-Factory's own parser, sweeps.

Validation runs LLaMA-Factory's real parser in-process (the first call imports it,
which takes seconds); only ``vlm validate`` on a bad file runs as a subprocess.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, invoke, run_vlm

from vlm.errors import ConfigError
from vlm.training.config import load_config, parse_value
from vlm.training.validation import validate_config

SHIPPED = sorted((ROOT / "configs").rglob("*.yaml"))

# The recipe, written out independently of vlm.training.config.RECIPE.
CORD_RECIPE = {
    "model_name_or_path": "Qwen/Qwen2-VL-2B-Instruct", "image_max_pixels": 262144, "image_min_pixels": 3136,
    "stage": "sft", "do_train": True, "finetuning_type": "lora", "lora_target": "all",
    "dataset": "cord_train", "dataset_dir": "data/cord", "template": "qwen2_vl", "cutoff_len": 1024,
    "max_samples": 1000, "overwrite_cache": True, "preprocessing_num_workers": 16,
    "output_dir": "saves/qwen2_vl-2b/lora/cord", "logging_steps": 10, "save_steps": 500, "plot_loss": True,
    "report_to": "none", "per_device_train_batch_size": 8, "gradient_accumulation_steps": 8,
    "learning_rate": 1.0e-4, "num_train_epochs": 10, "lr_scheduler_type": "cosine", "warmup_ratio": 0.1,
    "bf16": True, "val_size": 0.1, "per_device_eval_batch_size": 8, "eval_strategy": "steps", "eval_steps": 500,
}


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with the shipped DeepSpeed presets, as in the checkout."""
    shutil.copytree(ROOT / "configs" / "deepspeed", tmp_path / "configs" / "deepspeed")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_cord_yaml_holds_exactly_the_recipe():
    text = (ROOT / "configs" / "cord.yaml").read_text(encoding="utf-8")
    assert yaml.safe_load(text) == CORD_RECIPE
    assert text.startswith("# ")
    assert "# Rendered by: vlm render-config configs/cord.yaml\n" in text
    assert "# Train with:  vlm train configs/cord.yaml\n" in text
    assert "image_max_pixels: 262144  # 512x512" in text


@pytest.mark.parametrize("shipped", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_config_is_a_fresh_render(shipped: Path, in_tmp: Path):
    """Rerunning the command in a shipped file's header reproduces it byte for byte."""
    original = shipped.read_bytes()
    command = next(line for line in original.decode().splitlines() if line.startswith("# Rendered by: "))
    argv = shlex.split(command.removeprefix("# Rendered by: "))
    assert argv[:2] == ["vlm", "render-config"] and argv[2] == shipped.relative_to(ROOT).as_posix()
    result = invoke(*argv[1:])
    assert result.exit_code == 0, result.output
    assert (in_tmp / argv[2]).read_bytes() == original
    assert "unchanged" in invoke(*argv[1:]).output  # deterministic: a second render changes nothing


@pytest.mark.parametrize("shipped", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_config_validates(shipped: Path, toy_dataset: Path):
    # vlm validate also checks the data, as vlm train does: point dataset_dir at an export.
    result = invoke("validate", str(shipped), f"dataset_dir={toy_dataset}")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"OK {shipped}")


def test_validate_reports_relaxed_device_checks():
    import torch

    validation = validate_config(load_config(ROOT / "configs" / "cord.yaml"))
    if not torch.cuda.is_available():
        assert "bf16 not checked: no GPU visible" in validation.relaxed


@pytest.mark.slow  # a vlm child process that loads LLaMA-Factory (about 6 s of CPU each)
def test_unknown_key_and_bad_values_listed_in_one_error(tmp_path: Path):
    cfg = dict(CORD_RECIPE, learning_rat=5e-5, finetuning_type="lorra", lr_scheduler_type="cosin")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "vlm.cli", "validate", str(bad)], capture_output=True, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2, r.stderr
    assert "unknown key 'learning_rat' (did you mean 'learning_rate'?)" in r.stderr
    assert "finetuning_type: 'lorra' is not one of 'lora', 'oft', 'freeze', 'full'" in r.stderr
    assert "lr_scheduler_type='cosin'" in r.stderr
    assert "Traceback" not in r.stderr


def test_validate_json_lists_problems(tmp_path: Path):
    result = invoke("validate", str(ROOT / "configs" / "cord.yaml"), "lora_rank=eight", "eval_strategy=yes",
                    "colour=blue", "--json", catch=True)
    assert isinstance(result.exception, ConfigError)
    doc = json.loads(result.stdout)
    assert doc["ok"] is False and len(doc["problems"]) == 3
    assert any("colour" in p for p in doc["problems"]) and any(p.startswith("lora_rank") for p in doc["problems"])


def test_yaml_booleans_for_string_keys_are_explained():
    with pytest.raises(ConfigError) as e:
        validate_config(dict(CORD_RECIPE, eval_strategy=False))
    assert "quote the word" in e.value.problems[0]


def test_deepspeed_file_is_checked(in_tmp: Path):
    validation = validate_config(dict(CORD_RECIPE, deepspeed="configs/deepspeed/ds_z3.json"))
    assert any(line.startswith("deepspeed not checked by the parser") for line in validation.relaxed)
    with pytest.raises(ConfigError) as e:
        validate_config(dict(CORD_RECIPE, deepspeed="configs/deepspeed/missing.json"))
    assert e.value.problems == ["deepspeed: file not found: configs/deepspeed/missing.json"]


def test_deepspeed_presets_leave_sizes_to_the_trainer():
    for name, stage in (("ds_z2.json", 2), ("ds_z3.json", 3)):
        preset = json.loads((ROOT / "configs" / "deepspeed" / name).read_text())
        assert preset["zero_optimization"]["stage"] == stage
        for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
            assert preset[key] == "auto"
        assert preset["bf16"]["enabled"] == "auto" and preset["fp16"]["enabled"] == "auto"


@pytest.mark.parametrize("text, value", [
    ("1e-4", 1e-4), ("5.0e-5", 5e-5), ("3", 3), ("0.1", 0.1), ("true", True), ("false", False), ("no", "no"),
    ("steps", "steps"), ("a,b", "a,b"), ("[1, 2]", [1, 2]), ("null", None),
])
def test_override_values_are_yaml_scalars(text: str, value):
    assert parse_value(text) == value and type(parse_value(text)) is type(value)


def test_render_flags_methods_and_overrides(in_tmp: Path):
    r = invoke("render-config", "a.yaml", "--model", "/models/qwen", "--epochs", "3", "--learning-rate", "5e-5",
               "--lora-rank", "16", "--batch-size", "2", "--dataset-dir", "d", "--output-dir", "saves/a",
               "cutoff_len=2048", "eval_steps=50")
    assert r.exit_code == 0, r.output
    cfg = yaml.safe_load((in_tmp / "a.yaml").read_text())
    assert {k: cfg[k] for k in ("model_name_or_path", "num_train_epochs", "learning_rate", "lora_rank",
                                "per_device_train_batch_size", "dataset_dir", "output_dir", "cutoff_len",
                                "eval_steps")} == {
        "model_name_or_path": "/models/qwen", "num_train_epochs": 3, "learning_rate": 5e-5, "lora_rank": 16,
        "per_device_train_batch_size": 2, "dataset_dir": "d", "output_dir": "saves/a", "cutoff_len": 2048,
        "eval_steps": 50}

    assert invoke("render-config", "q.yaml", "--method", "qlora", "--deepspeed", "z3").exit_code == 0
    q = yaml.safe_load((in_tmp / "q.yaml").read_text())
    assert q["quantization_bit"] == 4 and q["finetuning_type"] == "lora"
    assert q["deepspeed"] == "configs/deepspeed/ds_z3.json"

    assert invoke("render-config", "f.yaml", "--method", "freeze").exit_code == 0
    f = yaml.safe_load((in_tmp / "f.yaml").read_text())
    assert f["finetuning_type"] == "freeze" and f["freeze_trainable_layers"] == 2 and "lora_target" not in f
    assert yaml.safe_load((in_tmp / "f.yaml").read_text()) == load_config(in_tmp / "f.yaml")


def test_render_rejects_unknown_keys_and_writes_nothing(in_tmp: Path):
    with pytest.raises(ConfigError) as e:
        invoke("render-config", "x.yaml", "lerning_rate=1e-4")
    assert "unknown key 'lerning_rate'" in e.value.message
    assert not (in_tmp / "x.yaml").exists()


def test_render_refuses_to_overwrite_a_different_config(in_tmp: Path):
    (in_tmp / "mine.yaml").write_text("model_name_or_path: mine\n")
    from vlm.errors import VlmError

    with pytest.raises(VlmError, match="holds a different config") as e:
        invoke("render-config", "mine.yaml")
    assert "--force" in e.value.hint
    assert invoke("render-config", "mine.yaml", "--force").exit_code == 0


def test_sweep_renders_one_validated_config_per_point(in_tmp: Path):
    r = invoke("sweep", str(ROOT / "configs" / "cord.yaml"), "--lr", "1e-4,5e-5", "--lora-rank", "8,16",
               "--epochs", "3,10", "--out-dir", "sweep", "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    names = sorted(Path(row["config"]).name for row in rows)
    assert len(names) == 8 and "cord_lr1e-4_r8_e3.yaml" in names and "cord_lr5e-5_r16_e10.yaml" in names
    assert len({row["output_dir"] for row in rows}) == 8
    cfg = load_config(in_tmp / "sweep" / "cord_lr5e-5_r16_e10.yaml")
    assert (cfg["learning_rate"], cfg["lora_rank"], cfg["num_train_epochs"]) == (5e-5, 16, 10)
    assert cfg["output_dir"] == "saves/qwen2_vl-2b/lora/cord_lr5e-5_r16_e10"
    assert "# Train with:  vlm train sweep/cord_lr5e-5_r16_e10.yaml" in (
        in_tmp / "sweep" / "cord_lr5e-5_r16_e10.yaml").read_text()


# ---------------------------------------------------------------- issue 12


def test_sweep_refuses_to_overwrite_hand_edited_configs(in_tmp: Path):
    """D6: like render-config, sweep replaces a config holding something else only with --force."""
    args = ("sweep", str(ROOT / "configs" / "cord.yaml"), "--lr", "1e-4,5e-5", "--out-dir", "sweep")
    assert invoke(*args).exit_code == 0
    edited = in_tmp / "sweep" / "cord_lr5e-5.yaml"
    other = in_tmp / "sweep" / "cord_lr1e-4.yaml"
    edited.write_text(edited.read_text() + "# my note\nmax_samples: 10\n")
    other.unlink()
    before = edited.read_bytes()
    from vlm.errors import VlmError

    with pytest.raises(VlmError, match="1 config\\(s\\) in sweep hold something else") as e:
        invoke(*args)
    assert "--force" in e.value.hint
    assert edited.read_bytes() == before and not other.exists()  # nothing written, not even the missing one
    assert invoke(*args, "--force").exit_code == 0
    assert b"my note" not in edited.read_bytes() and other.is_file()


def test_validate_checks_the_data_as_train_does(tmp_path: Path, toy_dataset: Path):
    """D16: a missing dataset_dir, an unregistered or an empty dataset name are problems, not OK."""
    from vlm.errors import VlmError

    cord = str(ROOT / "configs" / "cord.yaml")
    assert invoke("validate", cord, f"dataset_dir={toy_dataset}").exit_code == 0
    with pytest.raises(VlmError, match=f"dataset_dir {tmp_path / 'nowhere'} does not exist"):
        invoke("validate", cord, f"dataset_dir={tmp_path / 'nowhere'}")
    with pytest.raises(VlmError, match="'cord_trian' is not registered"):
        invoke("validate", cord, f"dataset_dir={toy_dataset}", "dataset=cord_trian")
    with pytest.raises(ConfigError, match="dataset: empty"):
        invoke("validate", cord, f"dataset_dir={toy_dataset}", "dataset=")
    result = invoke("validate", cord, f"dataset_dir={tmp_path / 'nowhere'}", "--json", catch=True)
    assert json.loads(result.stdout)["ok"] is False


def test_render_refuses_an_empty_dataset_name(in_tmp: Path):
    """D16: render-config dataset= used to write dataset: '' and call it validated."""
    with pytest.raises(ConfigError, match="dataset: empty"):
        invoke("render-config", "x.yaml", "dataset=")
    assert not (in_tmp / "x.yaml").exists()


def test_empty_yaml_lists_each_problem_once(tmp_path: Path):
    """D19."""
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError) as e:
        invoke("validate", str(empty))
    assert len(e.value.problems) == len(set(e.value.problems)) >= 1


def test_non_utf8_yaml_is_named(tmp_path: Path):
    """D13: a config that is not UTF-8 gets one line naming it, not the catch-all."""
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("model_name_or_path: caf\xe9\n".encode("latin-1"))
    r = subprocess.run([sys.executable, "-m", "vlm.cli", "validate", str(bad)], capture_output=True, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2 and f"{bad} is not UTF-8 text" in r.stderr and "bug" not in r.stderr


# ---------------------------------------------------------------- early stopping (issue 13)


def test_early_stopping_renders_what_the_trainer_needs(in_tmp: Path):
    r = invoke("render-config", "es.yaml", "--early-stopping", "3", "--json")
    assert r.exit_code == 0, r.output
    cfg = load_config(in_tmp / "es.yaml")
    assert (cfg["early_stopping_steps"], cfg["metric_for_best_model"], cfg["load_best_model_at_end"]) == (
        3, "eval_loss", True)
    assert "# stop after N evaluations in a row" in (in_tmp / "es.yaml").read_text()


@pytest.mark.slow  # a vlm child process that loads LLaMA-Factory (about 6 s of CPU each)
@pytest.mark.parametrize("overrides, problem", [
    (["eval_strategy=no"], "early_stopping_steps: needs evaluations to watch"),
    (["val_size=0"], "early_stopping_steps: needs an evaluation set"),
    ([], "early_stopping_steps: needs metric_for_best_model"),
    # The Trainer stops when no-improvement evaluations reach the patience: 0 stops at the first evaluation.
    (["metric_for_best_model=eval_loss", "early_stopping_steps=0"], "early_stopping_steps: 0 must be"),
    # LLaMA-Factory's evaluation reports no F1: the Trainer raised a KeyError at the first evaluation.
    (["metric_for_best_model=f1"], "metric_for_best_model: 'f1' is not reported by LLaMA-Factory's evaluation"),
    (["metric_for_best_model=eval_accuracy"], "eval_accuracy needs compute_accuracy: true"),
])
def test_early_stopping_without_its_companions_is_refused_before_training(in_tmp: Path, overrides, problem):
    """The Trainer would assert only after the model loaded; vlm validate names the missing key first."""
    r = run_vlm("render-config", "es.yaml", "early_stopping_steps=2", *overrides, cwd=in_tmp)
    assert r.returncode == 2 and problem in r.stderr, r.stderr
    assert not (in_tmp / "es.yaml").exists()
