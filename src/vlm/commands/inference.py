"""Prediction commands: predict a group into the store, and export a stored group."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vlm.commands.common import DEFAULT_STORE, Backend, JsonOpt, SplitOpt, StoreOpt, check_store, command


@command(
    "predict",
    "vlm predict --group vanilla-model --config configs/cord.yaml --no-adapter",
    "vlm predict --group finetuned-model --config configs/cord.yaml",
    "vlm predict --group finetuned-model --config configs/cord.yaml --batch-size 16 --overwrite",
    "vlm predict --group best-checkpoint --config configs/cord.yaml --checkpoint best",
    "vlm predict --group finetuned-vllm --config configs/cord.yaml --backend vllm vllm_gpu_util=0.5",
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
