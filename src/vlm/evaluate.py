"""Compare prediction groups side by side with the standard CORD metrics.

Groups come from the prediction store or from prediction files. Documents are
paired by id across groups, and every delta against the first group carries a
95% confidence interval from a paired bootstrap over documents.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlm.errors import VlmError

MAIN_METRICS = ("valid_json", "ted_accuracy", "f1")


@dataclass
class Group:
    name: str
    ids: list[str]
    preds: list[dict | None]
    gts: list[Any]
    raws: list[str]
    positional: bool = False  # ids are line numbers (LLaMA-Factory's file has none): pair by position


def groups_from_store(store_path: Path, names: list[str], split: str) -> list[Group]:
    """Load each named group's predictions for ``split`` from the SQLite store."""
    from vlm.store import Store

    if not store_path.is_file():
        raise VlmError(f"prediction store not found: {store_path}", hint="run vlm predict --group NAME first.")
    with Store(store_path) as store:
        available = {(g, s): n for g, s, n in store.groups()}
        groups = []
        for name in names:
            if (name, split) not in available:
                have = ", ".join(f"{g} ({s}, {n})" for (g, s), n in available.items()) or "none"
                raise VlmError(f"no predictions for group {name!r} on split {split!r} in {store_path}",
                               hint=f"run vlm predict --group {name} --split {split}; stored groups: {have}")
            rows = store.load(name, split)
            groups.append(Group(name, [r.doc_id for r in rows], [r.parsed for r in rows],
                                [r.ground_truth for r in rows], [r.raw for r in rows]))
        _warn_on_mixed_settings({name: store.last_run(name, split) for name in names})
    return groups


# What must be equal across compared groups, or the comparison measures more than the model.
_COMPARED = (("backend", ("generation", "backend")), ("runtime LoRA", ("generation", "runtime_lora")),
             ("max_new_tokens", ("generation", "max_new_tokens")), ("template", ("settings", "template")),
             ("image_max_pixels", ("settings", "image_max_pixels")),
             ("image_min_pixels", ("settings", "image_min_pixels")), ("cutoff_len", ("settings", "cutoff_len")),
             ("prompt", ("prompt_hash",)))
# Runs logged before a setting existed: what it was then.
_DEFAULTS = {"backend": "llamafactory", "runtime LoRA": False}


def _warn_on_mixed_settings(runs: dict[str, dict[str, Any] | None]) -> None:
    from vlm.output import warn

    for label, path in _COMPARED:
        seen = {}
        for name, run in runs.items():
            value = run
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            seen[name] = _DEFAULTS.get(label) if value is None and run else value
        if len({json.dumps(v, sort_keys=True, default=str) for v in seen.values()}) > 1:
            detail = ", ".join(f"{name}: {value}" for name, value in seen.items())
            warn(f"the groups differ in {label} ({detail}); the comparison measures that too. "
                 "Predict every group with the same settings for a clean before/after.")


def _as_json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return None
    return value


def group_from_file(path: Path, name: str | None = None) -> Group:
    """Read LLaMA-Factory's ``generated_predictions.jsonl`` or ``{"id","prediction","ground_truth"}`` JSONL."""
    from vlm.parsing import parse_prediction

    if not path.is_file():
        raise VlmError(f"prediction file not found: {path}")
    ids, preds, gts, raws = [], [], [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise VlmError(f"{path}:{n} is not valid JSON ({e.msg})") from None
        if "predict" in row and "label" in row:
            raw, gt, doc_id = row["predict"], _as_json(row["label"]), str(len(ids))
        elif "prediction" in row and "ground_truth" in row:
            raw, gt, doc_id = row["prediction"], _as_json(row["ground_truth"]), str(row.get("id", len(ids)))
        else:
            raise VlmError(f"{path}:{n} has neither predict/label nor prediction/ground_truth fields",
                           hint="use LLaMA-Factory's generated_predictions.jsonl or {\"id\",\"prediction\",\"ground_truth\"} lines.")
        if isinstance(gt, dict) and "gt_parse" in gt:
            gt = gt["gt_parse"]
        if not isinstance(gt, (dict, list)):
            raise VlmError(f"{path}:{n}: the ground truth is not a JSON object")
        pred = raw if isinstance(raw, dict) else parse_prediction(str(raw)).value
        ids.append(doc_id)
        preds.append(pred)
        gts.append(gt)
        raws.append(raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False))
    if not ids:
        raise VlmError(f"{path} holds no predictions")
    if name is None:
        name = path.parent.name if path.stem == "generated_predictions" else path.stem
    return Group(name, ids, preds, gts, raws, positional=all(d == str(k) for k, d in enumerate(ids)))


def align(groups: list[Group]) -> tuple[list[str], list[Group]]:
    """Restrict every group to the documents all groups share, in one order."""
    from vlm.output import warn

    if any(g.positional for g in groups):
        if len({len(g.ids) for g in groups}) != 1:
            raise VlmError("prediction files without ids are paired by line, but the groups have "
                           + ", ".join(f"{g.name}: {len(g.ids)}" for g in groups) + " lines",
                           hint="give every file the same documents in the same order, or add ids.")
        named = next((g for g in groups if not g.positional), groups[0])
        return named.ids, [Group(g.name, named.ids, g.preds, g.gts, g.raws) for g in groups]
    common = set(groups[0].ids)
    for g in groups[1:]:
        common &= set(g.ids)
    if not common:
        raise VlmError("the groups share no documents", hint="predict the same split for every group.")
    order = [i for i in groups[0].ids if i in common]
    aligned = []
    for g in groups:
        if len(g.ids) != len(order):
            warn(f"group {g.name}: scoring the {len(order)} documents shared by all groups (it has {len(g.ids)})")
        pos = {d: k for k, d in enumerate(g.ids)}
        idx = [pos[d] for d in order]
        aligned.append(Group(g.name, order, [g.preds[k] for k in idx], [g.gts[k] for k in idx], [g.raws[k] for k in idx]))
    return order, aligned


def bootstrap_delta(base, other, n_docs: int, resamples: int = 1000, seed: int = 0,
                    aggregate=None) -> dict[str, tuple[float, float]]:
    """95% paired-bootstrap interval of (other - base) for every aggregate metric (``aggregate``: the
    scores' summary over resampled indices; the CORD metrics' by default, vlm.qa_metrics.aggregate_qa for QA)."""
    import numpy as np

    if aggregate is None:
        from vlm.metrics import aggregate

    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(resamples):
        idx = rng.integers(0, n_docs, n_docs)
        a, b = aggregate(base, idx), aggregate(other, idx)
        for key, value in b.items():
            if value is not None and a.get(key) is not None:
                draws.setdefault(key, []).append(value - a[key])
    return {k: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) for k, v in draws.items()}


def evaluate_groups(groups: list[Group], resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Score every group, with deltas and bootstrap intervals against the first group."""
    from vlm.metrics import aggregate, field_breakdown, score_documents

    if len({g.name for g in groups}) != len(groups):
        raise VlmError("group names must be unique", hint="rename a prediction file or pass distinct --groups.")
    order, groups = align(groups)
    scores = {g.name: score_documents(g.preds, g.gts) for g in groups}
    base = groups[0].name
    result: dict[str, Any] = {"documents": len(order), "baseline": base, "groups": {}}
    base_metrics = aggregate(scores[base])
    for g in groups:
        metrics = aggregate(scores[g.name])
        entry = {"documents": len(order), **metrics, "fields": field_breakdown(scores[g.name])}
        if g.name != base:
            ci = bootstrap_delta(scores[base], scores[g.name], len(order), resamples, seed)
            entry["delta"] = {k: {"delta": metrics[k] - base_metrics[k], "ci95": list(ci[k])}
                              for k in metrics if k in ci and metrics[k] is not None and base_metrics.get(k) is not None}
        result["groups"][g.name] = entry
    result["per_document"] = {
        g.name: [{"id": d, "valid": scores[g.name].valid[k], "ted_accuracy": scores[g.name].ted_accuracy[k]}
                 for k, d in enumerate(order)]
        for g in groups
    }
    from vlm.trust import add_trust  # consistency verdicts, accuracy by verdict, coverage curves

    add_trust(result, groups, scores)
    return result


def worst_documents(result: dict[str, Any], group: str, n: int) -> list[dict[str, Any]]:
    rows = sorted(result["per_document"][group], key=lambda r: (r["ted_accuracy"], r["id"]))
    return rows[:n]


def fixed_and_broken(result: dict[str, Any], group: str, margin: float = 0.1) -> dict[str, list[dict[str, Any]]]:
    """Documents whose nTED accuracy rose (fixed) or fell (broken) by ``margin`` against the baseline."""
    base = {r["id"]: r["ted_accuracy"] for r in result["per_document"][result["baseline"]]}
    fixed, broken = [], []
    for r in result["per_document"][group]:
        delta = r["ted_accuracy"] - base[r["id"]]
        row = {"id": r["id"], "before": base[r["id"]], "after": r["ted_accuracy"], "delta": delta}
        if delta >= margin:
            fixed.append(row)
        elif delta <= -margin:
            broken.append(row)
    return {"fixed": sorted(fixed, key=lambda r: -r["delta"]), "broken": sorted(broken, key=lambda r: r["delta"])}
