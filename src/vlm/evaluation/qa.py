"""The forgetting check: compare groups on a short-answer QA set (DocVQA-style) with paired CIs.

A fine-tune on receipts can lose what the base model knew. Predict the base and the
fine-tuned model on a general held-out QA set; a negative ANLS delta whose 95% CI
excludes 0 is forgetting. Groups, pairing by document id, the paired bootstrap and the
metric table are the extraction evaluation's (``vlm.evaluation.compare``, ``vlm.evaluation.report``); only
the scoring differs: the raw text answer against every accepted answer
(``vlm.evaluation.qa_metrics``), not a parsed JSON object.

A QA dataset exports with ``vlm export --question-column question --target-column answers``:
each record's prompt is the instruction then the question, its target the first accepted
answer, and the record keeps every accepted answer under ``answers``.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from vlm.data.records import as_answers, jsonl_lines
from vlm.errors import VlmError
from vlm.evaluation.compare import Group, align, bootstrap_delta, groups_from_store
from vlm.evaluation.qa_metrics import aggregate_qa, score_qa
from vlm.evaluation.report import metric_rows, print_tables
from vlm.inference.parsing import DECODER, MAX_ANSWER_CHARS
from vlm.output import out, warn

SHOWN_CHARS = 1000  # of a prediction or answer in per_document.csv: a 50 MB answer is not copied into the report


def group_from_file(path: Path, name: str | None = None) -> Group:
    """QA predictions from JSONL: ``{"id", "prediction", "ground_truth"}`` (ground truth an answer or a list
    of accepted answers, each a string or a number), or LLaMA-Factory's ``{"predict", "label"}``.

    Predictions are kept as read: text, or the JSON value a file holds instead, which ``prediction_text``
    turns into the text scored once the groups are paired (so only the paired documents are counted).
    """
    ids, gts, raws, no_ids = [], [], [], False
    for n, line in jsonl_lines(path):
        if not line.strip():
            continue
        try:
            row = DECODER.decode(line)  # json's decoder, but an integer past int()'s 4,300 digits stays text
        except (json.JSONDecodeError, RecursionError) as e:
            raise VlmError(f"{path}:{n} is not valid JSON ({getattr(e, 'msg', e)})") from None
        if not isinstance(row, dict):
            raise VlmError(f"{path}:{n} is a JSON {type(row).__name__}, not an object",
                           hint='each line must be one object: {"id", "prediction", "ground_truth"}.')
        if "predict" in row and "label" in row:
            raw, gt, doc_id, no_ids = row["predict"], row["label"], str(len(ids)), True
        elif "prediction" in row and "ground_truth" in row:
            raw, gt, doc_id = row["prediction"], row["ground_truth"], str(row.get("id", len(ids)))
        else:
            raise VlmError(f"{path}:{n} has neither predict/label nor prediction/ground_truth fields",
                           hint='use {"id", "prediction", "ground_truth"} lines (ground_truth: the accepted answers).')
        try:
            gts.append(as_answers(gt))
        except ValueError as e:
            raise VlmError(f"{path}:{n}: {e}", hint="a QA ground truth is an answer or a list of them, each a "
                                                    "string or a number.") from None
        ids.append(doc_id)
        # A runaway answer is not kept whole; one character past the cap is, so evaluate_qa still counts it as cut.
        raws.append(raw[:MAX_ANSWER_CHARS + 1] if isinstance(raw, str) else raw)
        del line, row, raw  # a 50 MB line is not held while the next one is read
    if not ids:
        raise VlmError(f"{path} holds no predictions")
    if name is None:
        name = path.parent.name if path.stem == "generated_predictions" else path.stem
    # Only LLaMA-Factory's id-less file is paired by position; a file with ids is paired by them.
    return Group(name, ids, [None] * len(ids), gts, positional=no_ids, raws=raws)


def prediction_text(raw: Any) -> tuple[str, bool]:
    """(the text scored, whether the prediction was not text).

    A QA prediction is text. A file may hold another JSON value (a number, list, object, bool, null): it is
    scored by its compact JSON text, so 42 reads "42" (and matches the answer "42"), ["a"] reads '["a"]' (and
    does not match "a"), null reads "null", the same rule as a number among the accepted answers.
    """
    if isinstance(raw, str):
        return raw, False
    return json.dumps(raw, ensure_ascii=False, separators=(",", ":"), default=str), True


def _with_answers(g: Group) -> Group:
    """``g`` with each ground truth as its list of accepted answers (the store keeps what predict stored), so
    groups from the store and from files compare equal when their answers are the same."""
    gts = []
    for k, gt in enumerate(g.gts):
        if isinstance(gt, dict):
            raise VlmError(f"group {g.name}: the ground truth is a JSON object, not short answers",
                           hint="--task qa is for QA exports (vlm export --question-column); drop --task qa.")
        try:
            gts.append(as_answers(gt))
        except ValueError as e:
            raise VlmError(f"group {g.name}, document {g.ids[k]!r}: {e}",
                           hint="a QA ground truth is an answer or a list of them.") from None
    return replace(g, gts=gts)


def evaluate_qa(groups: list[Group], resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """ANLS and exact match per group, with deltas and paired-bootstrap 95% CIs against the first group.

    The result has the extraction evaluation's shape (documents, baseline, groups, per_document), so
    ``vlm.evaluation.report.metric_rows`` renders it.
    """
    if len({g.name for g in groups}) != len(groups):
        raise VlmError("group names must be unique", hint="rename a prediction file or pass distinct --groups.")
    order, groups = align([_with_answers(g) for g in groups])
    texts, counts = {}, {}
    for g in groups:
        read = [prediction_text(raw) for raw in g.raws]
        texts[g.name] = [text for text, _ in read]
        counts[g.name] = {"non_text": sum(flag for _, flag in read),
                          "cut": sum(len(text) > MAX_ANSWER_CHARS for text in texts[g.name])}
    scores = {g.name: score_qa(texts[g.name], g.gts) for g in groups}  # at most MAX_ANSWER_CHARS scored
    base = groups[0].name
    base_metrics = aggregate_qa(scores[base])
    result: dict[str, Any] = {"task": "qa", "documents": len(order), "baseline": base, "groups": {}}
    for g in groups:
        metrics = aggregate_qa(scores[g.name])
        for line in _count_lines(counts[g.name]):
            warn(f"group {g.name}: {line}")
        entry: dict[str, Any] = {"documents": len(order), **metrics, "predictions": counts[g.name]}
        if g.name != base:
            ci = bootstrap_delta(scores[base], scores[g.name], len(order), resamples, seed, aggregate=aggregate_qa)
            entry["delta"] = {k: {"delta": metrics[k] - base_metrics[k], "ci95": list(ci[k])}
                              for k in metrics if k in ci and metrics[k] is not None}
        result["groups"][g.name] = entry
    result["per_document"] = {
        g.name: [{"id": d, "anls": float(scores[g.name].anls[k]), "exact_match": bool(scores[g.name].exact_match[k]),
                  "prediction": shown(texts[g.name][k]), "answers": [shown(a) for a in g.gts[k]]}
                 for k, d in enumerate(order)]
        for g in groups
    }
    return result


def forgetting_verdicts(result: dict[str, Any]) -> dict[str, str]:
    """Per later group: "forgetting" when the ANLS delta's CI lies below 0, "gain" above, else "no change shown"."""
    verdicts = {}
    for name, g in list(result["groups"].items())[1:]:
        d = g.get("delta", {}).get("anls")
        if d is None:
            continue
        low, high = d["ci95"]
        verdicts[name] = "forgetting" if high < 0 else "gain" if low > 0 else "no change shown (CI includes 0)"
    return verdicts


def worst(result: dict[str, Any], group: str, n: int) -> list[dict[str, Any]]:
    return sorted(result["per_document"][group], key=lambda r: (r["anls"], r["id"]))[:n]


def markdown(result: dict[str, Any]) -> str:
    headers, rows = metric_rows(result)
    lines = [f"| metric | {' | '.join(headers)} |", "|---" * (len(headers) + 1) + "|"]
    lines += [f"| {label} | {' | '.join(cells)} |" for label, cells in rows]
    verdicts = "".join(f"- `{g}`: {v}\n" for g, v in forgetting_verdicts(result).items())
    notes = "".join(f"- `{g}`: {line}\n" for g, line in prediction_notes(result))
    return (f"# QA evaluation (forgetting check)\n\n{result['documents']} documents (one question each). Deltas are "
            f"against `{result['baseline']}`, with 95% paired-bootstrap confidence intervals over documents. "
            "A negative ANLS delta whose CI excludes 0 is forgetting.\n\n" + "\n".join(lines) + "\n\n"
            + (f"## Verdict\n\n{verdicts}\n" if verdicts else "")
            + (f"## Predictions\n\n{notes}\n" if notes else "") + "![comparison](chart.png)\n")


def _count_lines(counts: dict[str, int]) -> list[str]:
    lines = []
    if counts.get("non_text"):
        lines.append(f"{counts['non_text']} predictions were not text (a JSON number, list, object, bool or null); "
                     "each was scored by its compact JSON text, e.g. 42 as \"42\"")
    if counts.get("cut"):
        lines.append(f"{counts['cut']} predictions were longer than {MAX_ANSWER_CHARS:,} characters; only their "
                     f"first {MAX_ANSWER_CHARS:,} were scored")
    return lines


def prediction_notes(result: dict[str, Any]) -> list[tuple[str, str]]:
    """(group, line) for each group with predictions that were not text or were cut."""
    return [(name, line) for name, g in result["groups"].items() for line in _count_lines(g.get("predictions", {}))]


def shown(text: str) -> str:
    """``text`` for per_document.csv and the worst documents: a runaway answer's first ``SHOWN_CHARS``, marked."""
    if len(text) <= SHOWN_CHARS:
        return text
    total = f"over {MAX_ANSWER_CHARS:,}" if len(text) > MAX_ANSWER_CHARS else f"{len(text):,}"
    return f"{text[:SHOWN_CHARS]}… [first {SHOWN_CHARS:,} of {total} characters]"


def per_document_csv(result: dict[str, Any]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["group", "id", "anls", "exact_match", "prediction", "answers"])
    for group, rows in result["per_document"].items():
        for r in rows:
            writer.writerow([group, r["id"], f"{r['anls']:.6f}", int(r["exact_match"]), r["prediction"],
                             " | ".join(r["answers"])])
    return buf.getvalue()


def load_groups(store: Path, names: list[str] | None, files: list[Path] | None, split: str) -> list[Group]:
    """Stored groups (their ground truth is what predict stored: a QA record's answers), then file groups."""
    loaded = groups_from_store(store, names, split) if names else []
    loaded += [group_from_file(path) for path in files or []]
    if not loaded:
        raise VlmError("nothing to evaluate", hint="pass --groups NAME [NAME ...] or --predictions FILE [FILE ...].")
    return loaded


def print_result(result: dict[str, Any], n_worst: int = 0) -> None:
    """The metric table with its CIs (the extraction report's renderer), the verdicts, and the worst documents."""
    print_tables(result, show_fields=False)
    for name, verdict in forgetting_verdicts(result).items():
        colour = "red" if verdict == "forgetting" else "green" if verdict == "gain" else "yellow"
        out.print(f"[bold]{name}[/bold] vs {result['baseline']} on ANLS: [{colour}]{verdict}[/{colour}]")
    for name in result["groups"] if n_worst else ():
        rows = worst(result, name, n_worst)
        out.print(f"[bold]{n_worst} worst documents of {name}[/bold]: "
                  + ", ".join(f"{r['id']} ({r['anls']:.2f}: {r['prediction'][:30]!r})" for r in rows), highlight=False)
