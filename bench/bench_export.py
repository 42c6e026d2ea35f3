#!/usr/bin/env python
"""CORD-scale export: vlm's byte-copy export vs the blog's decode-and-re-save and vs copying the bytes.

Generates (once, cached) a CORD-scale sample: 800 photo-like receipts of about 2.5 MB
each. Then, in one run, times, interleaved (each round runs every arm, in a rotated order):
  - the blog's method: load the dataset with decoded images and save each one again
    with PIL, one at a time (a lossy JPEG re-encode),
  - the floor: read the parquet files and write each image's bytes to a file, with as
    many threads as vlm's writers, nothing else (no check, no hash, no JSON),
  - ``vlm``'s export with ``--verify-images structure`` (the default) and with
    ``--verify-images full`` (original bytes, parallel, checked, hashed, atomic writes),
and prints each arm's median and the ratios. Absolute times on shared machines are noisy;
the ratios are the result.

    python bench/bench_export.py [--train 800] [--rounds 2] [--cache bench/.cache/cord-photo] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
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


def copy_bytes(source: Path, out: Path, workers: int) -> int:
    """The floor: every image's stored bytes written to a file, and nothing else."""
    import pyarrow.parquet as pq

    (out / "images").mkdir(parents=True)

    def write(item: tuple[int, memoryview]) -> None:
        with open(out / "images" / f"{item[0]}.jpg", "wb") as f:
            f.write(item[1])

    n = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for path in sorted((source / "data").glob("train-*.parquet")):
            for batch in pq.ParquetFile(path).iter_batches(batch_size=workers * 4, columns=["image"]):
                data = batch.column(0).field("bytes")
                items = [(n + k, memoryview(data[k].as_buffer())) for k in range(len(data))]
                list(pool.map(write, items))
                n += len(items)
    return n


def vlm_export(source: Path, out: Path, workers: int, check: str) -> int:
    from vlm.data.export import ExportSpec, run_export
    from vlm.schema import cord_prompt

    spec = ExportSpec(out_dir=out, source=str(source), name="cord", prompt=cord_prompt(), splits=("train",),
                      workers=workers, verify_images=check)
    return run_export(spec, register=True, show_progress=False)["splits"]["train"]["records"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=int, default=800)
    p.add_argument("--rounds", type=int, default=2, help="runs of each arm, interleaved")
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
    # Untimed: the first load_dataset converts the parquet files to datasets' Arrow cache, which every later
    # load reuses; and reading the parquet files puts them in the page cache for the floor.
    import datasets

    datasets.disable_progress_bars()
    datasets.load_dataset(str(source), split="train")
    for f in (source / "data").glob("*.parquet"):
        f.read_bytes()

    arms = {"blog_decode_resave": lambda o: blog_export(source, o),
            "copy_bytes": lambda o: copy_bytes(source, o, args.workers),
            "vlm_structure": lambda o: vlm_export(source, o, args.workers, "structure"),
            "vlm_full": lambda o: vlm_export(source, o, args.workers, "full")}
    names = list(arms)
    times: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(dir=args.cache) as tmp:
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:  # rotated: no arm always runs first
                out = Path(tmp) / name
                os.sync()  # untimed: no arm pays for writing back the previous arm's 1.9 GB
                t0 = time.perf_counter()
                n = arms[name](out)
                times[name].append(time.perf_counter() - t0)
                assert n == args.train, (name, n)
                shutil.rmtree(out)
                print(f"round {r + 1} {name}: {times[name][-1]:.1f}s", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"records": args.train, "source_mb": round(sum(sizes) / 2**20, 1),
              "mb_per_image": round(sum(sizes) / 2**20 / args.train, 2), "workers": args.workers,
              "rounds": args.rounds, "seconds": {k: [round(t, 2) for t in v] for k, v in times.items()},
              "median_seconds": {k: round(v, 2) for k, v in med.items()},
              "faster_than_blog": {k: round(med["blog_decode_resave"] / med[k], 2) for k in ("vlm_structure",
                                                                                              "vlm_full")},
              "times_the_floor": {k: round(med[k] / med["copy_bytes"], 2) for k in ("vlm_structure", "vlm_full")}}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.train} receipts ({result['mb_per_image']} MB each), medians of {args.rounds}: "
          f"blog {med['blog_decode_resave']:.1f}s, copy the bytes {med['copy_bytes']:.1f}s")
    for k in ("vlm_structure", "vlm_full"):
        print(f"  {k}: {med[k]:.1f}s -> {result['faster_than_blog'][k]}x faster than the blog, "
              f"{result['times_the_floor'][k]}x the floor, and lossless")


if __name__ == "__main__":
    main()
