"""``vlm sweep --run``: train a grid's points one after another, keep their status, rank them at the end.

``OUT_DIR/sweep_status.json``:

    {"version": 1, "command": "vlm sweep ...", "points": [
        {"name", "config", "output_dir", "settings", "config_sha256", "status", "attempts",
         "exit_code", "error", "log", "resumed_from", "started_at", "ended_at", "pid"}]}

``status`` is ``pending``, ``running``, ``done`` or ``failed``. The file is rewritten
atomically at every change, so a sweep killed at any moment leaves it readable; a rerun
of the same command skips ``done`` points, continues an interrupted point from its newest
complete checkpoint, and retries ``failed`` ones. A failed point never stops the others.
An exclusive lock on OUT_DIR, taken before any config is written, refuses a second sweep there
while one runs. Rows of other grids in the same folder are kept but neither counted nor ranked.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlm.data.augmented_dataset import split_dataset_name
from vlm.errors import VlmError
from vlm.fsutil import LockedError, atomic_write_json, now, try_lock
from vlm.lf.data import dataset_names, read_dataset_info
from vlm.output import info, warn
from vlm.selection.select import SelectOptions, select_runs
from vlm.sweep.grid import SweepPoint
from vlm.training.checkpoints import list_checkpoints, resume_reloads_base_weights
from vlm.training.config import load_config
from vlm.training.train import MODEL_FILES, RUN_MANIFEST, TRAIN_LOG, TrainSpec, train

STATUS_FILE = "sweep_status.json"


@contextlib.contextmanager
def sweep_lock(out_dir: Path) -> Iterator[None]:
    """Hold OUT_DIR for one sweep: from before its configs are written until its last point ends."""
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        lock = try_lock(out_dir / "vlm_sweep", note=f"pid {os.getpid()}")
        lock.__enter__()
    except LockedError as e:
        raise VlmError(f"another vlm sweep --run is running in {out_dir} ({e.holder or 'lock ' + str(e.path)})",
                       hint="wait for it to finish; a rerun afterwards continues where it stopped.") from None
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


@dataclass
class RunOptions:
    """How ``vlm sweep --run`` trains each point."""

    allow_truncation: bool = False


def read_status(out_dir: Path) -> dict[str, Any]:
    """``OUT_DIR/sweep_status.json``, or an empty one; a damaged file is an error, never silently replaced."""
    path = out_dir / STATUS_FILE
    if not path.is_file():
        return {"version": 1, "command": None, "points": []}
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(status.get("points"), list):
            raise ValueError("no 'points' list")
    except (ValueError, AttributeError, UnicodeDecodeError) as e:
        raise VlmError(f"{path} is not a sweep status file ({e})",
                       hint="move it away (it is never overwritten), or use another --out-dir.") from None
    return status


def _row(point: SweepPoint) -> dict[str, Any]:
    return {"name": point.name, "config": str(point.path), "output_dir": str(point.config["output_dir"]),
            "settings": point.settings, "config_sha256": point.sha256, "status": "pending", "attempts": 0,
            "exit_code": None, "error": None, "log": str(Path(point.config["output_dir"]).resolve() / TRAIN_LOG),
            "resumed_from": None, "started_at": None, "ended_at": None, "pid": None}


def _merge_rows(status: dict[str, Any], points: list[SweepPoint]) -> list[dict[str, Any]]:
    """This grid's rows in grid order (earlier rows of other grids in the same folder are kept after them).
    A point whose config changed since its row was written starts again from pending."""
    old = {row.get("name"): row for row in status["points"] if isinstance(row, dict)}
    rows = []
    for point in points:
        row = old.pop(point.name, None)
        if row is None or row.get("config_sha256") != point.sha256:
            row = {**_row(point), "previous_config_sha256": row.get("config_sha256") if row else None}
        rows.append(row)
    return rows + list(old.values())


def _has_model(row: dict[str, Any]) -> bool:
    return any((Path(row["output_dir"]) / name).is_file() for name in MODEL_FILES)


def _finished_earlier(row: dict[str, Any]) -> bool:
    """A point whose training ended well but whose sweep was killed before it could say so."""
    manifest = Path(row["output_dir"]) / RUN_MANIFEST
    try:
        record = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return record.get("exit_code") == 0 and record.get("started_at", "") >= (row.get("started_at") or "")


def _train_point(row: dict[str, Any], options: RunOptions) -> None:
    """Train one point (continuing from its newest checkpoint if it has one) and record how it ended."""
    output_dir = Path(row["output_dir"]).resolve()  # relative to the working directory, as vlm train reads it
    found = list_checkpoints(output_dir)
    if found and row["attempts"] == 1:
        row.update(status="failed", error=f"{output_dir} already has checkpoints that this sweep did not write "
                                          f"(newest: {found[-1].name}); move them away or use another --out-dir",
                   ended_at=now())
        return
    overrides: dict[str, Any] = {}
    if found and (why := resume_reloads_base_weights(found[-1], load_config(Path(row["config"])))):
        # This sweep's own killed point, which cannot be resumed correctly: train it again from the start.
        warn(f"{row['config']}: {why}; training it again from the start")
        found, overrides = [], {"overwrite_output_dir": True}
        row["restarted"] = why
    try:
        result = train(TrainSpec(Path(row["config"]), overrides=overrides, resume=bool(found),
                                 allow_truncation=options.allow_truncation))
    except VlmError as e:
        row.update(status="failed", exit_code=e.exit_code, ended_at=now(),
                   error=e.message + (f" ({e.hint})" if e.hint else ""))
        return
    row.update(exit_code=result.exit_code, resumed_from=result.resumed_from, ended_at=now())
    if result.exit_code == 130:
        raise KeyboardInterrupt
    row.update(status="done" if result.exit_code == 0 else "failed",
               error=None if result.exit_code == 0 else f"llamafactory-cli exited with {result.exit_code}; "
                                                        f"see {row['log']}")


def run_sweep(points: list[SweepPoint], out_dir: Path, command: str, options: RunOptions) -> dict[str, Any]:
    """Train every point that is not done yet, one after another, keeping the status file current; the caller
    holds ``sweep_lock(out_dir)``. Returns the status (``interrupted`` is set when Ctrl-C or SIGTERM stopped
    it). Points are trained in this process's working directory, as ``vlm train`` would be."""
    return _run_locked(points, out_dir, command, options, now)


def _run_locked(points: list[SweepPoint], out_dir: Path, command: str, options: RunOptions,
                now: Callable[[], str]) -> dict[str, Any]:
    status = read_status(out_dir)
    rows = _merge_rows(status, points)
    status.update(version=1, command=command, points=rows, interrupted=False)
    path = out_dir / STATUS_FILE

    def save() -> None:
        status["updated_at"] = now()
        atomic_write_json(path, status)

    save()
    # A done point whose model is gone (the folder was cleaned up) is trained again.
    todo = [row for row in rows[: len(points)] if row["status"] != "done" or not _has_model(row)]
    for index, row in enumerate(todo, start=1):
        if row["status"] == "running" and _finished_earlier(row):
            row.update(status="done", exit_code=0, error=None, ended_at=row.get("ended_at") or now())
            save()
            continue
        was = row["status"]
        # Counted before training starts, so a sweep killed mid-point knows on its rerun that the
        # point's checkpoints are its own and continues from them.
        row.update(status="running", pid=os.getpid(), started_at=now(), ended_at=None, error=None, exit_code=None,
                   attempts=row.get("attempts", 0) + 1)
        info(f"sweep point {index}/{len(todo)}: {row['name']}" + (f" (was {was})" if was != "pending" else ""))
        save()
        try:
            _train_point(row, options)
        except KeyboardInterrupt:
            row.update(pid=None, status="pending", error="interrupted", ended_at=now())
            status["interrupted"] = True
            save()
            warn(f"sweep interrupted during {row['name']}; rerun the same command to continue")
            return status
        row["pid"] = None
        save()
        if row["status"] == "failed":
            warn(f"{row['name']} failed: {row['error']}; continuing with the next point")
    return status


def summary(status: dict[str, Any], n_points: int) -> dict[str, int]:
    """How many of this grid's points (the first ``n_points`` rows) are in each state."""
    counts = {"pending": 0, "running": 0, "done": 0, "failed": 0}
    for row in status["points"][:n_points]:
        counts[str(row.get("status"))] = counts.get(str(row.get("status")), 0) + 1
    return counts


def check_rank_options(points: list[SweepPoint], split: str, checkpoints: str) -> None:
    """What the final ranking will need, checked before hours of training: the --checkpoints form and a
    registered split for every point's dataset."""
    SelectOptions(checkpoints=checkpoints).keep()
    for point in points:
        names = dataset_names(point.config.get("dataset"))
        if not names:
            continue
        dataset_dir = point.config.get("dataset_dir") or "data"
        info_path, info = read_dataset_info(dataset_dir)
        wanted = split_dataset_name(names[0], split)
        if wanted not in info:
            raise VlmError(f"--split {split}: {point.name} would be ranked on {wanted!r}, which is not registered in "
                           f"{info_path}", hint="export that split, pass another --split, or --no-select.")


def rank(status: dict[str, Any], n_points: int, out_dir: Path, split: str, checkpoints: str, max_new_tokens: int,
         show_progress: bool) -> dict[str, Any]:
    """``vlm select`` over this grid's finished points: every run's checkpoints on one leaderboard, written to
    ``OUT_DIR/leaderboard.json``; each run's selection.json names its own best."""
    configs = [Path(row["config"]) for row in status["points"][:n_points] if row.get("status") == "done"]
    command = shlex.join(["vlm", "select", *map(str, configs), "--split", split, "--checkpoints", checkpoints,
                          "--max-new-tokens", str(max_new_tokens), "--out", str(out_dir / "leaderboard.json")])
    opts = SelectOptions(split=split, checkpoints=checkpoints, max_new_tokens=max_new_tokens, sweeps=[out_dir],
                         command=command)
    return select_runs(configs, opts, show_progress=show_progress)
