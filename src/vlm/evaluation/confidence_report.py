"""Field confidence in ``vlm evaluate``: each field's confidence against whether it is right, per group.

``add_confidence`` runs after ``vlm.evaluation.trust.add_trust``. A predicted field is *correct* when
``docdiff.align`` (menu rows paired by name, values stripped as Donut's normalisation strips them) finds it
equal to the truth's field; an extra field is wrong. For every group whose answers carry token scores it adds
``confidence`` to the group's entry:

* ``auroc`` of each kind (``min``, ``mean``, and ``confidence``: the default kind with repaired values
  lowered), the default's 95% CI over a bootstrap of documents, ``ece`` and the ``reliability`` bins;
* ``aurc`` (area under the risk-coverage curve, lower is better) for the confidence, for the rule-based
  ranking of ``trust`` (each field ranked by its document's rule key: not JSON, failed checks, no check,
  repairs) and for the ``combined`` trust score: the confidence halved per failed consistency check. The
  combined score is reported as the better one only where its AURC is lower on the same fields;
* with a calibration file (``vlm.evaluation.calibration``; ``apply_calibration``): coverage and precision
  at its threshold, with CIs.

The scalar ``confidence_auroc`` (and ``coverage@P`` with a calibration) join the group's metrics, so the
console table, metrics.json and ``vlm select`` see them. Each per-document row gets ``confidence`` (its
least confident field's), ``least_confident`` and ``field_confidence`` (by the field's prediction path).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from vlm.evaluation import confidence_metrics as cm
from vlm.evaluation.confidence import DEFAULT, KINDS, document_confidence, field_confidences
from vlm.evaluation.docdiff import CORRECT, align
from vlm.evaluation.trust import confidence_key

CHECK_FACTOR = 0.5  # the combined score: confidence times this per failed consistency check


def min_fields(target: float) -> int:
    """Scored fields needed to check a precision: 3 / (1 - target) (with fewer, one error moves it past)."""
    return math.ceil(3 / max(1e-9, 1 - target))


def apply_calibration(cal: dict[str, Any], table: dict[str, np.ndarray], resamples: int = 1000,
                      seed: int = 0) -> dict[str, Any]:
    """Coverage and precision at the calibration's threshold on these fields, with 95% CIs and a message."""
    target = cal["target_precision"]
    out: dict[str, Any] = {"target_precision": target, "threshold": cal.get("threshold"), "reached": False}
    if cal.get("threshold") is None:
        out["message"] = f"no threshold for precision {target:g}: {cal.get('reason', 'none was found')}"
        return out
    conf, y = table["confidence"], table["label"]
    kept = cm.kept_precision_ci(conf, y, table["doc"], cal["threshold"], resamples, seed)
    out.update(kept)
    if len(y) < min_fields(target):
        out["message"] = (f"too few fields to check precision {target:g}: {len(y)} scored, {min_fields(target)} "
                          "needed")
        return out
    if not kept["kept"]:
        out["message"] = f"no field reaches the threshold {cal['threshold']:.4f}"
        return out
    # With fewer than 1 / (1 - target) accepted fields one error already takes precision below the target, and the
    # CI of a handful is wide enough to reach any target: 10 kept, 9 right would "reach" 99%.
    needed = math.ceil(1 / max(1e-9, 1 - target))
    if kept["kept"] < needed:
        out["message"] = (f"too few accepted fields to show precision {target:g}: {kept['kept']} at the threshold "
                          f"{cal['threshold']:.4f}, {needed} needed")
        return out
    ci = kept["precision_ci95"] or [kept["precision"], kept["precision"]]
    out["reached"] = ci[1] >= target
    verdict = ("" if kept["precision"] >= target else ", reached only within the CI" if out["reached"]
               else ", not reached within the CI")
    cov_ci = kept["coverage_ci95"]
    out["message"] = (f"{100 * kept['coverage']:.1f}% of fields auto-accepted [{100 * cov_ci[0]:.1f}, "
                      f"{100 * cov_ci[1]:.1f}] at {100 * kept['precision']:.1f}% precision [{100 * ci[0]:.1f}, "
                      f"{100 * ci[1]:.1f}] (target {100 * target:g}%{verdict})")
    return out


def field_table(g: Any, rows: list[dict[str, Any]]) -> dict[str, np.ndarray] | None:
    """Every scored predicted field of a group, as arrays: kinds, label, document, rule rank, combined.

    Also fills each per-document row's ``confidence``, ``least_confident`` and ``field_confidence``.
    """
    scores = getattr(g, "scores", None)
    if not scores or all(s is None for s in scores):
        return None
    cols: dict[str, list] = {k: [] for k in (*KINDS, "confidence", "label", "doc", "rule", "combined", "repaired")}
    keys = [confidence_key(bool(r["valid"]), r.get("checks", {}), len(r.get("repairs", []))) for r in rows]
    rank = {key: i for i, key in enumerate(sorted(set(keys)))}
    raws = g.raws or [None] * len(rows)
    for k, (answer, raw, sc, row) in enumerate(zip(g.answers, raws, scores, rows)):
        fc = field_confidences(raw, answer.value, answer.valid, sc)
        row["confidence"] = document_confidence(fc)
        if fc is None:
            continue
        by_path = {f.path: f for f in fc}
        row["field_confidence"] = {f.path: round(f.confidence, 4) for f in fc}
        row["least_confident"] = min(fc, key=lambda f: f.confidence).path if fc else None
        failed = list(row.get("checks", {}).values()).count("fail")
        for a in align(row.get("ground_truth", g.gts[k]), answer.value):
            f = by_path.get(a.get("pred_path"))
            if f is None:
                continue
            for kind in KINDS:
                cols[kind].append(getattr(f, kind) or 0.0)
            cols["confidence"].append(f.confidence)
            cols["label"].append(1.0 if a["status"] == CORRECT else 0.0)
            cols["doc"].append(k)
            cols["rule"].append(-rank[keys[k]])  # higher is more trusted, like the confidences
            cols["combined"].append(f.confidence * CHECK_FACTOR ** failed)
            cols["repaired"].append(f.repaired)
    return {name: np.asarray(v, float) for name, v in cols.items()}


def summarise(t: dict[str, np.ndarray], resamples: int, seed: int) -> dict[str, Any]:
    """The numbers of one group's field table (see the module docstring)."""
    y, doc = t["label"], t["doc"]
    out: dict[str, Any] = {"fields": len(y), "documents": len(np.unique(doc)),
                           "accuracy": float(y.mean()) if len(y) else None, "default": DEFAULT,
                           "repaired_fields": int(t["repaired"].sum())}
    out["auroc"] = {k: cm.auroc(t[k], y) for k in (*KINDS, "confidence", "combined")}
    out["auroc_ci95"] = cm.auroc_ci(t["confidence"], y, doc, resamples, seed)
    out["ece"] = cm.ece(t["confidence"], y)
    out["reliability"] = cm.reliability(t["confidence"], y)
    curves = {}
    out["aurc"] = {}
    for name in ("confidence", "rule", "combined"):
        out["aurc"][name], curves[name] = cm.risk_coverage(t[name], y)
    better = out["aurc"]["combined"] is not None and out["aurc"]["combined"] < out["aurc"]["confidence"]
    out["combined_beats_confidence"] = bool(better)
    out["curves"] = curves
    return out


def add_confidence(result: dict[str, Any], groups: list, resamples: int = 1000, seed: int = 0,
                   calibration: dict[str, Any] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Field confidence of every group into ``result`` (in place); returns the field tables by group."""
    tables = {}
    for g in groups:
        rows = result["per_document"][g.name]
        t = field_table(g, rows)
        entry = result["groups"][g.name]
        missing = sum(r.get("confidence") is None and r.get("field_confidence") is None for r in rows)
        if t is None or not len(t["label"]):
            note = ("no token scores: these answers were predicted before vlm kept them, or by a backend that does "
                    "not (redo with vlm predict --overwrite)") if t is None else \
                "no predicted field to score (no answer with token scores holds a field)"
            entry["confidence"] = {"fields": 0, "documents_without_scores": missing, "note": note}
            continue
        tables[g.name] = t
        entry["confidence"] = summarise(t, resamples, seed) | {"documents_without_scores": missing}
        if calibration is not None:
            entry["confidence"]["calibrated"] = apply_calibration(calibration, t, resamples, seed)
    if tables:  # a metric row only where some group has scores: evaluations without them print as before
        for g in groups:
            c = result["groups"][g.name]["confidence"]
            result["groups"][g.name]["confidence_auroc"] = (c.get("auroc") or {}).get("confidence")
            if calibration is not None:
                cal = c.get("calibrated") or {}
                result["groups"][g.name][f"coverage@{calibration['target_precision']:g}"] = \
                    cal.get("coverage") if cal.get("reached") else None
    return tables


def _fmt(x: float | None, pct: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.1f}%" if pct else f"{x:.3f}"


def confidence_lines(result: dict[str, Any]) -> list[str]:
    """One line per group: AUROC [CI], ECE, AURC against the rules, repaired fields; the calibrated coverage."""
    lines = []
    for name, entry in result["groups"].items():
        c = entry.get("confidence")
        if not c:
            continue
        if not c.get("fields"):
            lines.append(f"{name}: {c.get('note', 'no scored fields')}")
            continue
        ci = c["auroc_ci95"]
        a = c["aurc"]
        line = (f"{name}: {c['fields']} fields of {c['documents']} documents, {_fmt(c['accuracy'], True)} correct; "
                f"AUROC {_fmt(c['auroc']['confidence'])} [{_fmt(ci[0]) if ci else 'n/a'}, "
                f"{_fmt(ci[1]) if ci else 'n/a'}] (min {_fmt(c['auroc']['min'])}, mean {_fmt(c['auroc']['mean'])}); "
                f"ECE {_fmt(c['ece'])}; AURC {_fmt(a['confidence'])} vs rules {_fmt(a['rule'])}")
        if c["combined_beats_confidence"]:
            line += f"; combined with the checks: AURC {_fmt(a['combined'])}, AUROC {_fmt(c['auroc']['combined'])}"
        if c["repaired_fields"]:
            line += f"; {c['repaired_fields']} fields recovered by parser repairs (trust lowered)"
        if c.get("documents_without_scores"):
            line += f"; {c['documents_without_scores']} documents without token scores"
        lines.append(line)
        cal = c.get("calibrated")
        if cal:
            lines.append(f"{name}: {cal['message']}")
    return lines


def markdown(result: dict[str, Any]) -> str:
    lines = confidence_lines(result)
    if not lines:
        return ""
    return ("\n## Field confidence\n\nEach field's confidence is the model's lowest token probability over the "
            "characters of its value (docs/evaluation.md#confidence). AUROC: how often a right field scores above "
            "a wrong one (0.5 is chance), with a 95% CI over documents. AURC: mean share of wrong fields kept as "
            "fields are kept most trusted first (lower is better), beside the rule-based ranking.\n\n"
            + "".join(f"- {line}\n" for line in lines)
            + ("\n![reliability](reliability.png)\n\n![risk-coverage](risk_coverage.png)\n"
               if any((e.get("confidence") or {}).get("fields") for e in result["groups"].values()) else ""))


def charts(result: dict[str, Any]) -> dict[str, bytes]:
    """reliability.png and risk_coverage.png, where some group has scored fields."""
    scored = {n: e["confidence"] for n, e in result["groups"].items() if (e.get("confidence") or {}).get("fields")}
    if not scored:
        return {}
    curves = {}
    for name, c in scored.items():
        curves[f"{name}: token confidence"] = c["curves"]["confidence"]
        curves[f"{name}: rules"] = c["curves"]["rule"]
        if c["combined_beats_confidence"]:
            curves[f"{name}: combined"] = c["curves"]["combined"]
    return {"reliability.png": cm.reliability_png({n: c["reliability"] for n, c in scored.items()}),
            "risk_coverage.png": cm.risk_coverage_png(curves)}
