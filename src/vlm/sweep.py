"""``vlm sweep``: a grid of training configs, and running that grid one point after another.

Each grid point is a full config of its own (``OUT_DIR/<name>.yaml``) with its own
``output_dir``, so it trains, logs and records ``vlm_run.json`` exactly as ``vlm train``
does. ``--run`` trains the points in order and keeps ``OUT_DIR/sweep_status.json``:

    {"version": 1, "command": "vlm sweep ...", "points": [
        {"name", "config", "output_dir", "settings", "config_sha256", "status", "attempts",
         "exit_code", "error", "log", "resumed_from", "started_at", "ended_at", "pid"}]}

``status`` is ``pending``, ``running``, ``done`` or ``failed``. The file is rewritten
atomically at every change, so a sweep killed at any moment leaves it readable; a rerun
of the same command skips ``done`` points, continues an interrupted point from its newest
complete checkpoint, and retries ``failed`` ones. A failed point never stops the others.
An exclusive lock on OUT_DIR refuses a second sweep there while one runs.
"""

from __future__ import annotations

import itertools
import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlm.config import apply_method, config_header, render_yaml
from vlm.errors import VlmError
from vlm.fsutil import LockedError, atomic_write_json, atomic_write_text, sha256_bytes, try_lock

STATUS_FILE = "sweep_status.json"
# Grid keys (LLaMA-Factory names, plus "method" and "augment") and the tags they get in point names, in name order.
TAGS = {"method": "", "augment": "aug", "learning_rate": "lr", "lora_rank": "r", "num_train_epochs": "e"}
LORA_ONLY = ("lora_rank",)
NOT_CONFIG_KEYS = ("method", "augment")  # grid keys that set other keys rather than being one


def _fmt_number(x: float) -> str:
    """``1e-4`` rather than ``0.0001``; integers without a decimal point."""
    if float(x).is_integer() and abs(x) < 1e4:
        return str(int(x))
    mantissa, exponent = f"{x:e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def _tag(key: str, value: Any) -> str:
    return f"{TAGS.get(key, key)}{value if isinstance(value, str) else _fmt_number(value)}"


@dataclass
class SweepPoint:
    """One grid point: its file, its settings and its output_dir."""

    name: str
    path: Path
    settings: dict[str, Any]
    config: dict[str, Any]
    text: str = ""  # the YAML written to ``path``
    notes: list[str] = field(default_factory=list)  # extra header lines, e.g. what its dataset holds

    @property
    def sha256(self) -> str:
        return sha256_bytes(self.text.encode())


def sweep_points(base: dict[str, Any], base_name: str, out_dir: Path, grid: dict[str, list[Any]],
                 datasets: dict[int, tuple[str, str]] | None = None) -> list[SweepPoint]:
    """The cartesian product of ``grid`` over ``base``, one config per point.

    ``grid`` maps LLaMA-Factory keys (and ``method``: lora, qlora, full, freeze; ``augment``: copies per train
    image) to values. A method is applied first (``vlm render-config --method``'s keys), so a learning rate in
    the grid still wins. LoRA ranks only apply to LoRA points: a full point appears once, not once per rank.
    ``datasets`` maps each ``augment`` value to (the dataset its points train on, a line saying what it holds).
    """
    keys = [k for k in TAGS if grid.get(k)] + [k for k in grid if grid[k] and k not in TAGS]
    methods = grid.get("method") or [None]
    base_method = "lora" if base.get("finetuning_type", "lora") == "lora" else base["finetuning_type"]
    if grid.get("lora_rank") and not any((m or base_method) in ("lora", "qlora") for m in methods):
        raise VlmError("--lora-rank needs a LoRA config or --method lora",
                       hint="drop --lora-rank for freeze/full sweeps.")
    points, seen = [], set()
    for combo in itertools.product(*(grid[k] for k in keys)):
        settings = dict(zip(keys, combo))
        method = settings.get("method", base_method)
        if method not in ("lora", "qlora"):
            settings = {k: v for k, v in settings.items() if k not in LORA_ONLY}
        suffix = "_".join(_tag(k, v) for k, v in settings.items())
        if suffix in seen:
            continue
        seen.add(suffix)
        cfg = apply_method(base, method) if "method" in settings else dict(base)
        cfg.update({k: v for k, v in settings.items() if k not in NOT_CONFIG_KEYS})
        notes = []
        if "augment" in settings:
            cfg["dataset"], note = (datasets or {})[settings["augment"]]
            notes.append(note)
        cfg["output_dir"] = f"{str(base.get('output_dir', 'saves/sweep')).rstrip('/')}_{suffix}"
        name = f"{base_name}_{suffix}"
        points.append(SweepPoint(name, out_dir / f"{name}.yaml", settings, cfg, notes=notes))
    return points


def write_points(points: list[SweepPoint], command: str, out_dir: Path, force: bool,
                 before_write: Callable[[], None] | None = None) -> list[Path]:
    """Validate and write every point's config; a file holding something else (a hand edit) is replaced
    only with ``force``, and nothing is written unless every file can be. ``before_write`` runs once every
    check has passed (it makes the data the configs name). Returns the files that changed."""
    from vlm.validation import validate_config

    for point in points:
        validate_config(point.config)
        header = config_header(f"{command} --out-dir {out_dir}", str(point.path))
        header[2:2] = ["Grid point:  " + ", ".join(f"{k}={v}" for k, v in point.settings.items()),
                       *(f"Dataset:     {note}" for note in point.notes)]
        point.text = render_yaml(point.config, header)
    changed = [p.path for p in points if not p.path.is_file() or p.path.read_bytes() != p.text.encode()]
    edited = [path for path in changed if path.exists()]
    if edited and not force:
        shown = ", ".join(str(p) for p in edited[:3]) + (f" and {len(edited) - 3} more" if len(edited) > 3 else "")
        raise VlmError(f"{len(edited)} config(s) in {out_dir} hold something else: {shown}",
                       hint="pass --force to replace them, or choose another --out-dir.")
    if before_write:
        before_write()
    texts = {p.path: p.text for p in points}
    for path in changed:
        atomic_write_text(path, texts[path])
    return changed


@dataclass
class AugmentAxis:
    """``--augment 0,2``: copies per train image, one derived dataset per value (``vlm.augmented_dataset``)."""

    copies: list[int]
    policy: str = "medium"
    seed: int = 0


def write_sweep(config: Path, grid: dict[str, list[Any]], out_dir: Path, command: str, force: bool,
                augment: AugmentAxis | None = None, show_progress: bool = True) -> tuple[list[SweepPoint],
                                                                                       list[dict[str, Any]]]:
    """Render, validate and write the grid's configs; with ``augment``, first make the derived train datasets
    they name (after every refusal check, before any config is written, so each config can run anywhere).
    Returns the points and, per ``--augment`` value, its dataset's summary."""
    from contextlib import nullcontext

    from vlm.config import load_config

    base = load_config(config)
    datasets, made, train = {}, [], None
    if augment:
        from vlm.augment import AugmentSpec
        from vlm.augmented_dataset import describe, read_base

        AugmentSpec(0, augment.policy, augment.seed)  # an unknown policy is refused before anything is read
        train = read_base(base)
        grid = {**grid, "augment": augment.copies}
        datasets = {n: describe(train, n, augment.policy, augment.seed) for n in augment.copies}
    points = sweep_points(base, config.stem, out_dir, grid, datasets)

    def make_datasets() -> None:
        if not augment:
            return
        from vlm.augmented_dataset import make_derived
        from vlm.output import progress

        with progress() if show_progress else nullcontext() as bar:
            for n in augment.copies:
                made.append(make_derived(train, n, augment.policy, augment.seed, progress=bar))

    write_points(points, command, out_dir, force, before_write=make_datasets)
    return points, made


def train_commands(points: list[SweepPoint]) -> list[str]:
    """One ``vlm train`` line per point, for a scheduler or LLaMA-Factory's own launchers to run anywhere."""
    return [shlex.join(["vlm", "train", str(p.path)]) for p in points]


# ---------------------------------------------------------------- running a sweep


@dataclass
class RunOptions:
    """How ``vlm sweep --run`` trains each point."""

    allow_truncation: bool = False
    on_point: Callable[[int, int, dict[str, Any]], None] | None = None  # (index, total, status row) at each start
    extra: dict[str, Any] = field(default_factory=dict)


def read_status(out_dir: Path) -> dict[str, Any]:
    """``OUT_DIR/sweep_status.json``, or an empty one; a damaged file is an error, never silently replaced."""
    import json

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
    from vlm.train import TRAIN_LOG

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
    from vlm.train import MODEL_FILES

    return any((Path(row["output_dir"]) / name).is_file() for name in MODEL_FILES)


def _finished_earlier(row: dict[str, Any]) -> bool:
    """A point whose training ended well but whose sweep was killed before it could say so."""
    import json

    from vlm.train import RUN_MANIFEST

    manifest = Path(row["output_dir"]) / RUN_MANIFEST
    try:
        record = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return record.get("exit_code") == 0 and record.get("started_at", "") >= (row.get("started_at") or "")


def _train_point(row: dict[str, Any], options: RunOptions) -> None:
    """Train one point (continuing from its newest checkpoint if it has one) and record how it ended."""
    from vlm.lf.cli import now
    from vlm.train import TrainSpec, checkpoints, train

    output_dir = Path(row["output_dir"]).resolve()  # relative to the working directory, as vlm train reads it
    found = checkpoints(output_dir)
    if found and row["attempts"] == 1:
        row.update(status="failed", error=f"{output_dir} already has checkpoints that this sweep did not write "
                                          f"(newest: {found[-1].name}); move them away or use another --out-dir",
                   ended_at=now())
        return
    try:
        result = train(TrainSpec(Path(row["config"]), resume=bool(found), allow_truncation=options.allow_truncation))
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
    """Train every point that is not done yet, one after another, keeping the status file current.

    Returns the status (``interrupted`` is set when Ctrl-C or SIGTERM stopped it). Points are
    trained in this process's working directory, as ``vlm train`` would be.
    """
    from vlm.lf.cli import now

    try:
        with try_lock(out_dir / "vlm_sweep", note=f"pid {os.getpid()}"):
            return _run_locked(points, out_dir, command, options, now)
    except LockedError as e:
        raise VlmError(f"another vlm sweep --run is running in {out_dir} ({e.holder or 'lock ' + str(e.path)})",
                       hint="wait for it to finish; a rerun afterwards continues where it stopped.") from None


def _run_locked(points: list[SweepPoint], out_dir: Path, command: str, options: RunOptions,
                now: Callable[[], str]) -> dict[str, Any]:
    from vlm.output import info, warn

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
        if options.on_point:
            options.on_point(index, len(todo), row)
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


def summary(status: dict[str, Any]) -> dict[str, int]:
    """How many points are in each state."""
    counts = {"pending": 0, "running": 0, "done": 0, "failed": 0}
    for row in status["points"]:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return counts


def rank(out_dir: Path, split: str, checkpoints: str, max_new_tokens: int, show_progress: bool) -> dict[str, Any]:
    """``vlm select`` over the sweep's finished points: every run's checkpoints on one leaderboard, written to
    ``OUT_DIR/leaderboard.json``; each run's selection.json names its own best."""
    import shlex

    from vlm.select import SelectOptions, select_runs, sweep_configs

    command = shlex.join(["vlm", "select", "--sweep", str(out_dir), "--split", split, "--checkpoints", checkpoints,
                          "--max-new-tokens", str(max_new_tokens)])
    opts = SelectOptions(split=split, checkpoints=checkpoints, max_new_tokens=max_new_tokens, sweeps=[out_dir],
                         command=command)
    return select_runs(sweep_configs(out_dir), opts, show_progress=show_progress)
