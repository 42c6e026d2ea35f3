"""Prediction and evaluation commands: predict a group, compare groups, export the store."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from vlm.commands.common import DEFAULT_STORE, JsonOpt, StoreOpt, add_examples, check_store

SplitOpt = Annotated[str, typer.Option("--split", help="Which split's documents (train, validation or test).")]


class Backend(str, Enum):
    """``--backend`` choices (vlm.inference.vllm_backend.BACKENDS; tests/test_cli_help.py checks they agree)."""

    auto = "auto"
    transformers = "transformers"
    vllm = "vllm"
    llamafactory = "llamafactory"


class Task(str, Enum):
    extraction = "extraction"
    qa = "qa"


def predict(
    group: Annotated[str, typer.Option("--group", help="Name of this prediction group, e.g. finetuned-model.")],
    config: Annotated[Path | None, typer.Option(
        "--config", help="The training YAML: model, template, image pixels, adapter dir.")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="Base model (default: the config's model_name_or_path).")] = None,
    adapter: Annotated[str | None, typer.Option(
        "--adapter", help="LoRA adapter dir (default: the config's output_dir).")] = None,
    no_adapter: Annotated[bool, typer.Option("--no-adapter", help="Predict with the base model alone.")] = False,
    checkpoint: Annotated[str | None, typer.Option(
        "--checkpoint", help="Which saved model of the --config run: best (the winner of vlm select), final, N or "
                             "checkpoint-N (default: the final one).")] = None,
    dataset: Annotated[str | None, typer.Option(
        "--dataset", help="Registered dataset (default: <name>_<split>).")] = None,
    dataset_dir: Annotated[str | None, typer.Option("--dataset-dir", help="Folder with dataset_info.json.")] = None,
    split: SplitOpt = "test",
    backend: Annotated[Backend, typer.Option(
        "--backend", help="auto (vLLM when installed and a GPU is visible, else transformers), "
                          "transformers, vllm, or llamafactory (do_predict; refused for M-RoPE models such "
                          "as Qwen2-VL).")] = Backend.auto,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", min=1, help="Generation batch size (transformers and llamafactory; vLLM schedules its "
                                    "own).")] = 8,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Generation length limit.")] = 1024,
    chunk_size: Annotated[int | None, typer.Option(
        "--chunk-size", min=1, help="Documents per generation call, saved when done (default: one batch for "
                                    "transformers, 32 for llamafactory, 256 for vllm).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Predict only the first N documents.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo documents already in the store.")] = False,
    store: StoreOpt = DEFAULT_STORE,
    work_dir: Annotated[Path, typer.Option(
        "--work-dir", help="Scratch folder for LLaMA-Factory runs and logs.")] = Path("runs/predict"),
    overrides: Annotated[list[str] | None, typer.Argument(
        help="key=value settings for LLaMA-Factory, or vllm_gpu_util, vllm_enforce_eager, vllm_max_lora_rank, "
             "vllm_config, vllm_lora for vLLM.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Predict a split with a base model, with or without a LoRA adapter, and store every document.

    Generation is greedy and batched: through vLLM when it is installed and a GPU is visible (one engine, the
    adapter merged first, or at run time with vllm_lora=true), else through transformers' generate on the model
    LLaMA-Factory loads (adapter merged). Either way the prompt is LLaMA-Factory's template, images are resized
    as in training, M-RoPE models get the 3-D image positions training used, and template, image_max_pixels
    and cutoff_len come from the training config, so inference matches training. A killed run resumes with only
    the missing documents;
    --overwrite redoes them. A group keeps one backend: switching needs --overwrite or a new group name.
    """
    from vlm.inference.predict import PredictSpec, run_predict
    from vlm.output import info, print_json
    from vlm.training.config import parse_overrides

    check_store(store, write=True)
    spec = PredictSpec(group=group, config=config, model=model, adapter=adapter, no_adapter=no_adapter,
                       dataset=dataset, dataset_dir=dataset_dir, split=split, store=store, work_dir=work_dir,
                       batch_size=batch_size, max_new_tokens=max_new_tokens, chunk_size=chunk_size, limit=limit,
                       overwrite=overwrite, backend=backend.value, overrides=parse_overrides(overrides or []),
                       checkpoint=checkpoint)
    result = run_predict(spec, show_progress=not as_json)
    if as_json:
        print_json(result)
    else:
        info(f"{result['group']} ({result['backend']}): {result['predicted']} predicted, "
             f"{result['skipped_done']} already stored "
             f"({result['documents']} documents of {result['dataset']}) -> {result['store']}")


add_examples(predict, 
    "vlm predict --group vanilla-model --config configs/cord.yaml --no-adapter",
    "vlm predict --group finetuned-model --config configs/cord.yaml",
    "vlm predict --group finetuned-model --config configs/cord.yaml --batch-size 16 --overwrite",
    "vlm predict --group best-checkpoint --config configs/cord.yaml --checkpoint best",
    "vlm predict --group finetuned-vllm --config configs/cord.yaml --backend vllm vllm_gpu_util=0.5",
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
    """
    if task is Task.qa:
        _evaluate_qa(groups, predictions, split, store, output, worst, resamples, seed, as_json)
        return
    from vlm.errors import VlmError
    from vlm.evaluation.compare import (
        evaluate_groups,
        fixed_and_broken,
        group_from_file,
        groups_from_store,
        worst_documents,
    )
    from vlm.evaluation.outputs import write_extraction_report
    from vlm.evaluation.report import print_tables
    from vlm.output import info, out, print_json

    if output:
        from vlm.fsutil import ensure_dir

        ensure_dir(output, "--output folder")  # before the work, not after it
    loaded = []
    if groups:
        check_store(store)
        loaded += groups_from_store(store, groups, split)
    for path in predictions or []:
        loaded.append(group_from_file(path))
    if not loaded:
        raise VlmError("nothing to evaluate", hint="pass --groups NAME [NAME ...] or --predictions FILE [FILE ...].")
    result = evaluate_groups(loaded, resamples=resamples, seed=seed)
    extra = {}
    if worst:
        extra["worst"] = {g: worst_documents(result, g, worst) for g in result["groups"]}
    if changes:
        extra["changes"] = {g: fixed_and_broken(result, g) for g in list(result["groups"])[1:]}
    from vlm.evaluation import trust

    aligned: dict | None = {} if output else None  # alignments made for the candidates, reused by report.html
    # the candidates feed only --label-errors and the files: --json alone never prints them
    candidates = trust.label_error_candidates(result, aligned) if output or label_errors is not None else []
    if label_errors is not None:
        extra["label_errors"] = candidates[:label_errors]
    if output:
        paths = write_extraction_report(result, output, candidates, 20 if label_errors is None else label_errors,
                                        store=store if groups else None, split=split, aligned=aligned)
        info("wrote " + ", ".join(str(p) for p in paths))
    if as_json:
        print_json({name: {k: v for k, v in g.items()} for name, g in result["groups"].items()} | extra)
        return
    print_tables(result, show_fields=fields)
    trust.print_trust(result, extra.get("label_errors"))
    for g, rows in extra.get("worst", {}).items():
        out.print(f"[bold]{worst} worst documents of {g}[/bold]: "
                  + ", ".join(f"{r['id']} ({r['ted_accuracy']:.3f})" for r in rows))
    for g, ch in extra.get("changes", {}).items():
        out.print(f"[bold]{g}[/bold] fixed {len(ch['fixed'])}: " + ", ".join(r["id"] for r in ch["fixed"][:20]))
        out.print(f"[bold]{g}[/bold] broke {len(ch['broken'])}: " + ", ".join(r["id"] for r in ch["broken"][:20]))


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


add_examples(evaluate, 
    "vlm evaluate --groups vanilla-model finetuned-model",
    "vlm evaluate --groups vanilla-model finetuned-model --output reports/cord --worst 5 --changes",
    "vlm evaluate --predictions saves/lf/generated_predictions.jsonl --predictions api.jsonl --json",
    "vlm evaluate --groups vanilla-model finetuned-model --output reports/cord --label-errors 50",
    "vlm evaluate --task qa --groups vanilla-docvqa finetuned-docvqa --split test --output reports/forgetting",
)


def export_predictions(
    group: Annotated[str, typer.Option("--group", help="Stored group to export.")],
    out_file: Annotated[Path, typer.Argument(help="JSONL file to write.")],
    split: SplitOpt = "test",
    store: StoreOpt = DEFAULT_STORE,
    only_consistent: Annotated[bool, typer.Option(
        "--only-consistent", help="Only predictions that pass every consistency check that applies (one or "
                                  "more).")] = False,
) -> None:
    """Export a stored group to JSONL ({"id", "prediction", "ground_truth", "flags", ...} per line).

    flags: the consistency verdict (consistent, inconsistent or unchecked), the failed checks, and every check's
    status (pass, fail or n/a), so a pipeline can send inconsistent extractions to a person.
    """
    import json

    from vlm.errors import VlmError
    from vlm.evaluation.consistency import flag_rows
    from vlm.fsutil import atomic_write_text
    from vlm.inference.store import Store
    from vlm.output import info

    check_store(store)
    if not store.is_file():
        raise VlmError(f"prediction store not found: {store}", hint="run vlm predict first.")
    if out_file.is_dir():
        raise VlmError(f"{out_file} is a directory", hint="name the JSONL file to write, e.g. runs/group.jsonl.")
    with Store(store) as s:
        rows = s.export_jsonl(group, split)
    if not rows:
        raise VlmError(f"no predictions for group {group!r} on split {split!r}")
    stored = len(rows)
    rows = flag_rows(rows, only_consistent)
    atomic_write_text(out_file, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    info(f"wrote {len(rows)} predictions to {out_file}" + (f" ({stored} stored)" if only_consistent else ""))


add_examples(export_predictions, "vlm export-predictions --group finetuned-model runs/finetuned.jsonl",
             "vlm export-predictions --group finetuned-model runs/trusted.jsonl --only-consistent")

COMMANDS = {"predict": predict, "evaluate": evaluate, "export-predictions": export_predictions}


def register(app: typer.Typer) -> None:
    for name, fn in COMMANDS.items():
        app.command(name)(fn)
