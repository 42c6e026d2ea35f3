"""Resuming a full or freeze fine-tune never continues silently from the base weights.

Under transformers 5 the Trainer's resume loads a Qwen2-VL checkpoint's weights without renaming them to the
model's (``visual.*`` on disk, ``model.visual.*`` in memory): every key misses and the run goes on from the base
model. vlm refuses such a resume (a sweep trains the point again from the start), and any run that logs missing
keys at resume ends as failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vlm.errors import VlmError
from vlm.training.train import MISSING_AT_RESUME, plan_resume

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _checkpoint(out: Path, model_type: str) -> Path:
    ckpt = out / "checkpoint-8"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text("{}")
    (ckpt / "config.json").write_text(json.dumps({"model_type": model_type}))
    return ckpt


@pytest.mark.parametrize("method", ["full", "freeze"])
def test_a_full_or_freeze_qwen2_vl_run_is_not_resumed(tmp_path, method):
    _checkpoint(tmp_path, "qwen2_vl")
    with pytest.raises(VlmError, match="would continue from the base weights") as e:
        plan_resume({"finetuning_type": method}, tmp_path, resume=True)
    assert "overwrite_output_dir=true" in e.value.hint


@pytest.mark.parametrize(("method", "model_type"), [("lora", "qwen2_vl"), ("full", "llama")])
def test_runs_that_resume_correctly_still_do(tmp_path, method, model_type):
    ckpt = _checkpoint(tmp_path, model_type)
    cfg = {"finetuning_type": method}
    assert plan_resume(cfg, tmp_path, resume=True) == str(ckpt)
    assert cfg["resume_from_checkpoint"] == str(ckpt)


def _config(path: Path, model: Path, data: Path, out: Path, **extra) -> Path:
    cfg = {"model_name_or_path": str(model), "image_max_pixels": 65536, "image_min_pixels": 3136, "stage": "sft",
           "do_train": True, "finetuning_type": "lora", "lora_target": "all", "dataset": "cord_train",
           "dataset_dir": str(data), "template": "qwen2_vl", "cutoff_len": 1024, "preprocessing_num_workers": 1,
           "output_dir": str(out), "logging_steps": 2, "save_steps": 8, "report_to": "none",
           "per_device_train_batch_size": 1, "gradient_accumulation_steps": 1, "learning_rate": 1e-4,
           "num_train_epochs": 1, "lr_scheduler_type": "cosine", "bf16": False, **extra}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.mark.slow  # a vlm child that loads LLaMA-Factory, or photo-sized images: kept out of make test-fast
def test_a_resumed_run_that_logs_missing_keys_fails(tmp_path, tiny_model, toy_dataset):
    """Whatever the cause, a resume whose checkpoint did not load is not a finished run (exit 0 before)."""
    fake = tmp_path / "llamafactory-cli"
    fake.write_text(f"#!{sys.executable}\nprint('{MISSING_AT_RESUME}: [\"model.visual.blocks.0.attn.qkv.weight\"]')\n")
    fake.chmod(0o755)
    out = tmp_path / "out"
    _checkpoint(out, "qwen2_vl")
    config = _config(tmp_path / "run.yaml", tiny_model, toy_dataset, out)
    r = subprocess.run([sys.executable, "-m", "vlm.cli", "train", str(config), "--resume"],
                       env={**ENV, "VLM_LLAMAFACTORY_CLI": str(fake)}, capture_output=True, text=True)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "loaded it with missing keys" in r.stderr
    assert json.loads((out / "vlm_run.json").read_text())["exit_code"] == 1


@pytest.mark.slow
def test_a_real_full_run_is_refused_at_resume(tmp_path, tiny_model, toy_dataset):
    """The real llamafactory-cli: a full fine-tune's checkpoint, then --resume: refused before any training."""
    out = tmp_path / "out"
    config = _config(tmp_path / "run.yaml", tiny_model, toy_dataset, out, finetuning_type="full",
                     learning_rate=1e-5, max_steps=8)
    first = subprocess.run([sys.executable, "-m", "vlm.cli", "train", str(config)], env=ENV, capture_output=True,
                           text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (out / "checkpoint-8" / "config.json").is_file()
    log_before = (out / "train.log").read_text()
    r = subprocess.run([sys.executable, "-m", "vlm.cli", "train", str(config), "--resume"], env=ENV,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "would continue from the base weights" in r.stderr
    assert (out / "train.log").read_text() == log_before  # nothing was launched
