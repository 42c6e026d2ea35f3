"""Format and content apart, for groups predicted under different constraints (``vlm predict --constrain``).

A base model that writes prose, code fences or keys outside the schema scores near zero on field F1 whether or not
it read the receipt, so "vanilla vs fine-tuned" mostly measures format learning. Predicting the base model with
``--constrain schema`` (every finished answer valid JSON in the schema) and setting it beside the fine-tune asks
the other question: did the fine-tune teach reading, or only the format?

When the compared groups differ in constraint, ``vlm evaluate`` reports, per group:

* format: valid JSON (strict, no repairs), answers inside CORD's schema (valid JSON, no key outside it; n/a for a
  group held to its own ``--json-schema`` file), and answers cut at the token limit;
* content: field F1 and nTED accuracy over all documents (what the main table shows), and over only the documents
  that every group answered with valid JSON, where format cannot be the difference.
"""

from __future__ import annotations

from typing import Any

from vlm.evaluation.metrics import aggregate
from vlm.schema import unknown_keys

CONTENT = ("f1", "ted_accuracy", "f1_numnorm", "menu_f1")


def constraint_label(run: dict[str, Any] | None) -> str:
    """How a stored group's latest run was constrained: ``none``, ``json``, ``schema (cord)`` or
    ``schema (FILE NAME)``; runs from before constraints existed were unconstrained."""
    generation = (run or {}).get("generation") or {}
    kind = generation.get("constrain") or "none"
    return f"{kind} ({generation.get('schema_source')})" if kind == "schema" else kind


def differ(labels: dict[str, str | None]) -> bool:
    """Whether the comparison mixes constraints: some group is constrained and not every group alike."""
    known = {label or "none" for label in labels.values()}
    return len(known) > 1


def format_and_content(groups: list[Any], scores: dict[str, Any], labels: dict[str, str | None]) -> dict[str, Any]:
    """Per group, format rates and content scores; content also over the documents every group answered with
    valid JSON. ``groups`` are aligned (same documents, same order); ``scores`` their ``DocScores``."""
    n = len(groups[0].ids)
    both = [k for k in range(n) if all(g.answers[k].valid for g in groups)]
    out: dict[str, Any] = {"documents": n, "all_valid_documents": len(both), "groups": {}}
    for g in groups:
        answers = g.answers
        label = labels.get(g.name) or "none"
        # "inside the schema" is judged by CORD's keys (vlm.schema); a group held to its own --json-schema file
        # would be judged against a schema it was never given, so its cell is n/a
        own_schema = label.startswith("schema (") and label != "schema (cord)"
        in_schema = None if own_schema else sum(a.valid and a.value is not None and not unknown_keys(a.value)
                                                for a in answers) / n
        truncated = sum("truncated" in a.repairs for a in answers)
        whole = aggregate(scores[g.name])
        entry: dict[str, Any] = {
            "constrain": labels.get(g.name) or "unknown",
            "format": {"valid_json": sum(a.valid for a in answers) / n, "in_schema": in_schema,
                       "truncated": truncated / n},
            "content": {k: whole[k] for k in CONTENT},
        }
        if both:
            subset = aggregate(scores[g.name], both)
            entry["content_where_all_valid"] = {k: subset[k] for k in CONTENT}
        out["groups"][g.name] = entry
    return out


LABELS = {"valid_json": "valid JSON", "in_schema": "valid JSON inside the schema",
          "truncated": "cut at the token limit", "f1": "field F1", "ted_accuracy": "nTED accuracy",
          "f1_numnorm": "field F1 (numbers normalised)", "menu_f1": "menu rows F1"}


def rows(fc: dict[str, Any]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Column headers and (label, cells) rows of the format-and-content table."""
    names = list(fc["groups"])
    headers = [f"{name} [{fc['groups'][name]['constrain']}]" for name in names]
    out: list[tuple[str, list[str]]] = []

    def cells(section: str, key: str) -> list[str]:
        values = [fc["groups"][name].get(section, {}).get(key) for name in names]
        return ["n/a" if v is None else f"{v:.3f}" for v in values]

    for key in ("valid_json", "in_schema", "truncated"):
        out.append((f"format: {LABELS[key]}", cells("format", key)))
    for key in CONTENT:
        out.append((f"content: {LABELS[key]}", cells("content", key)))
    if fc["all_valid_documents"]:
        for key in CONTENT:
            out.append((f"content, {fc['all_valid_documents']} docs all valid: {LABELS[key]}",
                        cells("content_where_all_valid", key)))
    return headers, out


def note(fc: dict[str, Any]) -> str:
    """One sentence under the table on how to read it."""
    if not fc["all_valid_documents"]:
        return ("The groups differ in constraint; no document was answered with valid JSON by every group, so "
                "content cannot be compared apart from format.")
    return (f"The groups differ in constraint. Format rows measure the answers' form; content rows their reading. "
            f"On the {fc['all_valid_documents']} of {fc['documents']} documents every group answered with valid "
            "JSON, format is not the difference: a group ahead there learned more than the format.")
