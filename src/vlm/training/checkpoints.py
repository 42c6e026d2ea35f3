"""A run's saved models: its checkpoints, its final model, their weight hashes, and the winner of ``vlm select``.

A run is a training config whose ``output_dir`` holds ``checkpoint-N`` dirs and, once training finished, the
final adapter (LoRA) or the whole model (full or freeze). ``vlm select`` writes ``selection.json`` there;
``vlm predict --checkpoint best`` and ``vlm merge --checkpoint best`` read it back through
``resolve_checkpoint``, which also takes ``final``, ``N`` and ``checkpoint-N``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import struct
from pathlib import Path
from typing import Any

from vlm.errors import VlmError
from vlm.fsutil import sha256_file
from vlm.output import warn

SELECTION_FILE = "selection.json"
SELECTION_VERSION = 1
# The files that make a model what it is: an adapter's weights and its rank/alpha, or a whole model's weights.
_WEIGHTS = re.compile(r"^(adapter_model\.(safetensors|bin)|adapter_config\.json|model(-\d+-of-\d+)?\.safetensors"
                      r"|pytorch_model(-\d+-of-\d+)?\.bin)$")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_WHICH = re.compile(r"^(?:checkpoint-)?(\d+)$")
CHOICES = "best, final, N or checkpoint-N"


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete ``checkpoint-N`` dirs, oldest first. The trainer writes trainer_state.json last, so a
    checkpoint without it was cut short (e.g. by Ctrl-C) and cannot be resumed from."""
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := _CHECKPOINT.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found) if (p / "trainer_state.json").is_file()]


def model_kind(cfg: dict[str, Any]) -> str:
    """``adapter`` for LoRA (and QLoRA) runs; ``model`` for full and freeze runs, which save a whole model."""
    return "model" if cfg.get("finetuning_type", "lora") in ("full", "freeze") else "adapter"


def check_weights(folder: Path) -> None:
    """Refuse a saved model whose safetensors files are cut short (a checkpoint being written, a full disk, a copy
    that stopped): loading it would fail deep in safetensors. Reads only each file's header, so it is cheap."""
    for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        size, need = path.stat().st_size, None
        try:
            with path.open("rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                if 8 + length <= size:
                    header = json.loads(f.read(length))
                    need = 8 + length + max((int(t["data_offsets"][1]) for k, t in header.items()
                                             if k != "__metadata__"), default=0)
        except (OSError, struct.error, ValueError, KeyError, TypeError, IndexError, AttributeError):
            need = None
        if need is None or need > size:
            raise VlmError(f"{path} is truncated or damaged ({size} bytes; its header names more or cannot be read)",
                           hint="the checkpoint was cut short: move it out of the output_dir (or retrain), "
                                "or pick another checkpoint.")


def weights_hash(folder: Path) -> str:
    """sha256 over the weight files of a saved model (name and content), so two dirs that hold the same
    weights, e.g. the final adapter and the last checkpoint, hash alike wherever they lie."""
    files = sorted(p for p in folder.iterdir() if _WEIGHTS.match(p.name) and p.is_file()) if folder.is_dir() else []
    if not any(p.name != "adapter_config.json" for p in files):
        raise VlmError(f"no model weights in {folder}",
                       hint="expected adapter_model.safetensors or model.safetensors; was the run trained?")
    check_weights(folder)
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}\0{sha256_file(p)}\n".encode())
    return h.hexdigest()


def final_model(output_dir: Path, kind: str) -> Path | None:
    """``output_dir`` when it holds the finished run's model (training saves it there last), else None."""
    if kind == "adapter":
        done = (output_dir / "adapter_config.json").is_file() and any(output_dir.glob("adapter_model.*"))
    else:
        done = (output_dir / "config.json").is_file() and any(
            _WEIGHTS.match(p.name) for p in output_dir.glob("*model*"))
    return output_dir if done else None


def final_step(output_dir: Path) -> int | None:
    """The step the final model was saved at: trainer_state.json's global_step (written at the end)."""
    state = output_dir / "trainer_state.json"
    try:
        return int(json.loads(state.read_text())["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def output_dir_of(cfg: dict[str, Any], config: Path) -> Path:
    if not cfg.get("output_dir"):
        raise VlmError(f"{config} has no output_dir, so it names no run",
                       hint="pass the training config of a run (the one vlm train ran), with output_dir: saves/NAME.")
    return Path(cfg["output_dir"])


def read_selection(output_dir: Path, config: Path) -> dict[str, Any]:
    """``output_dir/selection.json``, or a clear error saying how to make it."""
    path = output_dir / SELECTION_FILE
    fix = f"run vlm select {config} first"
    if not path.is_file():
        raise VlmError(f"no selection for this run: {path} not found", hint=f"{fix}; it scores every checkpoint.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        winner = data["winner"]
        label, digest = winner["label"], winner["weights_hash"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise VlmError(f"{path} is not a selection vlm select wrote ({type(e).__name__}: {e})",
                       hint=f"{fix} to write it again.") from None
    if data.get("version") != SELECTION_VERSION or not isinstance(label, str) or not isinstance(digest, str):
        raise VlmError(f"{path} has an unknown format (version {data.get('version')!r})", hint=f"{fix} again.")
    return data


def _winner_dir(output_dir: Path, label: str) -> Path:
    return output_dir if label == "final" else output_dir / label


def training_holder(output_dir: Path) -> str | None:
    """The note (e.g. "pid 123") of a ``vlm train`` running on ``output_dir`` now, else None. Probes the lock
    ``vlm train`` holds with a shared, non-blocking lock that is released at once; creates no file."""
    for path in sorted(output_dir.glob(".vlm_train*.lock")) if output_dir.is_dir() else []:
        try:
            with path.open() as f:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    return f.read().strip() or str(path)
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        except OSError:
            continue
    return None


def resolve_checkpoint(cfg: dict[str, Any], config: Path, which: str, split: str | None = None) -> Path:
    """The folder of one of a run's saved models: ``best`` (the winner of ``vlm select``, checked against the
    weights it scored), ``final``, ``N`` or ``checkpoint-N``. ``split``: the one about to be predicted, to warn
    when the winner was chosen on it."""
    output_dir = output_dir_of(cfg, config)
    kind = model_kind(cfg)
    if which == "best":
        selection = read_selection(output_dir, config)
        label = selection["winner"]["label"]
        chosen = _winner_dir(output_dir, label)
        stale = f"{output_dir / SELECTION_FILE} is stale"
        fix = f"run vlm select {config} again"
        if label != "final" and not (chosen / "trainer_state.json").is_file() or not chosen.is_dir():
            raise VlmError(f"{stale}: its winner {label} ({chosen}) no longer exists", hint=f"{fix}.")
        try:
            now_hash = weights_hash(chosen)
        except VlmError:
            raise VlmError(f"{stale}: its winner {label} ({chosen}) holds no model now", hint=f"{fix}.") from None
        if now_hash != selection["winner"]["weights_hash"]:
            raise VlmError(f"{stale}: the weights in {chosen} changed since it was scored (retrained?)",
                           hint=f"{fix}; it reuses what is already predicted.")
        scored = set(selection.get("checkpoints_seen") or [])
        newer = [p.name for p in list_checkpoints(output_dir) if p.name not in scored]
        if split and selection.get("split") == split:
            warn(f"the winner {label} was chosen on the {split} split: its scores there are optimistic (the choice "
                 "saw them); report the tuned model on a split the selection did not see, e.g. --split test")
        if scored and newer:
            warn(f"{len(newer)} checkpoint(s) of {output_dir} were saved after the selection and not scored "
                 f"({', '.join(newer[:3])}); rerun vlm select {config} to include them")
        return chosen
    if which == "final":
        found = final_model(output_dir, kind)
        if found is None:
            raise VlmError(f"no final {kind} in {output_dir}: training has not finished",
                           hint="pick a checkpoint (--checkpoint N), or finish training (vlm train CONFIG --resume).")
        check_weights(found)
        return found
    match = _WHICH.match(which)
    if not match:
        raise VlmError(f"--checkpoint {which!r} is not one of: {CHOICES}", hint="e.g. --checkpoint best")
    saved = list_checkpoints(output_dir)
    chosen = output_dir / f"checkpoint-{int(match.group(1))}"
    if chosen not in saved:
        have = ", ".join(p.name for p in saved) or "none"
        raise VlmError(f"no complete {chosen.name} in {output_dir} (saved: {have})",
                       hint="pick one of the saved checkpoints, or --checkpoint final / best.")
    check_weights(chosen)
    return chosen


def resume_reloads_base_weights(checkpoint: Path, cfg: dict[str, Any]) -> str | None:
    """Why resuming ``checkpoint`` would continue from the base model's weights, or None when it would not.

    A full or freeze run saves the whole model. transformers 5 keeps some models' weights under other names in
    memory than on disk (Qwen2-VL: ``visual.*`` and ``model.layers.*`` on disk, ``model.visual.*`` and
    ``model.language_model.*`` in memory) and converts them when loading a model, but the Trainer's resume loads
    a checkpoint's weights without that conversion: every key misses, and the run goes on from the base weights
    while reporting the step it resumed at. LoRA checkpoints hold only the adapter, which loads correctly.
    """
    if cfg.get("finetuning_type", "lora") not in ("full", "freeze"):
        return None
    try:
        model_type = json.loads((checkpoint / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError):
        return None
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    if not model_type or not get_checkpoint_conversion_mapping(model_type):
        return None
    return (f"transformers renames {model_type}'s weights when it loads a model, but not when the Trainer resumes "
            f"a {cfg['finetuning_type']} run from {checkpoint.name}: the run would continue from the base weights")
