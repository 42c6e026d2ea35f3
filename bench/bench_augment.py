#!/usr/bin/env python
"""Augmentation cost on photo-sized receipts, and export time with ``--augment 2`` vs a plain export.

Generates (once, cached) photo-like receipts (~1600x2400, ~2.5 MB JPEGs, as
``make_cord_sample.py --photo-like``). Then, in one run:
  - the cost per copy of each policy in this process (decode, transforms, JPEG encode;
    one torch thread), the one-time torchvision import reported apart;
  - a plain export and an export with ``--augment 2`` (default policy), side by side,
    each into a fresh folder with the same workers, and their ratio;
  - a rerun of the augmenting export (every copy reused).
Absolute times on shared machines are noisy (other jobs use the same cores); ratios
from one run are the result.

    python bench/bench_augment.py [--train 800] [--workers 2] [--cache bench/.cache/cord-photo] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def export(source: Path, out: Path, workers: int, copies: int) -> dict:
    from vlm.data.augment import AugmentSpec
    from vlm.data.export import ExportSpec, run_export
    from vlm.schema import cord_prompt

    spec = ExportSpec(out_dir=out, source=str(source), name="cord", prompt=cord_prompt(), splits=("train",),
                      workers=workers, augment=AugmentSpec(copies) if copies else None)
    return run_export(spec, register=True, show_progress=False)["splits"]["train"]


def per_copy_cost(source: Path, n: int) -> dict:
    """Seconds per copy of each policy, in this process, over the first ``n`` images."""
    import datasets
    import torch

    from vlm.data.augment import POLICIES, AugmentSpec, apply_plan, copy_key, plan_copy

    torch.set_num_threads(1)
    datasets.disable_progress_bars()
    ds = datasets.load_dataset(str(source), split="train").cast_column("image", datasets.Image(decode=False))
    images = [ds[k]["image"]["bytes"] for k in range(min(n, len(ds)))]
    t0 = time.perf_counter()
    import torchvision.transforms.v2.functional  # noqa: F401  (the import, once per worker process)

    costs = {"torchvision_import_s": round(time.perf_counter() - t0, 2)}
    for name, policy in POLICIES.items():
        spec = AugmentSpec(1, name, 0)
        t0 = time.perf_counter()
        for k, data in enumerate(images):
            apply_plan(data, plan_copy(policy, copy_key(spec, str(k), "bench", 0), 0, 0))
        costs[f"{name}_s_per_copy"] = round((time.perf_counter() - t0) / len(images), 3)
    return costs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=int, default=800)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    p.add_argument("--per-copy-images", type=int, default=8, help="images timed per policy in this process")
    p.add_argument("--cache", type=Path, default=ROOT / "bench" / ".cache" / "cord-photo")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    from make_cord_sample import generate

    source = args.cache / f"train{args.train}"
    if not source.is_dir():
        t0 = time.perf_counter()
        generate(source, train=args.train, validation=0, test=0, seed=0, photo_like=True)
        print(f"generated {args.train} photo-like receipts in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    costs = per_copy_cost(source, args.per_copy_images)
    seconds = {}
    with tempfile.TemporaryDirectory(dir=args.cache) as tmp:
        for name, copies in (("plain_export", 0), ("augment_2_export", 2)):
            t0 = time.perf_counter()
            split = export(source, Path(tmp) / name, args.workers, copies)
            seconds[name] = time.perf_counter() - t0
            assert split["records"] == args.train * (1 + copies), split
        t0 = time.perf_counter()
        split = export(source, Path(tmp) / "augment_2_export", args.workers, 2)
        seconds["augment_2_rerun"] = time.perf_counter() - t0
        assert split["augmented"]["reused"] == 2 * args.train, split
        shutil.rmtree(tmp, ignore_errors=True)
    copies = 2 * args.train
    result = {"records": args.train, "workers": args.workers, "cpu_count": os.cpu_count(),
              "load_avg_1m": round(os.getloadavg()[0], 2), **costs,
              "seconds": {k: round(v, 2) for k, v in seconds.items()},
              "augment_2_vs_plain": round(seconds["augment_2_export"] / seconds["plain_export"], 1),
              "augment_wall_s_per_copy": round((seconds["augment_2_export"] - seconds["plain_export"]) / copies, 3),
              "rerun_vs_first": round(seconds["augment_2_rerun"] / seconds["augment_2_export"], 2)}
    print(json.dumps(result, indent=2) if args.json else
          f"{args.train} photo-like receipts, {args.workers} workers: plain export {seconds['plain_export']:.1f}s, "
          f"--augment 2 {seconds['augment_2_export']:.1f}s ({result['augment_2_vs_plain']}x; "
          f"{result['augment_wall_s_per_copy']}s wall per copy), rerun {seconds['augment_2_rerun']:.1f}s; "
          f"per copy in one process: " + ", ".join(f"{k} {v}" for k, v in costs.items()))


if __name__ == "__main__":
    main()
