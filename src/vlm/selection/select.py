"""``vlm select``: score every saved checkpoint of one or more runs on the task metric, and keep the best.

For each run (a training config) every complete ``checkpoint-N`` and the final model are predicted on a split
by ``vlm.inference.predict.run_predict`` (the same backends, store and resume as ``vlm predict``), one store group each
(``select/<output_dir>/<checkpoint>``); they are scored as ``vlm evaluate`` scores groups (the same parser and
metrics) and ranked. Each model's gap to the best carries a 95% paired-bootstrap CI, so a tie is called a tie.
Models whose weights hash alike (the final model is usually the last checkpoint) are predicted once. Each run
gets ``selection.json`` (read by ``--checkpoint best``) and ``selection.png`` in its output_dir.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlm.errors import VlmError
from vlm.evaluation.compare import Group, align, bootstrap_delta, groups_from_store
from vlm.evaluation.confidence_metrics import coverage_at_precision, coverage_delta_ci
from vlm.evaluation.confidence_report import field_table
from vlm.evaluation.metrics import aggregate, score_documents
from vlm.fsutil import LockedError, atomic_write_json, now, try_lock
from vlm.inference.predict import PredictSpec, prediction_status, run_predict
from vlm.output import info, warn
from vlm.selection.report import plot_run
from vlm.training.checkpoints import (
    SELECTION_FILE,
    SELECTION_VERSION,
    final_model,
    final_step,
    list_checkpoints,
    model_kind,
    output_dir_of,
    training_holder,
    weights_hash,
)
from vlm.training.config import load_config

METRICS = ("f1", "ted_accuracy")
_COVERAGE = re.compile(r"coverage@(0?\.\d+)$")  # coverage@0.99: share of fields acceptable unread at that precision
SWEEP_STATUS = "sweep_status.json"
LEADERBOARD = "leaderboard.json"


@dataclass
class SelectOptions:
    """How to select: which split and checkpoints, the ranking metric, and how to predict (as vlm predict)."""

    split: str = "validation"
    checkpoints: str = "all"  # all, or last-N: the N newest checkpoints (the final model is always scored)
    metric: str = "f1"
    store: Path = Path("runs/predictions.sqlite")
    work_dir: Path = Path("runs/predict")
    batch_size: int = 8
    max_new_tokens: int = 1024
    limit: int | None = None
    backend: str = "auto"
    overwrite: bool = False  # redo groups stored from other weights or settings (a run retrained in place)
    resamples: int = 1000
    seed: int = 0
    out: Path | None = None  # the leaderboard of several runs (default: see leaderboard_path)
    sweeps: list[Path] = field(default_factory=list)
    plot: bool = True
    command: str = ""

    def keep(self) -> int | None:
        """How many of the newest checkpoints to score (None: all)."""
        if self.checkpoints == "all":
            return None
        match = re.fullmatch(r"last-(\d+)", self.checkpoints)
        if not match:
            raise VlmError(f"--checkpoints {self.checkpoints!r} is not 'all' or 'last-N'",
                           hint="e.g. --checkpoints last-3")
        return int(match.group(1))


@dataclass
class Candidate:
    """One model to score: a checkpoint or the final model (with the labels of identical ones in its run)."""

    run: str
    config: Path
    label: str
    step: int | None
    path: Path
    kind: str
    weights_hash: str
    group: str
    aliases: list[str] = field(default_factory=list)
    reuse: Candidate | None = None  # same weights as a model of an earlier run: its predictions are scored
    documents: int = 0
    stored: int = 0
    predicted: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    @property
    def name(self) -> str:
        return self.label + "".join(f" = {a}" for a in self.aliases)


@dataclass
class Run:
    config: Path
    output_dir: Path
    name: str
    candidates: list[Candidate]
    seen: list[str]  # every complete checkpoint at selection time, to tell a later one apart


def sweep_configs(folder: Path) -> list[Path]:
    """The configs of the finished points of a ``vlm sweep --run`` (``folder/sweep_status.json``)."""
    path = Path(folder) / SWEEP_STATUS
    if not Path(folder).is_dir():
        raise VlmError(f"sweep folder not found: {folder}", hint="pass the --out-dir of vlm sweep CONFIG ... --run.")
    if not path.is_file():
        raise VlmError(f"{folder} holds no run sweep ({SWEEP_STATUS} not found)",
                       hint="vlm sweep CONFIG ... --run --out-dir DIR writes it; or pass the configs as CONFIG ...")
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(status, dict):
            raise TypeError(f"a JSON {type(status).__name__}, not an object")
        version = status.get("version")
        if version != 1:  # before reading its points: another version may lay them out otherwise
            raise VlmError(f"{path} has an unknown version {version!r}",
                           hint="it was written by another vlm; rank its runs as CONFIG ... instead, or update vlm.")
        points = status["points"]
        states = [(str(p["name"]), p.get("config"), p.get("status")) for p in points]
    except (ValueError, KeyError, TypeError) as e:
        raise VlmError(f"{path} is not a sweep status file ({type(e).__name__}: {e})",
                       hint="it is written by vlm sweep --run; run the sweep again to rewrite it.") from None
    done = [(name, Path(cfg)) for name, cfg, state in states if state == "done" and isinstance(cfg, str)]
    left = [f"{name} ({state})" for name, _, state in states if state != "done"]
    if not done:
        raise VlmError(f"no finished point in {path}" + (f": {', '.join(left)}" if left else ""),
                       hint="resume the sweep (the same vlm sweep ... --run) and select once points are done.")
    if left:
        info(f"sweep {folder}: {len(done)} points done; not ranked: {', '.join(left)}")
    for name, cfg in done:
        if not cfg.is_file():
            raise VlmError(f"{path}: the config of point {name}, {cfg}, not found",
                           hint="its paths are relative to the folder vlm sweep ran in: run vlm select from there.")
    return [cfg for _, cfg in done]


def _display(output_dir: Path) -> str:
    rel = os.path.relpath(output_dir.absolute())
    return output_dir.absolute().as_posix() if rel.startswith("..") else Path(rel).as_posix()


def load_run(config: Path, opts: SelectOptions) -> Run:
    """A run's models to score, oldest first; models with the same weights are one candidate."""
    cfg = load_config(config)
    output_dir = output_dir_of(cfg, config)
    kind = model_kind(cfg)
    saved = list_checkpoints(output_dir)
    keep = opts.keep()
    steps = [int(p.name.split("-")[1]) for p in saved]
    chosen = list(zip(saved, steps)) if keep is None else list(zip(saved, steps))[-keep:] if keep else []
    models = [(p.name, step, p) for p, step in chosen]
    final = final_model(output_dir, kind)
    if final:
        models.append(("final", final_step(output_dir) or (steps[-1] if steps else None), final))
    if not models:
        raise VlmError(f"nothing to select in {output_dir}: no complete checkpoint-N and no final {kind}",
                       hint=f"train first (vlm train {config}); checkpoints are saved every save_steps steps.")
    name = _display(output_dir)
    candidates: list[Candidate] = []
    by_hash: dict[str, Candidate] = {}
    for label, step, path in models:
        digest = weights_hash(path)
        same = by_hash.get(digest)
        if same:  # one row, named for the later model (the final one is what a run keeps); its group stays
            same.aliases.append(same.label)
            # The weights are as old as the checkpoint that saved them first: with load_best_model_at_end (and
            # early stopping) the final model is an earlier checkpoint, while its step would be the last one.
            same.label, same.path = label, path
            same.step = same.step if same.step is not None else step
            continue
        by_hash[digest] = Candidate(name, config, label, step, path, kind, digest, f"select/{name}/{label}")
        candidates.append(by_hash[digest])
    return Run(config, output_dir, name, candidates, [p.name for p in saved])


def _spec(c: Candidate, opts: SelectOptions):
    common = dict(group=c.group, config=c.config, split=opts.split, store=opts.store, work_dir=opts.work_dir,
                  batch_size=opts.batch_size, max_new_tokens=opts.max_new_tokens, limit=opts.limit,
                  backend=opts.backend)
    if c.kind == "adapter":
        return PredictSpec(**common, adapter=str(c.path))
    return PredictSpec(**common, model=str(c.path), no_adapter=True, weights_hash=c.weights_hash)


def _plan(candidates: list[Candidate], opts: SelectOptions) -> tuple[list[str], dict[str, Any]]:
    """Read what the store already holds for each model; refuse groups made from other weights at once."""
    statuses, stale, ids = {}, [], None
    for c in candidates:
        if c.reuse:
            continue
        status = prediction_status(_spec(c, opts))
        statuses[c.group] = status
        ids = ids or status["ids"]
        c.documents, c.stored = len(status["ids"]), status["stored"]
        if status["made_otherwise"]:
            stale.append(f"{c.group} ({status['made_otherwise']})")
    if stale and not opts.overwrite:
        raise VlmError(f"{len(stale)} group(s) in {opts.store} hold predictions made from other weights or settings: "
                       + ", ".join(stale[:4]) + (" ..." if len(stale) > 4 else ""),
                       hint="the run was retrained in place, or --max-new-tokens, --backend or the prompt changed: "
                            "pass --overwrite to redo them.")
    return ids or [], statuses


def _predict(candidates: list[Candidate], statuses: dict[str, Any], opts: SelectOptions, show: bool) -> None:
    for i, c in enumerate(candidates, 1):
        where = f"[{i}/{len(candidates)}] {c.run} {c.name}"
        if c.reuse:
            info(f"{where}: same weights as {c.reuse.run} {c.reuse.label}; its predictions are scored")
            continue
        redo = opts.overwrite and statuses[c.group]["made_otherwise"]
        if c.stored == c.documents and not redo:
            info(f"{where}: already predicted ({c.documents} documents in {c.group})")
            continue
        info(f"{where}: predicting {c.documents - (0 if redo else c.stored)} of {c.documents} documents"
             + (f" ({c.stored} already stored)" if c.stored and not redo else ""))
        spec = _spec(c, opts)
        spec.overwrite = bool(redo)
        t0, cpu0 = time.perf_counter(), time.process_time()
        c.predicted = run_predict(spec, show_progress=show)["predicted"]
        c.seconds, c.cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0


def coverage_target(metric: str) -> float | None:
    """The precision of a ``coverage@P`` metric (None for the other metrics)."""
    m = _COVERAGE.match(metric)
    return float(m.group(1)) if m else None


def _field_tables(groups: list[Group], target: float) -> dict[str, dict]:
    """Each group's scored fields (as vlm evaluate reads them); refused when a group has no token scores."""
    tables = {}
    for g in groups:
        rows = [{"valid": a.valid, "repairs": a.repairs, "ground_truth": gt} for a, gt in zip(g.answers, g.gts)]
        table = field_table(g, rows)
        if table is None:  # (a table without fields is a model that extracted nothing: coverage 0)
            raise VlmError(f"--metric coverage@{target:g} needs token scores, and group {g.name!r} has none",
                           hint="predict the checkpoints again with this version: vlm select ... --overwrite.")
        tables[g.name] = table
    return tables


def _score(candidates: list[Candidate], ids: list[str], opts: SelectOptions):
    """Per group: the documents' scores and their aggregate metrics, read as vlm evaluate reads store groups.
    With a ``coverage@P`` metric, also each group's field table (else an empty dict)."""
    names = list(dict.fromkeys(c.group for c in candidates if not c.reuse))
    wanted = set(ids)
    groups = []
    for g in groups_from_store(opts.store, names, opts.split):
        keep = [k for k, d in enumerate(g.ids) if d in wanted]  # an earlier run without --limit stored more
        groups.append(Group(g.name, [g.ids[k] for k in keep], [g.answers[k] for k in keep],
                            [g.gts[k] for k in keep], raws=[g.raws[k] for k in keep] if g.raws else None,
                            scores=[g.scores[k] for k in keep] if g.scores else None))
    order, groups = align(groups)
    scores = {g.name: score_documents(g.preds, g.gts, [a.valid for a in g.answers]) for g in groups}
    metrics = {name: aggregate(s) for name, s in scores.items()}
    target = coverage_target(opts.metric)
    tables = _field_tables(groups, target) if target is not None else {}
    for name, table in tables.items():
        metrics[name][opts.metric] = coverage_at_precision(table["confidence"], table["label"], target)
    return len(order), scores, metrics, tables


def _group(c: Candidate) -> str:
    return c.reuse.group if c.reuse else c.group


def _ranked(candidates: list[Candidate], metrics: dict[str, dict], metric: str) -> list[Candidate]:
    """Best first by the metric, then the other main metric, then the earlier step (fewer steps, same score)."""
    other = METRICS[1 - METRICS.index(metric)] if metric in METRICS else "f1"

    def key(item: tuple[int, Candidate]):
        k, c = item
        m = metrics[_group(c)]
        return (-(m[metric] or 0.0), -(m[other] or 0.0), c.step if c.step is not None else float("inf"), k)

    return [c for _, c in sorted(enumerate(candidates), key=key)]


def _rows(ranked: list[Candidate], scores, metrics, n_docs: int, opts: SelectOptions,
          tables: dict[str, dict] | None = None) -> list[dict[str, Any]]:
    """Table rows, best first, each with its gap to the best and that gap's paired-bootstrap 95% CI."""
    best, rows = ranked[0], []
    for rank, c in enumerate(ranked, 1):
        m = metrics[_group(c)]
        gap, tied = None, False
        if c is not best:
            target = coverage_target(opts.metric)
            if _group(c) == _group(best):
                ci = [0.0, 0.0]
            elif target is not None:
                ci = coverage_delta_ci(tables[_group(best)], tables[_group(c)], n_docs, target, opts.resamples,
                                       opts.seed)
            else:
                ci = list(bootstrap_delta(scores[_group(best)], scores[_group(c)], n_docs, opts.resamples, opts.seed)
                          .get(opts.metric, (0.0, 0.0)))
            gap = {"delta": m[opts.metric] - metrics[_group(best)][opts.metric], "ci95": ci}
            tied = ci[1] >= 0  # the interval of (this - best) reaches 0: the data cannot order them
        rows.append({
            "rank": rank, "run": c.run, "config": str(c.config), "label": c.label, "aliases": c.aliases,
            "step": c.step, "path": str(c.path.absolute()), "kind": c.kind, "weights_hash": c.weights_hash,
            "group": _group(c), "reused_from": f"{c.reuse.run} {c.reuse.label}" if c.reuse else None,
            "documents": n_docs, "stored_before": c.stored, "predicted": c.predicted, "seconds": round(c.seconds, 2),
            "cpu_seconds": round(c.cpu_seconds, 2), "metrics": m, "gap": gap, "best": c is best, "tied": tied,
        })
    return rows


def leaderboard_path(runs: list[Run], opts: SelectOptions) -> Path:
    """--out, else the first sweep folder's leaderboard.json, else one beside the first run's output_dir."""
    if opts.out:
        return opts.out
    return (opts.sweeps[0] if opts.sweeps else runs[0].output_dir.absolute().parent) / LEADERBOARD


def _record(rows: list[dict[str, Any]], opts: SelectOptions, run: Run | None, extra: dict[str, Any]) -> dict[str, Any]:
    tied = [r["label"] if run else f"{r['run']} {r['label']}" for r in rows if r["tied"]]
    return {
        "version": SELECTION_VERSION, "created_at": now(), "command": opts.command,
        **({"config": str(run.config), "output_dir": str(run.output_dir.absolute()), "checkpoints_seen": run.seen}
           if run else {}),
        "split": opts.split, "documents": rows[0]["documents"], "limit": opts.limit,
        "store": str(opts.store.absolute()), "metric": opts.metric, "max_new_tokens": opts.max_new_tokens,
        "winner": rows[0], "tie": bool(tied), "tied_with": tied, **extra, "ranking": rows,
    }


def select_runs(configs: list[Path], opts: SelectOptions, show_progress: bool = True) -> dict[str, Any]:
    """Predict, score and rank every saved model of ``configs``' runs; write each run's selection.json and
    selection.png, and with several runs the overall leaderboard. Returns what ``--json`` prints."""
    if opts.metric not in METRICS and coverage_target(opts.metric) is None:
        raise VlmError(f"--metric {opts.metric!r} is not one of {', '.join(METRICS)}, coverage@P",
                       hint="e.g. --metric coverage@0.99: the share of fields acceptable unread at 99% precision.")
    opts.keep()
    configs = list(dict.fromkeys(Path(c) for c in configs))
    if not configs:
        raise VlmError("no run to select from", hint="pass training configs (vlm select CONFIG ...) or --sweep DIR.")
    runs = [load_run(c, opts) for c in configs]
    owners: dict[Path, Path] = {}
    for run in runs:
        other = owners.setdefault(run.output_dir.resolve(), run.config)
        if other != run.config:
            raise VlmError(f"{other} and {run.config} name the same output_dir {run.output_dir}",
                           hint="pass each run once.")
    with contextlib.ExitStack() as locks:
        for run in runs:
            _claim(run, locks)
        return _select_locked(runs, opts, show_progress)


def _claim(run: Run, locks: contextlib.ExitStack) -> None:
    """Hold the run's selection lock (two selections of one run would predict everything twice and race to write
    its selection.json), and say so when training still writes checkpoints there."""
    try:
        locks.enter_context(try_lock(run.output_dir / "vlm_select", note=f"pid {os.getpid()}"))
    except LockedError as e:
        raise VlmError(f"another vlm select is running on {run.output_dir} ({e.holder or 'lock ' + str(e.path)})",
                       hint="wait for it to finish; a rerun afterwards reuses everything it predicted.") from None
    holder = training_holder(run.output_dir)
    if holder:
        warn(f"vlm train is still running on {run.output_dir} ({holder}): ranking the {len(run.seen)} checkpoint(s) "
             "saved so far; rerun vlm select when it ends to score the rest")


def _select_locked(runs: list[Run], opts: SelectOptions, show_progress: bool) -> dict[str, Any]:
    candidates = [c for run in runs for c in run.candidates]
    first: dict[str, Candidate] = {}
    for c in candidates:  # the same weights in two runs (e.g. a point trained twice): predicted once
        earlier = first.setdefault(c.weights_hash, c)
        c.reuse = earlier if earlier is not c else None
    ids, statuses = _plan(candidates, opts)
    _predict(candidates, statuses, opts, show_progress)
    n_docs, scores, metrics, tables = _score(candidates, ids, opts)
    overall = _rows(_ranked(candidates, metrics, opts.metric), scores, metrics, n_docs, opts, tables)
    result: dict[str, Any] = {"metric": opts.metric, "split": opts.split, "documents": n_docs,
                              "store": str(opts.store), "runs": []}
    for run in runs:
        rows = _rows(_ranked(run.candidates, metrics, opts.metric), scores, metrics, n_docs, opts, tables)
        plot = None
        if opts.plot:
            plot = str(plot_run(run.output_dir, rows, opts.metric, opts.split))
        record = _record(rows, opts, run, {"plot": plot})
        atomic_write_json(run.output_dir / SELECTION_FILE, record)
        result["runs"].append({"run": run.name, "config": str(run.config), "selection": str(run.output_dir /
                               SELECTION_FILE), "plot": plot, "winner": rows[0], "tie": record["tie"],
                               "tied_with": record["tied_with"], "ranking": rows})
    result.update(leaderboard=overall, best=overall[0], tie=any(r["tied"] for r in overall),
                  tied_with=[f"{r['run']} {r['label']}" for r in overall if r["tied"]], leaderboard_file=None)
    if len(runs) > 1:
        path = leaderboard_path(runs, opts)
        best_per_run = {r["run"]: r["winner"]["label"] for r in result["runs"]}
        atomic_write_json(path, _record(overall, opts, None, {"best_per_run": best_per_run,
                                                             "sweeps": [str(s) for s in opts.sweeps]}))
        result["leaderboard_file"] = str(path)
        info(f"leaderboard of {len(runs)} runs: {path}")
    return result
