"""``vlm sweep``: a grid of training configs; --run trains them and ranks the results."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vlm.commands.common import AugmentPolicy, ConfigArg, JsonOpt, command


@command(
    "sweep",
    "vlm sweep configs/cord.yaml --lr 1e-4,5e-5 --lora-rank 8,16 --epochs 3,10",
    "vlm sweep configs/cord.yaml --lr 1e-4,5e-5 --out-dir configs/sweep --json",
    "vlm sweep configs/cord.yaml --method lora,full --lr 1e-4,1e-5 --run",
    "vlm sweep configs/cord.yaml --augment 0,2 --run",
    "vlm sweep configs/cord.yaml --lr 1e-4,5e-5 --print-commands",
)
def sweep(
    config: ConfigArg,
    lr: Annotated[str | None, typer.Option("--lr", help="Learning rates, comma-separated.")] = None,
    lora_rank: Annotated[str | None, typer.Option("--lora-rank", help="LoRA ranks, comma-separated.")] = None,
    epochs: Annotated[str | None, typer.Option("--epochs", help="Epoch counts, comma-separated.")] = None,
    method: Annotated[str | None, typer.Option(
        "--method", help="Fine-tuning methods, comma-separated (lora, qlora, full, freeze): LoRA or full?")] = None,
    augment: Annotated[str | None, typer.Option(
        "--augment", help="Augmented copies per train image, comma-separated (0 = none): does augmentation help? "
                          "Each value trains on a derived dataset, e.g. cord_train_aug2, made beside the export.")
    ] = None,
    augment_policy: Annotated[AugmentPolicy, typer.Option(
        "--augment-policy", help="How strong --augment's augmentations are (as vlm export).")] = AugmentPolicy.medium,
    seed: Annotated[int, typer.Option("--seed", help="--augment's seed: the same seed makes the same bytes.")] = 0,
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Where the configs and sweep_status.json go.")] = Path(
        "configs/sweep"),
    run: Annotated[bool, typer.Option(
        "--run", help="Train the points one after another (a rerun continues where it stopped), then rank them.")
    ] = False,
    print_commands: Annotated[bool, typer.Option(
        "--print-commands", help="Print one `vlm train` command per point, for a scheduler or many GPUs.")] = False,
    select: Annotated[bool, typer.Option(
        "--select/--no-select", help="After --run, rank the runs' checkpoints with vlm select.")] = True,
    split: Annotated[str, typer.Option("--split", help="Split that --run's ranking predicts.")] = "validation",
    checkpoints: Annotated[str, typer.Option(
        "--checkpoints", help="Checkpoints --run's ranking scores per run: all or last-N (as vlm select).")] = "all",
    max_new_tokens: Annotated[int, typer.Option(
        "--max-new-tokens", min=1, help="Generation length for --run's ranking (as vlm predict).")] = 1024,
    allow_truncation: Annotated[bool, typer.Option(
        "--allow-truncation", help="Train even when samples exceed cutoff_len.")] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="Overwrite configs in --out-dir that hold something else (e.g. hand edits).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Render one validated config per grid point, each with its own output_dir; --run trains them.

    A config already in --out-dir with other content (a hand edit) is never overwritten
    without --force; nothing is written unless every file can be. With --run the points are
    trained in order and OUT_DIR/sweep_status.json records each one as pending, running, done
    or failed: a killed sweep continues where it stopped when rerun, and a failed point does
    not stop the others. At the end vlm select ranks every run's checkpoints on one leaderboard.

    --augment 0,2 makes augmentation an axis: a point trains on the export's original train
    records plus that many augmented copies of each (a dataset derived beside the export before
    the configs are written; copies on disk are reused), so the leaderboard says, with a CI,
    whether augmentation helps."""
    from vlm.output import info, print_json
    from vlm.output import out as stdout
    from vlm.sweep.plan import SweepSpec, plan_sweep

    spec = SweepSpec(config, lr=lr, lora_rank=lora_rank, epochs=epochs, method=method, augment=augment,
                     augment_policy=augment_policy.value, seed=seed, out_dir=out_dir, run=run,
                     print_commands=print_commands, select=select, split=split, checkpoints=checkpoints,
                     max_new_tokens=max_new_tokens, allow_truncation=allow_truncation, force=force)
    result = plan_sweep(spec, show_progress=not as_json)
    if "run" in result:
        _print_run(result["run"], as_json)
        return
    rows = result["rows"]
    if as_json:
        print_json(rows)
    elif print_commands:
        stdout.print("\n".join(row["command"] for row in rows), markup=False, highlight=False)
    else:
        for row in rows:
            stdout.print(row["config"], highlight=False)
        info(f"{len(rows)} configs written and validated; train each with: vlm train CONFIG, or all of them with "
             "--run")


def _print_run(run: dict, as_json: bool) -> None:
    """sweep --run's leaderboard and counts; exit 130 / 1 as the run ended."""
    from vlm.output import info, print_json

    if as_json:
        print_json(run)
    else:
        if run["leaderboard"]:
            from vlm.selection.report import print_selection

            print_selection(run["leaderboard"])
        info(f"sweep: {run['done']} done, {run['failed']} failed, {run['pending']} pending ({run['status_file']})")
    if run["interrupted"]:
        raise typer.Exit(130)
    if run["failed"]:
        raise typer.Exit(1)
