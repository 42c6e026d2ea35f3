"""``vlm sweep``: a grid of training configs, and running that grid one point after another.

Each grid point is a full config of its own (``OUT_DIR/<name>.yaml``) with its own
``output_dir``, so it trains, logs and records ``vlm_run.json`` exactly as ``vlm train``
does. ``--run`` trains them in order (``vlm.sweep.run``).
"""

from __future__ import annotations

import itertools
import shlex
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlm.data.augment import AugmentSpec
from vlm.data.augmented_dataset import describe, make_derived, read_base
from vlm.errors import VlmError
from vlm.fsutil import atomic_write_text, sha256_bytes
from vlm.output import progress
from vlm.training.config import apply_method, config_header, load_config, render_yaml
from vlm.training.validation import validate_config

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
        """Of the config itself, not its header: the header names the whole grid, which grows."""
        return sha256_bytes(body(self.text).encode())


def body(text: str) -> str:
    """A rendered config without its opening comment lines."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.strip() and not line.startswith("#")), len(lines))
    return "".join(lines[start:])


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
    for point in points:
        validate_config(point.config)
        header = config_header(f"{command} --out-dir {out_dir}", str(point.path))
        header[2:2] = ["Grid point:  " + ", ".join(f"{k}={v}" for k, v in point.settings.items()),
                       *(f"Dataset:     {note}" for note in point.notes)]
        point.text = render_yaml(point.config, header)
    # A file holding the same config under an older header (a smaller grid) is kept as it is, so
    # growing a grid leaves its finished points alone.
    for p in points:
        if p.path.is_file():
            old = p.path.read_text(encoding="utf-8", errors="replace")
            if body(old) == body(p.text):
                p.text = old
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
    """``--augment 0,2``: copies per train image, one derived dataset per value (``vlm.data.augmented_dataset``)."""

    copies: list[int]
    policy: str = "medium"
    seed: int = 0


def write_sweep(config: Path, grid: dict[str, list[Any]], out_dir: Path, command: str, force: bool,
                augment: AugmentAxis | None = None, show_progress: bool = True) -> tuple[list[SweepPoint],
                                                                                       list[dict[str, Any]]]:
    """Render, validate and write the grid's configs; with ``augment``, first make the derived train datasets
    they name (after every refusal check, before any config is written, so each config can run anywhere).
    Returns the points and, per ``--augment`` value, its dataset's summary."""
    base = load_config(config)
    datasets, made, train = {}, [], None
    if augment:
        AugmentSpec(0, augment.policy, augment.seed)  # an unknown policy is refused before anything is read
        train = read_base(base)
        grid = {**grid, "augment": augment.copies}
        datasets = {n: describe(train, n, augment.policy, augment.seed) for n in augment.copies}
    points = sweep_points(base, config.stem, out_dir, grid, datasets)

    def make_datasets() -> None:
        if not augment:
            return

        with progress() if show_progress else nullcontext() as bar:
            for n in augment.copies:
                made.append(make_derived(train, n, augment.policy, augment.seed, progress=bar))

    write_points(points, command, out_dir, force, before_write=make_datasets)
    return points, made


def train_commands(points: list[SweepPoint]) -> list[str]:
    """One ``vlm train`` line per point, for a scheduler or LLaMA-Factory's own launchers to run anywhere."""
    return [shlex.join(["vlm", "train", str(p.path)]) for p in points]
