"""Options shared by several commands, defined once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout instead of tables.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print the command and its environment; run nothing.")]
ConfigArg = Annotated[Path, typer.Argument(help="A LLaMA-Factory training YAML, e.g. configs/cord.yaml.")]
StoreOpt = Annotated[
    Path, typer.Option("--store", help="SQLite prediction store.", envvar="VLM_STORE"),
]
DEFAULT_STORE = Path("runs/predictions.sqlite")


def examples(*lines: str) -> str:
    """An 'Examples' block for the end of a command's help text."""
    body = "\n\n".join(f"  $ {line}" for line in lines)
    return f"\n\nExamples:\n\n{body}"
