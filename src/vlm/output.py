"""One place for output: data to stdout (tables or JSON), logs and hints to stderr."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# Piped or redirected output is not cut to 80 columns: comparison tables are wide.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)  # data
err = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 160)  # logs, hints, progress


def print_json(obj: Any) -> None:
    """Machine-readable output: one JSON document on stdout."""
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, indent=2, default=str) + "\n")
    sys.stdout.flush()


def info(message: str) -> None:
    err.print(message, highlight=False)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {message}", highlight=False)


def progress(transient: bool = False):
    """A rich progress bar on stderr, shared by every long step."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=transient,
    )


@contextlib.contextmanager
def counting(show: bool, total: int, label: str) -> Iterator[Callable[[], None]]:
    """A transient progress bar for a counted loop; yields the function that advances it (a no-op if hidden)."""
    if not show:
        yield lambda: None
        return
    with progress(transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda: bar.advance(task)
