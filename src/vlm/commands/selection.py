"""``vlm select``: rank every saved checkpoint of one or more runs by the task metric and keep the best."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vlm.commands.common import DEFAULT_STORE, Backend, JsonOpt, StoreOpt, check_store, command


@command(
    "select",
    "vlm select configs/cord.yaml",
    "vlm select configs/cord.yaml --checkpoints last-3 --metric ted_accuracy --limit 100",
    "vlm select configs/sweep/cord_lr1e-4.yaml configs/sweep/cord_lr5e-5.yaml --out reports/leaderboard.json",
    "vlm select --sweep configs/sweep --sweep configs/sweep-full --json",
    "vlm select configs/cord.yaml --metric coverage@0.99",
    "vlm predict --group best --config configs/cord.yaml --checkpoint best",
)
def select(
    configs: Annotated[list[Path] | None, typer.Argument(
        help="Training configs of the runs (their output_dir holds checkpoint-N and the final model).",
        metavar="CONFIG", show_default=False)] = None,
    sweeps: Annotated[list[Path] | None, typer.Option(
        "--sweep", help="A folder of vlm sweep --run: rank its finished points (repeat to rank several sweeps).",
        show_default=False)] = None,
    split: Annotated[str, typer.Option("--split", help="The split every checkpoint is scored on.")] = "validation",
    checkpoints: Annotated[str, typer.Option(
        "--checkpoints", help="all, or last-N: the N newest checkpoints (the final model is always scored).")] = "all",
    metric: Annotated[str, typer.Option(
        "--metric", help="What ranks the checkpoints: f1 (field F1, exact keys and values), ted_accuracy "
                         "(Donut's nTED accuracy; f1 and ted_accuracy break each other's ties) or coverage@P (the "
                         "share of fields a confidence threshold keeps at field precision P, e.g. coverage@0.99; "
                         "needs token scores).")] = "f1",
    store: StoreOpt = DEFAULT_STORE,
    work_dir: Annotated[Path, typer.Option("--work-dir", help="Scratch folder for prediction runs.")] = Path(
        "runs/predict"),
    backend: Annotated[Backend, typer.Option(
        "--backend", help="As vlm predict: auto (vLLM when installed and a GPU is visible, else transformers), "
                          "transformers, vllm or llamafactory.")] = Backend.auto,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Generation batch size.")] = 8,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Generation length limit.")] = 1024,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Score only the first N documents.")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Redo checkpoints whose stored predictions came from other weights or settings "
                            "(a run retrained in place).")] = False,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Where the leaderboard of several runs goes (default: DIR/leaderboard.json of the first "
                      "--sweep, else leaderboard.json beside the first run's output_dir).")] = None,
    resamples: Annotated[int, typer.Option("--bootstrap", min=100, help="Bootstrap resamples for the CIs.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Bootstrap seed.")] = 0,
    plot: Annotated[bool, typer.Option("--plot/--no-plot", help="Write OUTPUT_DIR/selection.png.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Predict every saved checkpoint of a run (and its final model) on the validation split, score each with
    vlm evaluate's metrics, and rank them, with the paired-bootstrap 95% CI of each one's gap to the best.

    Predictions go through vlm predict's machinery and store (one group per checkpoint, select/<output_dir>/
    <checkpoint>), so a killed selection resumes with what is missing, and a checkpoint already scored, or with
    the same weights as one (the final model is usually the last checkpoint), is not predicted again.

    Writes OUTPUT_DIR/selection.json (the winner; vlm predict --checkpoint best and vlm merge --checkpoint best
    read it) and OUTPUT_DIR/selection.png (F1 and nTED by step over LLaMA-Factory's loss curve). Several CONFIGs
    or --sweep put every run's checkpoints on one leaderboard and name each run's best.
    """
    import shlex
    import sys

    from vlm.output import print_json
    from vlm.selection.report import print_selection
    from vlm.selection.select import SelectOptions, select_runs, sweep_configs

    check_store(store, write=True)
    paths = list(configs or [])
    for folder in sweeps or []:
        paths += sweep_configs(folder)
    opts = SelectOptions(split=split, checkpoints=checkpoints, metric=metric, store=store, work_dir=work_dir,
                         batch_size=batch_size, max_new_tokens=max_new_tokens, limit=limit, backend=backend.value,
                         overwrite=overwrite, resamples=resamples, seed=seed, out=out, sweeps=list(sweeps or []),
                         plot=plot, command=shlex.join(["vlm", *sys.argv[1:]]))
    result = select_runs(paths, opts, show_progress=not as_json)
    if as_json:
        print_json(result)
        return
    print_selection(result)
