"""Training commands: render-config, validate, train, merge, sweep.

Each command checks its options, calls one function in ``vlm.training.config`` or ``vlm.training.train``
and prints the result. Nothing heavy is imported here, so ``vlm --help`` stays fast.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from vlm.commands.common import ConfigArg, DryRunOpt, JsonOpt, examples, help_text
from vlm.commands.data import AugmentPolicy

OverridesArg = Annotated[
    list[str] | None,
    typer.Argument(help="key=value overrides of any LLaMA-Factory argument (values are YAML scalars).",
                   show_default=False),
]


class Method(str, Enum):
    lora = "lora"
    qlora = "qlora"
    full = "full"
    freeze = "freeze"


class DeepSpeed(str, Enum):
    z2 = "z2"
    z3 = "z3"


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


def _print_relaxed(validation) -> None:
    from vlm.output import info

    for line in validation.relaxed:
        info(f"  [dim]relaxed:[/dim] {line}")
    for line in validation.notes:
        info(f"  [dim]note:[/dim] {line}")


def render_config(
    out: Annotated[str, typer.Argument(help="Where to write the YAML ('-' for stdout).")] = "configs/cord.yaml",
    overrides: OverridesArg = None,
    model: Annotated[str | None, typer.Option("--model", help="Base model: hub id or local dir.")] = None,
    dataset: Annotated[str | None, typer.Option(
        "--dataset", help="Registered dataset name(s), comma-separated.")] = None,
    dataset_dir: Annotated[str | None, typer.Option("--dataset-dir", help="Folder with dataset_info.json.")] = None,
    output_dir: Annotated[str | None, typer.Option(
        "--output-dir", help="Where checkpoints and the adapter go.")] = None,
    epochs: Annotated[float | None, typer.Option("--epochs", min=0, help="num_train_epochs.")] = None,
    learning_rate: Annotated[float | None, typer.Option("--learning-rate", min=0, help="learning_rate.")] = None,
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", min=1, help="per_device_train_batch_size.")] = None,
    lora_rank: Annotated[int | None, typer.Option("--lora-rank", min=1, help="lora_rank (lora/qlora).")] = None,
    method: Annotated[Method, typer.Option("--method", help="lora, qlora (4-bit base), full or freeze.")] = Method.lora,
    early_stopping: Annotated[int | None, typer.Option(
        "--early-stopping", min=1, help="Stop after N evaluations without a lower eval_loss "
        "(LLaMA-Factory's early_stopping_steps; the final model is the best one).")] = None,
    deepspeed: Annotated[DeepSpeed | None, typer.Option(
        "--deepspeed", help="Ship a DeepSpeed ZeRO-2/3 preset.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite OUT even if it holds a different config.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Render the CORD LoRA recipe (Qwen2-VL-2B) as a commented LLaMA-Factory YAML, validated before writing."""
    from vlm.errors import VlmError
    from vlm.fsutil import atomic_write_text
    from vlm.output import info, print_json
    from vlm.output import out as stdout
    from vlm.training.config import RenderOptions, config_header, render_recipe, render_yaml
    from vlm.training.validation import validate_config

    def _num(x):
        return int(x) if x is not None and float(x).is_integer() else x

    flags = dict(model=model, dataset=dataset, dataset_dir=dataset_dir, output_dir=output_dir, epochs=_num(epochs),
                 learning_rate=learning_rate, batch_size=batch_size, lora_rank=lora_rank, early_stopping=early_stopping)
    opts = RenderOptions(out=out, flags=flags, method=method.value, deepspeed=deepspeed.value if deepspeed else None,
                         overrides=list(overrides or []))
    cfg = render_recipe(opts)
    validation = validate_config(cfg)
    text = render_yaml(cfg, config_header(opts.command(), out if out != "-" else "CONFIG.yaml"))
    if out == "-":
        stdout.print(text, end="", markup=False, highlight=False)
        return
    path = Path(out)
    changed = not path.is_file() or path.read_text(encoding="utf-8") != text
    if changed and path.is_file() and not force:
        raise VlmError(f"{path} exists and holds a different config",
                       hint="pass --force to replace it, or choose another OUT.")
    if changed:
        atomic_write_text(path, text)
    if as_json:
        print_json({"path": str(path), "changed": changed, "config": cfg, "relaxed": validation.relaxed})
        return
    info(f"{'wrote' if changed else 'unchanged:'} {path} (validated)")
    _print_relaxed(validation)


def validate(config: ConfigArg, overrides: OverridesArg = None, as_json: JsonOpt = False) -> None:
    """Check a training config with LLaMA-Factory's own parser, in-process and without loading a model,
    and its data as vlm train does: dataset_dir, the registered datasets, their files and images.

    Every config problem is listed at once. Checks that depend on this machine (bf16 with no GPU,
    DeepSpeed outside torchrun) are relaxed and named."""
    from vlm.errors import ConfigError, VlmError
    from vlm.output import out as stdout
    from vlm.output import print_json
    from vlm.training.config import load_config, parse_overrides
    from vlm.training.train import check_config

    cfg = load_config(config, parse_overrides(overrides or []))
    try:
        validation = check_config(cfg)
    except VlmError as e:
        if as_json:
            problems = e.problems if isinstance(e, ConfigError) else [e.message]
            print_json({"config": str(config), "ok": False, "problems": problems})
        raise
    if as_json:
        print_json({"config": str(config), "ok": True, "relaxed": validation.relaxed, "notes": validation.notes,
                    "problems": []})
        return
    stdout.print(f"OK {config}", highlight=False)
    _print_relaxed(validation)


def train(
    config: ConfigArg,
    overrides: OverridesArg = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue from the newest checkpoint-N in output_dir.")] = False,
    dry_run: DryRunOpt = False,
    allow_truncation: Annotated[bool, typer.Option(
        "--allow-truncation",
        help="Train even when samples exceed cutoff_len (LLaMA-Factory truncates them).")] = False,
    nproc_per_node: Annotated[int | None, typer.Option(
        "--nproc-per-node", help="GPUs (processes) per node.")] = None,
    nnodes: Annotated[int | None, typer.Option("--nnodes", help="Number of nodes.")] = None,
    node_rank: Annotated[int | None, typer.Option("--node-rank", help="This node's rank, 0..nnodes-1.")] = None,
    master_addr: Annotated[str | None, typer.Option("--master-addr", help="Address of node 0.")] = None,
    master_port: Annotated[int | None, typer.Option("--master-port", help="Port on node 0.")] = None,
    ray: Annotated[bool, typer.Option("--ray", help="Launch with Ray (USE_RAY=1; set ray_num_workers=N).")] = False,
    deepspeed: Annotated[DeepSpeed | None, typer.Option(
        "--deepspeed", help="Train with a shipped DeepSpeed ZeRO-2/3 preset (sets the config's deepspeed).")] = None,
    log_file: Annotated[Path | None, typer.Option(
        "--log-file", help="Where the child's output goes (default: OUTPUT_DIR/train.log).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Preflight the config and data, then train with llamafactory-cli, showing live progress.

    Writes OUTPUT_DIR/vlm_resolved_config.yaml, train.log and vlm_run.json. Ctrl-C stops
    the run (exit 130); --resume continues it. The child's exit code is vlm's exit code."""
    from vlm.lf.cli import ScaleOut
    from vlm.output import out as stdout
    from vlm.output import print_json
    from vlm.training.config import parse_overrides
    from vlm.training.train import TrainSpec
    from vlm.training.train import train as run_train

    scale = ScaleOut(nproc_per_node, nnodes, node_rank, master_addr, master_port, ray)
    spec = TrainSpec(config, parse_overrides(overrides or []), resume=resume, dry_run=dry_run,
                     allow_truncation=allow_truncation, scale=scale, log_file=log_file,
                     deepspeed=deepspeed.value if deepspeed else None, override_args=list(overrides or []))
    try:
        result = run_train(spec)
    except KeyboardInterrupt:  # during preflight, before there is a child to stop
        raise typer.Exit(130) from None
    if dry_run:
        if as_json:
            print_json(result.plan.as_dict())
        else:
            stdout.print(result.plan.describe(), markup=False, highlight=False)
        return
    if as_json:
        print_json({**result.plan.as_dict(), "exit_code": result.exit_code, "manifest": str(result.manifest),
                    "resumed_from": result.resumed_from})
    if result.exit_code:
        raise typer.Exit(result.exit_code)


def merge(
    config: ConfigArg,
    adapter: Annotated[Path | None, typer.Option(
        "--adapter", help="LoRA adapter dir (default: the config's output_dir).")] = None,
    checkpoint: Annotated[str | None, typer.Option(
        "--checkpoint", help="Which saved adapter of the run: best (the winner of vlm select), final, N or "
                             "checkpoint-N.")] = None,
    export_dir: Annotated[Path | None, typer.Option(
        "--export-dir", help="Where the merged model goes (default: ADAPTER-merged).")] = None,
    export_size: Annotated[int, typer.Option("--export-size", min=1, help="Shard size in GB.")] = 5,
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Merge a trained LoRA adapter into its base model with llamafactory-cli export (on the CPU)."""
    from vlm.output import info, print_json
    from vlm.output import out as stdout
    from vlm.training.merge import MergeSpec
    from vlm.training.merge import merge as run_merge

    try:
        plan, merged, code = run_merge(MergeSpec(config, adapter, export_dir, export_size, dry_run, checkpoint))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    if as_json:
        print_json({**plan.as_dict(), "config": merged, "exit_code": code})
    elif dry_run:
        stdout.print(plan.describe(), markup=False, highlight=False)
    elif not code:
        info(f"merged model in {merged['export_dir']}")
    if code:
        raise typer.Exit(code)


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


def register(app: typer.Typer) -> None:
    """Add the training commands to ``app``."""
    app.command("render-config", help=help_text(render_config) + examples(
        "vlm render-config configs/cord.yaml",
        "vlm render-config configs/cord_qlora.yaml --method qlora --lora-rank 16",
        "vlm render-config configs/cord_z3.yaml --deepspeed z3 --output-dir saves/cord_z3",
        "vlm render-config - learning_rate=5e-5 num_train_epochs=3",
        "vlm render-config configs/cord_es.yaml --early-stopping 3"))(render_config)
    app.command("validate", help=help_text(validate) + examples(
        "vlm validate configs/cord.yaml",
        "vlm validate configs/cord.yaml learning_rate=5e-5 --json"))(validate)
    app.command("train", help=help_text(train) + examples(
        "vlm train configs/cord.yaml",
        "vlm train configs/cord.yaml --resume",
        "vlm train configs/cord.yaml num_train_epochs=3 output_dir=saves/cord_e3",
        "vlm train configs/cord.yaml --nproc-per-node 8 --dry-run",
        "vlm train configs/cord.yaml --nnodes 2 --node-rank 0 --master-addr 10.0.0.1 --nproc-per-node 8",
        "vlm train configs/cord.yaml --nproc-per-node 8 --deepspeed z2"))(train)
    app.command("merge", help=help_text(merge) + examples(
        "vlm merge configs/cord.yaml",
        "vlm merge configs/cord.yaml --checkpoint best --export-dir saves/cord-best-merged",
        "vlm merge configs/cord.yaml --adapter saves/qwen2_vl-2b/lora/cord/checkpoint-500 "
        "--export-dir saves/merged"))(merge)
    app.command("sweep", help=help_text(sweep) + examples(
        "vlm sweep configs/cord.yaml --lr 1e-4,5e-5 --lora-rank 8,16 --epochs 3,10",
        "vlm sweep configs/cord.yaml --lr 1e-4,5e-5 --out-dir configs/sweep --json",
        "vlm sweep configs/cord.yaml --method lora,full --lr 1e-4,1e-5 --run",
        "vlm sweep configs/cord.yaml --augment 0,2 --run",
        "vlm sweep configs/cord.yaml --lr 1e-4,5e-5 --print-commands"))(sweep)
