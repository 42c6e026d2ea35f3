#!/usr/bin/env python
"""The fast CORD scorer (``vlm.metrics``) vs the plain zss reference, side by side in one run.

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

    python bench/bench_metrics.py [--docs 100] [--seed 0] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import reference_metric as R

from vlm.metrics import aggregate, number_key, score_documents

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
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
        "reference_cpu_seconds": round(cpu_ref, 3), "cpu_speedup": round(cpu_ref / cpu_fast, 1), "max_abs_diff": worst, "f1_count_mismatches": f1_mismatch,
        "numnorm_checked": numnorm_differs, "agree": agree,
        "summary": {name: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()
                           if k in ("valid_json", "ted_accuracy", "f1", "ted_accuracy_numnorm", "menu_f1")}
                    for name, s in summary.items()},
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.docs} documents x {len(groups)} groups ({nodes:.1f} gt fields per document), best of {args.repeats}")
        print(f"  fast (vlm.metrics):    {t_fast:8.3f} s  ({cpu_fast:.3f} s CPU)")
        print(f"  reference (zss):       {t_ref:8.3f} s  ({cpu_ref:.3f} s CPU)")
        print(f"  speedup:               {t_ref / t_fast:8.1f}x  ({cpu_ref / cpu_fast:.1f}x CPU)")
        print(f"  per-document agreement: max |diff| {worst:.2e}, F1 count mismatches {f1_mismatch}, "
              f"numnorm checked on {numnorm_differs} documents -> {'OK' if agree else 'MISMATCH'}")
        for name, s in result["summary"].items():
            print(f"  {name:10s} " + "  ".join(f"{k}={v}" for k, v in s.items()))
    sys.exit(0 if agree else 1)


if __name__ == "__main__":
    main()
