"""``vlm stats``: the token budget of a training config's data, counted exactly as LLaMA-Factory counts it."""

from __future__ import annotations

from typing import Annotated

import typer

from vlm.commands.common import ConfigArg, JsonOpt, add_examples

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


add_examples(stats, 
    "vlm stats configs/cord.yaml",
    "vlm stats configs/cord.yaml --image-max-pixels 262144 --cutoff-len 1024",
    "vlm stats configs/cord.yaml --dataset cord_validation --limit 50 --json",
    "vlm stats configs/cord.yaml --fail-on-truncation",
)


def register(app: typer.Typer) -> None:
    """Add ``stats`` to ``app``."""
    app.command("stats")(stats)
