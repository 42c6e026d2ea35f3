"""bench/bench_train_cost.py: the step arithmetic, the log watcher, and a real CPU-mode run.

The slow test runs the script as a user would: it builds the tiny model and a small
synthetic CORD export, renders the recipe with ``vlm render-config``, and trains each
variant for 3 steps with the real ``llamafactory-cli`` through ``vlm train``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ENV, ROOT

sys.path.insert(0, str(ROOT / "bench"))

import bench_train_cost as bench


def test_samples_per_step_follows_the_trainer_batching():
    # 800 samples, batch 8 x accumulation 8: 100 micro-batches, 12 full steps, then 4 micro-batches.
    assert bench.samples_per_step(800, 8, 8, 14) == [64] * 12 + [32, 64]
    # 720 (the recipe's train split after val_size 0.1): 90 micro-batches, the 12th step has 2 of them.
    assert bench.samples_per_step(720, 8, 8, 12)[-1] == 16
    # Fewer samples than one effective batch: every step is a whole (short) epoch.
    assert bench.samples_per_step(12, 8, 8, 3) == [12, 12, 12]
    assert bench.samples_per_step(20, 8, 2, 4) == [16, 4, 16, 4]


def test_step_timing_leaves_out_the_warmup_steps():
    stamps = {1: 100.0, 2: 130.0, 3: 132.0, 4: 134.0, 5: 136.0}
    timing = bench.step_timing(stamps, 800, 8, 8, warmup=2)
    assert timing["steps_timed"] == 3
    assert timing["seconds_per_step"] == pytest.approx(2.0)
    assert timing["samples_per_second"] == pytest.approx(3 * 64 / 6.0)
    assert timing["step_seconds_min_median_max"] == [2.0, 2.0, 2.0]
    with pytest.raises(ValueError, match="step 2"):
        bench.step_timing({1: 1.0, 2: 2.0}, 800, 8, 8, warmup=2)


def test_ratios_are_relative_to_the_baseline():
    results = [
        {"name": "recipe", "status": "ok", "seconds_per_step": 4.0, "peak_gpu_reserved_gib": 20.0},
        {"name": "fast", "status": "ok", "seconds_per_step": 3.0, "peak_gpu_reserved_gib": None},
        {"name": "liger", "status": "skipped", "reason": "not installed"},
    ]
    bench.add_ratios(results, ("seconds_per_step", "peak_gpu_reserved_gib"), "recipe")
    assert results[0]["ratio_to_baseline"] == {"seconds_per_step": 1.0, "peak_gpu_reserved_gib": 1.0}
    assert results[1]["ratio_to_baseline"] == {"seconds_per_step": 0.75, "peak_gpu_reserved_gib": None}
    assert "ratio_to_baseline" not in results[2]


def test_a_recipe_that_truncates_moves_the_baseline_to_the_cutoff_that_fits():
    # CORD-scale photos at the published 768*768 overflow cutoff_len 1024 (truncated image tokens crash
    # Qwen2-VL), so the levers start from the recipe with the cutoff vlm stats says fits.
    plan = bench.make_plan({"n_over": 40, "recommended_cutoff_len": 1408, "recommended_image_max_pixels": 313600},
                           "auto")
    assert (plan.baseline, plan.fit_cutoff, plan.preflight_pixels) == ("recipe_full_cutoff", 1408, 313600)
    by_name = {v.name: v for v in bench.VARIANTS}
    assert bench.variant_overrides(by_name["no_grad_ckpt"], "gpu", plan) == {
        "cutoff_len": 1408, "disable_gradient_checkpointing": True}
    assert bench.variant_overrides(by_name["recipe"], "gpu", plan) == {}
    assert bench.skip_reason(by_name["recipe_full_cutoff"], "gpu", plan) is None
    fits = bench.make_plan({"n_over": 0, "recommended_cutoff_len": 1024, "recommended_image_max_pixels": None}, "auto")
    assert (fits.baseline, fits.preflight_pixels) == ("recipe", 262144)  # configs/cord.yaml's value
    assert "same run as recipe" in bench.skip_reason(by_name["recipe_full_cutoff"], "gpu", fits)


def test_log_watch_keeps_a_partial_line_until_it_is_complete(tmp_path: Path):
    path = tmp_path / "trainer_log.jsonl"
    watch = bench.TrainerLogWatch(path)
    watch.poll()  # no file yet
    path.write_text('{"current_steps": 1, "loss": 2.0}\n{"current_steps": 2, "lo', encoding="utf-8")
    watch.poll()
    assert list(watch.step_stamps()) == [1]
    with open(path, "a", encoding="utf-8") as f:
        f.write('ss": 1.5}\n{"current_steps": 2, "train_runtime": 9.0}\n')
    watch.poll()
    assert list(watch.step_stamps()) == [1, 2]  # the summary line (no loss) is not a step
    assert len(watch.records) == 3


def test_combined_takes_only_the_settings_that_run_here():
    combined = next(v for v in bench.VARIANTS if v.name == "combined")
    cpu = bench.variant_overrides(combined, "cpu", bench.Plan(262144, "test", fit_cutoff=1408))
    assert cpu["image_max_pixels"] == 262144
    assert cpu["disable_gradient_checkpointing"] is True
    assert "enable_liger_kernel" not in cpu and "flash_attn" not in cpu  # GPU-only, skipped on a CPU
    assert "cutoff_len" not in cpu  # the preflight pixels fit the recipe's cutoff


@pytest.mark.slow
def test_cpu_mode_measures_each_variant(tmp_path: Path):
    out = tmp_path / "train_cost.json"
    argv = [sys.executable, str(ROOT / "bench" / "bench_train_cost.py"), "--mode", "cpu",
            "--variants", "recipe,recipe_full_cutoff,preflight_pixels,liger", "--steps", "3", "--samples", "8",
            "--work-dir", str(tmp_path / "work"), "--out", str(out)]
    done = subprocess.run(argv, check=False, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(out.read_text(encoding="utf-8"))

    assert report["mode"] == "cpu" and report["settings"]["steps"] == 3
    assert report["versions"]["llamafactory"] and report["versions"]["torch"]
    by_name = {v["name"]: v for v in report["variants"]}
    assert list(by_name) == ["recipe", "recipe_full_cutoff", "preflight_pixels", "liger"]
    for name in ("recipe", "preflight_pixels"):
        v = by_name[name]
        assert v["status"] == "ok", v
        for key in ("seconds_per_step", "samples_per_second", "projected_10_epoch_minutes"):
            assert isinstance(v[key], (int, float)) and math.isfinite(v[key]) and v[key] > 0, (name, key, v[key])
        assert v["steps_run"] == 3 and v["steps_timed"] == 1  # steps 1-2 are warm-up
        config = yaml.safe_load(Path(v["resolved_config"]).read_text(encoding="utf-8"))
        assert config["bf16"] is False and v["bf16"] is False  # CPU mode
        assert config["max_steps"] == 3 and config["eval_strategy"] == "no" and config["val_size"] == 0
        assert config["gradient_accumulation_steps"] == 8  # the recipe's batch is kept
    assert report["ratio_baseline"] == "recipe"  # small receipts fit cutoff_len at the published pixels
    ratios = by_name["recipe"]["ratio_to_baseline"]
    assert ratios["seconds_per_step"] == ratios["samples_per_second"] == ratios["projected_10_epoch_minutes"] == 1.0
    # The recipe as published sets no image_max_pixels: LLaMA-Factory's default applies.
    assert report["settings"]["base_overrides"]["image_max_pixels"] == 768 * 768
    preflight = report["settings"]["preflight_image_max_pixels"]
    assert by_name["preflight_pixels"]["overrides"] == {"image_max_pixels": preflight}
    assert by_name["preflight_pixels"]["tokens"]["image_max_pixels"] == preflight
    for name in ("recipe_full_cutoff", "liger"):
        assert by_name[name]["status"] == "skipped" and by_name[name]["reason"]
    assert "recipe" in done.stdout and "skipped" in done.stdout  # the printed table
