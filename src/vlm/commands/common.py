"""Options shared by several commands, defined once."""

from __future__ import annotations

import inspect
from collections.abc import Callable
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


def help_text(command: Callable) -> str:
    """A command's docstring as help: dedented, each paragraph on one line so the terminal rewraps it."""
    paragraphs = inspect.cleandoc(command.__doc__ or "").split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


def add_examples(command: Callable, *lines: str) -> None:
    """End a command's help with examples."""
    command.__doc__ = help_text(command) + examples(*lines)
