"""Training commands: render-config, validate, train, merge, sweep (being written)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the training commands to ``app``."""
    return None
