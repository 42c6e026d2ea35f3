"""Render an evaluation: rich tables for people, and report.md, metrics.json, CSV and a chart on disk."""

from __future__ import annotations

import csv
import io
from typing import Any

from rich.markup import escape
from rich.table import Table

from vlm.evaluation import format_content
from vlm.output import out

LABELS = {
    "valid_json": "valid JSON",
    "ted_accuracy": "nTED accuracy",
    "f1": "field F1 (micro)",
    "ted_accuracy_numnorm": "nTED acc. (numbers normalised)",
    "f1_numnorm": "field F1 (numbers normalised)",
    "menu_precision": "menu rows precision",
    "menu_recall": "menu rows recall",
    "menu_f1": "menu rows F1",
    "consistent": "consistent (checks pass)",
    "confidence_auroc": "field confidence AUROC",
    "anls": "ANLS (τ=0.5)",
    "exact_match": "exact match",
}


def group_header(result: dict[str, Any], name: str) -> str:
    """A group's column header: its name, and its constraint when any compared group was constrained."""
    label = result["groups"][name].get("constrain")
    return f"{name} [constrain: {label}]" if label else name


def metric_rows(result: dict[str, Any]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Column headers and (label, cells) per metric: each group's value, then each later group's
    delta against the baseline with its 95% bootstrap interval."""
    groups = list(result["groups"])
    base = groups[0]
    headers = [group_header(result, g) for g in groups] + [f"Δ {g} vs {base} [95% CI]" for g in groups[1:]]
    first = result["groups"][base]
    keys = [k for k in first
            if k not in ("documents", "fields", "delta") and isinstance(first[k], (int, float, type(None)))]
    rows = []
    for key in keys:
        cells = []
        for name in groups:
            value = result["groups"][name].get(key)
            cells.append("n/a" if value is None else f"{value:.3f}")
        for name in groups[1:]:
            d = result["groups"][name].get("delta", {}).get(key)
            cells.append(f"{d['delta']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" if d else "n/a")
        rows.append((LABELS.get(key, key.replace("header.", "exact: ")), cells))
    return headers, rows


def field_rows(result: dict[str, Any]) -> list[tuple[str, list[str]]]:
    groups = list(result["groups"])
    paths = sorted({p for g in groups for p in result["groups"][g]["fields"]})
    rows = []
    for path in paths:
        cells = []
        for g in groups:
            f = result["groups"][g]["fields"].get(path)
            cells.append("-" if f is None else f"{f['f1']:.3f}")
        g0 = result["groups"][groups[0]]["fields"].get(path) or {}
        cells.append(str(g0.get("n_gt", 0)))
        rows.append((path, cells))
    return rows


def answer_lines(result: dict[str, Any]) -> list[str]:
    """One line per group on how its answers read: valid JSON, recovered by which repairs, not scored."""
    lines = []
    for name, g in result["groups"].items():
        a = g.get("answers")
        if not a:
            continue
        repairs = ", ".join(f"{k} {v}" for k, v in a["repairs"].items()) or "none"
        line = (f"{name}: valid JSON {a['valid_json']:.3f}; recovered {a['recovered']:.3f} "
                f"(needed repairs {a['repaired']:.3f}); not scored {a['not_scored']:.3f}; repairs: {repairs}")
        if a["out_of_schema"]["documents"]:
            line += f"; {a['out_of_schema']['documents']} with keys outside the schema"
        if a["api_envelopes"]:
            line += f"; {a['api_envelopes']} API envelopes"
        lines.append(line)
    return lines


def print_tables(result: dict[str, Any], show_fields: bool = True) -> None:
    groups = list(result["groups"])
    headers, rows = metric_rows(result)
    table = Table(title=f"{result['documents']} documents; deltas with 95% paired-bootstrap CIs")
    table.add_column("metric")
    for h in headers:
        table.add_column(escape(h), justify="right")  # "[constrain: schema]" is text, not rich markup
    for label, cells in rows:
        table.add_row(label, *cells)
    out.print(table)
    for line in answer_lines(result):
        out.print(line, highlight=False)
    fc = result.get("format_content")
    if fc:
        fc_headers, fc_rows = format_content.rows(fc)
        table = Table(title="format and content apart (the groups differ in constraint)")
        table.add_column("")
        for h in fc_headers:
            table.add_column(escape(h), justify="right")
        for label, cells in fc_rows:
            table.add_row(label, *cells)
        out.print(table)
        out.print(format_content.note(fc), highlight=False)
    if show_fields:
        fields = Table(title="per-field F1 (micro, over documents)")
        fields.add_column("field")
        for g in groups:
            fields.add_column(g, justify="right")
        fields.add_column("gt count", justify="right")
        for label, cells in field_rows(result):
            fields.add_row(label, *cells)
        out.print(fields)


def markdown(result: dict[str, Any]) -> str:
    groups = list(result["groups"])

    def table(headers, rows, first):
        lines = [f"| {first} | " + " | ".join(headers) + " |", "|---" * (len(headers) + 1) + "|"]
        lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
        return "\n".join(lines)

    metric_headers, metric_table = metric_rows(result)
    fc = result.get("format_content")
    fc_section = ""
    if fc:
        fc_headers, fc_rows = format_content.rows(fc)
        fc_section = (f"## Format and content\n\n{format_content.note(fc)}\n\n"
                      f"{table(fc_headers, fc_rows, 'measure')}\n\n")
    return (
        f"# Evaluation\n\n{result['documents']} documents. Deltas are against `{result['baseline']}`, "
        "with 95% paired-bootstrap confidence intervals over documents.\n\n"
        f"{table(metric_headers, metric_table, 'metric')}\n\n## Answers\n\n"
        "Valid JSON: one JSON object once code fences and prose are removed. Recovered: an object was read, "
        "with the repairs listed.\n\n" + "".join(f"- {line}\n" for line in answer_lines(result)) + "\n" +
        fc_section + "## Per-field F1\n\n"
        f"{table(groups + ['gt count'], field_rows(result), 'field')}\n\n"
        "![comparison](chart.png)\n"
    )


def per_document_csv(result: dict[str, Any]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    # field confidence columns only where some answer has token scores (vlm.evaluation.confidence_report)
    scored = any(r.get("field_confidence") is not None for rows in result["per_document"].values() for r in rows)
    writer.writerow(["group", "id", "valid_json", "ted_accuracy", "repairs"]
                    + (["confidence", "least_confident_field", "fields_scored"] if scored else []))
    for group, rows in result["per_document"].items():
        for r in rows:
            extra = []
            if scored:
                conf = r.get("confidence")
                extra = ["" if conf is None else f"{conf:.6f}", r.get("least_confident") or "",
                         "" if r.get("field_confidence") is None else len(r["field_confidence"])]
            writer.writerow([group, r["id"], int(bool(r["valid"])), f"{r['ted_accuracy']:.6f}",
                             " ".join(r.get("repairs", []))] + extra)
    return buf.getvalue()


def chart_png(result: dict[str, Any], keys: tuple[str, ...] = ("valid_json", "ted_accuracy", "f1", "menu_f1")) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(result["groups"])
    keys = tuple(k for k in keys if all(result["groups"][g].get(k) is not None for g in groups))
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=120)
    width = 0.8 / max(1, len(groups))
    for i, g in enumerate(groups):
        xs = [k + i * width for k in range(len(keys))]
        ax.bar(xs, [result["groups"][g][k] for k in keys], width, label=g)
    ax.set_xticks([k + width * (len(groups) - 1) / 2 for k in range(len(keys))], [LABELS.get(k, k) for k in keys])
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.legend()
    ax.set_title(f"{result['documents']} documents")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()
