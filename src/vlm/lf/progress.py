"""Live training progress, read from LLaMA-Factory's ``output_dir/trainer_log.jsonl``.

LLaMA-Factory appends one JSON object per logging step, e.g.::

    {"current_steps": 1, "total_steps": 8, "loss": 6.95, "lr": 5e-05, "epoch": 0.25,
     "percentage": 12.5, "elapsed_time": "0:00:00", "remaining_time": "0:00:00"}

and evaluation logs carry ``eval_loss``. The parsing is pure (``TrainProgress.update``,
``TrainerLogTail``) and so is the rendering (``render_progress``), so tests can drive
both from a recorded file; ``LiveProgress`` only wires them to the terminal.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table

from vlm.output import err

TRAINER_LOG = "trainer_log.jsonl"


@dataclass
class TrainProgress:
    """The latest known state of a training run."""

    step: int = 0
    total: int = 0
    loss: float | None = None
    lr: float | None = None
    eval_loss: float | None = None
    epoch: float | None = None
    elapsed: str | None = None
    remaining: str | None = None
    records: int = 0

    def update(self, record: dict[str, Any]) -> None:
        """Fold one trainer_log record in; fields a record lacks keep their last value."""
        self.records += 1
        self.step = int(record.get("current_steps", self.step) or 0)
        self.total = int(record.get("total_steps", self.total) or 0)
        for key, attr in (("loss", "loss"), ("lr", "lr"), ("eval_loss", "eval_loss"), ("epoch", "epoch"),
                          ("elapsed_time", "elapsed"), ("remaining_time", "remaining")):
            if record.get(key) is not None:
                setattr(self, attr, record[key])

    @property
    def fraction(self) -> float:
        return min(self.step / self.total, 1.0) if self.total else 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_lines(lines: list[str] | str) -> list[dict[str, Any]]:
    """Complete JSON records from trainer_log lines; blank and unparseable lines are skipped."""
    if isinstance(lines, str):
        lines = lines.splitlines()
    records = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash; later lines are still good
        if isinstance(record, dict):
            records.append(record)
    return records


def progress_from_file(path: str | Path) -> TrainProgress:
    """The final state of a recorded trainer_log.jsonl."""
    state = TrainProgress()
    tail = TrainerLogTail(path)
    for record in tail.read():
        state.update(record)
    return state


class TrainerLogTail:
    """Read new complete records from a growing trainer_log.jsonl.

    A partial last line (the trainer is mid-write) is kept for the next read. If the
    file shrinks (LLaMA-Factory removes it when ``overwrite_output_dir`` is true), it is
    read again from the start.
    """

    def __init__(self, path: str | Path, offset: int = 0):
        self.path = Path(path)
        self.offset = offset
        self._partial = b""

    @classmethod
    def from_end(cls, path: str | Path) -> TrainerLogTail:
        """A tail that ignores what the file already holds (lines from an earlier run)."""
        path = Path(path)
        return cls(path, path.stat().st_size if path.is_file() else 0)

    def read(self) -> list[dict[str, Any]]:
        """Records completed since the last call (possibly none)."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size < self.offset:  # truncated or replaced
            self.offset, self._partial = 0, b""
        if size == self.offset:
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(size - self.offset)
        self.offset += len(data)
        data = self._partial + data
        complete, _, self._partial = data.rpartition(b"\n")
        return parse_lines(complete.decode("utf-8", errors="replace"))


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def progress_fields(p: TrainProgress) -> list[tuple[str, str]]:
    """Label and text of every number the display shows (the same in the live view and the plain lines)."""
    step = f"{p.step}/{p.total} ({100 * p.fraction:.0f}%)" if p.total else str(p.step)
    return [
        ("step", step), ("loss", _num(p.loss, ".4f")), ("lr", _num(p.lr, ".2e")),
        ("eval loss", _num(p.eval_loss, ".4f")), ("epoch", _num(p.epoch, ".2f")),
        ("elapsed", p.elapsed or "-"), ("ETA", p.remaining or "-"),
    ]


def progress_line(p: TrainProgress) -> str:
    """One plain line, for logs and terminals without live redraw."""
    return "  ".join(f"{label} {text}" for label, text in progress_fields(p))


def render_progress(p: TrainProgress, title: str = "training"):
    """A rich renderable: a bar plus step/total, loss, lr, eval loss, epoch and ETA."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(width=30)
    for _ in progress_fields(p):
        grid.add_column(no_wrap=True)
    bar = ProgressBar(total=max(p.total, 1), completed=min(p.step, max(p.total, 1)), width=30)
    cells = [f"[dim]{label}[/dim] {text}" for label, text in progress_fields(p)]
    grid.add_row(title, bar, *cells)
    return grid


class LiveProgress:
    """Show a run's progress on stderr while it trains: a live view on a terminal, plain lines otherwise."""

    def __init__(self, log_path: Path, console=None, plain_every_s: float = 10.0, title: str = "training"):
        self.tail = TrainerLogTail.from_end(log_path)
        self.state = TrainProgress()
        self.console = console or err
        self.plain_every_s = plain_every_s
        self.title = title
        self._live = None
        self._last_plain = 0.0
        self._last_step = -1

    def __enter__(self) -> LiveProgress:
        if self.console.is_terminal:
            self._live = Live(render_progress(self.state, self.title), console=self.console,
                              refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def poll(self) -> None:
        """Read new records and redraw (called by the launcher while the child runs)."""
        records = self.tail.read()
        for record in records:
            self.state.update(record)
        if self._live is not None:
            if records:
                self._live.update(render_progress(self.state, self.title))
        elif records and self.state.step != self._last_step and (
                time.monotonic() - self._last_plain >= self.plain_every_s or self.state.step == self.state.total):
            self._last_plain, self._last_step = time.monotonic(), self.state.step
            self.console.print(progress_line(self.state), highlight=False)

    def __exit__(self, *exc) -> None:
        self.poll()
        if self._live is not None:
            self._live.__exit__(*exc)
