#!/usr/bin/env python
"""What one CORD LoRA training run costs, per LLaMA-Factory setting, measured on this machine.

Builds everything offline, then runs the real ``llamafactory-cli train`` through
``vlm train`` once per variant for a fixed number of optimizer steps:

* model: GPU mode: a random-weight Qwen2-VL with the published 2B-Instruct
  architecture (bench/train_cost_model.py), bf16, built on the GPU in seconds.
  CPU mode: the toy model of scripts/make_tiny_qwen2vl.py (tests the harness; its
  numbers say nothing about a GPU);
* data: a CORD-scale synthetic sample (scripts/make_cord_sample.py; GPU mode: 800
  photo-like ~1600x2400 JPEG receipts), exported with
  ``vlm save-cord-dataset-in-sharegpt-format``;
* config: ``vlm render-config`` renders the recipe once, as published (no
  image_max_pixels, so LLaMA-Factory's 768*768 default) plus the timing-run keys:
  max_steps=N, logging_steps=1, eval and checkpoints off, val_size=0. Each variant
  is ``vlm train BASE key=value...`` (vlm validates and preflights it), with
  ``--allow-truncation`` only where ``vlm stats`` finds samples over cutoff_len.

Baseline: on CORD-scale photos the published recipe overflows cutoff_len 1024, and
truncated image tokens crash Qwen2-VL training. When ``vlm stats`` finds samples over
the cutoff, the cost levers start from ``recipe_full_cutoff`` (cutoff_len raised until
nothing is cut) and every ratio divides by it; otherwise by ``recipe``. A variant that
fails (OOM, a crash, a timeout) is recorded with its error, and the run goes on.

Timing: this script tails ``trainer_log.jsonl`` every 20 ms and stamps each step's
line as it appears (LLaMA-Factory logs after the optimizer step, and the loss's
``.item()`` waits for the GPU). seconds_per_step is the time from step W's line to
step N's line over N - W (W warm-up steps are excluded: allocator growth, kernel
autotuning, first dataloader batches). samples_per_second counts the samples in
those steps exactly as the HF Trainer batches them. The 10-epoch projection is
10 x 720 samples / samples_per_second: the recipe's val_size 0.1 holds out 80 of
CORD's 800 train receipts (the 800-sample figure is recorded too). It covers the
optimizer steps only; start-up (imports, preprocessing, model load) is reported
separately as seconds_to_first_step. Peak GPU memory is torch's peak allocated and
reserved memory, as LLaMA-Factory logs them with RECORD_VRAM=1, and the peak of
nvidia-smi's memory.used sampled every second (what a person watching the GPU sees).

    PYTHONPATH=src python bench/bench_train_cost.py                  # GPU mode if a GPU is visible
    PYTHONPATH=src python bench/bench_train_cost.py --variants recipe_full_cutoff,no_grad_ckpt --steps 16
    PYTHONPATH=src python bench/bench_train_cost.py --model-dir /models/Qwen2-VL-2B-Instruct  # real weights
    python bench/bench_train_cost.py --mode cpu --variants recipe,preflight_pixels
    python bench/bench_train_cost.py --list

Results: bench/results/train_cost_<mode>_<date>.json (see bench/results/README.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
EPOCHS, CORD_TRAIN, VAL_SIZE = 10, 800, 0.1
PROJECTED_SAMPLES = CORD_TRAIN - round(CORD_TRAIN * VAL_SIZE)  # 720 samples per epoch after the recipe's hold-out
ANCHOR = {"minutes": 30, "gpu_memory_gb": 20,
          "note": "reported for the recipe on a real Qwen2-VL-2B run (GPU unnamed); not measured by this script"}
# The published recipe sets no image_max_pixels/image_min_pixels: LLaMA-Factory 0.9.5's defaults apply.
PUBLISHED_PIXELS = {"image_max_pixels": 768 * 768, "image_min_pixels": 32 * 32}
CORD_YAML_MAX_PIXELS = 262144  # configs/cord.yaml's image_max_pixels
MODES = {  # per mode: steps, samples, model size, photo-like images, extra overrides
    "gpu": {"steps": 12, "samples": CORD_TRAIN, "model": "2b", "photo_like": True, "overrides": {}},
    # bf16 needs a GPU; 16 preprocessing processes only cost start-up time on a small CPU box.
    "cpu": {"steps": 3, "samples": 64, "model": "tiny", "photo_like": False,
            "overrides": {"bf16": False, "preprocessing_num_workers": 1}},
}


@dataclass(frozen=True)
class Variant:
    """One way to run the recipe; ``kind`` says what it starts from.

    recipe: the recipe as published. full_cutoff: the recipe with cutoff_len raised until
    nothing is truncated. pixels: the recipe with the preflight's image_max_pixels. lever:
    the baseline plus ``overrides``. combined: the preflight pixels plus every lever that runs.
    """

    name: str
    about: str
    kind: str = "lever"
    overrides: dict[str, Any] = field(default_factory=dict)
    needs: tuple[str, ...] = ()  # "cuda" and/or importable modules


VARIANTS = [
    Variant("recipe", "the recipe as published: no image_max_pixels, so LLaMA-Factory's 768*768 default",
            kind="recipe"),
    Variant("recipe_full_cutoff", "the recipe with cutoff_len raised to vlm stats' recommended_cutoff_len: "
            "the published pixels, nothing truncated", kind="full_cutoff"),
    Variant("preflight_pixels", "image_max_pixels from vlm stats (recommended_image_max_pixels; else 262144)",
            kind="pixels"),
    Variant("no_grad_ckpt", "gradient checkpointing off (LLaMA-Factory turns it on by default): "
            "no recomputed forward, more activation memory", overrides={"disable_gradient_checkpointing": True}),
    Variant("batch16_accum4", "per-device batch 16 x accumulation 4 (effective batch still 64)",
            overrides={"per_device_train_batch_size": 16, "gradient_accumulation_steps": 4}),
    Variant("workers4", "4 dataloader workers decode and resize images beside the training loop",
            overrides={"dataloader_num_workers": 4}),
    Variant("liger", "Liger kernels (fused RMSNorm, SwiGLU, RoPE, fused linear cross-entropy)",
            overrides={"enable_liger_kernel": True}, needs=("cuda", "liger_kernel")),
    Variant("fa2", "FlashAttention-2 instead of PyTorch SDPA", overrides={"flash_attn": "fa2"},
            needs=("cuda", "flash_attn")),
    Variant("combined", "preflight_pixels + every lever above that runs here (levers change speed and memory, "
            "not what is learned)", kind="combined"),
]
VARIANT_NAMES = [v.name for v in VARIANTS]


@dataclass(frozen=True)
class Plan:
    """What the token counts of the published recipe decided, before any training."""

    preflight_pixels: int
    preflight_source: str
    fit_cutoff: int | None = None  # cutoff_len that truncates nothing at the published pixels; None: nothing is cut

    @property
    def baseline(self) -> str:
        """The variant the levers start from and the ratios divide by: the recipe, unless it truncates samples
        (truncated image tokens crash Qwen2-VL training), then the recipe with the cutoff that fits."""
        return "recipe" if self.fit_cutoff is None else "recipe_full_cutoff"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def skip_reason(variant: Variant, mode: str, plan: Plan | None = None) -> str | None:
    """Why ``variant`` does not run in ``mode`` on this machine, or None."""
    if variant.kind == "full_cutoff" and plan is not None and plan.fit_cutoff is None:
        return "no sample exceeds cutoff_len at the published pixels: the same run as recipe"
    for need in variant.needs:
        if need == "cuda" and mode != "gpu":
            return "needs a CUDA GPU (GPU-only kernels)"
        if need != "cuda" and importlib.util.find_spec(need) is None:
            package = need.replace("_", "-")
            return f"{need} is not importable here (pip install {package}, then rerun)"
    return None


def variant_overrides(variant: Variant, mode: str, plan: Plan) -> dict[str, Any]:
    """The LLaMA-Factory keys ``variant`` changes in the base config (the published recipe + timing-run keys)."""
    fit = {} if plan.fit_cutoff is None else {"cutoff_len": plan.fit_cutoff}
    if variant.kind == "recipe":
        return {}
    if variant.kind == "full_cutoff":
        return fit
    if variant.kind == "pixels":
        return {"image_max_pixels": plan.preflight_pixels}
    if variant.kind == "lever":
        return {**fit, **variant.overrides}
    combined = {"image_max_pixels": plan.preflight_pixels}
    for other in VARIANTS:
        if other.kind == "lever" and skip_reason(other, mode, plan) is None:
            combined.update(other.overrides)
    return combined



# ---------------------------------------------------------------- pure measurement helpers


def samples_per_step(n_train: int, batch: int, accum: int, steps: int) -> list[int]:
    """Samples in each of the first ``steps`` optimizer steps, as the HF Trainer batches them.

    Per epoch: ceil(n / batch) micro-batches (the last one short), grouped ``accum`` at a
    time; the epoch's last step takes what is left. Epochs repeat until ``steps``.
    """
    micro = [batch] * (n_train // batch) + ([n_train % batch] if n_train % batch else [])
    epoch = [sum(micro[i:i + accum]) for i in range(0, len(micro), accum)]
    return [epoch[i % len(epoch)] for i in range(steps)]


def step_timing(stamps: dict[int, float], n_train: int, batch: int, accum: int, warmup: int) -> dict[str, Any]:
    """seconds_per_step and samples_per_second from the arrival time of each step's log line."""
    last = max(stamps, default=0)
    if last <= warmup or (warmup > 0 and warmup not in stamps):
        raise ValueError(f"need log lines for step {warmup} and a later step; got steps {sorted(stamps)}")
    start = stamps[warmup] if warmup else stamps[min(stamps)]
    first = warmup if warmup else min(stamps)
    seconds = stamps[last] - start
    samples = sum(samples_per_step(n_train, batch, accum, last)[first:last])
    # Per-step durations show stalls (dataloader, other load on the host) that the mean hides.
    each = sorted(stamps[k] - stamps[k - 1] for k in range(first + 1, last + 1) if k in stamps and k - 1 in stamps)
    return {"steps_timed": last - first, "timed_seconds": round(seconds, 3),
            "seconds_per_step": seconds / (last - first), "samples_timed": samples,
            "samples_per_second": samples / seconds if seconds > 0 else float("nan"),
            "step_seconds_min_median_max": [round(x, 3) for x in (each[0], statistics.median(each), each[-1])]
            if each else None}


def add_ratios(results: list[dict[str, Any]], keys: tuple[str, ...], baseline: str = "recipe") -> None:
    """Each ok variant's ``ratio_to_baseline`` for ``keys`` (the baseline's own ratios are 1.0)."""
    base = next((r for r in results if r["name"] == baseline and r["status"] == "ok"), None)
    for r in results:
        if r["status"] != "ok":
            continue
        r["ratio_to_baseline"] = {k: (round(r[k] / base[k], 3) if base and r.get(k) and base.get(k) else None)
                                  for k in keys}


# ---------------------------------------------------------------- running a child and watching its log


class TrainerLogWatch:
    """New complete lines of ``trainer_log.jsonl``, each stamped with the monotonic time it was first seen."""

    def __init__(self, path: Path):
        self.path, self.offset, self.partial = path, 0, b""
        self.records: list[tuple[float, dict[str, Any]]] = []

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        now = time.monotonic()
        self.offset += len(chunk)
        *lines, self.partial = (self.partial + chunk).split(b"\n")
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                self.records.append((now, record))

    def step_stamps(self) -> dict[int, float]:
        """step -> when its training-loss line appeared (evaluation and summary lines have no ``loss``)."""
        stamps: dict[int, float] = {}
        for t, record in self.records:
            if "loss" in record and "current_steps" in record:
                stamps.setdefault(int(record["current_steps"]), t)
        return stamps


class GpuMemorySampler(threading.Thread):
    """Peak ``nvidia-smi --query-gpu=memory.used`` of one GPU, sampled every second (None without nvidia-smi)."""

    def __init__(self, index: str):
        super().__init__(daemon=True)
        self.argv = ["nvidia-smi", f"--id={index}", "--query-gpu=memory.used", "--format=csv,noheader,nounits"]
        self.peak_mib: float | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        if shutil.which("nvidia-smi") is None:
            return
        while not self.stop.is_set():
            try:
                done = subprocess.run(self.argv, check=False, capture_output=True, text=True, timeout=10)
                used = float(done.stdout.strip().splitlines()[0])
                self.peak_mib = max(self.peak_mib or 0.0, used)
            except (subprocess.SubprocessError, OSError, ValueError, IndexError):
                pass
            self.stop.wait(1.0)


@dataclass
class ChildRun:
    exit_code: int
    seconds: float
    peak_rss_gib: float
    watch: TrainerLogWatch
    started: float
    peak_smi_gib: float | None = None


def run_watched(argv: list[str], env: dict[str, str], out_path: Path, trainer_log: Path, timeout: float,
                gpu_index: str | None) -> ChildRun:
    """Run ``argv`` with its output in ``out_path`` while stamping ``trainer_log`` lines; reap it with wait4
    so its peak RSS (its own and its children's) is its own, not the maximum over all earlier runs."""
    watch, sampler = TrainerLogWatch(trainer_log), GpuMemorySampler(gpu_index) if gpu_index is not None else None
    if sampler:
        sampler.start()
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    started = time.monotonic()
    interrupted_at = None
    try:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            watch.poll()
            if pid:
                break
            elapsed = time.monotonic() - started
            if interrupted_at is None and elapsed > timeout:
                log(f"timeout after {timeout:.0f}s: stopping {argv[3] if len(argv) > 3 else argv[0]}")
                proc.send_signal(signal.SIGINT)  # vlm train stops its child's process group and exits 130
                interrupted_at = elapsed
            elif interrupted_at is not None and elapsed > interrupted_at + 60:
                proc.kill()
            time.sleep(0.02)
    finally:
        if sampler:
            sampler.stop.set()
            sampler.join(timeout=15)
    proc.returncode = os.waitstatus_to_exitcode(status)
    peak_smi = sampler.peak_mib / 1024 if sampler and sampler.peak_mib is not None else None
    return ChildRun(proc.returncode, time.monotonic() - started, usage.ru_maxrss / 1024**2, watch, started, peak_smi)


def error_line(*paths: Path) -> str:
    """The most telling line of a failed run's logs: the last exception line, else the last line."""
    fallback = ""
    for path in paths:
        try:
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        except OSError:
            continue
        for line in reversed(lines):
            if "Error" in line or "error:" in line or "out of memory" in line:
                return line[:500]
        fallback = fallback or (lines[-1][:500] if lines else "")
    return fallback or "no output"


# ---------------------------------------------------------------- the benchmark


def child_env(mode: str) -> tuple[dict[str, str], str | None]:
    """Offline environment for vlm/LLaMA-Factory children, and the GPU index nvidia-smi should watch."""
    path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))  # vlm, if not installed
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "RECORD_VRAM": "1", "PYTHONPATH": path}
    if mode != "gpu":
        return env, None
    # One GPU: with several visible, LLaMA-Factory would launch torchrun over all of them.
    env.setdefault("CUDA_VISIBLE_DEVICES", "0")
    first = env["CUDA_VISIBLE_DEVICES"].split(",")[0].strip()
    return env, first if first.isdigit() else "0"


def vlm(*args: str) -> list[str]:
    return [sys.executable, "-m", "vlm.cli", *args]


def check(argv: list[str], env: dict[str, str], what: str) -> str:
    done = subprocess.run(argv, check=False, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"{what} failed (exit {done.returncode}): {done.stderr.strip()[-1500:]}")
    return done.stdout


def prepare(work: Path, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    """Build (or reuse) the model and the exported dataset in ``work``; return what was built."""
    model_dir = args.model_dir.resolve() if args.model_dir else None
    wanted = {"mode": args.mode, "model": str(model_dir or args.model), "samples": args.samples, "seed": args.seed,
              "photo_like": args.photo_like}
    stamp = work / "work.json"
    if stamp.is_file() and json.loads(stamp.read_text(encoding="utf-8")).get("wanted") == wanted:
        log(f"reusing model and data in {work}")
        return {**json.loads(stamp.read_text(encoding="utf-8")), "reused": True}
    work.mkdir(parents=True, exist_ok=True)
    builder = [sys.executable, str(ROOT / "bench" / "train_cost_model.py")]
    if model_dir:  # a model you already have (e.g. the real Qwen2-VL-2B-Instruct): only the device is looked at
        facts = {"kind": "given", "path": str(model_dir), **json.loads(check([*builder, "--device-info"], env, "info"))}
    else:
        log(f"building the {args.model} model ({'random weights' if args.model == '2b' else 'toy'})")
        facts = json.loads(check([*builder, str(work / "model"), "--size", args.model, "--seed", str(args.seed),
                                  "--device", "cuda" if args.mode == "gpu" else "cpu"], env, "model build"))
        facts["path"] = str(work / "model")
    log(f"generating {args.samples} synthetic CORD receipts ({'photo-like' if args.photo_like else 'small'})")
    t0 = time.perf_counter()
    # A child process: the generator's render pool spawns workers that must import it by name.
    check([sys.executable, str(ROOT / "scripts" / "make_cord_sample.py"), str(work / "sample"),
           "--train", str(args.samples), "--validation", "0", "--test", "0", "--seed", str(args.seed), "--force",
           *(["--photo-like"] if args.photo_like else [])], env, "make_cord_sample")
    check(vlm("save-cord-dataset-in-sharegpt-format", str(work / "data"), "--source", str(work / "sample"),
              "--split", "train", "--json"), env, "export")
    records = json.loads((work / "data" / "cord_train.json").read_text(encoding="utf-8"))
    answers = sorted(len(r["messages"][-1]["content"]) for r in records)
    data = {"n_train": len(records), "photo_like": args.photo_like, "seconds": round(time.perf_counter() - t0, 1),
            "answer_chars_p50": answers[len(answers) // 2], "answer_chars_max": answers[-1]}
    built = {"wanted": wanted, "model": facts, "data": data}
    stamp.write_text(json.dumps(built, indent=2), encoding="utf-8")
    return {**built, "reused": False}


@dataclass
class Bench:
    """One benchmark run: the base config (rendered once) and how each variant is trained and measured."""

    mode: str
    work: Path
    steps: int
    warmup: int
    timeout: float
    n_train: int
    model: str  # the model directory
    env: dict[str, str]
    gpu_index: str | None
    extra: dict[str, Any] = field(default_factory=dict)  # --set KEY=VALUE, for every variant
    token_stats: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)

    @property
    def base_config(self) -> Path:
        return self.work / "runs" / "base.yaml"

    def base_settings(self) -> dict[str, Any]:
        """The keys set on the recipe for every variant: published pixels, mode, --set, then the timing run."""
        timing = {"max_steps": self.steps, "save_steps": 1_000_000, "eval_strategy": "no", "val_size": 0,
                  "report_to": "none", "logging_steps": 1, "overwrite_output_dir": True}
        return {**PUBLISHED_PIXELS, **MODES[self.mode]["overrides"], **self.extra, **timing}

    def render_base(self) -> dict[str, Any]:
        """``vlm render-config`` (which validates) the recipe with ``base_settings``; return the rendered keys."""
        check(vlm("render-config", str(self.base_config), "--model", self.model, "--dataset-dir",
                  str(self.work / "data"), "--output-dir", str(self.work / "runs" / "base-output"), "--force",
                  *pairs(self.base_settings())), self.env, "render-config")
        return yaml.safe_load(self.base_config.read_text(encoding="utf-8"))

    def tokens(self, image_max_pixels: int, cutoff_len: int) -> dict[str, Any]:
        """``vlm stats --json`` of the base config at ``image_max_pixels`` and ``cutoff_len`` (cached)."""
        key = (image_max_pixels, cutoff_len)
        if key not in self.token_stats:
            t0 = time.perf_counter()
            argv = vlm("stats", str(self.base_config), "--image-max-pixels", str(image_max_pixels),
                       "--cutoff-len", str(cutoff_len), "--json")
            try:
                report = json.loads(check(argv, self.env, "vlm stats"))
                stats = {k: report[k] for k in ("image_max_pixels", "n_total", "n_over", "cutoff_len",
                                                "max_total_tokens", "percentiles", "recommended_image_max_pixels",
                                                "recommended_cutoff_len")}
            except (RuntimeError, json.JSONDecodeError, KeyError) as e:
                stats = {"error": str(e)[:500]}
            self.token_stats[key] = {**stats, "seconds": round(time.perf_counter() - t0, 1)}
        return self.token_stats[key]

    def run(self, variant: Variant, overrides: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
        """``vlm train`` the base config with ``overrides`` for ``steps`` steps and measure it.

        Failures (OOM, a crash, a timeout) are recorded in the result, not raised."""
        result: dict[str, Any] = {"name": variant.name, "about": variant.about, "overrides": overrides}
        tokens = self.tokens(*({**base, **overrides}[k] for k in ("image_max_pixels", "cutoff_len")))
        allow = bool(tokens.get("n_over"))
        result.update(tokens=tokens, allow_truncation=allow)
        if allow:
            result["note"] = (f"{tokens['n_over']}/{tokens['n_total']} samples exceed cutoff_len; "
                              "ran with --allow-truncation")
        run_dir = self.work / "runs" / variant.name
        output = run_dir / "output"
        # A fresh dir: lines of an earlier run's trainer_log.jsonl would be stamped as this run's steps.
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        argv = vlm("train", str(self.base_config), *pairs({**overrides, "output_dir": str(output)}),
                   *(["--allow-truncation"] if allow else []))
        log(f"{variant.name}: training {self.steps} steps")
        child = run_watched(argv, self.env, run_dir / "vlm_train.out", output / "trainer_log.jsonl",
                            self.timeout, self.gpu_index)
        result.update(exit_code=child.exit_code, wall_seconds=round(child.seconds, 1),
                      peak_host_rss_gib=round(child.peak_rss_gib, 2), log=str(output / "train.log"))
        stamps = child.watch.step_stamps()
        if child.exit_code != 0:
            if allow:  # seen on CPU with CORD-scale photos: cut image tokens break mRoPE / the image features
                result["note"] += "; a sample cut inside its image tokens makes Qwen2-VL training fail"
            return {**result, "status": "failed", "steps_logged": len(stamps),
                    "error": error_line(output / "train.log", run_dir / "vlm_train.out")}
        resolved = yaml.safe_load((output / "vlm_resolved_config.yaml").read_text(encoding="utf-8"))
        batch, accum = resolved["per_device_train_batch_size"], resolved["gradient_accumulation_steps"]
        try:
            timing = step_timing(stamps, self.n_train, batch, accum, self.warmup)
        except ValueError as e:
            return {**result, "status": "failed", "error": f"timing: {e}"}
        records = [r for _, r in child.watch.records]
        vram = [r for r in records if "vram_reserved" in r] if self.mode == "gpu" else []
        losses = [r["loss"] for r in records if "loss" in r]
        sps = timing["samples_per_second"]
        result.update(
            status="ok", resolved_config=str(output / "vlm_resolved_config.yaml"), bf16=bool(resolved.get("bf16")),
            per_device_train_batch_size=batch, gradient_accumulation_steps=accum, effective_batch=batch * accum,
            steps_run=max(stamps), warmup_steps=self.warmup, steps_timed=timing["steps_timed"],
            samples_timed=timing["samples_timed"], step_seconds_min_median_max=timing["step_seconds_min_median_max"],
            timed_seconds=timing["timed_seconds"], seconds_per_step=round(timing["seconds_per_step"], 4),
            samples_per_second=round(sps, 3), seconds_to_first_step=round(stamps[min(stamps)] - child.started, 1),
            projected_10_epoch_minutes=round(EPOCHS * PROJECTED_SAMPLES / sps / 60, 2),
            projected_10_epoch_minutes_800=round(EPOCHS * CORD_TRAIN / sps / 60, 2),
            peak_gpu_allocated_gib=max((r["vram_allocated"] for r in vram), default=None),
            peak_gpu_reserved_gib=max((r["vram_reserved"] for r in vram), default=None),
            peak_nvidia_smi_used_gib=round(child.peak_smi_gib, 2) if child.peak_smi_gib is not None else None,
            final_loss=losses[-1] if losses else None,
        )
        return result


def pairs(settings: dict[str, Any]) -> list[str]:
    """``key=value`` arguments as vlm parses them (booleans as true/false)."""
    return [f"{k}={json.dumps(v) if isinstance(v, bool) else v}" for k, v in settings.items()]


def make_plan(published: dict[str, Any], preflight_arg: str) -> Plan:
    """The preflight image_max_pixels and the cutoff that fits, from ``vlm stats`` of the published recipe."""
    recommended = published.get("recommended_image_max_pixels")
    if preflight_arg != "auto":
        pixels, source = int(preflight_arg), "--preflight-pixels"
    elif recommended:
        pixels, source = int(recommended), "vlm stats recommended_image_max_pixels"
    else:
        pixels, source = CORD_YAML_MAX_PIXELS, "configs/cord.yaml (vlm stats recommended none)"
    fit = published.get("recommended_cutoff_len") if published.get("n_over") else None
    return Plan(pixels, source, fit)


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON atomically, with vlm's own writer (temp file beside ``path``, renamed over it)."""
    from vlm.fsutil import atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, obj)


def versions() -> dict[str, str | None]:
    """vlm's run-manifest versions, plus the speed levers this bench measures."""
    from vlm.training.train import PACKAGES
    from vlm.training.train import versions as package_versions

    return package_versions((*PACKAGES, "liger-kernel", "flash-attn"))


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def print_table(results: list[dict[str, Any]], mode: str, baseline: str) -> None:
    """The human-readable summary; the JSON holds the same numbers and more."""
    head = f"{'variant':<20}{'status':<9}{'s/step':>9}{'samples/s':>11}{'peak GiB':>10}{'10-ep min':>11}" \
           f"{'x time':>8}{'x mem':>7}  note"
    print(head)
    print("-" * len(head))
    for r in results:
        if r["status"] != "ok":
            print(f"{r['name']:<20}{r['status']:<9}{'':>56}  {r.get('reason') or r.get('error')}")
            continue
        mem = r["peak_gpu_reserved_gib"] if mode == "gpu" else r["peak_host_rss_gib"]
        ratio = r.get("ratio_to_baseline") or {}
        mem_ratio = ratio.get("peak_gpu_reserved_gib" if mode == "gpu" else "peak_host_rss_gib")
        print(f"{r['name']:<20}{'ok':<9}{r['seconds_per_step']:>9.3f}{r['samples_per_second']:>11.2f}"
              f"{_fmt(mem, '.2f'):>10}{r['projected_10_epoch_minutes']:>11.2f}"
              f"{_fmt(ratio.get('projected_10_epoch_minutes'), '.2f'):>8}{_fmt(mem_ratio, '.2f'):>7}"
              f"  {r.get('note', '')}")
    print(f"peak GiB: {'torch peak reserved GPU memory' if mode == 'gpu' else 'peak host RSS (CPU mode)'}; "
          f"10-ep min: {EPOCHS} x {PROJECTED_SAMPLES} samples / samples/s; x: ratio to {baseline}")
    recipe = next((r for r in results if r["name"] == "recipe" and r["status"] == "ok"), None)
    if mode == "gpu" and recipe:
        print(f"anchor (reported, real weights): ~{ANCHOR['minutes']} min and ~{ANCHOR['gpu_memory_gb']} GB; "
              f"measured recipe: {recipe['projected_10_epoch_minutes']:.1f} min of steps + "
              f"{recipe['seconds_to_first_step']:.0f} s start-up, "
              f"{_fmt(recipe['peak_nvidia_smi_used_gib'], '.1f')} GiB peak nvidia-smi")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("gpu", "cpu"), help="default: gpu when torch sees a CUDA GPU, else cpu")
    p.add_argument("--variants", help=f"comma-separated, default all: {','.join(VARIANT_NAMES)}")
    p.add_argument("--steps", type=int, help="optimizer steps per variant (default: gpu 12, cpu 3)")
    p.add_argument("--warmup-steps", type=int, default=2, help="first steps left out of the timing (default 2)")
    p.add_argument("--samples", type=int, help="synthetic train receipts (default: gpu 800, cpu 64)")
    p.add_argument("--model", choices=("2b", "tiny"), help="model to build (default: 2b on gpu, tiny on cpu)")
    p.add_argument("--model-dir", type=Path, help="use this local model instead of building one")
    p.add_argument("--photo-like", action=argparse.BooleanOptionalAction,
                   help="~1600x2400 photo-like receipts (default: on in gpu mode, off in cpu mode)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="extra",
                   help="a LLaMA-Factory override for every variant (repeatable; a variant's own keys win)")
    p.add_argument("--preflight-pixels", default="auto",
                   help="image_max_pixels of preflight_pixels/combined: auto (vlm stats) or a number")
    p.add_argument("--work-dir", type=Path, help="build and run here, and keep it (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the temp work dir")
    p.add_argument("--out", type=Path, help="results JSON (default: bench/results/train_cost_<mode>_<date>.json)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per variant before it is stopped")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the results JSON instead of the table")
    p.add_argument("--list", action="store_true", help="list the variants and exit")
    args = p.parse_args(argv)
    problems = []
    if args.mode is None:
        import torch

        args.mode = "gpu" if torch.cuda.is_available() else "cpu"
    defaults = MODES[args.mode]
    args.steps = args.steps or defaults["steps"]
    args.samples = args.samples or defaults["samples"]
    args.model = args.model or defaults["model"]
    args.photo_like = defaults["photo_like"] if args.photo_like is None else args.photo_like
    if args.model_dir and not (args.model_dir / "config.json").is_file():
        problems.append(f"--model-dir {args.model_dir} has no config.json")
    args.variants = [v.strip() for v in (args.variants or ",".join(VARIANT_NAMES)).split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANT_NAMES]
    if unknown:
        problems.append(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANT_NAMES)}")
    if args.steps <= args.warmup_steps:
        problems.append(f"--steps {args.steps} must exceed --warmup-steps {args.warmup_steps}")
    bad = [pair for pair in args.extra if "=" not in pair or not pair.partition("=")[0].strip()]
    if bad:
        problems.append(f"--set takes KEY=VALUE, got {', '.join(bad)}")
    args.extra = dict(pair.split("=", 1) for pair in args.extra if pair not in bad)
    if args.preflight_pixels != "auto" and not args.preflight_pixels.isdigit():
        problems.append(f"--preflight-pixels takes auto or a number, not {args.preflight_pixels!r}")
    if args.mode == "cpu" and args.model == "2b":
        log("note: the 2B model on a CPU takes a minute or more per sample; use --samples 2 and --set batch sizes")
    if problems:
        p.error("; ".join(problems))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for v in VARIANTS:
            print(f"{v.name:<20}{v.about}" + (f" [skipped here: {r}]" if (r := skip_reason(v, args.mode)) else ""))
        return 0
    env, gpu_index = child_env(args.mode)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="train-cost-"))
    started = datetime.now(UTC)
    load_start = round(os.getloadavg()[0], 2)  # other work on the host skews timings, CPU mode most
    try:
        built = prepare(work.resolve(), args, env)
        bench = Bench(args.mode, work.resolve(), args.steps, args.warmup_steps, args.timeout,
                      built["data"]["n_train"], built["model"]["path"], env, gpu_index, args.extra)
        log("rendering the base config (the recipe as published + timing-run keys)")
        base = bench.render_base()
        plan = make_plan(bench.tokens(base["image_max_pixels"], base["cutoff_len"]), args.preflight_pixels)
        log(f"preflight image_max_pixels: {plan.preflight_pixels} ({plan.preflight_source}); "
            f"baseline: {plan.baseline}")
        results = []
        for variant in (v for v in VARIANTS if v.name in args.variants):
            overrides = variant_overrides(variant, args.mode, plan)
            reason = skip_reason(variant, args.mode, plan)
            result = ({"name": variant.name, "about": variant.about, "overrides": overrides, "status": "skipped",
                       "reason": reason} if reason else bench.run(variant, overrides, base))
            log(f"{variant.name}: {result['status']}"
                + (f", {result['seconds_per_step']:.3f} s/step" if result["status"] == "ok" else
                   f": {result.get('reason') or result.get('error')}"))
            results.append(result)
        add_ratios(results, ("seconds_per_step", "samples_per_second", "projected_10_epoch_minutes",
                             "peak_gpu_reserved_gib", "peak_nvidia_smi_used_gib", "peak_host_rss_gib"),
                   plan.baseline)
    finally:
        if args.work_dir is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    settings = {
        "steps": args.steps, "warmup_steps": args.warmup_steps, "samples": args.samples,
        "model": str(args.model_dir or args.model), "photo_like": args.photo_like,
        "seed": args.seed, "preflight_image_max_pixels": plan.preflight_pixels,
        "preflight_image_max_pixels_source": plan.preflight_source, "full_cutoff_len": plan.fit_cutoff,
        "published_recipe_pixels": PUBLISHED_PIXELS, "base_overrides": bench.base_settings(), "set": args.extra,
        "env_set": {"RECORD_VRAM": "1", "CUDA_VISIBLE_DEVICES": env.get("CUDA_VISIBLE_DEVICES")},
        "cpu_count": os.cpu_count(),
        "host_load_average_1m": {"start": load_start, "end": round(os.getloadavg()[0], 2)},
        "projection": f"{EPOCHS} epochs x {PROJECTED_SAMPLES} samples (CORD's 800 train minus val_size 0.1) / "
                      "samples_per_second; optimizer steps only, start-up excluded",
        "timing": "trainer_log.jsonl lines stamped on arrival (20 ms polling), from step W's line to step N's",
    }
    report = {
        "benchmark": "train_cost", "mode": args.mode, "date": started.isoformat(timespec="seconds"),
        "device": built["model"].get("device"), "versions": versions(), "python": sys.version.split()[0],
        "settings": settings, "ratio_baseline": plan.baseline, "anchor": ANCHOR, "model": built["model"],
        "data": built["data"], "reused_work_dir": built["reused"],
        "work_dir": str(work) if (args.work_dir or args.keep) else None, "variants": results,
    }
    out = args.out or RESULTS_DIR / f"train_cost_{args.mode}_{started:%Y%m%d}.json"
    write_json(out, report)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(results, args.mode, plan.baseline)
    log(f"results: {out}")
    return 0 if any(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
