#!/usr/bin/env python
"""Batched vs one-at-a-time prediction on the tiny Qwen2-VL, side by side in one run.

Both arms go through the same path (``vlm predict`` -> LLaMA-Factory ``do_predict``
with ``predict_with_generate``); only the eval batch size differs. Absolute times on
shared machines are noisy, so the script reports the ratio.

    python bench/bench_predict.py [--docs 16] [--batch-size 8] [--max-new-tokens 64] [--json]
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    py, vlm = sys.executable, [sys.executable, "-m", "vlm.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run([py, str(ROOT / "scripts/make_cord_sample.py"), "sample", "--train", "2", "--validation", "0",
             "--test", str(args.docs)], work)
        run([py, str(ROOT / "scripts/make_tiny_qwen2vl.py"), "model"], work)
        run([*vlm, "save-cord-dataset-in-sharegpt-format", "data", "--source", "sample", "--split", "test"], work)
        common = ["--model", "model", "--dataset-dir", "data", "--dataset", "cord_test", "--no-adapter",
                  "--max-new-tokens", str(args.max_new_tokens), "--chunk-size", str(args.docs),
                  "template=qwen2_vl", "image_max_pixels=16384", "cutoff_len=1024"]
        times = {}
        for name, bs in (("batched", args.batch_size), ("one_at_a_time", 1)):
            times[name] = run([*vlm, "predict", "--group", name, "--batch-size", str(bs), *common], work)
    result = {"docs": args.docs, "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
              "seconds": {k: round(v, 2) for k, v in times.items()},
              "speedup_batched_vs_one_at_a_time": round(times["one_at_a_time"] / times["batched"], 2)}
    print(json.dumps(result, indent=2) if args.json else
          f"{args.docs} docs: batched (bs={args.batch_size}) {times['batched']:.1f}s, one at a time "
          f"{times['one_at_a_time']:.1f}s -> {result['speedup_batched_vs_one_at_a_time']}x "
          "(wall time incl. ~10 s of model load and imports per arm)")


if __name__ == "__main__":
    main()
