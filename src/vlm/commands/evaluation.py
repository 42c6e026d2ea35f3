"""``vlm evaluate``: compare groups of predictions with the CORD metrics (or, --task qa, ANLS)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from vlm.commands.common import DEFAULT_STORE, JsonOpt, SplitOpt, StoreOpt, check_store, command


class Task(str, Enum):
    extraction = "extraction"
    qa = "qa"


@command(
    "evaluate",
    "vlm evaluate --groups vanilla-model finetuned-model",
    "vlm evaluate --groups vanilla-model finetuned-model --output reports/cord --worst 5 --changes",
    "vlm evaluate --predictions saves/lf/generated_predictions.jsonl --predictions api.jsonl --json",
    "vlm evaluate --groups vanilla-model finetuned-model --output reports/cord --label-errors 50",
    "vlm evaluate --task qa --groups vanilla-docvqa finetuned-docvqa --split test --output reports/forgetting",
    "vlm evaluate --groups finetuned-model --calibration runs/calibration.json --output reports/cord",
)
def evaluate(
    groups: Annotated[list[str] | None, typer.Option(
        "--groups", help="Stored groups to compare; the first is the baseline.")] = None,
    predictions: Annotated[list[Path] | None, typer.Option(
        "--predictions", help="Prediction JSONL files, one group each.")] = None,
    split: SplitOpt = "test",
    store: StoreOpt = DEFAULT_STORE,
    output: Annotated[Path | None, typer.Option(
        "--output", help="Write report.md, report.html, metrics.json, per_document.csv, chart.png, "
                         "coverage.png here.")] = None,
    worst: Annotated[int, typer.Option("--worst", min=0, help="Show the N worst documents of each group.")] = 0,
    changes: Annotated[bool, typer.Option(
        "--changes", help="List documents each group fixed or broke against the baseline.")] = False,
    resamples: Annotated[int, typer.Option("--bootstrap", min=100, help="Bootstrap resamples for the 95% CIs.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Bootstrap seed.")] = 0,
    fields: Annotated[bool, typer.Option("--fields/--no-fields", help="Show the per-field table.")] = True,
    label_errors: Annotated[int | None, typer.Option(
        "--label-errors", min=0, help="List N label-error candidates (fields where all groups agree and the "
                                      "ground truth differs); report.md lists 20 by default.")] = None,
    task: Annotated[Task, typer.Option(
        "--task", help="extraction: JSON fields (CORD metrics); qa: short text answers scored by "
                       "ANLS and exact match (the forgetting check).")] = Task.extraction,
    calibration: Annotated[Path | None, typer.Option(
        "--calibration", help="A vlm calibrate file: report the share of fields auto-accepted at its target "
                              "precision, with CIs.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Compare groups side by side: valid JSON, Donut nTED accuracy and field F1, header exact match, menu rows.

    Also checks that each prediction adds up (menu prices to the subtotal, subtotal plus tax to the total, cash
    minus total to the change, count times unit price to the price) and reports the accuracy of the
    predictions that pass against those that fail. --output also writes coverage.png and report.html.

    Groups come from the store (--groups) or from files (--predictions): LLaMA-Factory's
    generated_predictions.jsonl, or JSONL lines of {"id", "prediction", "ground_truth"}.

    --task qa scores short text answers (a QA export) with ANLS and exact match instead, with the same paired
    CIs: predict the base and the fine-tuned model on a general QA set; a negative ANLS delta whose CI excludes
    0 is forgetting.

    Answers predicted with token scores (vlm predict keeps them) also get a confidence per field: the AUROC of
    field confidence against field correctness with its CI, calibration error, and a risk-coverage curve beside
    the rule-based one (reliability.png, risk_coverage.png).
    """
    if task is Task.qa:
        _evaluate_qa(groups, predictions, split, store, output, worst, resamples, seed, as_json)
        return
    from vlm.evaluation.evaluate import EvaluateSpec, as_json_result, evaluate_extraction, print_evaluation
    from vlm.output import info, print_json

    if groups:
        check_store(store)
    spec = EvaluateSpec(groups=groups, predictions=predictions, split=split, store=store, output=output, worst=worst,
                        changes=changes, resamples=resamples, seed=seed, label_errors=label_errors,
                        calibration=calibration)
    result, extra, paths = evaluate_extraction(spec)
    if paths:
        info("wrote " + ", ".join(str(p) for p in paths))
    if as_json:
        print_json(as_json_result(result, extra))
    else:
        print_evaluation(result, extra, show_fields=fields, worst=worst)


def _evaluate_qa(groups, predictions, split, store, output, worst, resamples, seed, as_json) -> None:
    from vlm.evaluation.outputs import write_qa_report
    from vlm.evaluation.qa import evaluate_qa, forgetting_verdicts, load_groups, print_result
    from vlm.output import info, print_json

    result = evaluate_qa(load_groups(store, groups, predictions, split), resamples=resamples, seed=seed)
    if output:
        info("wrote " + ", ".join(str(p) for p in write_qa_report(result, output)))
    if as_json:
        print_json(dict(result["groups"]) | {"verdicts": forgetting_verdicts(result)})
    else:
        print_result(result, worst)


@command(
    "calibrate",
    "vlm calibrate --group finetuned-model --output runs/calibration.json",
    "vlm calibrate --group finetuned-model --target-precision 0.95 --method temperature --output runs/cal95.json",
)
def calibrate(
    output: Annotated[Path, typer.Option("--output", help="The calibration JSON file to write.")],
    group: Annotated[str | None, typer.Option("--group", help="Stored group to fit on.")] = None,
    predictions: Annotated[Path | None, typer.Option(
        "--predictions", help="Or a prediction JSONL file with token scores (vlm export-predictions).")] = None,
    split: Annotated[str, typer.Option("--split", help="The split to fit on (not the one you report).")] = "validation",
    store: StoreOpt = DEFAULT_STORE,
    target: Annotated[float, typer.Option(
        "--target-precision", help="Field precision the threshold must reach.")] = 0.99,
    method: Annotated[str, typer.Option("--method", help="isotonic or temperature.")] = "isotonic",
    as_json: JsonOpt = False,
) -> None:
    """Fit field confidence to field correctness on the validation split and find the threshold that reaches a
    target field precision; write both to a JSON file for vlm evaluate --calibration and vlm
    export-predictions --calibration.

    Says why there is no threshold when there are too few scored fields (3 / (1 - target) are needed) or no
    threshold reaches the target.
    """
    from vlm.evaluation.calibration import calibrate_group
    from vlm.output import info, print_json

    if group is not None:
        check_store(store)
    cal = calibrate_group(output, target, method, store=store, group=group, predictions=predictions, split=split)
    if as_json:
        print_json(cal)
        return
    if cal["threshold"] is None:
        info(f"no threshold: {cal['reason']}; wrote {output}")
        return
    v = cal["validation"]
    info(f"threshold {cal['threshold']:.4f}: {100 * v['coverage']:.1f}% of {cal['fields']} {split} fields kept at "
         f"{100 * v['precision']:.1f}% precision (target {100 * target:g}%); wrote {output}")
