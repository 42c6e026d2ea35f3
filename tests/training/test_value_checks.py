"""Values LLaMA-Factory's parser accepts but that fail later or train nothing are refused by every command that
reads a config (validate, render-config, sweep, stats, train), with the same message."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from vlm.cli import app
from vlm.errors import ConfigError
from vlm.training.config import load_config
from vlm.training.validation import validate_config, value_problems

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "configs" / "cord.yaml"

BAD = [
    ({"num_train_epochs": 0}, "num_train_epochs"),
    ({"num_train_epochs": -1}, "num_train_epochs"),
    ({"num_train_epochs": float("nan")}, "num_train_epochs"),
    ({"cutoff_len": 0}, "cutoff_len"),
    ({"cutoff_len": -5}, "cutoff_len"),
    ({"output_dir": ""}, "output_dir"),
    ({"output_dir": "  "}, "output_dir"),
    ({"learning_rate": float("nan")}, "learning_rate"),
    ({"learning_rate": "nan"}, "learning_rate"),
    ({"learning_rate": 0}, "learning_rate"),
    ({"learning_rate": float("inf")}, "learning_rate"),
    ({"lora_rank": 0}, "lora_rank"),
    ({"per_device_train_batch_size": 0}, "per_device_train_batch_size"),
    ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps"),
]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


@pytest.mark.parametrize(("override", "key"), BAD, ids=lambda x: str(x))
def test_validate_refuses(override, key):
    cfg = load_config(RECIPE) | override
    with pytest.raises(ConfigError) as e:
        validate_config(cfg)
    assert any(p.startswith(f"{key}:") for p in e.value.problems), e.value.problems


def test_what_still_passes():
    """Zero epochs with max_steps, a LoRA rank on a full fine-tune, and the recipe itself are fine."""
    recipe = load_config(RECIPE)
    assert value_problems(recipe) == []
    assert value_problems(recipe | {"num_train_epochs": 0, "max_steps": 10}) == []
    assert value_problems(recipe | {"finetuning_type": "full", "lora_rank": 0}) == []
    assert value_problems(recipe | {"learning_rate": "1e-4"}) == []  # YAML's text form of a number
    validate_config(recipe | {"num_train_epochs": 0.5})


def _config(tmp_path: Path, **override) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(load_config(RECIPE) | override))
    return path


@pytest.mark.parametrize("command", ["validate", "stats", "train"])
def test_every_command_that_reads_a_config_refuses_it_the_same_way(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the recipe's output_dir is relative: a refused run must not create it here
    config = _config(tmp_path, cutoff_len=0, num_train_epochs=0)
    with pytest.raises(ConfigError) as e:
        invoke(command, str(config))
    keys = sorted(p.split(":")[0] for p in e.value.problems)
    assert keys == ["cutoff_len", "num_train_epochs"], e.value.problems
    assert not (tmp_path / "saves").exists()


def test_render_config_writes_nothing(tmp_path):
    out = tmp_path / "out.yaml"
    with pytest.raises(ConfigError):
        invoke("render-config", str(out), "num_train_epochs=-1")
    assert not out.exists()


def test_sweep_refuses_a_zero_epoch_point(tmp_path):
    out = tmp_path / "sweep"
    with pytest.raises(ConfigError) as e:
        invoke("sweep", str(_config(tmp_path)), "--epochs", "0,1", "--out-dir", str(out))
    assert any(p.startswith("num_train_epochs:") for p in e.value.problems)
    assert not out.exists() or not any(out.glob("*.yaml"))
