"""``vlm evaluate`` (the extraction task) from its options to a result: load the groups, score them side by side,
add what was asked for (worst documents, fixed and broken ones, label-error candidates, calibrated coverage), and
write the report files. The command parses, calls ``evaluate_extraction`` and prints with ``print_evaluation``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape

from vlm.errors import VlmError
from vlm.evaluation import trust
from vlm.evaluation.calibration import read as read_calibration
from vlm.evaluation.compare import (
    evaluate_groups,
    fixed_and_broken,
    group_from_file,
    groups_from_store,
    worst_documents,
)
from vlm.evaluation.confidence_report import confidence_lines
from vlm.evaluation.outputs import write_extraction_report
from vlm.evaluation.report import print_tables
from vlm.fsutil import ensure_dir
from vlm.output import out

REPORT_LABEL_ERRORS = 20  # report.md's candidates when --label-errors is not given


@dataclass
class EvaluateSpec:
    """What ``vlm evaluate`` was asked to compare, and what to add to the comparison."""

    groups: list[str] | None = None
    predictions: list[Path] | None = None
    split: str = "test"
    store: Path = Path("runs/predictions.sqlite")
    output: Path | None = None
    worst: int = 0
    changes: bool = False
    resamples: int = 1000
    seed: int = 0
    label_errors: int | None = None  # None: none printed, REPORT_LABEL_ERRORS in report.md
    calibration: Path | None = None


def evaluate_extraction(spec: EvaluateSpec) -> tuple[dict[str, Any], dict[str, Any], list[Path]]:
    """The comparison (``evaluate_groups``'s result), the extras asked for, and the report files written."""
    if spec.output:
        ensure_dir(spec.output, "--output folder")  # before the work, not after it
    loaded = groups_from_store(spec.store, spec.groups, spec.split) if spec.groups else []
    loaded += [group_from_file(path) for path in spec.predictions or []]
    if not loaded:
        raise VlmError("nothing to evaluate", hint="pass --groups NAME [NAME ...] or --predictions FILE [FILE ...].")
    cal = read_calibration(spec.calibration) if spec.calibration is not None else None
    result = evaluate_groups(loaded, resamples=spec.resamples, seed=spec.seed, calibration=cal)
    extra: dict[str, Any] = {}
    if "format_content" in result:  # groups predicted under different --constrain settings
        extra["format_content"] = result["format_content"]
    if spec.worst:
        extra["worst"] = {g: worst_documents(result, g, spec.worst) for g in result["groups"]}
    if spec.changes:
        extra["changes"] = {g: fixed_and_broken(result, g) for g in list(result["groups"])[1:]}
    aligned: dict | None = {} if spec.output else None  # alignments made for the candidates, reused by report.html
    # the candidates feed only --label-errors and the files: --json alone never computes them
    wanted = spec.output or spec.label_errors is not None
    candidates = trust.label_error_candidates(result, aligned) if wanted else []
    if spec.label_errors is not None:
        extra["label_errors"] = candidates[: spec.label_errors]
    paths: list[Path] = []
    if spec.output:
        shown = REPORT_LABEL_ERRORS if spec.label_errors is None else spec.label_errors
        paths = write_extraction_report(result, spec.output, candidates, shown,
                                        store=spec.store if spec.groups else None, split=spec.split, aligned=aligned)
    return result, extra, paths


def as_json_result(result: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``--json``: each group's numbers, then the extras."""
    return {name: dict(g) for name, g in result["groups"].items()} | extra


def print_evaluation(result: dict[str, Any], extra: dict[str, Any], show_fields: bool = True, worst: int = 0) -> None:
    """The console report: the tables, field confidence, the trust checks and the extras (``worst``: the N asked
    for)."""
    print_tables(result, show_fields=show_fields)
    for line in confidence_lines(result):
        out.print(f"field confidence: {escape(line)}", highlight=False)  # "[n/a, n/a]" is not markup
    trust.print_trust(result, extra.get("label_errors"))
    for g, rows in extra.get("worst", {}).items():
        out.print(f"[bold]{worst} worst documents of {g}[/bold]: "
                  + ", ".join(f"{r['id']} ({r['ted_accuracy']:.3f})" for r in rows))
    for g, ch in extra.get("changes", {}).items():
        out.print(f"[bold]{g}[/bold] fixed {len(ch['fixed'])}: " + ", ".join(r["id"] for r in ch["fixed"][:20]))
        out.print(f"[bold]{g}[/bold] broke {len(ch['broken'])}: " + ", ".join(r["id"] for r in ch["broken"][:20]))
