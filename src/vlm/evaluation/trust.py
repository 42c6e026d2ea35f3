"""Which predictions to trust: consistency verdicts, accuracy by verdict, coverage curves, label-error candidates.

``add_trust`` runs after ``vlm.evaluation.compare.evaluate_groups`` has scored the groups. For each group it adds:

* ``consistent``: the share of predictions that pass every consistency check that applies (at least one
  applies, none fails; see ``vlm.evaluation.consistency.verdict``);
* ``consistency``: counts per verdict and per check, nTED accuracy and micro F1 of the consistent,
  inconsistent and unchecked predictions, the ground truth's own pass rate per check (a check the truth
  fails is no filter), and the accuracy-versus-coverage curve.

**Confidence**, for the curve: a prediction's rank key is (not JSON, number of failed checks, no check
applied, number of parse repairs); lower is more trusted. The curve keeps the most trusted predictions first
and adds the rest back one confidence level at a time, so it has a point per distinct key (no arbitrary
order inside a level). The first point after the consistent ones is where a "trust only what adds up"
filter would stop.

``label_error_candidates`` lists fields where every compared group (two or more) gives the same value
and the ground truth says something else: likely annotation errors to re-check.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass
from typing import Any

from rich.table import Table

from vlm.evaluation.consistency import CORD_RULES, check_document, verdict
from vlm.evaluation.docdiff import CORRECT, EXTRA, align
from vlm.evaluation.scoring import run_split
from vlm.output import out

VERDICTS = ("consistent", "inconsistent", "unchecked")


def _f1(counts: list[tuple[int, int, int]]) -> float | None:
    if not counts:
        return None
    tp, n_pred, n_gt = (sum(c[i] for c in counts) for i in range(3))
    return 1.0 if n_pred + n_gt == 0 else 2.0 * tp / (n_pred + n_gt)


def _subset(idx: list[int], ted: list[float], f1: list[tuple[int, int, int]]) -> dict[str, Any]:
    return {"documents": len(idx), "ted_accuracy": sum(ted[i] for i in idx) / len(idx) if idx else None,
            "f1": _f1([f1[i] for i in idx])}


def confidence_key(valid: bool, checks: dict[str, str], repairs: int) -> tuple[int, int, int, int]:
    """Lower is more trusted: (not JSON, failed checks, no check applied, parse repairs)."""
    statuses = list(checks.values())
    return (0 if valid else 1, statuses.count("fail"), 0 if "pass" in statuses else 1, repairs)


def coverage_curve(keys: list[tuple], ted: list[float], f1: list[tuple[int, int, int]]) -> list[dict[str, Any]]:
    """Accuracy of the most trusted predictions as less trusted ones are added back, one level at a time."""
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    points, kept = [], []
    for pos, i in enumerate(order):
        kept.append(i)
        if pos + 1 == len(order) or keys[order[pos + 1]] != keys[i]:
            points.append({"coverage": len(kept) / len(keys), "documents": len(kept), **_subset(kept, ted, f1),
                           "confidence": list(keys[i])})
    return points


def check_counts(results: list[dict[str, str]]) -> dict[str, dict[str, Any]]:
    """Per check: pass, fail and n/a counts, and the pass rate over the documents where it applies."""
    out = {}
    for rule in CORD_RULES:
        c = Counter(r[rule.name] for r in results)
        applies = c["pass"] + c["fail"]
        out[rule.name] = {"description": rule.description, "pass": c["pass"], "fail": c["fail"], "n/a": c["n/a"],
                          "pass_rate": c["pass"] / applies if applies else None}
    return out


@dataclass
class _Statuses:
    """Each document's check statuses (what ``scoring.run_split`` runs, in workers for many documents)."""

    docs: list[Any]

    def run(self, start: int, stop: int) -> list[dict[str, str]]:
        return [{k: v.status for k, v in check_document(d).items()} for d in self.docs[start:stop]]


def add_trust(result: dict[str, Any], groups: list, scores: dict[str, Any]) -> None:
    """Consistency, accuracy by verdict and the coverage curve of every group, into ``result`` (in place).

    Each per-document row also gets ``verdict``, ``checks``, ``repairs``, ``prediction`` and ``ground_truth``
    (references, not copies), which the HTML report and the label-error list read.
    """
    docs = groups[0].gts + [pred for g in groups for pred in g.preds]  # every check, split over workers
    statuses = [c for part in run_split(_Statuses(docs), len(docs)) for c in part]
    gt_checks = statuses[:len(groups[0].gts)]
    gt_summary = {"checks": check_counts(gt_checks),
                  "consistent": sum(verdict(c) == "consistent" for c in gt_checks) / len(gt_checks)}
    result["ground_truth_checks"] = gt_summary
    at = len(gt_checks)
    for g in groups:
        s = scores[g.name]
        rows = result["per_document"][g.name]
        checks, keys = [], []
        for k, (pred, answer, row) in enumerate(zip(g.preds, g.answers, rows)):
            c = statuses[at + k]
            repairs = list(answer.repairs) if pred is not None else []
            row.update(verdict=verdict(c, s.valid[k]), checks=c, repairs=repairs, prediction=pred,
                       ground_truth=g.gts[k])
            checks.append(c)
            keys.append(confidence_key(s.valid[k], c, len(repairs)))
        at += len(rows)
        by_verdict = {v: [k for k, r in enumerate(rows) if r["verdict"] == v] for v in VERDICTS}
        entry = result["groups"][g.name]
        entry["consistent"] = len(by_verdict["consistent"]) / len(rows)
        entry["consistency"] = {
            "counts": {v: len(idx) for v, idx in by_verdict.items()},
            "accuracy": {v: _subset(idx, s.ted_accuracy, s.f1) for v, idx in by_verdict.items()},
            "checks": check_counts(checks),
            "ground_truth": gt_summary,
            "coverage_curve": coverage_curve(keys, s.ted_accuracy, s.f1),
        }


def label_error_candidates(result: dict[str, Any], aligned: dict | None = None) -> list[dict[str, Any]]:
    """Fields where all compared groups (two or more, each valid JSON) agree and the ground truth differs.

    A field the truth lacks counts too, outside menu rows (all groups reading a tax line the annotator
    skipped); an extra menu row does not, since its row number depends on each prediction. ``aligned``: a dict
    that keeps each ``docdiff.align`` made here under (group, document index), for the HTML report to reuse.
    """
    names = list(result["per_document"])
    if len(names) < 2:
        return []
    out = []
    for k, base_row in enumerate(result["per_document"][names[0]]):
        rows = [result["per_document"][n][k] for n in names]
        if any(r.get("prediction") is None for r in rows):
            continue
        values: dict[str, list] = {}
        truth: dict[str, str | None] = {}
        for name, r in zip(names, rows):
            rows_aligned = align(r["ground_truth"], r["prediction"])
            if aligned is not None:
                aligned[name, k] = rows_aligned
            for a in rows_aligned:
                if a["status"] == CORRECT or (a["status"] == EXTRA and "[+" in a["path"]):
                    continue
                values.setdefault(a["path"], []).append(a["pred"])
                truth[a["path"]] = a["gt"]
        for path, found in values.items():
            if len(found) == len(rows) and found[0] is not None and len(set(found)) == 1:
                out.append({"id": base_row["id"], "field": path, "ground_truth": truth[path], "predicted": found[0],
                            "groups": len(rows)})
    return out


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def trust_tables(result: dict[str, Any]) -> dict[str, tuple[list[str], list[list[str]]]]:
    """The consistency tables as (headers, rows) of text, shared by report.md, the console and report.html."""
    groups = list(result["groups"])
    gt = result["ground_truth_checks"]["checks"]
    checks = (["check", "rule", "ground truth passes"] + [f"{g} pass / fail / n/a" for g in groups],
              [[name, c["description"], f"{_pct(c['pass_rate'])} of {c['pass'] + c['fail']}"]
               + [f"{result['groups'][g]['consistency']['checks'][name]['pass']} / "
                  f"{result['groups'][g]['consistency']['checks'][name]['fail']} / "
                  f"{result['groups'][g]['consistency']['checks'][name]['n/a']}" for g in groups]
               for name, c in gt.items()])
    accuracy_rows = []
    for g in groups:
        cons = result["groups"][g]["consistency"]
        for v in VERDICTS:
            a = cons["accuracy"][v]
            accuracy_rows.append([g, v, str(a["documents"]), _pct(a["documents"] / result["documents"]),
                                  _num(a["ted_accuracy"]), _num(a["f1"])])
    accuracy = (["group", "verdict", "documents", "share", "nTED accuracy", "field F1"], accuracy_rows)
    return {"checks": checks, "accuracy": accuracy}


def markdown(result: dict[str, Any], candidates: list[dict[str, Any]], limit: int) -> str:
    """The consistency and label-error sections of report.md."""

    def table(headers: list[str], rows: list[list[str]]) -> str:
        lines = ["| " + " | ".join(headers) + " |", "|---" * len(headers) + "|"]
        return "\n".join(lines + ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows])

    t = trust_tables(result)
    gt = result["ground_truth_checks"]
    parts = [
        "\n## Consistency checks\n",
        "A prediction is *consistent* when at least one check applies and none fails, *inconsistent* when a check "
        "fails or it is not JSON, *unchecked* when no check applies. The ground truth's own pass rate is shown "
        f"beside each check: a check the truth fails is a weak filter. {_pct(gt['consistent'])} of the ground "
        "truths are consistent.\n",
        table(*t["checks"]), "\n\n### Accuracy by verdict\n", table(*t["accuracy"]),
        "\n\n![accuracy versus coverage](coverage.png)\n",
        "\n## Label-error candidates\n",
    ]
    if len(result["groups"]) < 2:
        parts.append("Needs two or more groups to compare.\n")
    elif not candidates:
        parts.append("None: no field where every group agrees and the ground truth differs.\n")
    else:
        shown = candidates[:limit]
        parts.append(f"{len(candidates)} fields where all {len(result['groups'])} groups agree and the ground "
                     f"truth differs (first {len(shown)}):\n")
        parts.append(table(["document", "field", "ground truth", "all groups"],
                           [[c["id"], c["field"], c["ground_truth"] or "(missing)", c["predicted"]] for c in shown]))
        parts.append("\n")
    return "\n".join(parts)


def coverage_png(result: dict[str, Any]) -> bytes:
    """nTED accuracy against coverage per group, the consistent-only point marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    for g, entry in result["groups"].items():
        curve = entry["consistency"]["coverage_curve"]
        xs, ys = [0.0] + [p["coverage"] for p in curve], [curve[0]["ted_accuracy"]] + [p["ted_accuracy"] for p in curve]
        line, = ax.step(xs, ys, where="pre", label=g)
        n = entry["consistency"]["counts"]["consistent"]
        point = next((p for p in curve if p["documents"] == n), None)
        if point:
            ax.plot([point["coverage"]], [point["ted_accuracy"]], "o", color=line.get_color())
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("coverage (share of predictions kept, most trusted first)")
    ax.set_ylabel("nTED accuracy of kept")
    ax.set_title("accuracy vs coverage (dot: consistent predictions only)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def print_trust(result: dict[str, Any], candidates: list[dict[str, Any]] | None) -> None:
    """The consistency tables (and label-error candidates, when asked for) on the console."""
    t = trust_tables(result)
    for title, key in (("consistency checks (ground truth's pass rate beside each)", "checks"),
                       ("accuracy of consistent vs inconsistent predictions", "accuracy")):
        table = Table(title=title)
        for h in t[key][0]:
            table.add_column(h)
        for row in t[key][1]:
            table.add_row(*row)
        out.print(table)
    if candidates is not None:
        out.print(f"[bold]label-error candidates[/bold]: {len(candidates)}")
        for c in candidates:
            out.print(f"  {c['id']} {c['field']}: truth {c['ground_truth']!r}, all groups {c['predicted']!r}",
                      highlight=False)
