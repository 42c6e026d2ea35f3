"""The whole chain through the CLI on the generated sample and the tiny model.

Training and prediction run the real ``llamafactory-cli``; nothing is mocked.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ENV, ROOT, VLM, vlm


@pytest.mark.slow
def test_whole_pipeline(tmp_path: Path, tiny_model: Path):
    sample = tmp_path / "cord-sample"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_cord_sample.py"), str(sample),
                    "--train", "12", "--validation", "2", "--test", "4"], check=True, env=ENV)

    exported = json.loads(vlm("save-cord-dataset-in-sharegpt-format", "data", "--source", str(sample), "--json",
                              cwd=tmp_path).stdout)
    assert exported["splits"]["test"]["records"] == 4

    vlm("render-config", "run.yaml", "--model", str(tiny_model), "--dataset-dir", "data", "--output-dir", "saves/lora",
        "--epochs", "2", "--batch-size", "4", "bf16=false", "gradient_accumulation_steps=1",
        "preprocessing_num_workers=1", "image_max_pixels=16384", "save_steps=1000", "overwrite_output_dir=true",
        cwd=tmp_path)
    vlm("train", "run.yaml", cwd=tmp_path)
    adapter = tmp_path / "saves" / "lora"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    assert (adapter / "vlm_run.json").is_file()

    vlm("predict", "--group", "vanilla-model", "--config", "run.yaml", "--no-adapter",
        "--max-new-tokens", "24", "--chunk-size", "3", cwd=tmp_path)
    vlm("predict", "--group", "finetuned-model", "--config", "run.yaml",
        "--max-new-tokens", "24", cwd=tmp_path)

    test_ids = {r["id"] for r in json.loads((tmp_path / "data" / "cord_test.json").read_text())}
    with sqlite3.connect(tmp_path / "runs" / "predictions.sqlite") as db:
        for group in ("vanilla-model", "finetuned-model"):
            stored = {row[0] for row in db.execute(
                "SELECT doc_id FROM predictions WHERE grp=? AND split='test'", (group,))}
            assert stored == test_ids
        adapters = dict(db.execute("SELECT grp, adapter_hash FROM predictions GROUP BY grp"))
    assert adapters["vanilla-model"] is None and adapters["finetuned-model"]

    report = json.loads(vlm("evaluate", "--groups", "vanilla-model", "finetuned-model", "--json",
                            "--output", "report", cwd=tmp_path).stdout)
    assert set(report) >= {"vanilla-model", "finetuned-model"}
    for group in ("vanilla-model", "finetuned-model"):
        g = report[group]
        assert g["documents"] == 4
        for key in ("valid_json", "ted_accuracy", "f1"):
            assert isinstance(g[key], float) and 0.0 <= g[key] <= 1.0
    assert "delta" in report["finetuned-model"]
    for name in ("report.md", "metrics.json", "per_document.csv", "chart.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0

    table = vlm("evaluate", "--groups", "vanilla-model", "finetuned-model", cwd=tmp_path).stdout
    assert "vanilla-model" in table and "finetuned-model" in table and "nTED" in table


@pytest.mark.parametrize("args, message", [
    (["save-cord-dataset-in-sharegpt-format", "out", "--source", "no/such/dir/here"], "source directory not found"),
    (["train", "missing.yaml"], "not found"),
    (["predict", "--group", "g", "--config", "missing.yaml"], "not found"),
    (["evaluate", "--groups", "a", "b"], "not found"),
    (["evaluate", "--predictions", "missing.jsonl"], "not found"),
    (["register-dataset", "missing.json", "--name", "x"], "not found"),
])
def test_missing_inputs_fail_clearly(tmp_path: Path, args: list[str], message: str):
    r = subprocess.run([*VLM, *args], capture_output=True, text=True, cwd=tmp_path, env=ENV)
    assert r.returncode != 0
    assert message in r.stderr and "Traceback" not in r.stderr
