"""Training commands: render-config, validate, stats, train, merge.

Each command checks its options, calls one function in ``vlm.training`` and prints the result. Nothing heavy
is imported here, so ``vlm --help`` stays fast.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from vlm.commands.common import NEAR_TIE, ConfigArg, DryRunOpt, JsonOpt, NearTieOpt, command

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


def _print_relaxed(validation) -> None:
    from vlm.output import info

    for line in validation.relaxed:
        info(f"  [dim]relaxed:[/dim] {line}")
    for line in validation.notes:
        info(f"  [dim]note:[/dim] {line}")


@command(
    "render-config",
    "vlm render-config configs/cord.yaml",
    "vlm render-config configs/cord_qlora.yaml --method qlora --lora-rank 16",
    "vlm render-config configs/cord_z3.yaml --deepspeed z3 --output-dir saves/cord_z3",
    "vlm render-config - learning_rate=5e-5 num_train_epochs=3",
    "vlm render-config configs/cord_es.yaml --early-stopping 3",
)
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


@command(
    "validate",
    "vlm validate configs/cord.yaml",
    "vlm validate configs/cord.yaml learning_rate=5e-5 --json",
)
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


DatasetOpt = Annotated[
    list[str] | None,
    typer.Option("--dataset", help="Dataset name from dataset_info.json (repeatable); replaces the config's dataset."),
]


ImageMaxPixelsOpt = Annotated[
    int | None, typer.Option("--image-max-pixels", min=1, help="Override image_max_pixels (e.g. 262144 = 512*512).")
]


CutoffLenOpt = Annotated[int | None, typer.Option("--cutoff-len", min=1, help="Override cutoff_len.")]


LimitOpt = Annotated[int | None, typer.Option("--limit", min=1, help="Count only the first N examples.")]


FailOpt = Annotated[
    bool, typer.Option("--fail-on-truncation", help="Exit 1 when any example exceeds cutoff_len (for CI and scripts).")
]


def _print_report(report, as_json: bool) -> None:
    from rich.table import Table

    from vlm.output import out, print_json

    if as_json:
        print_json(report.to_dict())
        return
    table = Table(title=f"tokens per example ({report.n_total} examples, {', '.join(report.datasets)}, "
                        f"image_max_pixels={report.image_max_pixels})")
    table.add_column("tokens")
    for col in ("p50", "p90", "p99", "max"):
        table.add_column(col, justify="right")
    for kind, row in report.percentiles().items():
        table.add_row(kind, *(str(row[c]) for c in ("p50", "p90", "p99", "max")))
    out.print(table)
    first, *rest = report.recommendation.splitlines()
    style = "red" if report.n_over else "green"
    out.print(f"[{style}]{first}[/{style}]", highlight=False)
    if report.dropped:
        out.print(f"{len(report.dropped)} malformed examples are dropped by LLaMA-Factory and not counted",
                  highlight=False)
    for line in rest:
        out.print(line, highlight=False)
    best = report.recommended_image_max_pixels
    out.print(f"recommended image_max_pixels: {best if best is not None else 'none fits'}", highlight=False)
    out.print(f"recommended cutoff_len: {report.recommended_cutoff_len}", highlight=False)


@command(
    "stats",
    "vlm stats configs/cord.yaml",
    "vlm stats configs/cord.yaml --image-max-pixels 262144 --cutoff-len 1024",
    "vlm stats configs/cord.yaml --dataset cord_validation --limit 50 --json",
    "vlm stats configs/cord.yaml --fail-on-truncation",
)
def stats(
    config: ConfigArg,
    dataset: DatasetOpt = None,
    image_max_pixels: ImageMaxPixelsOpt = None,
    cutoff_len: CutoffLenOpt = None,
    limit: LimitOpt = None,
    fail_on_truncation: FailOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Count image, prompt, answer and total tokens of every training example, exactly as LLaMA-Factory does.

    Shows p50/p90/p99/max per kind, how many examples exceed cutoff_len (they would
    be truncated, which breaks image tokens), and the largest image_max_pixels and
    smallest cutoff_len that fit. Exits 0 even when some exceed, unless
    --fail-on-truncation.
    """
    from vlm.training.config import load_config
    from vlm.training.token_budget import check_config

    cfg = load_config(config)
    if dataset:
        cfg["dataset"] = list(dataset)
    if image_max_pixels is not None:
        cfg["image_max_pixels"] = image_max_pixels
    if cutoff_len is not None:
        cfg["cutoff_len"] = cutoff_len
    report = check_config(cfg, limit=limit, show_progress=not as_json)
    _print_report(report, as_json)
    if fail_on_truncation and report.n_over:
        raise typer.Exit(1)


@command(
    "train",
    "vlm train configs/cord.yaml",
    "vlm train configs/cord.yaml --resume",
    "vlm train configs/cord.yaml num_train_epochs=3 output_dir=saves/cord_e3",
    "vlm train configs/cord.yaml --nproc-per-node 8 --dry-run",
    "vlm train configs/cord.yaml --nnodes 2 --node-rank 0 --master-addr 10.0.0.1 --nproc-per-node 8",
    "vlm train configs/cord.yaml --nproc-per-node 8 --deepspeed z2",
)
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


@command(
    "merge",
    "vlm merge configs/cord.yaml",
    "vlm merge configs/cord.yaml --checkpoint best --export-dir saves/cord-best-merged",
    "vlm merge configs/cord.yaml --adapter saves/qwen2_vl-2b/lora/cord/checkpoint-500 "
    "--export-dir saves/merged",
    "vlm merge configs/cord.yaml --verify 32 --json",
    "vlm merge configs/cord.yaml --export-dir saves/merged --verify-only",
    "vlm merge configs/cord.yaml --no-verify",
)
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
    verify: Annotated[int, typer.Option(
        "--verify", min=0, help="After merging, predict the first N validation documents with the adapter and "
                                "with the merged model and compare (0 or --no-verify: skip).")] = 8,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip the check after merging.")] = False,
    verify_only: Annotated[bool, typer.Option(
        "--verify-only", help="Check the merged model already in the export dir; merge nothing.")] = False,
    verify_tokens: Annotated[int, typer.Option(
        "--verify-max-new-tokens", min=1, help="Generation length limit of the check.")] = 1024,
    near_tie: NearTieOpt = NEAR_TIE,
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Merge a trained LoRA adapter into its base model with llamafactory-cli export (on the CPU), then verify it.

    The check predicts N validation documents, greedy, on the transformers backend with the adapter and with the
    merged model, and compares: byte-identical answers, and for each difference the first differing token and both
    models' logit margins there. Exit 1 when a difference is drift (a margin above --near-tie), not a near-tie."""
    from vlm.inference.parity import VerifySpec, merge_and_verify
    from vlm.output import info, print_json
    from vlm.output import out as stdout
    from vlm.training.merge import MergeSpec

    check = VerifySpec(0 if no_verify else verify, near_tie, verify_tokens, only=verify_only)
    try:
        plan, merged, code, report = merge_and_verify(
            MergeSpec(config, adapter, export_dir, export_size, dry_run, checkpoint), check)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    if as_json:
        print_json({**plan.as_dict(), "config": merged, "exit_code": code,
                    "verify": report.to_dict() if report else None})
    elif dry_run:
        stdout.print(plan.describe(), markup=False, highlight=False)
    elif not code:
        info(f"{'checked the' if verify_only else ''} merged model in {merged['export_dir']}".strip())
        for line in report.lines() if report else []:
            stdout.print(line, markup=False, highlight=False)
    if code:
        raise typer.Exit(code)
    if report and not report.ok:
        raise typer.Exit(1)
