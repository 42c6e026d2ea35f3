"""`vlm predict` on the tiny model: store, resume after SIGKILL, skew guards, and the store's own guarantees."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from helpers import ENV, VLM, sigkill_while_store_locked


def _predict_cmd(tiny_model: Path, data: Path, store: Path, *extra: str) -> list[str]:
    return [*VLM, "predict", "--group", "vanilla-model", "--backend", "transformers", "--model", str(tiny_model),
            "--dataset-dir", str(data),
            "--split", "test", "--store", str(store), "--work-dir", str(store.parent / "work"),
            "--max-new-tokens", "32", "--batch-size", "2", *extra, "template=qwen2_vl", "image_max_pixels=16384",
            "cutoff_len=1024"]


def _rows(store: Path) -> dict[str, float]:
    with sqlite3.connect(store) as db:
        return dict(db.execute("SELECT doc_id, created FROM predictions WHERE grp='vanilla-model'"))


@pytest.mark.slow
def test_sigkill_mid_predict_then_resume_predicts_only_missing(tmp_path: Path, tiny_model: Path, sample_export: Path):
    store = tmp_path / "preds.sqlite"
    proc = subprocess.Popen(_predict_cmd(tiny_model, sample_export, store, "--chunk-size", "1"), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if store.exists() and len(_rows(store)) >= 2:  # a store is never seen without its tables
            break
        time.sleep(0.02)
    sigkill_while_store_locked(proc, store)
    before = _rows(store)
    assert 2 <= len(before) < 6, f"kill landed after {len(before)} documents"

    r = subprocess.run([*_predict_cmd(tiny_model, sample_export, store, "--chunk-size", "2"), "--json"], env=ENV,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout)
    assert result["skipped_done"] == len(before) and result["predicted"] == 6 - len(before)
    after = _rows(store)
    assert len(after) == 6
    assert all(after[d] == before[d] for d in before)  # finished documents were not redone

    again = json.loads(subprocess.run([*_predict_cmd(tiny_model, sample_export, store), "--json"], env=ENV,
                                      capture_output=True, text=True).stdout)
    assert again["predicted"] == 0
    redo = json.loads(subprocess.run([*_predict_cmd(tiny_model, sample_export, store), "--overwrite", "--json"],
                                     env=ENV, capture_output=True, text=True).stdout)
    assert redo["predicted"] == 6

    # A different generation setting under the same group name is refused, not silently mixed.
    mixed = subprocess.run([*_predict_cmd(tiny_model, sample_export, store), "--max-new-tokens", "33"], env=ENV,
                           capture_output=True, text=True)
    assert mixed.returncode == 2 and "--overwrite" in mixed.stderr

    # The store exports to JSONL that `vlm evaluate --predictions` reads back.
    out = tmp_path / "vanilla.jsonl"
    subprocess.run([*VLM, "export-predictions", "--group", "vanilla-model", str(out), "--store", str(store)],
                   check=True, capture_output=True)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 6 and {"id", "prediction", "ground_truth"} <= set(lines[0])
    ev = subprocess.run([*VLM, "evaluate", "--predictions", str(out), "--json"], capture_output=True, text=True)
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["vanilla"]["documents"] == 6


@pytest.mark.slow  # a vlm child process that loads LLaMA-Factory (about 6 s of CPU each)
def test_adapter_dir_without_adapter_is_a_clear_error(tmp_path: Path, sample_export: Path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model_name_or_path: m\ntemplate: qwen2_vl\ndataset_dir: {sample_export}\n"
                   f"output_dir: {tmp_path}/none\n")
    r = subprocess.run([*VLM, "predict", "--group", "g", "--config", str(cfg)], capture_output=True, text=True, env=ENV)
    assert r.returncode == 2 and "no LoRA adapter" in r.stderr and "--no-adapter" in r.stderr


def test_a_full_finetune_is_predicted_with_its_saved_model(tmp_path: Path):
    """`--config` of a full fine-tune predicts with the model it saved; `--no-adapter` with the base model."""
    from vlm.inference.predict import PredictSpec, resolve_settings

    out = tmp_path / "saves" / "full"
    out.mkdir(parents=True)
    cfg = tmp_path / "full.yaml"
    cfg.write_text(f"model_name_or_path: base\ntemplate: qwen2_vl\ndataset_dir: {tmp_path}\n"
                   f"finetuning_type: full\noutput_dir: {out}\n")
    from vlm.errors import VlmError

    with pytest.raises(VlmError, match="no fine-tuned model"):
        resolve_settings(PredictSpec(group="g", config=cfg))
    (out / "config.json").write_text("{}")
    tuned = resolve_settings(PredictSpec(group="g", config=cfg))
    assert (tuned["model_name_or_path"], tuned["adapter_name_or_path"]) == (str(out), None)
    base = resolve_settings(PredictSpec(group="g", config=cfg, no_adapter=True))
    assert (base["model_name_or_path"], base["adapter_name_or_path"]) == ("base", None)
