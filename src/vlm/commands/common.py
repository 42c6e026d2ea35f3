"""Options shared by several commands, defined once, and the one way a command is registered."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from enum import Enum
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
SplitOpt = Annotated[str, typer.Option("--split", help="Which split's documents (train, validation or test).")]


class AugmentPolicy(str, Enum):
    light = "light"
    medium = "medium"
    heavy = "heavy"


class Backend(str, Enum):
    """``--backend`` choices (vlm.inference.vllm_backend.BACKENDS; a test checks they agree)."""

    auto = "auto"
    transformers = "transformers"
    vllm = "vllm"
    llamafactory = "llamafactory"


def examples(*lines: str) -> str:
    """An 'Examples' block for the end of a command's help text."""
    body = "\n\n".join(f"  $ {line}" for line in lines)
    return f"\n\nExamples:\n\n{body}"


def help_text(command: Callable) -> str:
    """A command's docstring as help: dedented, each paragraph on one line so the terminal rewraps it."""
    paragraphs = inspect.cleandoc(command.__doc__ or "").split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


def command(name: str, *example_lines: str) -> Callable[[Callable], Callable]:
    """Mark a function as the command ``vlm NAME``, with the examples that end its help (kept beside it)."""

    def mark(fn: Callable) -> Callable:
        fn.vlm_command = (name, example_lines)
        return fn

    return mark


def register(app: typer.Typer, module) -> None:
    """Add each command that ``module`` marks with ``@command`` to ``app``, in the order they are defined."""
    for fn in vars(module).values():
        if callable(fn) and hasattr(fn, "vlm_command"):
            name, lines = fn.vlm_command
            app.command(name, help=help_text(fn) + examples(*lines))(fn)


SQLITE_HEADER = b"SQLite format 3\x00"


def check_store(store: Path, write: bool = False) -> None:
    """Refuse, before any work, a --store that is a folder or not an SQLite file, or (``write``) whose
    folder cannot be written: one line naming the path and the reason."""
    from vlm.errors import VlmError
    from vlm.fsutil import ensure_dir

    if store.is_dir():
        raise VlmError(f"--store {store} is a directory, not a prediction store (an SQLite file)",
                       hint="pass the store file, e.g. --store runs/predictions.sqlite.")
    if store.is_file():
        with open(store, "rb") as f:
            head = f.read(len(SQLITE_HEADER))
        if head and head != SQLITE_HEADER:
            raise VlmError(f"--store {store} is not an SQLite file, so not a vlm prediction store; left untouched",
                           hint="pass the store vlm predict wrote, or a new path.")
    if write:
        ensure_dir(store.absolute().parent, "store folder")


NearTieOpt = Annotated[float, typer.Option(
    "--near-tie", min=0, help="Largest logit margin (on both sides) at which a differing token counts as a near-tie, "
                              "not drift.")]
NEAR_TIE = 0.5  # vlm.inference.parity.NEAR_TIE, which commands do not import (a test checks they agree)
