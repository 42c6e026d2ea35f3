#!/usr/bin/env python
"""CORD-scale export: vlm's byte-copy export vs the blog's decode-and-re-save, side by side.

Generates (once, cached) a CORD-scale sample: 800 photo-like receipts of about 2.5 MB
each. Then, in one run, times
  - the blog's method: load the dataset with decoded images and save each one again
    with PIL, one at a time (a lossy JPEG re-encode), and
  - ``vlm``'s export (original bytes, parallel, hashed, atomic writes),
and prints the ratio. Absolute times on shared machines are noisy; the ratio is the result.

    python bench/bench_export.py [--train 800] [--cache bench/.cache/cord-photo] [--json]
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


def blog_export(source: Path, out: Path) -> int:
    """The blog's way: decoded PIL images saved again one at a time."""
    import datasets

    from vlm.schema import cord_prompt

    datasets.disable_progress_bars()
    ds = datasets.load_dataset(str(source), split="train")
    records = []
    (out / "images").mkdir(parents=True)
    for i, row in enumerate(ds):
        path = out / "images" / f"{i}.jpg"
        row["image"].convert("RGB").save(path)  # decode + lossy re-encode (PIL's default quality 75)
        gt = json.loads(row["ground_truth"])["gt_parse"]
        records.append({"messages": [{"role": "user", "content": "<image>" + cord_prompt()},
                                     {"role": "assistant", "content": json.dumps(gt, ensure_ascii=False)}],
                        "images": [str(path)]})
    (out / "train.json").write_text(json.dumps(records, ensure_ascii=False))
    return len(records)


def vlm_export(source: Path, out: Path, workers: int) -> int:
    from vlm.data.export import ExportSpec, run_export
    from vlm.schema import cord_prompt

    spec = ExportSpec(out_dir=out, source=str(source), name="cord", prompt=cord_prompt(), splits=("train",),
                      workers=workers)
    return run_export(spec, register=True, show_progress=False)["splits"]["train"]["records"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=int, default=800)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    p.add_argument("--cache", type=Path, default=ROOT / "bench" / ".cache" / "cord-photo")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    from make_cord_sample import generate

    source = args.cache / f"train{args.train}"
    if not source.is_dir():
        t0 = time.perf_counter()
        generate(source, train=args.train, validation=0, test=0, seed=0, photo_like=True)
        print(f"generated {args.train} photo-like receipts in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    sizes = [f.stat().st_size for f in (source / "data").glob("*.parquet")]

    with tempfile.TemporaryDirectory(dir=args.cache) as tmp:
        times = {}
        for name, fn in (("blog_decode_resave", lambda o: blog_export(source, o)),
                         ("vlm_export", lambda o: vlm_export(source, o, args.workers))):
            out = Path(tmp) / name
            t0 = time.perf_counter()
            n = fn(out)
            times[name] = time.perf_counter() - t0
            assert n == args.train, (name, n)
            shutil.rmtree(out)
    result = {"records": args.train, "source_mb": round(sum(sizes) / 2**20, 1),
              "mb_per_image": round(sum(sizes) / 2**20 / args.train, 2),
              "seconds": {k: round(v, 2) for k, v in times.items()},
              "speedup": round(times["blog_decode_resave"] / times["vlm_export"], 1)}
    print(json.dumps(result, indent=2) if args.json else
          f"{args.train} receipts ({result['mb_per_image']} MB each): blog {times['blog_decode_resave']:.1f}s, "
          f"vlm {times['vlm_export']:.1f}s -> {result['speedup']}x faster, and lossless")


if __name__ == "__main__":
    main()
