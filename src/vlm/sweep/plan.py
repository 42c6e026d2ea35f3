"""``vlm sweep`` from its flags to a result: parse the grid, write its configs, and with --run train and rank them.

The command only parses and prints; everything it decides lives here, so a script (or a test) can run a sweep from a
``SweepSpec`` and get back what the command would print.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlm.errors import VlmError
from vlm.output import info
from vlm.sweep.grid import AugmentAxis, train_commands, write_sweep
from vlm.sweep.run import STATUS_FILE, RunOptions, check_rank_options, rank, read_status, run_sweep, summary, sweep_lock
from vlm.training.config import METHODS


@dataclass
class SweepSpec:
    """The flags of ``vlm sweep`` as typed: the grid axes stay comma-separated text until ``plan_sweep`` reads them."""

    config: Path
    lr: str | None = None
    lora_rank: str | None = None
    epochs: str | None = None
    method: str | None = None
    augment: str | None = None
    augment_policy: str = "medium"
    seed: int = 0
    out_dir: Path = Path("configs/sweep")
    run: bool = False
    print_commands: bool = False
    select: bool = True
    split: str = "validation"
    checkpoints: str = "all"
    max_new_tokens: int = 1024
    allow_truncation: bool = False
    force: bool = False


def parse_numbers(text: str | None, kind: type, flag: str) -> list:
    """``"1e-4,5e-5"`` as a list of distinct numbers (``kind`` int accepts ``2.0`` as 2)."""
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


def parse_methods(text: str | None) -> list[str]:
    """``"lora,full"`` as a list of distinct fine-tuning methods."""
    if text is None:
        return []
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [m for m in items if m not in METHODS]
    if bad or not items or len(set(items)) != len(items):
        raise VlmError(f"--method takes distinct methods from {', '.join(METHODS)}, got {text!r}",
                       hint="e.g. --method lora,full")
    return items


def _grid(spec: SweepSpec) -> tuple[dict[str, list[Any]], list[int]]:
    """The training axes and the augmentation axis; every flag is checked before anything is written."""
    if spec.run and spec.print_commands:
        raise VlmError("--run and --print-commands are alternatives",
                       hint="--run trains here, one point after another; --print-commands hands them to a scheduler.")
    grid = {"method": parse_methods(spec.method), "learning_rate": parse_numbers(spec.lr, float, "--lr"),
            "lora_rank": parse_numbers(spec.lora_rank, int, "--lora-rank"),
            "num_train_epochs": parse_numbers(spec.epochs, float, "--epochs")}
    grid["num_train_epochs"] = [int(e) if e.is_integer() else e for e in grid["num_train_epochs"]]
    copies = parse_numbers(spec.augment, int, "--augment")
    if any(c < 0 or not isinstance(c, int) for c in copies):
        raise VlmError(f"--augment takes whole numbers of copies, 0 or more, got {spec.augment!r}",
                       hint="e.g. --augment 0,2")
    if not any(grid.values()) and not copies:
        raise VlmError("nothing to sweep",
                       hint="pass at least one of --lr, --lora-rank, --epochs, --method, --augment, "
                            "e.g. --lr 1e-4,5e-5")
    return grid, copies


def _command(spec: SweepSpec) -> str:
    """The command line that made this grid, recorded in every config and in sweep_status.json."""
    flags = (("lr", spec.lr), ("lora-rank", spec.lora_rank), ("epochs", spec.epochs), ("method", spec.method),
             ("augment", spec.augment))
    command = f"vlm sweep {spec.config} " + " ".join(f"--{flag} {text}" for flag, text in flags if text)
    if spec.augment and (spec.augment_policy != "medium" or spec.seed):
        command += f" --augment-policy {spec.augment_policy} --seed {spec.seed}"
    return command


def plan_sweep(spec: SweepSpec, show_progress: bool = True) -> dict[str, Any]:
    """Write the grid's configs; with ``spec.run`` train and rank them.

    Returns ``{"rows": [...]}`` (one row per config, with ``command`` when ``print_commands``), or for --run
    ``{"run": {...}}``: the status file, the counts, the points, ``interrupted`` and the ``leaderboard``.
    """
    grid, copies = _grid(spec)
    command = _command(spec)
    axis = AugmentAxis(copies, spec.augment_policy, spec.seed) if copies else None
    # With --run, OUT_DIR is held from before its configs are written: a second sweep there cannot
    # rewrite the files of points this one has yet to train.
    with sweep_lock(spec.out_dir) if spec.run else nullcontext():
        points, datasets = write_sweep(spec.config, grid, spec.out_dir, command, spec.force, axis,
                                       show_progress=show_progress)
        for d in datasets:
            info(f"aug{d['copies_per_image']}: " + (
                f"{d['name']}, the export's train dataset, unchanged" if not d["file"]
                else f"{d['name']}: {d['originals']} originals + {d['copies']} copies ({d['made']} made, "
                     f"{d['reused']} reused){'' if d['changed'] else ', unchanged'}"))
        if spec.run:
            return {"run": _run_grid(points, spec, f"{command} --out-dir {spec.out_dir} --run", show_progress)}
    rows = [{"config": str(p.path), **p.settings, "dataset": p.config.get("dataset"),
             "output_dir": p.config["output_dir"]} for p in points]
    if spec.print_commands:
        rows = [{**row, "command": line} for row, line in zip(rows, train_commands(points))]
    return {"rows": rows}


def _run_grid(points: list, spec: SweepSpec, command: str, show_progress: bool) -> dict[str, Any]:
    """sweep --run: train, then rank this grid's finished points."""
    read_status(spec.out_dir)  # a damaged status file is refused before anything else
    if spec.select:
        check_rank_options(points, spec.split, spec.checkpoints)
    status = run_sweep(points, spec.out_dir, command, RunOptions(spec.allow_truncation))
    counts = summary(status, len(points))
    leaderboard = None
    if spec.select and not status.get("interrupted") and counts["done"]:
        leaderboard = rank(status, len(points), spec.out_dir, spec.split, spec.checkpoints, spec.max_new_tokens,
                           show_progress=show_progress)
    return {"status_file": str(spec.out_dir / STATUS_FILE), **counts, "points": status["points"][: len(points)],
            "interrupted": status.get("interrupted", False), "leaderboard": leaderboard}
