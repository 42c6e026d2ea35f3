"""Compare prediction groups side by side with the standard CORD metrics.

Groups come from the prediction store or from prediction files. Documents are
paired by id across groups, and every delta against the first group carries a
95% confidence interval from a paired bootstrap over documents.
"""

from __future__ import annotations

import gc
import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlm.data.records import jsonl_lines
from vlm.errors import VlmError
from vlm.evaluation.confidence_report import add_confidence
from vlm.evaluation.format_content import constraint_label, differ, format_and_content
from vlm.evaluation.ground_truths import check_same_ground_truths, refuse_short_answers
from vlm.evaluation.metrics import aggregate, draw_counts, field_breakdown, resampled
from vlm.evaluation.scoring import heap_frozen, score_groups
from vlm.evaluation.trust import add_trust  # consistency verdicts, accuracy by verdict, coverage curves
from vlm.inference.parsing import DECODER, MAX_NODES, ParseResult, api_envelope, count_nodes, parse_prediction
from vlm.inference.store import Store
from vlm.inference.token_scores import TokenScores, from_json
from vlm.output import warn
from vlm.schema import unknown_keys

MAIN_METRICS = ("valid_json", "ted_accuracy", "f1")


@dataclass
class Group:
    name: str
    ids: list[str]
    answers: list[ParseResult]  # each answer read by ``read_answer``; ``.value`` is what is scored
    gts: list[Any]
    positional: bool = False  # LLaMA-Factory's file has no ids: paired by position (ids are line numbers)
    lines: list[int] | None = None  # file line of each document, for messages
    raws: list[Any] | None = None  # the answers as read, for tasks scored on text (QA: qa.prediction_text)
    keys: list[str | None] | None = None  # each answer's text where short: identical answers are scored once
    constrain: str | None = None  # how the store's run constrained the answers (vlm predict --constrain); files: None
    scores: list[TokenScores | None] | None = None  # each answer's token log-probabilities, where it has them

    @property
    def preds(self) -> list[dict | None]:
        return [a.value for a in self.answers]


def read_answer(raw: Any) -> ParseResult:
    """A model answer as text (parsed leniently) or as an already-parsed object (checked, not repaired)."""
    if not isinstance(raw, dict):
        return parse_prediction(raw if isinstance(raw, str) else json.dumps(raw))
    envelope = api_envelope(raw)
    if envelope:
        return ParseResult(None, [], f"the answer is an API response envelope, {envelope}", False)
    if count_nodes(raw) > MAX_NODES:
        return ParseResult(None, [], f"the answer holds more than {MAX_NODES:,} values; not scored", False)
    return ParseResult(raw, [], None, True)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while answers are read.

    Parsed JSON makes no reference cycles, yet the collector's full passes walk the whole heap as it grows by
    millions of containers: about 1 s of 13 s at 10,000 documents x 2 groups (measured). Reference counting
    still frees everything; a caller that had paused the collector itself keeps it paused.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


MEMO_MAX_CHARS = 65536  # longer answers are not kept as memo keys (a runaway answer is scored once anyway)


def _memo_key(raw: Any) -> str | None:
    """The answer's text, which decides its parse (so its scores): the key to score repeats once."""
    return raw if isinstance(raw, str) and len(raw) <= MEMO_MAX_CHARS else None


def groups_from_store(store_path: Path, names: list[str], split: str) -> list[Group]:
    """Load each named group's predictions for ``split`` from the SQLite store.

    The stored raw text is parsed again here, so every group is read by the same (current) parser.
    """
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
            made = store.settings_in(name, split)
            if len(made) > 1:
                raise VlmError(f"group {name!r} on split {split!r} holds predictions made with {len(made)} different "
                               f"settings ({', '.join(str(n) for n in sorted(made.values(), reverse=True))} rows): "
                               "its scores would mix two models or generation settings",
                               hint=f"redo it with one setting: vlm predict --group {name} --split {split} "
                                    "--overwrite (same options as the run you want).")
            with _collector_paused():
                rows = store.load(name, split)
                groups.append(Group(name, [r.doc_id for r in rows], [read_answer(r.raw) for r in rows],
                                    [r.ground_truth for r in rows], raws=[r.raw for r in rows],
                                    keys=[_memo_key(r.raw) for r in rows],
                                    constrain=constraint_label(store.last_run(name, split)),
                                    scores=[r.scores for r in rows]))
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


def _row(path: Path, n: int, line: str) -> tuple[Any, Any, str | None, TokenScores | None]:
    """(answer, ground truth, id or None, token scores or None) of one line of a prediction file."""
    try:
        row = DECODER.decode(line)  # keeps 31.000 as printed, for the numnorm variants
    except (json.JSONDecodeError, RecursionError) as e:
        raise VlmError(f"{path}:{n} is not valid JSON ({getattr(e, 'msg', e)})") from None
    if not isinstance(row, dict):
        raise VlmError(f"{path}:{n} is a JSON {type(row).__name__} ({line.strip()[:40]}), not an object",
                       hint="each line must be one object: {\"id\", \"prediction\", \"ground_truth\"} "
                            "or LLaMA-Factory's {\"predict\", \"label\"}.")
    if "predict" in row and "label" in row:
        raw, gt = row["predict"], _as_json(row["label"])
    elif "prediction" in row and "ground_truth" in row:
        raw, gt = row["prediction"], _as_json(row["ground_truth"])
    else:
        raise VlmError(f"{path}:{n} has neither predict/label nor prediction/ground_truth fields",
                       hint="use LLaMA-Factory's generated_predictions.jsonl or "
                            "{\"id\",\"prediction\",\"ground_truth\"} lines.")
    if isinstance(gt, dict) and "gt_parse" in gt:
        gt = gt["gt_parse"]
    if not isinstance(gt, (dict, list)):
        raise VlmError(f"{path}:{n}: the ground truth is not a JSON object",
                       hint="an extraction ground truth is a JSON object; a short-answer QA set is scored with "
                            "--task qa.")
    doc_id = row.get("id")
    return raw, gt, None if doc_id is None else str(doc_id), from_json(row.get("token_scores"))


def group_from_file(path: Path, name: str | None = None) -> Group:
    """Read LLaMA-Factory's ``generated_predictions.jsonl`` or ``{"id","prediction","ground_truth"}`` JSONL.

    A file with ids is paired with other groups by id; only a file with no ids at all (LLaMA-Factory's) is
    paired by position. Repeated ids and lines that are not objects are refused, naming the lines.
    """
    ids: list[str | None] = []
    answers, gts, lines, keys, raws, scores = [], [], [], [], [], []
    # line by line: one huge answer is read once, then cut by the parser
    with _collector_paused():
        for n, line in jsonl_lines(path):
            if not line.strip():
                continue
            raw, gt, doc_id, sc = _row(path, n, line)
            del line
            answers.append(read_answer(raw))
            keys.append(_memo_key(raw))
            raws.append(raw if sc is not None else None)  # kept only to map scored fields to their tokens
            scores.append(sc)
            ids.append(doc_id)
            gts.append(gt)
            lines.append(n)
    if not ids:
        raise VlmError(f"{path} holds no predictions")
    if all(sc is None for sc in scores):  # a file without token scores reads as it always did
        raws = scores = None
    if name is None:
        name = path.parent.name if path.stem == "generated_predictions" else path.stem
    missing = [n for n, d in zip(lines, ids) if d is None]
    if missing and len(missing) < len(ids):
        raise VlmError(f"{path}:{missing[0]} has no id, but other lines have ids ({len(missing)} lines lack one)",
                       hint="give every line an id, or none (then the file is paired with the others by line).")
    if missing:
        return Group(name, [str(k) for k in range(len(ids))], answers, gts, positional=True, lines=lines, keys=keys,
                     raws=raws, scores=scores)
    first: dict[str, int] = {}
    repeats: dict[str, list[int]] = {}
    for n, d in zip(lines, ids):
        if d in first:
            repeats.setdefault(d, [first[d]]).append(n)
        first.setdefault(d, n)
    if repeats:
        shown = "; ".join(f"{d!r} on lines {', '.join(map(str, ns))}" for d, ns in list(repeats.items())[:5])
        raise VlmError(f"{path}: {len(repeats)} ids repeat ({shown})",
                       hint="keep one line per document id; which copy to score is not guessed.")
    return Group(name, [str(d) for d in ids], answers, gts, lines=lines, keys=keys, raws=raws, scores=scores)


def _subset(g: Group, idx: list[int], ids: list[str]) -> Group:
    return Group(g.name, ids, [g.answers[k] for k in idx], [g.gts[k] for k in idx],
                 lines=None if g.lines is None else [g.lines[k] for k in idx],
                 raws=None if g.raws is None else [g.raws[k] for k in idx],
                 keys=None if g.keys is None else [g.keys[k] for k in idx], constrain=g.constrain,
                 scores=None if g.scores is None else [g.scores[k] for k in idx])


def align(groups: list[Group]) -> tuple[list[str], list[Group]]:
    """Restrict every group to the documents all groups share, in one order.

    Groups with ids are paired by id. A group without (LLaMA-Factory's file) is paired by position. Either way
    every group must have the baseline's ground truth for every shared document (``check_same_ground_truths``):
    paired by line, a difference means the files are in different orders; paired by id, different labels.
    """
    if any(g.positional for g in groups):
        if len({len(g.ids) for g in groups}) != 1:
            raise VlmError("prediction files without ids are paired by line, but the groups have "
                           + ", ".join(f"{g.name}: {len(g.ids)}" for g in groups) + " lines",
                           hint="give every file the same documents in the same order, or add ids.")
        named = next((g for g in groups if not g.positional), groups[0])
        check_same_ground_truths([named] + [g for g in groups if g is not named], by_line=True)
        order = list(range(len(named.ids)))
        return named.ids, [_subset(g, order, named.ids) for g in groups]
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
        aligned.append(_subset(g, [pos[d] for d in order], order))
    check_same_ground_truths(aligned)
    return order, aligned


def bootstrap_delta(base, other, n_docs: int, resamples: int = 1000, seed: int = 0,
                    aggregate=None) -> dict[str, tuple[float, float]]:
    """95% paired-bootstrap interval of (other - base) for every aggregate metric.

    Resamples are drawn a block at a time (numpy); the draws are the ones ``resamples``
    calls of ``rng.integers(0, n_docs, n_docs)`` would make. The CORD metrics are scored a
    block at a time too, so the intervals equal those of scoring each resample with
    ``vlm.evaluation.metrics.aggregate``. Another task passes its own per-resample ``aggregate``
    (``vlm.evaluation.qa_metrics.aggregate_qa`` for QA), which is called once per resample.
    """
    rng = np.random.default_rng(seed)
    block = max(1, min(resamples, 2_000_000 // max(1, n_docs)))  # bounds the draw matrices to ~16 MB each
    draws: dict[str, list] = {}
    done = 0
    while done < resamples:
        idx = rng.integers(0, n_docs, (min(block, resamples - done), n_docs))
        if aggregate is None:
            counts = draw_counts(idx, n_docs)
            a, b = resampled(base, idx, counts), resampled(other, idx, counts)
            for key, value in b.items():
                delta = value - a[key]
                draws.setdefault(key, []).append(delta[~np.isnan(delta)])
        else:
            for row in idx:
                a, b = aggregate(base, row), aggregate(other, row)
                for key, value in b.items():
                    if value is not None and a.get(key) is not None:
                        draws.setdefault(key, []).append(np.array([value - a[key]]))
        done += len(idx)
    out = {}
    for key, parts in draws.items():
        v = np.concatenate(parts)
        if v.size:
            out[key] = (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5)))
    return out


_PLACEMENT = {"code_fence", "surrounding_text"}  # valid JSON once these are stripped


def answer_summary(g: Group) -> dict[str, Any]:
    """How a group's answers read: valid JSON, recovered by repairs (which, how often), not scored and why,
    API envelopes, truncation, and keys outside the CORD schema (with the key each likely means)."""
    n = len(g.answers)
    repairs: Counter = Counter()
    unknown: Counter = Counter()
    likely: dict[str, str | None] = {}
    off_schema = repaired = envelopes = 0
    notes: list[str] = []
    for a in g.answers:
        repairs.update(a.repairs)
        if a.value is not None and not a.valid and set(a.repairs) - _PLACEMENT:
            repaired += 1
        envelopes += bool(a.error and "envelope" in a.error)
        notes += a.notes
        if a.value is not None:
            found = unknown_keys(a.value)
            off_schema += bool(found)
            for path, key in dict(found).items():
                unknown[path] += 1
                likely[path] = key
    return {
        "valid_json": sum(a.valid for a in g.answers) / n,
        "recovered": sum(a.value is not None for a in g.answers) / n,
        "repaired": repaired / n,
        "not_scored": sum(a.value is None for a in g.answers) / n,
        "repairs": dict(repairs.most_common()),
        "truncated": repairs.get("truncated", 0),
        "api_envelopes": envelopes,
        "out_of_schema": {"documents": off_schema,
                          "keys": {p: {"count": c, "likely": likely[p]} for p, c in unknown.most_common()}},
        "notes": sorted(set(notes))[:5],
    }


def _warn_about_answers(name: str, n: int, s: dict[str, Any]) -> None:
    keys = s["out_of_schema"]["keys"]
    if keys:
        shown = ", ".join(f"{p} x{k['count']}" + (f" (likely {k['likely']})" if k["likely"] else "")
                          for p, k in list(keys.items())[:6])
        warn(f"group {name}: {s['out_of_schema']['documents']} of {n} answers use keys outside the CORD schema: "
             f"{shown}. They score as wrong keys; fix the prompt or the training data.")
    if s["api_envelopes"]:
        warn(f"group {name}: {s['api_envelopes']} answers are whole API responses (chat-completion JSON), "
             "scored as invalid; store the message text of each response, not the response.")
    for note in s["notes"]:
        warn(f"group {name}: {note}")


def evaluate_groups(groups: list[Group], resamples: int = 1000, seed: int = 0,
                    calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score every group, with deltas and bootstrap intervals against the first group; field confidence where
    the answers have token scores (``calibration``: a ``vlm calibrate`` file's content, applied)."""
    if len({g.name for g in groups}) != len(groups):
        raise VlmError("group names must be unique", hint="rename a prediction file or pass distinct --groups.")
    refuse_short_answers(groups)
    with heap_frozen():  # the groups just read: no collection walks them again
        return _evaluate(groups, resamples, seed, calibration)


def _evaluate(groups: list[Group], resamples: int, seed: int, calibration: dict[str, Any] | None) -> dict[str, Any]:
    order, groups = align(groups)
    scored = score_groups([g.preds for g in groups], [g.gts for g in groups],
                          [[a.valid for a in g.answers] for g in groups], [g.keys for g in groups])
    scores = {g.name: s for g, s in zip(groups, scored)}
    base = groups[0].name
    result: dict[str, Any] = {"documents": len(order), "baseline": base, "groups": {}}
    base_metrics = aggregate(scores[base])
    labels = {g.name: g.constrain for g in groups}
    constrained = any((label or "none") != "none" for label in labels.values())
    for g in groups:
        metrics = aggregate(scores[g.name])
        answers = answer_summary(g)
        _warn_about_answers(g.name, len(order), answers)
        entry = {"documents": len(order), **metrics, "answers": answers, "fields": field_breakdown(scores[g.name])}
        if constrained:  # only then: unconstrained evaluations print and write what they did before
            entry["constrain"] = labels[g.name] or "unknown"
        capped = [d for d, c in zip(order, scores[g.name].ted_capped) if c]
        if capped:  # only then: the output of every ordinary evaluation stays as it was
            entry["ted_capped"] = {"documents": len(capped), "ids": capped[:20]}
            warn(f"group {g.name}: {len(capped)} document{'s' if len(capped) > 1 else ''} too large for an exact "
                 f"tree edit distance within its memory budget ({', '.join(capped[:5])}"
                 f"{', ...' if len(capped) > 5 else ''}): nTED accuracy is a lower bound there "
                 "(docs/evaluation.md#large-documents)")
        if g.name != base:
            ci = bootstrap_delta(scores[base], scores[g.name], len(order), resamples, seed)
            entry["delta"] = {k: {"delta": metrics[k] - base_metrics[k], "ci95": list(ci[k])}
                              for k in metrics
                              if k in ci and metrics[k] is not None and base_metrics.get(k) is not None}
        result["groups"][g.name] = entry
    result["per_document"] = {
        g.name: [{"id": d, "valid": scores[g.name].valid[k], "ted_accuracy": scores[g.name].ted_accuracy[k],
                  "repairs": g.answers[k].repairs}
                 for k, d in enumerate(order)]
        for g in groups
    }

    if differ(labels):
        result["format_content"] = format_and_content(groups, scores, labels)
    add_trust(result, groups, scores)
    add_confidence(result, groups, resamples, seed, calibration)
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
