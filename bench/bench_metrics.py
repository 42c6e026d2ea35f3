#!/usr/bin/env python
"""The fast CORD scorer (``vlm.evaluation.metrics``) vs the plain zss reference, side by side in one run.

Builds CORD-sized synthetic ground truths (menus of 2-15 rows, some ``sub``
items, sub_total and total blocks) and two groups of predictions made from them
(a weak "vanilla" group: invalid, empty and heavily edited answers; a strong
"finetuned" group: many exact copies and light edits), then times scoring both
groups with each implementation (best of ``--repeats``), checks that every
per-document nTED accuracy agrees to 1e-9 and the F1 counts are equal, and
reports the speedup. The fast timing covers everything ``score_documents``
computes (the standard metrics, the number-normalised variants, headers, menu
rows and the per-field counts) plus ``aggregate``; the reference computes only
the standard nTED accuracy and F1 counts.

Two more measurements, side by side with their references:

* the paired bootstrap (``--bootstrap-docs`` documents x 2 groups, 1000
  resamples): the block-vectorised ``bootstrap_delta`` against the loop that
  scores each resample with ``aggregate`` (the implementation it replaced),
  checking that the intervals are identical;
* one huge answer (``--huge-mb`` MB, cut mid-value, as a runaway generation
  ends): ``vlm evaluate`` on a file holding it, in a child process, reporting
  its peak RSS and time against the same file without the huge line;
* one large document (``--large-rows``: menus of that many rows, as answer and as ground truth):
  ``vlm evaluate`` in a child process, each engine, against a similar copy (one price in ten printed
  differently: exact, in a narrow band) and a shuffled copy (past the TED's cell budget: an upper bound,
  flagged), reporting peak RSS, time and whether the document was capped;
* ``vlm evaluate --json`` of ``--evaluate-docs`` documents x 2 groups with
  bootstrap CIs, whole process, with each speed-up switched off in turn (worker
  processes ``VLM_WORKERS=1``; shared ground truths and memo
  ``VLM_SCORE_PLAIN=1``; the C build, kernel, trees and normalising,
  ``VLM_PURE_TED=1``), interleaved, medians of ``--repeats``, checking the
  outputs are byte-identical.

    python bench/bench_metrics.py [--docs 100] [--seed 0] [--repeats 3] [--bootstrap-docs 10000] [--huge-mb 50]
        [--large-rows 750,1500,3000]
        [--evaluate-docs 10000] [--json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests" / "evaluation"))  # the zss reference lives with the tests that use it

import reference_metric as R

from vlm.evaluation.compare import bootstrap_delta
from vlm.evaluation.metrics import aggregate, number_key, score_documents

ITEMS = ["Nasi Goreng", "Es Teh Manis", "Ayam Bakar Madu", "Mie Goreng Spesial", "Kopi Susu Gula Aren", "Air Mineral",
         "Roti Bakar Coklat Keju", "Sate Ayam", "Bakso Urat", "Jus Alpukat", "Teh Tarik", "Kentang Goreng",
         "Cheese Burger", "Lemon Tea", "Nasi Putih", "Tahu Telur", "Soto Betawi", "Es Jeruk"]
SUBS = ["Extra Cheese", "Less Sugar", "Ice", "Telur Mata Sapi", "Sambal"]


def price(r: random.Random, lo: int = 1, hi: int = 120) -> str:
    return f"{r.randint(lo, hi) * 500:,}".replace(",", r.choice([",", ",", "."]))


def ground_truth(r: random.Random) -> dict:
    rows = []
    for _ in range(r.randint(2, 15)):
        row = {"nm": r.choice(ITEMS), "cnt": r.choice(["1", "2", "1 x", "2 x", "3"]), "price": price(r)}
        if r.random() < 0.3:
            row["unitprice"] = price(r)
        if r.random() < 0.1:
            row["discountprice"] = "-" + price(r, 1, 10)
        if r.random() < 0.15:
            row["sub"] = [{"nm": r.choice(SUBS), "price": price(r, 0, 10)} for _ in range(r.randint(1, 2))]
        rows.append(row)
    sub_total = {"subtotal_price": price(r, 50, 900)}
    for key, p in (("tax_price", 0.6), ("service_price", 0.3), ("discount_price", 0.1)):
        if r.random() < p:
            sub_total[key] = price(r, 1, 90)
    total = {"total_price": price(r, 50, 900)}
    if r.random() < 0.7:
        total.update(cashprice=price(r, 100, 1000), changeprice=price(r, 0, 100))
    elif r.random() < 0.5:
        total["creditcardprice"] = total["total_price"]
    if r.random() < 0.4:
        total["menuqty_cnt"] = str(len(rows))
    return {"menu": rows, "sub_total": sub_total, "total": total}


def edit_digit(r: random.Random, s: str) -> str:
    spots = [k for k, c in enumerate(s) if c.isdigit()]
    if not spots:
        return s
    k = r.choice(spots)
    return s[:k] + str(r.randint(0, 9)) + s[k + 1:]


def reformat(s: str) -> str:
    return s.replace(",", "").replace(".", "") if s[:1].isdigit() else s


def perturb(r: random.Random, gt: dict, strength: float) -> dict:
    doc = copy.deepcopy(gt)
    rows = doc["menu"]
    for _ in range(r.randint(0, int(3 * strength) + 1)):
        if len(rows) > 1 and r.random() < strength:
            rows.pop(r.randrange(len(rows)))
    for row in rows:
        if r.random() < strength * 0.5:
            row["price"] = edit_digit(r, row["price"])
        if r.random() < strength * 0.3 and "unitprice" in row:
            row["price"], row["unitprice"] = row["unitprice"], row["price"]  # swapped keys
        if r.random() < strength * 0.3:
            row["nm"] = row["nm"].upper() if r.random() < 0.5 else row["nm"][:-2]
        if r.random() < strength * 0.5:
            row["price"] = reformat(row["price"])
        if r.random() < strength * 0.2:
            row["qty"] = row.pop("cnt")
    for block in (doc["sub_total"], doc["total"]):
        for key in list(block):
            if r.random() < strength * 0.4:
                block[key] = r.choice([edit_digit(r, block[key]), reformat(block[key]), "Rp " + block[key]])
    if r.random() < strength * 0.3:
        doc["subtotal"] = doc.pop("sub_total")  # a wrong group name
    if r.random() < strength * 0.2:
        doc["menu"] = rows[0] if rows else {}
    return doc


def predictions(r: random.Random, gts: list[dict], group: str) -> list[dict | None]:
    invalid, empty, exact, strength = (0.1, 0.05, 0.0, 0.8) if group == "vanilla" else (0.02, 0.0, 0.35, 0.25)
    out: list[dict | None] = []
    for gt in gts:
        x = r.random()
        if x < invalid:
            out.append(None)
        elif x < invalid + empty:
            out.append({})
        elif x < invalid + empty + exact:
            out.append(copy.deepcopy(gt))
        else:
            out.append(perturb(r, gt, strength))
    return out


def best_of(repeats: int, fn) -> tuple[float, float, object]:
    """Best wall-clock and best CPU seconds over ``repeats`` runs (CPU time is steadier on a shared machine)."""
    wall = cpu = float("inf")
    result = None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    return wall, cpu, result


def bootstrap_loop(base, other, n_docs: int, resamples: int = 1000, seed: int = 0) -> dict:
    """The reference: the bootstrap as it was before vectorising, one ``aggregate`` per resample and group."""
    import numpy as np

    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(resamples):
        idx = rng.integers(0, n_docs, n_docs)
        a, b = aggregate(base, idx), aggregate(other, idx)
        for key, value in b.items():
            if value is not None and a.get(key) is not None:
                draws.setdefault(key, []).append(value - a[key])
    return {k: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) for k, v in draws.items()}


def bench_bootstrap(r: random.Random, n_docs: int, repeats: int) -> dict:
    """Per-document scores of n_docs documents (real scoring of 100 documents, tiled), then both bootstraps."""
    from vlm.evaluation.metrics import DocScores

    gts = [ground_truth(r) for _ in range(100)]
    scores = []
    for name in ("vanilla", "finetuned"):
        s = score_documents(predictions(r, gts, name), gts)
        pick = [r.randrange(len(s)) for _ in range(n_docs)]  # a shuffled tiling, so resamples differ per group
        scores.append(DocScores(*[[getattr(s, f)[k] for k in pick] for f in ("valid", "ted_accuracy",
                                  "ted_accuracy_numnorm", "f1", "f1_numnorm")],
                                header={p: [v[k] for k in pick] for p, v in s.header.items()},
                                menu=[s.menu[k] for k in pick], fields=[s.fields[k] for k in pick]))
    t_new, _, new = best_of(repeats, lambda: bootstrap_delta(scores[0], scores[1], n_docs))
    t_old, _, old = best_of(1, lambda: bootstrap_loop(scores[0], scores[1], n_docs))
    return {"documents": n_docs, "groups": 2, "resamples": 1000, "vectorised_seconds": round(t_new, 3),
            "loop_seconds": round(t_old, 3), "speedup": round(t_old / t_new, 1), "identical": new == old}


def bench_huge_answer(megabytes: int) -> dict:
    """Peak RSS and time of ``vlm evaluate`` on a file with one huge cut-off answer, and without it."""
    row = '{"nm": "Es Teh Manis", "cnt": "1", "price": "5,000"}, '
    huge = '{"menu": [' + row * (megabytes * 1_000_000 // len(row)) + '{"nm": "Es Te'
    gt = {"menu": [{"nm": "Es Teh Manis", "cnt": "1", "price": "5,000"}], "total": {"total_price": "5,000"}}
    small = json.dumps({"id": "small", "prediction": json.dumps(gt), "ground_truth": gt}) + "\n"
    out = {"answer_mb": round(len(huge) / 1e6, 1)}
    with tempfile.TemporaryDirectory() as tmp:
        for label, text in (("with_huge", json.dumps({"id": "huge", "prediction": huge, "ground_truth": gt})
                             + "\n" + small), ("without", small)):
            path = Path(tmp) / f"{label}.jsonl"
            path.write_text(text)
            del text
            run = run_evaluate([path])
            out[label] = {k: run[k] for k in ("exit", "seconds", "peak_rss_mb")}
    out["rss_ratio"] = round(out["with_huge"]["peak_rss_mb"] / out["without"]["peak_rss_mb"], 2)
    return out


def bench_large_document(rows: list[int]) -> list[dict]:
    """Peak RSS and time of ``vlm evaluate`` on one document of ``n`` menu rows against a similar and a shuffled
    copy, with the C build and in pure Python."""
    out = []
    for n in rows:
        r = random.Random(n)
        gt = {"menu": [{"nm": r.choice(ITEMS), "cnt": str(r.randint(1, 3)), "price": f"{r.randint(2, 120) * 500:,}"}
                       for _ in range(n)], "total": {"total_price": "1,000"}}
        similar = copy.deepcopy(gt)
        for row in similar["menu"][3::10]:
            row["price"] = row["price"].replace(",", ".")
        shuffled = copy.deepcopy(gt)
        r.shuffle(shuffled["menu"])
        for name, pred in (("similar", similar), ("shuffled", shuffled)):
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "large.jsonl"
                path.write_text(json.dumps({"id": "large", "prediction": json.dumps(pred), "ground_truth": gt}))
                for engine, env in (("c", {}), ("python", {"VLM_PURE_TED": "1"})):
                    run = run_evaluate([path], **env)
                    out.append({"rows": n, "answer": name, "engine": engine,
                                **{k: run[k] for k in ("exit", "seconds", "peak_rss_mb", "capped")}})
    return out


def run_evaluate(paths: list[Path], **env: str) -> dict:
    """Whole-process ``vlm evaluate --json`` of ``paths`` in a fresh child: exit, seconds, peak RSS, stdout's
    digest, and whether a document was capped (``ted_capped``)."""
    # the child reports its own child's peak, so ru_maxrss is that run's alone
    code = ("import hashlib, resource, subprocess, sys, time; t = time.perf_counter(); "
            "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "print(p.returncode, time.perf_counter() - t, "
            "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, hashlib.sha256(p.stdout.encode()).hexdigest(), "
            "int('\"ted_capped\"' in p.stdout))")
    cmd = [sys.executable, "-c", code, sys.executable, "-m", "vlm.cli", "evaluate", "--json"]
    for path in paths:
        cmd += ["--predictions", str(path)]
    rc, seconds, kib, digest, capped = subprocess.run(cmd, capture_output=True, text=True, check=True,
                                                      env={**os.environ, "HF_HUB_OFFLINE": "1", **env}).stdout.split()
    return {"exit": int(rc), "seconds": round(float(seconds), 2), "peak_rss_mb": round(int(kib) / 1024),
            "stdout_sha256": digest, "capped": capped == "1"}


def bench_evaluate(r: random.Random, n_docs: int, repeats: int = 3, against: str | None = None,
                   only: list[str] | None = None) -> dict:
    """``vlm evaluate`` of n_docs documents x 2 groups (bootstrap CIs), whole process, with each speed-up
    turned off in turn, outputs compared: now; one worker (``VLM_WORKERS=1``, for the consistency checks
    too); no shared ground truths or memo either (``VLM_SCORE_PLAIN=1``); and no C build either, pure Python
    (``VLM_PURE_TED=1``). ``against`` adds another checkout's ``src`` (e.g. main before a change) as the arm
    ``against``, run by the same interpreter; ``only`` keeps just the named arms."""
    gts = [ground_truth(r) for _ in range(n_docs)]
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name in ("vanilla", "finetuned"):
            paths.append(Path(tmp) / f"{name}.jsonl")
            with paths[-1].open("w") as f:
                for k, (pred, gt) in enumerate(zip(predictions(r, gts, name), gts)):
                    answer = "I cannot read this receipt." if pred is None else json.dumps(pred, ensure_ascii=False)
                    f.write(json.dumps({"id": f"doc-{k}", "prediction": answer, "ground_truth": gt}) + "\n")
        # each variant turns off one more change; interleaved repeats, medians (the machine may be shared)
        variants = {"now": {}, "serial": {"VLM_WORKERS": "1"},
                    "plain": {"VLM_WORKERS": "1", "VLM_SCORE_PLAIN": "1"},
                    "interpreted": {"VLM_WORKERS": "1", "VLM_SCORE_PLAIN": "1", "VLM_PURE_TED": "1"}}
        if against:
            variants["against"] = {"PYTHONPATH": str(Path(against).resolve())}
        variants = {name: env for name, env in variants.items() if not only or name in only}
        runs: dict[str, list[dict]] = {name: [] for name in variants}
        for k in range(repeats):
            for name, env in variants.items():
                if name != "interpreted" or k == 0:  # the slow one once
                    runs[name].append(run_evaluate(paths, **env))
    med = {name: {"seconds": statistics.median(r["seconds"] for r in rs),
                  "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in rs), "runs": len(rs)}
           for name, rs in runs.items()}
    digests = {r["stdout_sha256"] for rs in runs.values() for r in rs}
    ratios = {key: round(med[slow]["seconds"] / med[fast]["seconds"], 2)
              for key, slow, fast in (("workers_speedup", "serial", "now"), ("sharing_speedup", "plain", "serial"),
                                      ("compiled_speedup", "interpreted", "plain"),
                                      ("now_vs_against", "against", "now"))
              if slow in med and fast in med}
    return {"documents": n_docs, "groups": 2, **med, **ratios,
            "identical": len(digests) == 1 and all(r["exit"] == 0 for rs in runs.values() for r in rs)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--bootstrap-docs", type=int, default=10000, help="0 skips the bootstrap comparison")
    p.add_argument("--huge-mb", type=int, default=50, help="0 skips the huge-answer measurement")
    p.add_argument("--large-rows", default="750,1500,3000", help="menu rows of the large documents; 0 skips them")
    p.add_argument("--evaluate-docs", type=int, default=10000,
                   help="whole-process vlm evaluate, compiled vs interpreted TED; 0 skips it")
    p.add_argument("--against", help="another checkout's src folder, an extra --evaluate-docs arm (e.g. main's)")
    p.add_argument("--arms", help="comma-separated --evaluate-docs arms to run: now, serial, plain, interpreted, "
                                  "against (default: all)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    r = random.Random(args.seed)
    gts = [ground_truth(r) for _ in range(args.docs)]
    groups = {name: predictions(r, gts, name) for name in ("vanilla", "finetuned")}

    def fast():
        scores = {name: score_documents(preds, gts) for name, preds in groups.items()}
        return scores, {name: aggregate(s) for name, s in scores.items()}

    def reference():
        return {name: [(R.ted_accuracy({} if p is None else p, g), R.f1_counts({} if p is None else p, g))
                       for p, g in zip(preds, gts)] for name, preds in groups.items()}

    t_fast, cpu_fast, (scores, summary) = best_of(args.repeats, fast)
    t_ref, cpu_ref, ref = best_of(args.repeats, reference)

    worst, f1_mismatch, numnorm_differs = 0.0, 0, 0
    for name, preds in groups.items():
        for k, (acc, counts) in enumerate(ref[name]):
            worst = max(worst, abs(scores[name].ted_accuracy[k] - acc))
            f1_mismatch += scores[name].f1[k] != counts
            if scores[name].ted_accuracy_numnorm[k] != scores[name].ted_accuracy[k]:  # check the variant too
                numnorm_differs += 1
                want = R.ted_accuracy({} if preds[k] is None else preds[k], gts[k], key=number_key)
                worst = max(worst, abs(scores[name].ted_accuracy_numnorm[k] - want))
    agree = worst <= 1e-9 and f1_mismatch == 0
    nodes = sum(len(R.flatten(R.normalize(g))) for g in gts) / len(gts)
    result = {
        "documents": args.docs, "groups": len(groups), "seed": args.seed, "repeats": args.repeats,
        "mean_gt_fields": round(nodes, 1), "fast_seconds": round(t_fast, 4), "reference_seconds": round(t_ref, 3),
        "speedup": round(t_ref / t_fast, 1), "fast_cpu_seconds": round(cpu_fast, 4),
        "reference_cpu_seconds": round(cpu_ref, 3), "cpu_speedup": round(cpu_ref / cpu_fast, 1), "max_abs_diff": worst,
        "f1_count_mismatches": f1_mismatch,
        "numnorm_checked": numnorm_differs, "agree": agree,
        "bootstrap": bench_bootstrap(random.Random(args.seed + 1), args.bootstrap_docs, args.repeats)
        if args.bootstrap_docs else None,
        "huge_answer": bench_huge_answer(args.huge_mb) if args.huge_mb else None,
        "large_document": bench_large_document([int(n) for n in args.large_rows.split(",") if int(n)]),
        "evaluate": bench_evaluate(random.Random(args.seed + 2), args.evaluate_docs, args.repeats, args.against,
                                   args.arms.split(",") if args.arms else None)
        if args.evaluate_docs else None,
        "summary": {name: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()
                           if k in ("valid_json", "ted_accuracy", "f1", "ted_accuracy_numnorm", "menu_f1")}
                    for name, s in summary.items()},
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.docs} documents x {len(groups)} groups ({nodes:.1f} gt fields per document), "
              f"best of {args.repeats}")
        print(f"  fast (vlm.evaluation.metrics):    {t_fast:8.3f} s  ({cpu_fast:.3f} s CPU)")
        print(f"  reference (zss):       {t_ref:8.3f} s  ({cpu_ref:.3f} s CPU)")
        print(f"  speedup:               {t_ref / t_fast:8.1f}x  ({cpu_ref / cpu_fast:.1f}x CPU)")
        print(f"  per-document agreement: max |diff| {worst:.2e}, F1 count mismatches {f1_mismatch}, "
              f"numnorm checked on {numnorm_differs} documents -> {'OK' if agree else 'MISMATCH'}")
        for name, s in result["summary"].items():
            print(f"  {name:10s} " + "  ".join(f"{k}={v}" for k, v in s.items()))
        if result["bootstrap"]:
            b = result["bootstrap"]
            print(f"bootstrap, {b['documents']} documents x 2 groups, 1000 resamples:")
            print(f"  vectorised: {b['vectorised_seconds']:.3f} s, loop (reference): {b['loop_seconds']:.3f} s, "
                  f"speedup {b['speedup']}x, intervals identical: {b['identical']}")
        if result["huge_answer"]:
            h = result["huge_answer"]
            print(f"one {h['answer_mb']} MB cut-off answer: vlm evaluate peak RSS {h['with_huge']['peak_rss_mb']} MB "
                  f"in {h['with_huge']['seconds']} s (exit {h['with_huge']['exit']}); without it "
                  f"{h['without']['peak_rss_mb']} MB in {h['without']['seconds']} s; ratio {h['rss_ratio']}x")
        for row in result["large_document"]:
            print(f"one document of {row['rows']} rows vs a {row['answer']} copy, {row['engine']}: peak RSS "
                  f"{row['peak_rss_mb']} MB in {row['seconds']} s (exit {row['exit']}"
                  f"{', capped: an upper bound' if row['capped'] else ', exact'})")
        if result["evaluate"]:
            e = result["evaluate"]
            print(f"vlm evaluate --json, {e['documents']} documents x 2 groups, whole process (median s, peak MB):")
            for name, label in (("now", "now"), ("serial", "one worker (VLM_WORKERS=1)"),
                                ("plain", "no shared truths or memo (VLM_SCORE_PLAIN=1)"),
                                ("interpreted", "and pure Python, no C build (VLM_PURE_TED=1)"),
                                ("against", f"--against {args.against}")):
                if name in e:
                    print(f"  {label:48s} {e[name]['seconds']:7.2f} s {e[name]['peak_rss_mb']:6.0f} MB"
                          f"  ({e[name]['runs']} runs)")
            ratios = (("workers_speedup", "workers"), ("sharing_speedup", "shared truths + memo"),
                      ("compiled_speedup", "compiled TED"), ("now_vs_against", "now vs --against"))
            print("  ratios: " + ", ".join(f"{label} {e[key]}x" for key, label in ratios if key in e)
                  + f"; output identical: {e['identical']}")
    ok = (agree and (not result["bootstrap"] or result["bootstrap"]["identical"])
          and all(row["exit"] == 0 for row in result["large_document"])
          and (not result["evaluate"] or result["evaluate"]["identical"]))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
