"""Data commands: export CORD (or any image + JSON dataset) and register it with LLaMA-Factory."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from vlm.commands.common import AugmentPolicy, JsonOpt, command

CORD_HUB_ID = "naver-clova-ix/cord-v2"  # also in vlm.data.export; repeated to keep --help free of imports


class Split(str, Enum):
    train = "train"
    validation = "validation"
    test = "test"
    all = "all"


SplitOpt = Annotated[Split, typer.Option("--split", help="Which split to export, or all three.")]


LimitOpt = Annotated[int | None, typer.Option("--limit", min=1, help="Export at most this many records per split.")]


PromptFileOpt = Annotated[
    Path | None, typer.Option(
        "--prompt-file", exists=True, dir_okay=False, help="Use this prompt instead of the built-in one.")
]


WorkersOpt = Annotated[
    int | None, typer.Option("--workers", min=1, help="Parallel image writers (default: one per CPU core).")
]


StrictOpt = Annotated[bool, typer.Option(
    "--strict", help="Fail on the first split with a bad record instead of skipping it.")]


class VerifyImages(str, Enum):
    """vlm.data.images.CHECKS, repeated to keep --help free of imports (a test checks they agree)."""

    structure = "structure"
    full = "full"


VerifyImagesOpt = Annotated[VerifyImages, typer.Option(
    "--verify-images",
    help="How each image is checked to be whole before it is copied: structure (JPEG segments to the "
         "end-of-image marker, PNG chunks and their CRCs; about the cost of hashing it) or full (that, then a "
         "full decode: the export is about 3x slower on camera photos). A rerun re-checks only images checked "
         "more weakly.")]


NoRegisterOpt = Annotated[
    bool, typer.Option("--no-register", help="Do not register the splits in DIR/dataset_info.json.")
]


AugmentOpt = Annotated[int, typer.Option(
    "--augment", min=0, metavar="N",
    help="Add N augmented copies of each train image (rotation, perspective, blur, light, shadow, noise, JPEG); "
         "never of validation or test. A rerun reuses the copies on disk.")]


AugmentPolicyOpt = Annotated[AugmentPolicy, typer.Option("--augment-policy", help="How strong the augmentations are.")]


AugmentSeedOpt = Annotated[int, typer.Option("--seed", help="Augmentation seed: the same seed makes the same bytes.")]


def _augment(copies: int, policy: AugmentPolicy, seed: int):
    if not copies:
        return None
    from vlm.data.augment import AugmentSpec

    return AugmentSpec(copies=copies, policy=policy.value, seed=seed)


def _cores() -> int:
    # Writing is bound by the disk and hashing by the cores; more threads than cores only contend.
    import os

    return os.cpu_count() or 2


def _splits(split: Split) -> tuple[str, ...]:
    return ("train", "validation", "test") if split is Split.all else (split.value,)


def _prompt(prompt_file: Path | None, default: str) -> str:
    if prompt_file is None:
        return default
    text = prompt_file.read_text(encoding="utf-8").strip()
    if not text:
        from vlm.errors import VlmError

        raise VlmError(f"prompt file {prompt_file} is empty")
    return text


def _report(result: dict, as_json: bool) -> None:
    from rich.table import Table

    from vlm.output import err, out, print_json

    if as_json:
        print_json(result)
        return
    table = Table(title=f"exported to {result['out_dir']}")
    for col in ("split", "file", "records", "skipped", "reused images"):
        table.add_column(col)
    for split, row in result["splits"].items():
        table.add_row(split, Path(row["file"]).name, str(row["records"]), str(row["skipped"]),
                      str(row["reused_images"]))
    out.print(table)
    for split, row in result["splits"].items():
        if row.get("augmented"):
            a = row["augmented"]
            err.print(f"augmented {split}: {a['copies']} copies ({a['made']} made, {a['reused']} reused)",
                      highlight=False)
    for s in result["skipped"][:20]:
        err.print(f"[yellow]skipped[/yellow] {s['id']}: {s['reason']}", highlight=False)
    if len(result["skipped"]) > 20:
        err.print(f"... and {len(result['skipped']) - 20} more (see manifest.json)")
    if result["registered"]:
        err.print(f"registered {', '.join(result['registered'])} in {result['dataset_info']}", highlight=False)
    if result.get("already_registered"):
        err.print(f"already registered (file unchanged): {', '.join(result['already_registered'])} in "
                  f"{result['dataset_info']}", highlight=False)


@command(
    "save-cord-dataset-in-sharegpt-format",
    "vlm save-cord-dataset-in-sharegpt-format data/cord",
    "vlm save-cord-dataset-in-sharegpt-format data/cord --source ./cord-v2-local --split test --limit 10",
    "vlm save-cord-dataset-in-sharegpt-format data/cord --json",
    "vlm save-cord-dataset-in-sharegpt-format data/cord --augment 2 --augment-policy medium --seed 0",
)
def save_cord(
    out_dir: Annotated[Path, typer.Argument(help="Output directory for the JSON files, images and manifest.")],
    source: Annotated[str, typer.Option(
        "--source", help="Hub id, or a local directory in the hub layout.")] = CORD_HUB_ID,
    split: SplitOpt = Split.all,
    limit: LimitOpt = None,
    prompt_file: PromptFileOpt = None,
    workers: WorkersOpt = None,
    strict: StrictOpt = False,
    verify_images: VerifyImagesOpt = VerifyImages.structure,
    no_register: NoRegisterOpt = False,
    augment: AugmentOpt = 0,
    augment_policy: AugmentPolicyOpt = AugmentPolicy.medium,
    seed: AugmentSeedOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Export CORD-v2 to LLaMA-Factory's multimodal ShareGPT format (cord_<split>.json + images/).

    Images keep their original bytes (no re-encoding). Bad records are skipped and
    reported (exit 0) unless --strict. A rerun after a kill finishes the job.
    """
    from vlm.data.export import ExportSpec, run_export
    from vlm.schema import cord_prompt

    spec = ExportSpec(out_dir=out_dir, source=source, name="cord", prompt=_prompt(prompt_file, cord_prompt()),
                      splits=_splits(split), limit=limit, workers=workers or _cores(), strict=strict,
                      augment=_augment(augment, augment_policy, seed), verify_images=verify_images.value)
    _report(run_export(spec, register=not no_register, show_progress=not as_json), as_json)


@command(
    "export",
    "vlm export data/invoices --source ./my-invoices --name invoices --prompt-file prompt.txt --target-column label",
    "vlm export data/sroie --source some-org/sroie --name sroie --prompt 'Extract the fields as JSON.' --split train",
    "vlm export data/docvqa --source ./docvqa-sample --name docvqa --prompt 'Answer in a few words.' "
    "--question-column question --target-column answers --split test",
)
def export_generic(
    out_dir: Annotated[Path, typer.Argument(help="Output directory.")],
    source: Annotated[str, typer.Option("--source", help="Hub id, or a local directory in the hub layout.")],
    name: Annotated[str, typer.Option("--name", help="Dataset name; files are <name>_<split>.json.")],
    prompt: Annotated[str | None, typer.Option("--prompt", help="The instruction shown with each image.")] = None,
    prompt_file: PromptFileOpt = None,
    image_column: Annotated[str, typer.Option("--image-column", help="Column holding the image.")] = "image",
    target_column: Annotated[str, typer.Option(
        "--target-column", help="Column holding the JSON target (with --question-column: the "
                                "accepted answers).")] = "ground_truth",
    target_field: Annotated[
        str | None, typer.Option("--target-field", help="Field inside the target column to use (e.g. gt_parse).")
    ] = None,
    split: SplitOpt = Split.all,
    limit: LimitOpt = None,
    workers: WorkersOpt = None,
    strict: StrictOpt = False,
    verify_images: VerifyImagesOpt = VerifyImages.structure,
    no_register: NoRegisterOpt = False,
    question_column: Annotated[str | None, typer.Option(
        "--question-column", help="QA datasets: column holding each record's question (shown after the "
                                  "prompt); the target column then holds plain-text answers (one, or a list "
                                  "of accepted answers).")] = None,
    augment: AugmentOpt = 0,
    augment_policy: AugmentPolicyOpt = AugmentPolicy.medium,
    seed: AugmentSeedOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Export any image + JSON dataset (hub or local) to LLaMA-Factory's ShareGPT format.

    With --question-column it exports a QA dataset (image, question, answers) for vlm evaluate --task qa.
    """
    from vlm.data.export import ExportSpec, run_export
    from vlm.errors import VlmError

    if prompt and prompt_file:
        raise VlmError("cannot use both --prompt and --prompt-file", hint="use one of them.")
    if not prompt and not prompt_file:
        raise VlmError("no prompt given", hint="pass --prompt TEXT or --prompt-file FILE.")
    spec = ExportSpec(out_dir=out_dir, source=source, name=name, prompt=prompt or _prompt(prompt_file, ""),
                      splits=_splits(split), image_column=image_column, target_column=target_column,
                      target_field=target_field, limit=limit, workers=workers or _cores(), strict=strict,
                      question_column=question_column, augment=_augment(augment, augment_policy, seed),
                      verify_images=verify_images.value)
    _report(run_export(spec, register=not no_register, show_progress=not as_json), as_json)


@command(
    "register-dataset",
    "vlm register-dataset data/cord/cord_train.json --name cord_train",
    "vlm register-dataset data/cord/cord_train.json --name cord_train "
    "--dataset-info ~/LLaMA-Factory/data/dataset_info.json",
)
def register_cmd(
    data_json: Annotated[Path, typer.Argument(help="An exported ShareGPT JSON file, e.g. data/cord/cord_train.json.")],
    name: Annotated[str, typer.Option("--name", help="Entry name, used as `dataset:` in the training YAML.")],
    dataset_info: Annotated[
        Path | None, typer.Option("--dataset-info", help="dataset_info.json to patch (default: beside DATA_JSON).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing entry of the same name.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Register an exported dataset in a LLaMA-Factory dataset_info.json (idempotent, atomic, locked, backed up)."""
    from vlm.data.registry import register_dataset
    from vlm.output import info, print_json

    reg = register_dataset(data_json, name, dataset_info, force=force)
    if as_json:
        print_json({"name": reg.name, "dataset_info": str(reg.dataset_info), "changed": reg.changed,
                    "entry": reg.entry})
    else:
        verb = "registered" if reg.changed else "already registered (file unchanged):"
        info(f"{verb} {reg.name} in {reg.dataset_info}")
