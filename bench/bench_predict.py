#!/usr/bin/env python
"""Batched vs one-at-a-time prediction, and (with --vllm, on a GPU) vLLM vs transformers, in one run.

The transformers arms go through the same path (``vlm predict --backend transformers``: LLaMA-Factory's
model, template and images, ``generate`` with the M-RoPE positions training used); only the batch size
differs. ``--vllm`` adds two ``vlm predict --backend vllm`` arms (eager, and with CUDA graphs) on the
same documents and reports how many greedy outputs are identical to the batched transformers arm.
Absolute times on shared machines are noisy, so the script reports ratios. Wall times
include imports and model or engine start-up, as a user sees them.

    python bench/bench_predict.py [--docs 16] [--batch-size 8] [--max-new-tokens 64] [--json]
    python bench/bench_predict.py --vllm --model-size small --docs 64 --max-new-tokens 128   # GPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")
    return time.perf_counter() - t0


def prepare(work: Path, docs: int, size: str) -> None:
    """The setup every prediction bench shares, in ``work``: ``docs`` test receipts from make_cord_sample.py, a
    random Qwen2-VL of ``size`` (make_tiny_qwen2vl.py) in ``model``, and their export in ``data``."""
    py, vlm = sys.executable, [sys.executable, "-m", "vlm.cli"]
    run([py, str(ROOT / "scripts/make_cord_sample.py"), "sample", "--train", "2", "--validation", "0",
         "--test", str(docs)], work)
    run([py, str(ROOT / "scripts/make_tiny_qwen2vl.py"), "model", "--size", size], work)
    run([*vlm, "save-cord-dataset-in-sharegpt-format", "data", "--source", "sample", "--split", "test"], work)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--vllm", action="store_true", help="add vLLM arms (needs vLLM and a GPU)")
    p.add_argument("--model-size", choices=("tiny", "medium", "small"), default="tiny")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    vlm = [sys.executable, "-m", "vlm.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepare(work, args.docs, args.model_size)
        common = ["--model", "model", "--dataset-dir", "data", "--dataset", "cord_test", "--no-adapter",
                  "--max-new-tokens", str(args.max_new_tokens), "--chunk-size", str(args.docs),
                  "template=qwen2_vl", "image_max_pixels=16384", "cutoff_len=1024"]
        arms = {"batched": ["--backend", "transformers", "--batch-size", str(args.batch_size)],
                "one_at_a_time": ["--backend", "transformers", "--batch-size", "1"]}
        if args.vllm:
            arms["vllm_eager"] = ["--backend", "vllm", "vllm_enforce_eager=true", "vllm_gpu_util=0.5"]
            arms["vllm_cuda_graphs"] = ["--backend", "vllm", "vllm_gpu_util=0.5"]
        times, texts = {}, {}
        for name, extra in arms.items():
            times[name] = run([*vlm, "predict", "--group", name, *extra, *common], work)
            run([*vlm, "export-predictions", "--group", name, f"{name}.jsonl"], work)
            rows = [json.loads(line) for line in (work / f"{name}.jsonl").read_text().splitlines()]
            texts[name] = {r["id"]: r["prediction"] for r in rows}
    result = {"docs": args.docs, "model_size": args.model_size, "batch_size": args.batch_size,
              "max_new_tokens": args.max_new_tokens, "seconds": {k: round(v, 2) for k, v in times.items()},
              "speedup_batched_vs_one_at_a_time": round(times["one_at_a_time"] / times["batched"], 2)}
    for name in arms:
        if name.startswith("vllm"):
            result[f"speedup_{name}_vs_batched"] = round(times["batched"] / times[name], 2)
            same = sum(texts[name][k] == texts["batched"][k] for k in texts["batched"])
            result[f"identical_outputs_{name}_vs_batched"] = f"{same}/{len(texts['batched'])}"
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.docs} docs ({args.model_size} model): batched (bs={args.batch_size}) {times['batched']:.1f}s, "
          f"one at a time {times['one_at_a_time']:.1f}s -> {result['speedup_batched_vs_one_at_a_time']}x")
    for name in (n for n in arms if n.startswith("vllm")):
        print(f"  {name}: {times[name]:.1f}s -> {result[f'speedup_{name}_vs_batched']}x vs batched; "
              f"identical outputs {result[f'identical_outputs_{name}_vs_batched']}")
    print("(wall times include imports and model or engine start-up per arm)")

if __name__ == "__main__":
    main()
