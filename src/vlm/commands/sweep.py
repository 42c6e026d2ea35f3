"""``vlm sweep``: a grid of training configs; --run trains them and ranks the results."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vlm.commands.common import AugmentPolicy, ConfigArg, JsonOpt, command


def _grid(text: str | None, kind: type, flag: str) -> list:
    """``"1e-4,5e-5"`` as a list of distinct numbers."""
    from vlm.errors import VlmError

    if text is None:
        return []
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        values = [kind(float(t)) if kind is int and float(t).is_integer() else kind(t) for t in items]
    except ValueError:
        raise VlmError(f"{flag} takes comma-separated numbers, got {text!r}", hint=f"e.g. {flag} 1e-4,5e-5") from None
    if not values or len(set(values)) != len(values):
        raise VlmError(f"{flag} needs distinct values, got {text!r}")
    return values


def _methods(text: str | None) -> list[str]:
    from vlm.errors import VlmError
    from vlm.training.config import METHODS

    if text is None:
        return []
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [m for m in items if m not in METHODS]
    if bad or not items or len(set(items)) != len(items):
        raise VlmError(f"--method takes distinct methods from {', '.join(METHODS)}, got {text!r}",
                       hint="e.g. --method lora,full")
    return items


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
    from contextlib import nullcontext

    from vlm.errors import VlmError
    from vlm.output import info, print_json
    from vlm.output import out as stdout
    from vlm.sweep.grid import AugmentAxis, train_commands, write_sweep
    from vlm.sweep.run import sweep_lock

    if run and print_commands:
        raise VlmError("--run and --print-commands are alternatives",
                       hint="--run trains here, one point after another; --print-commands hands them to a scheduler.")
    grid = {"method": _methods(method), "learning_rate": _grid(lr, float, "--lr"),
            "lora_rank": _grid(lora_rank, int, "--lora-rank"), "num_train_epochs": _grid(epochs, float, "--epochs")}
    grid["num_train_epochs"] = [int(e) if e.is_integer() else e for e in grid["num_train_epochs"]]
    copies = _grid(augment, int, "--augment")
    if any(c < 0 or not isinstance(c, int) for c in copies):
        raise VlmError(f"--augment takes whole numbers of copies, 0 or more, got {augment!r}",
                       hint="e.g. --augment 0,2")
    if not any(grid.values()) and not copies:
        raise VlmError("nothing to sweep",
                       hint="pass at least one of --lr, --lora-rank, --epochs, --method, --augment, "
                            "e.g. --lr 1e-4,5e-5")
    flags = (("lr", lr), ("lora-rank", lora_rank), ("epochs", epochs), ("method", method), ("augment", augment))
    command = f"vlm sweep {config} " + " ".join(f"--{flag} {text}" for flag, text in flags if text)
    if copies and (augment_policy != AugmentPolicy.medium or seed):
        command += f" --augment-policy {augment_policy.value} --seed {seed}"
    axis = AugmentAxis(copies, augment_policy.value, seed) if copies else None
    # With --run, OUT_DIR is held from before its configs are written: a second sweep there cannot
    # rewrite the files of points this one has yet to train.
    with sweep_lock(out_dir) if run else nullcontext():
        points, datasets = write_sweep(config, grid, out_dir, command, force, axis, show_progress=not as_json)
        for d in datasets:
            info(f"aug{d['copies_per_image']}: " + (
                f"{d['name']}, the export's train dataset, unchanged" if not d["file"]
                else f"{d['name']}: {d['originals']} originals + {d['copies']} copies ({d['made']} made, "
                     f"{d['reused']} reused){'' if d['changed'] else ', unchanged'}"))
        if run:
            _run_grid(points, out_dir, f"{command} --out-dir {out_dir} --run", select, split, checkpoints,
                      max_new_tokens, allow_truncation, as_json)
            return
    rows = [{"config": str(p.path), **p.settings, "dataset": p.config.get("dataset"),
             "output_dir": p.config["output_dir"]} for p in points]
    if print_commands:
        lines = train_commands(points)
        if as_json:
            print_json([{**row, "command": line} for row, line in zip(rows, lines)])
        else:
            stdout.print("\n".join(lines), markup=False, highlight=False)
        return
    if as_json:
        print_json(rows)
        return
    for row in rows:
        stdout.print(row["config"], highlight=False)
    info(f"{len(rows)} configs written and validated; train each with: vlm train CONFIG, or all of them with --run")


def _run_grid(points, out_dir: Path, command: str, select: bool, split: str, checkpoints: str, max_new_tokens: int,
              allow_truncation: bool, as_json: bool) -> None:
    """sweep --run: train, then rank this grid's finished points; print, and exit 130 / 1 as the run ended."""
    from vlm.output import info, print_json
    from vlm.sweep.run import STATUS_FILE, RunOptions, check_rank_options, rank, read_status, run_sweep, summary

    read_status(out_dir)  # a damaged status file is refused before anything else
    if select:
        check_rank_options(points, split, checkpoints)
    status = run_sweep(points, out_dir, command, RunOptions(allow_truncation))
    counts = summary(status, len(points))
    leaderboard = None
    if select and not status.get("interrupted") and counts["done"]:
        leaderboard = rank(status, len(points), out_dir, split, checkpoints, max_new_tokens,
                           show_progress=not as_json)
        if not as_json:
            from vlm.selection.report import print_selection

            print_selection(leaderboard)
    if as_json:
        print_json({"status_file": str(out_dir / STATUS_FILE), **counts, "points": status["points"][: len(points)],
                    "interrupted": status.get("interrupted", False), "leaderboard": leaderboard})
    else:
        info(f"sweep: {counts['done']} done, {counts['failed']} failed, {counts['pending']} pending "
             f"({out_dir / STATUS_FILE})")
    if status.get("interrupted"):
        raise typer.Exit(130)
    if counts["failed"]:
        raise typer.Exit(1)
