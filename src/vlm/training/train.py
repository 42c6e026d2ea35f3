"""``vlm train``: preflight, resume and the run manifest (grids of runs: ``vlm.sweep.grid``).

A run writes, beside its checkpoints in ``output_dir``:

* ``vlm_resolved_config.yaml``: the config LLaMA-Factory actually reads (overrides
  merged, paths absolute, ``resume_from_checkpoint`` set by ``--resume``);
* ``train.log``: the child's stdout and stderr;
* ``vlm_run.json``: the resolved config, argv, the environment vlm set, package
  versions, git revision, dataset manifest digest, start/end time and exit code.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from vlm.data.images import decode_fully
from vlm.errors import VlmError
from vlm.fsutil import LockedError, atomic_write_json, atomic_write_text, ensure_dir, now, sha256_file, try_lock
from vlm.lf.cli import (
    LaunchPlan,
    ScaleOut,
    find_llamafactory_cli,
    log_banner,
    make_plan,
    report_failure,
    resolve_paths,
    run_plan,
)
from vlm.lf.data import dataset_names, lf_default, read_dataset_info
from vlm.lf.progress import TRAINER_LOG, progress_from_file
from vlm.output import info, warn
from vlm.training import token_budget
from vlm.training.checkpoints import list_checkpoints, resume_reloads_base_weights
from vlm.training.config import deepspeed_preset, load_config, render_yaml
from vlm.training.validation import Validation, validate_config

RESOLVED_CONFIG = "vlm_resolved_config.yaml"
RUN_MANIFEST = "vlm_run.json"
TRAIN_LOG = "train.log"
# Files that mean "a finished model is here" (LLaMA-Factory's CHECKPOINT_NAMES).
MODEL_FILES = ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors", "model.safetensors.index.json",
               "pytorch_model.bin", "pytorch_model.bin.index.json")
PACKAGES = ("vlm", "llamafactory", "transformers", "torch", "peft", "datasets")


@dataclass
class TrainSpec:
    """What ``vlm train`` was asked to do."""

    config: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    resume: bool = False
    dry_run: bool = False
    allow_truncation: bool = False
    scale: ScaleOut = field(default_factory=ScaleOut)
    log_file: Path | None = None
    deepspeed: str | None = None  # a shipped preset name (z2, z3)
    override_args: list[str] = field(default_factory=list)  # the key=value words as typed, for the resume hint

    def resume_command(self) -> str:
        """The command that continues this run: the same config, overrides and options, plus --resume."""
        argv = ["vlm", "train", str(self.config), *self.override_args, *self.scale.flags()]
        if self.deepspeed:
            argv += ["--deepspeed", self.deepspeed]
        if self.allow_truncation:
            argv.append("--allow-truncation")
        if self.log_file:
            argv += ["--log-file", str(self.log_file)]
        return shlex.join([*argv, "--resume"])


@dataclass
class TrainResult:
    """The plan that was (or, for a dry run, would be) run, and how it ended."""

    plan: LaunchPlan
    config: dict[str, Any]
    exit_code: int | None = None
    manifest: Path | None = None
    resumed_from: str | None = None


def plan_resume(cfg: dict[str, Any], output_dir: Path, resume: bool) -> str | None:
    """Set ``resume_from_checkpoint`` for ``--resume``, or refuse to silently continue or overwrite a run."""
    found = list_checkpoints(output_dir)
    if resume:
        if not found:
            raise VlmError(f"--resume: no complete checkpoint-N in {output_dir}",
                           hint="train without --resume first (checkpoints are written every save_steps steps).")
        why = resume_reloads_base_weights(found[-1], cfg)
        if why:
            raise VlmError(f"cannot resume {output_dir}: {why}",
                           hint="start the run over with overwrite_output_dir=true (LoRA runs resume correctly).")
        cfg["resume_from_checkpoint"] = str(found[-1])
        cfg["overwrite_output_dir"] = False
        return str(found[-1])
    if cfg.get("overwrite_output_dir") or cfg.get("resume_from_checkpoint"):
        return None
    if found:
        raise VlmError(f"{output_dir} already has checkpoints (newest: {found[-1].name})",
                       hint="continue that run with --resume, start over with overwrite_output_dir=true, "
                            "or pick another output_dir=...")
    if output_dir.is_dir() and any((output_dir / name).is_file() for name in MODEL_FILES):
        raise VlmError(f"{output_dir} already holds a trained model",
                       hint="start over with overwrite_output_dir=true, or pick another output_dir=...")
    return None


def _dataset_names(cfg: dict[str, Any]) -> list[str]:
    return [n for key in ("dataset", "eval_dataset") for n in dataset_names(cfg.get(key))]


def _records(path: Path) -> list[dict[str, Any]] | None:
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, list) else None
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return None  # parquet, csv...: LLaMA-Factory reads them; vlm does not look inside


def check_datasets(cfg: dict[str, Any]) -> list[str]:
    """Every dataset is registered, its file exists and every image it names exists; returns notes."""
    dataset_dir, notes = Path(cfg.get("dataset_dir") or "data"), []  # LLaMA-Factory's default
    media_dir = Path(cfg.get("media_dir") or dataset_dir)
    export_hint = f"rerun the export: vlm save-cord-dataset-in-sharegpt-format {dataset_dir}"
    if not dataset_dir.is_dir():
        raise VlmError(f"dataset_dir {dataset_dir} does not exist",
                       hint=f"export the data first (vlm save-cord-dataset-in-sharegpt-format {dataset_dir}), "
                            "or set dataset_dir=... to the folder that holds dataset_info.json.")
    info_path, info = read_dataset_info(dataset_dir, where="dataset_dir ", hint=export_hint, json_hint=export_hint)
    for name in _dataset_names(cfg):
        entry = info.get(name)
        if not isinstance(entry, dict):
            registered = ", ".join(info) or "nothing"
            raise VlmError(f"dataset {name!r} is not registered in {info_path} (it has: {registered})",
                           hint=f"register it: vlm register-dataset FILE --name {name}, or {export_hint}")
        if "file_name" not in entry:
            notes.append(f"dataset {name}: not a local file (hub or script); not checked")
            continue
        path = dataset_dir / entry["file_name"]
        if not path.exists():
            raise VlmError(f"dataset {name!r}: {path} not found", hint=export_hint)
        try:
            records = _records(path) if path.is_file() else None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise VlmError(f"dataset {name!r}: {path} is not valid JSON: {e}", hint=export_hint) from None
        if records is None:
            notes.append(f"dataset {name}: images not checked ({path.name} is not a JSON list)")
            continue
        column = entry.get("columns", {}).get("images", "images")
        images = [img for r in records if isinstance(r, dict) for img in (r.get(column) or []) if isinstance(img, str)]
        missing = [img for img in images if not (media_dir / img).is_file()]  # absolute paths stay absolute
        if missing:
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise VlmError(f"dataset {name!r}: {len(missing)} of {len(images)} images are missing: {shown}",
                           hint=f"the images moved or were deleted; {export_hint}")
        _check_images_decode(name, [media_dir / img for img in dict.fromkeys(images)], export_hint)
    return notes


def _check_images_decode(name: str, paths: list[Path], export_hint: str) -> None:
    """Every image decodes to its last byte; else name the files. A cut file has a good header, and
    LLaMA-Factory would fail on it mid-run with an error that names no file."""
    def problem(path: Path) -> str | None:
        try:
            decode_fully(path)
        except ValueError as e:
            return f"{path} ({e})"
        return None

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:  # PIL decodes without the GIL
        bad = [p for p in pool.map(problem, paths) if p]
    if bad:
        shown = "; ".join(bad[:3]) + (f"; and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise VlmError(f"dataset {name!r}: {len(bad)} of {len(paths)} images do not decode: {shown}",
                       hint=f"replace those files, or {export_hint} (the export decodes every image)")


def check_config(cfg: dict[str, Any]) -> Validation:
    """What ``vlm validate`` checks: LLaMA-Factory's parser, then what ``vlm train`` checks of the data
    (dataset_dir, registration, files, images); not the token budget, which needs the model."""
    validation = validate_config(cfg)
    if cfg.get("do_train", False) or _dataset_names(cfg):
        validation.notes += check_datasets(cfg)
    return validation


def check_token_budget(cfg: dict[str, Any], allow_truncation: bool) -> dict[str, Any] | None:
    """Refuse samples longer than cutoff_len (LLaMA-Factory would truncate them) unless allowed."""
    report = token_budget.check_config(cfg)
    if report.n_over:
        cutoff = cfg.get("cutoff_len", lf_default("cutoff_len"))
        message = (f"{report.n_over} of {report.n_total} samples exceed cutoff_len={cutoff} "
                   f"(longest: {report.max_total_tokens} tokens) and would be truncated")
        if not allow_truncation:
            raise VlmError(message, hint=f"{report.recommendation}; or pass --allow-truncation to train anyway.")
        warn(message + " (--allow-truncation)")
    return report.to_dict()


def check_config_gpu_and_data(cfg: dict[str, Any], allow_truncation: bool,
                              validation: Validation | None = None) -> dict[str, Any]:
    """The config (LLaMA-Factory's parser, unless ``validation`` holds its verdict), the GPU, the datasets and the
    token budget: everything that can be checked before spending GPU time; raises VlmError on the first failing
    step."""
    import torch

    validation = validation or validate_config(cfg)
    for line in validation.relaxed + validation.notes:
        info(f"[dim]config:[/dim] {line}")
    gpu = torch.cuda.is_available()
    if not gpu:
        precision = [k for k in ("bf16", "fp16", "pure_bf16") if cfg.get(k)]
        if precision:
            raise VlmError(f"{precision[0]}: true needs a GPU, and none is visible",
                           hint=f"train on a GPU machine, or pass {precision[0]}=false to train on the CPU (slow).")
        warn("no GPU visible (torch.cuda.is_available() is False): training runs on the CPU")
    notes = check_datasets(cfg)
    for line in notes:
        info(f"[dim]data:[/dim] {line}")
    budget = check_token_budget(cfg, allow_truncation)
    return {"relaxed": validation.relaxed, "notes": validation.notes + notes, "gpu": gpu, "token_budget": budget}


def versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed versions of the packages that shape a run (None: not installed)."""
    found = {}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def git_revision(cwd: str | Path | None = None) -> str | None:
    """``git rev-parse HEAD`` of the working directory, or None outside a repository (or before a commit)."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _node_suffix(scale: ScaleOut) -> str:
    return f".node{scale.node_rank}" if scale.node_rank else ""  # node 0 keeps the plain names


def prepare(spec: TrainSpec) -> TrainResult:
    """Load and resolve the config and build the launch plan; writes nothing."""
    spec.scale.check()
    cfg = load_config(spec.config, spec.overrides)
    if spec.deepspeed:
        cfg["deepspeed"] = deepspeed_preset(spec.deepspeed)
    if not cfg.get("output_dir"):
        raise VlmError(f"{spec.config} has no output_dir", hint="add output_dir: saves/NAME, or pass output_dir=...")
    cfg = resolve_paths(cfg)
    output_dir = Path(cfg["output_dir"])
    resumed_from = plan_resume(cfg, output_dir, spec.resume)
    suffix = _node_suffix(spec.scale)
    log = spec.log_file.resolve() if spec.log_file else output_dir / f"{Path(TRAIN_LOG).stem}{suffix}.log"
    env_set = spec.scale.env(deepspeed=bool(cfg.get("deepspeed")))
    plan = make_plan(find_llamafactory_cli(), "train", output_dir / RESOLVED_CONFIG, log, env_set)
    manifest = output_dir / f"{Path(RUN_MANIFEST).stem}{suffix}.json"
    return TrainResult(plan, cfg, manifest=manifest, resumed_from=resumed_from)


def train(spec: TrainSpec) -> TrainResult:
    """Preflight, write the resolved config and manifest, run LLaMA-Factory, record how it ended.

    A dry run returns after ``prepare``. Ctrl-C or SIGTERM stops the child's process
    group; the result's exit code is then 130. An exclusive lock on ``output_dir`` refuses
    a second run into the same folder while this one lives.
    """
    result = prepare(spec)
    if spec.dry_run:
        return result
    output_dir = Path(result.config["output_dir"])
    # A config LLaMA-Factory would refuse is refused before anything is written: no output_dir, no lock in it.
    validation = validate_config(result.config)
    # Before the rest of the preflight's seconds: a folder that cannot be written fails now, not after them.
    ensure_dir(output_dir, "output_dir")
    ensure_dir(result.plan.log_path.parent, "log folder")
    lock = output_dir / f"vlm_train{_node_suffix(spec.scale)}"
    try:
        with try_lock(lock, note=f"pid {os.getpid()}"):
            return _train_locked(spec, result, validation)
    except LockedError as e:
        raise VlmError(f"another vlm train is running on {output_dir} ({e.holder or 'lock ' + str(e.path)})",
                       hint="wait for it to finish, or train into another output_dir=...") from None


def _train_locked(spec: TrainSpec, result: TrainResult, validation: Validation) -> TrainResult:
    """``train`` once this process holds the output_dir's lock: no other run writes its checkpoints."""
    cfg, plan = result.config, result.plan
    checks = check_config_gpu_and_data(cfg, spec.allow_truncation, validation)
    header = [f"Resolved by vlm train from {spec.config} at {now()}; LLaMA-Factory reads this file.",
              f"Rerun: {plan.describe()}"]
    atomic_write_text(plan.config_path, render_yaml(cfg, header))
    data_manifest = Path(cfg["dataset_dir"]) / "manifest.json"
    record: dict[str, Any] = {
        "command": "train", "config_path": str(spec.config), "config": cfg, "argv": plan.argv, "env": plan.env_set,
        "cwd": plan.cwd, "log": str(plan.log_path), "resumed_from": result.resumed_from, "versions": versions(),
        "git_revision": git_revision(plan.cwd),
        "dataset_manifest_sha256": sha256_file(data_manifest) if data_manifest.is_file() else None,
        "preflight": checks, "started_at": now(), "ended_at": None, "exit_code": None,
    }
    atomic_write_json(result.manifest, record)
    log_banner(plan, record["started_at"])
    info(f"training: {plan.describe()}\n  log: {plan.log_path}"
         + (f"\n  resuming from {result.resumed_from}" if result.resumed_from else ""))
    trainer_log = Path(cfg["output_dir"]) / TRAINER_LOG
    try:
        code = run_plan(plan, trainer_log)
    except KeyboardInterrupt:
        code = 130
        warn(f"interrupted; the child was stopped. Continue with: {spec.resume_command()}")
    if code == 0 and result.resumed_from and _resumed_with_missing_weights(plan.log_path):
        code = 1  # a run that continued from other weights than its checkpoint's is not a finished run
        err_line = (f"the run resumed from {result.resumed_from} but the Trainer loaded it with missing keys "
                    f"({plan.log_path}): it went on from other weights than the checkpoint's; its model is not "
                    "a continuation of the run")
        warn(err_line + ". Start over with overwrite_output_dir=true.")
    final = progress_from_file(trainer_log) if trainer_log.is_file() else None
    record.update(ended_at=now(), exit_code=code, final_progress=final.as_dict() if final else None)
    atomic_write_json(result.manifest, record)
    result.exit_code = code
    if code not in (0, 130):
        report_failure(plan, code)
    return result


MISSING_AT_RESUME = "There were missing keys in the checkpoint model loaded"  # transformers' Trainer, on resume


def _resumed_with_missing_weights(log_path: Path) -> bool:
    """The Trainer's warning that a resumed checkpoint's weights did not all load (read in blocks: logs are long)."""
    try:
        with open(log_path, "rb") as f:
            tail = b""
            while block := f.read(1 << 20):
                if MISSING_AT_RESUME.encode() in tail + block:
                    return True
                tail = block[-len(MISSING_AT_RESUME):]
    except OSError:
        return False
    return False
