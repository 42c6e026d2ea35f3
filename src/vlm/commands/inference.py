"""Prediction commands: predict a group into the store, and export a stored group."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from vlm.commands.common import (
    DEFAULT_STORE,
    NEAR_TIE,
    Backend,
    JsonOpt,
    NearTieOpt,
    SplitOpt,
    StoreOpt,
    check_store,
    command,
)


class Constrain(str, Enum):
    """``--constrain`` choices (vlm.inference.constrain.CONSTRAINTS; a test checks they agree)."""

    none = "none"
    json = "json"
    schema = "schema"


@command(
    "predict",
    "vlm predict --group vanilla-model --config configs/cord.yaml --no-adapter",
    "vlm predict --group finetuned-model --config configs/cord.yaml",
    "vlm predict --group finetuned-model --config configs/cord.yaml --batch-size 16 --overwrite",
    "vlm predict --group best-checkpoint --config configs/cord.yaml --checkpoint best",
    "vlm predict --group finetuned-vllm --config configs/cord.yaml --backend vllm vllm_gpu_util=0.5",
    "vlm predict --group vanilla-schema --config configs/cord.yaml --no-adapter --constrain schema",
    "vlm predict --group finetuned-own-schema --config configs/cord.yaml --constrain schema "
    "--json-schema my-schema.json",
)
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
    constrain: Annotated[Constrain, typer.Option(
        "--constrain", help="Hold answers to a grammar while they are generated: schema (CORD's fields, from "
                            "vlm.schema, or --json-schema FILE), json (any JSON object), or none.")] = Constrain.none,
    json_schema: Annotated[Path | None, typer.Option(
        "--json-schema", help="A JSON Schema file for --constrain schema, for datasets other than CORD.")] = None,
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

    --constrain schema masks, at every step, the tokens that would leave the answer schema, so every finished
    answer is valid JSON with only the schema's keys and string values: predict the base model so, beside the
    fine-tune, to tell what fine-tuning taught about reading from what it taught about format. Where the model's
    own greedy answer already fits the schema it is unchanged. An answer still open at --max-new-tokens is cut.
    """
    from vlm.inference.predict import PredictSpec, run_predict
    from vlm.output import info, print_json
    from vlm.training.config import parse_overrides

    check_store(store, write=True)
    spec = PredictSpec(group=group, config=config, model=model, adapter=adapter, no_adapter=no_adapter,
                       dataset=dataset, dataset_dir=dataset_dir, split=split, store=store, work_dir=work_dir,
                       batch_size=batch_size, max_new_tokens=max_new_tokens, chunk_size=chunk_size, limit=limit,
                       overwrite=overwrite, backend=backend.value, overrides=parse_overrides(overrides or []),
                       checkpoint=checkpoint, constrain=constrain.value, json_schema=json_schema)
    result = run_predict(spec, show_progress=not as_json)
    if as_json:
        print_json(result)
    else:
        constrained = "" if result["constrain"] == "none" else f", constrained: {result['constrain']}"
        info(f"{result['group']} ({result['backend']}{constrained}): {result['predicted']} predicted, "
             f"{result['skipped_done']} already stored "
             f"({result['documents']} documents of {result['dataset']}) -> {result['store']}")


@command(
    "export-predictions",
    "vlm export-predictions --group finetuned-model runs/finetuned.jsonl",
    "vlm export-predictions --group finetuned-model runs/trusted.jsonl --only-consistent",
    "vlm export-predictions --group finetuned-model runs/accepted.jsonl --calibration runs/calibration.json",
    "vlm export-predictions --group finetuned-model runs/accepted.jsonl --min-confidence 0.9",
)
def export_predictions(
    group: Annotated[str, typer.Option("--group", help="Stored group to export.")],
    out_file: Annotated[Path, typer.Argument(help="JSONL file to write.")],
    split: SplitOpt = "test",
    store: StoreOpt = DEFAULT_STORE,
    only_consistent: Annotated[bool, typer.Option(
        "--only-consistent", help="Only predictions that pass every consistency check that applies (one or "
                                  "more).")] = False,
    min_confidence: Annotated[float | None, typer.Option(
        "--min-confidence", min=0.0, max=1.0, help="Write only the fields whose confidence reaches this, each "
                                                   "with its confidence.")] = None,
    calibration: Annotated[Path | None, typer.Option(
        "--calibration", help="Like --min-confidence, at the threshold of a vlm calibrate file.")] = None,
) -> None:
    """Export a stored group to JSONL ({"id", "prediction", "ground_truth", "flags", ...} per line).

    flags: the consistency verdict (consistent, inconsistent or unchecked), the failed checks, and every check's
    status (pass, fail or n/a), so a pipeline can send inconsistent extractions to a person.

    --min-confidence (or --calibration) writes instead, per document, only the fields the model was sure of
    ({"id", "fields": [{"path", "value", "confidence"}], "rejected_fields", "confidence"}): the rest go to a
    person. Documents predicted without token scores accept no field.
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
    if calibration is not None:
        from vlm.evaluation.calibration import read

        cal = read(calibration)
        if cal.get("threshold") is None:
            raise VlmError(f"{calibration} has no threshold: {cal.get('reason')}",
                           hint="fit on more validation documents, lower --target-precision, or pass "
                                "--min-confidence.")
        min_confidence = cal["threshold"] if min_confidence is None else max(min_confidence, cal["threshold"])
    if min_confidence is not None:
        from vlm.evaluation.confidence import accepted_fields

        rows = [accepted_fields(r, min_confidence) for r in rows]
    atomic_write_text(out_file, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    info(f"wrote {len(rows)} predictions to {out_file}" + (f" ({stored} stored)" if only_consistent else ""))


@command(
    "parity",
    "vlm parity --config configs/cord.yaml --backends transformers,vllm",
    "vlm parity --config configs/cord.yaml --backends transformers,vllm --limit 32 --json",
    "vlm parity --config configs/cord.yaml --backends transformers,transformers --set-b image_max_pixels=65536",
)
def parity(
    config: Annotated[Path | None, typer.Option(
        "--config", help="The training YAML: model, template, image pixels, adapter dir.")] = None,
    backends: Annotated[str, typer.Option(
        "--backends", help="Two backends to compare, comma-separated: transformers, vllm.")] = "transformers,vllm",
    model: Annotated[str | None, typer.Option(
        "--model", help="Base model (default: the config's model_name_or_path).")] = None,
    adapter: Annotated[str | None, typer.Option(
        "--adapter", help="LoRA adapter dir (default: the config's output_dir).")] = None,
    no_adapter: Annotated[bool, typer.Option("--no-adapter", help="Compare the base model alone.")] = False,
    dataset: Annotated[str | None, typer.Option(
        "--dataset", help="Registered dataset (default: <name>_<split>).")] = None,
    dataset_dir: Annotated[str | None, typer.Option("--dataset-dir", help="Folder with dataset_info.json.")] = None,
    split: SplitOpt = "validation",
    limit: Annotated[int, typer.Option("--limit", min=1, help="Compare the first N documents.")] = 8,
    set_b: Annotated[list[str] | None, typer.Option(
        "--set-b", help="key=value for the second backend only (repeatable), e.g. to test what a setting "
                        "changes.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="transformers' generation batch size.")] = 8,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Generation length limit.")] = 1024,
    near_tie: NearTieOpt = NEAR_TIE,
    work_dir: Annotated[Path, typer.Option(
        "--work-dir", help="Where vLLM's merged copy of an adapter is cached.")] = Path("runs/predict"),
    overrides: Annotated[list[str] | None, typer.Argument(
        help="key=value settings for both backends (as vlm predict takes them).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Predict the same documents through two backends, greedy, and compare them token by token.

    Reports how many answers are byte-identical and, for each difference, the first differing token and both
    sides' logit margins there: a near-tie (both margins at most --near-tie) is rounding, anything else is drift
    and exits 1. Use it when vLLM's numbers disagree with transformers'. Nothing is stored."""
    from vlm.inference.parity import ParitySpec, run_parity
    from vlm.output import out, print_json
    from vlm.training.config import parse_overrides

    spec = ParitySpec(config=config, model=model, adapter=adapter, no_adapter=no_adapter, dataset=dataset,
                      dataset_dir=dataset_dir, split=split, limit=limit,
                      backends=tuple(b.strip() for b in backends.split(",")),
                      overrides=parse_overrides(overrides or []), overrides_b=parse_overrides(set_b or []),
                      max_new_tokens=max_new_tokens, batch_size=batch_size, near_tie=near_tie, work_dir=work_dir)
    report = run_parity(spec)
    if as_json:
        print_json(report.to_dict())
    else:
        for line in report.lines():
            out.print(line, markup=False, highlight=False)
    if not report.ok:
        raise typer.Exit(1)
