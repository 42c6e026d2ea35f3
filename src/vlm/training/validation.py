"""Config validation with LLaMA-Factory's own argument parser, in-process, without loading a model.

Every problem is collected into one error: unknown keys (with suggestions), wrong types,
invalid choices and the parser's own cross-field checks. Checks that depend on the
machine (bf16 without a GPU) are relaxed, and the result says which.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.util
import json
import math
import tempfile
import types
import typing
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path
from typing import Any

from vlm.errors import ConfigError
from vlm.lf.data import dataset_names, quiet

PRECISION_KEYS = ("bf16", "fp16", "bf16_full_eval", "fp16_full_eval", "pure_bf16", "tf32")


@dataclass
class Validation:
    """What ``validate_config`` could not check on this machine, and why."""

    relaxed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _type_problem(key: str, value: Any, hint: Any) -> str | None:
    """A problem when ``value`` cannot be of type ``hint`` (bool, int, float, Literal, Enum); else None.

    LLaMA-Factory hands YAML values to the dataclasses unconverted, so a wrong type or an
    unknown Literal choice would only fail (or silently misbehave) once training starts.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if isinstance(value, bool) and not _accepts_bool(hint):
        return (f"{key}: got the boolean {str(value).lower()}, which it does not take "
                f"(YAML reads unquoted no/yes/on/off as booleans: quote the word, e.g. {key}: 'no')")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        found = [_type_problem(key, value, a) for a in args if a is not type(None)]
        return None if not found or any(p is None for p in found) else found[0]
    if origin is typing.Literal:
        return None if value in args else f"{key}: {value!r} is not one of {', '.join(map(repr, args))}"
    if hint is bool and not isinstance(value, bool):
        return f"{key}: expected true or false, got {value!r}"
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        return f"{key}: expected an integer, got {value!r}"
    if hint is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return f"{key}: expected a number, got {value!r}"
    if isinstance(hint, type) and issubclass(hint, enum.Enum) and not isinstance(value, hint):
        choices = [m.value for m in hint]
        return None if value in choices else f"{key}: {value!r} is not one of {', '.join(map(repr, choices))}"
    return None


def _accepts_bool(hint: Any) -> bool:
    if hint is None or hint is bool or hint is typing.Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts_bool(a) for a in args)
    return origin is typing.Literal and any(isinstance(a, bool) for a in args)


def _construct(cls: type, kwargs: dict[str, Any]) -> tuple[list[str], set[str]]:
    """Build ``cls(**kwargs)``; on failure find which keys fail, so each is reported by name."""
    try:
        cls(**kwargs)
        return [], set()
    except Exception as e:  # the dataclasses raise ValueError, TypeError, ImportError...
        combined = e
    good: dict[str, Any] = {}
    failed: dict[str, Exception] = {}
    ordered = sorted(kwargs, key=lambda k: k != "model_name_or_path")  # the one key others need
    for _ in range(2):  # a second pass forgives keys that only failed for want of a later one
        for key in ordered:
            if key in good:
                continue
            try:
                cls(**good, **{key: kwargs[key]})
                good[key] = kwargs[key]
                failed.pop(key, None)
            except Exception as e:
                failed[key] = e
    if failed and good:
        return [f"{k}={kwargs[k]!r}: {_message(e)}" for k, e in failed.items()], set(failed)
    return [_message(combined)], set(kwargs)


def _message(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _deepspeed_problems(value: Any, validation: Validation) -> list[str]:
    if isinstance(value, str):
        path = Path(value)
        if not path.is_file():
            return [f"deepspeed: file not found: {value}"]
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return [f"deepspeed: {value} is not valid JSON: {e}"]
    validation.relaxed.append("deepspeed not checked by the parser: it needs a torchrun launch "
                              "(vlm train sets FORCE_TORCHRUN=1); the file was read and parses")
    if importlib.util.find_spec("deepspeed") is None:
        validation.notes.append("the deepspeed package is not installed here; training machines need it")
    return []


def validate_config(cfg: dict[str, Any]) -> Validation:
    """Check ``cfg`` with LLaMA-Factory's parser in-process (no model load); raise ConfigError listing every problem.

    Checks that depend on this machine (bf16 without a GPU, DeepSpeed without torchrun)
    are relaxed on a copy of the config and named in the result.
    """
    with quiet():
        import torch
        from llamafactory.data.template import TEMPLATES
        from llamafactory.hparams import (
            DataArguments,
            FinetuningArguments,
            GeneratingArguments,
            ModelArguments,
            TrainingArguments,
            get_train_args,
        )

        classes = (ModelArguments, DataArguments, TrainingArguments, FinetuningArguments, GeneratingArguments)
        fields_of = {cls: {f.name for f in dataclasses.fields(cls) if f.init} for cls in classes}
        known = set().union(*fields_of.values())
        validation, problems = Validation(), []
        for key in cfg:
            if key not in known:
                close = get_close_matches(key, known, n=1)
                problems.append(f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        cfg = {k: v for k, v in cfg.items() if k in known}
        bad: set[str] = set()
        for cls in classes:
            hints = typing.get_type_hints(cls)
            for key in fields_of[cls] & cfg.keys():
                if problem := _type_problem(key, cfg[key], hints.get(key)):
                    problems.append(problem)
                    bad.add(key)
        if cfg.get("do_train", False) and "dataset" in cfg and not dataset_names(cfg.get("dataset")):
            problems.append("dataset: empty; name a dataset registered in dataset_dir/dataset_info.json "
                            "(e.g. dataset: cord_train)")
        if "template" in cfg and isinstance(cfg["template"], str) and cfg["template"] not in TEMPLATES:
            close = get_close_matches(cfg["template"], list(TEMPLATES), n=1)
            problems.append(f"template: {cfg['template']!r} is not a LLaMA-Factory template"
                            + (f" (did you mean {close[0]!r}?)" if close else ""))
        relaxed = {k: v for k, v in cfg.items() if k not in bad}
        if not torch.cuda.is_available():
            for key in PRECISION_KEYS:
                if relaxed.pop(key, None):
                    validation.relaxed.append(f"{key} not checked: no GPU visible")
        if relaxed.get("deepspeed"):
            problems += _deepspeed_problems(relaxed.pop("deepspeed"), validation)
        if relaxed.get("quantization_bit") and importlib.util.find_spec("bitsandbytes") is None:
            validation.notes.append("quantization_bit needs bitsandbytes (and a CUDA GPU) at train time; "
                                    "not installed here")
        problems += value_problems({k: v for k, v in cfg.items() if k not in bad})
        problems += early_stopping_problems(relaxed)
        with tempfile.TemporaryDirectory(prefix="vlm-validate-") as tmp:
            relaxed["output_dir"] = str(Path(tmp) / "out")  # vlm train checks the real output_dir's checkpoints
            for cls in classes:
                found, failed = _construct(cls, {k: v for k, v in relaxed.items() if k in fields_of[cls]})
                problems += found
                bad |= failed
            if not bad:
                try:
                    get_train_args(dict(relaxed))
                except Exception as e:
                    if "launch distributed training" in str(e):
                        gpus = torch.cuda.device_count()
                        validation.relaxed.append(f"multi-GPU launch not checked in-process ({gpus} GPUs visible); "
                                                  "vlm train launches torchrun")
                    else:
                        problems.append(_message(e))
    if problems:
        problems = list(dict.fromkeys(problems))  # a class and get_train_args can report one missing key twice

        raise ConfigError(problems, hint="fix these keys (names and values are LLaMA-Factory arguments) "
                                         "and rerun vlm validate.")
    return validation


def _number(cfg: dict[str, Any], key: str) -> float | None:
    """``cfg[key]`` as a number (YAML reads ``1e-4`` as text; LLaMA-Factory converts it), None when absent or not one
    (the type check reports that)."""
    value = cfg.get(key)
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _whole(x: float) -> bool:
    return math.isfinite(x) and x == int(x)


def value_problems(cfg: dict[str, Any]) -> list[str]:
    """Values LLaMA-Factory's parser accepts that fail later (in ``vlm stats``, ``vlm train`` or inside
    llamafactory-cli) or train nothing. ``vlm validate``, ``render-config``, ``sweep``, ``stats`` and ``train``
    all refuse them here, so none of them says OK to what another refuses."""
    problems = []
    cutoff = _number(cfg, "cutoff_len")
    if cutoff is not None and not (_whole(cutoff) and cutoff >= 1):
        problems.append(f"cutoff_len: {cfg['cutoff_len']!r} must be a whole number of tokens, 1 or more "
                        "(the recipe uses 1024; vlm stats recommends one)")
    lr = _number(cfg, "learning_rate")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        problems.append(f"learning_rate: {cfg['learning_rate']!r} must be a finite number above 0 (e.g. 1e-4)")
    steps, epochs = _number(cfg, "max_steps"), _number(cfg, "num_train_epochs")
    if cfg.get("do_train", False) and (steps is None or steps <= 0) and epochs is not None \
            and not (math.isfinite(epochs) and epochs > 0):
        problems.append(f"num_train_epochs: {cfg['num_train_epochs']!r} trains nothing: it must be above 0 (or set "
                        "max_steps); a run of 0 steps would leave the base model in output_dir as if fine-tuned")
    if "output_dir" in cfg and not str(cfg["output_dir"] or "").strip():
        problems.append("output_dir: empty; name the folder the run writes (e.g. saves/qwen2_vl-2b/lora/cord)")
    if (cfg.get("finetuning_type") or "lora") == "lora":
        rank = _number(cfg, "lora_rank")
        if rank is not None and not (_whole(rank) and rank >= 1):
            problems.append(f"lora_rank: {cfg['lora_rank']!r} must be a whole number, 1 or more (the recipe uses 8)")
    for key in ("per_device_train_batch_size", "gradient_accumulation_steps"):
        n = _number(cfg, key)
        if n is not None and not (_whole(n) and n >= 1):
            problems.append(f"{key}: {cfg[key]!r} must be a whole number, 1 or more")
    return problems


def early_stopping_problems(cfg: dict[str, Any]) -> list[str]:
    """What LLaMA-Factory's ``early_stopping_steps`` needs, checked now rather than by the Trainer's asserts
    after the model has loaded. Its patience counts evaluations: training stops after N evaluations
    (N x eval_steps optimizer steps) in a row without an improvement of metric_for_best_model."""
    problems = _best_metric_problems(cfg)
    if cfg.get("early_stopping_steps") is None:
        return problems
    patience = cfg["early_stopping_steps"]
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
        # The Trainer stops once its count of evaluations without improvement reaches the patience: 0 stops at
        # the first evaluation, it does not switch early stopping off (leave the key out for that).
        problems.append(f"early_stopping_steps: {patience!r} must be a whole number of evaluations >= 1 "
                        "(0 would stop at the first evaluation); remove the key to train without early stopping")
    if str(cfg.get("eval_strategy", "no")).lower() == "no":
        problems.append("early_stopping_steps: needs evaluations to watch; set eval_strategy: steps and eval_steps")
    if not cfg.get("val_size") and not cfg.get("eval_dataset"):
        problems.append("early_stopping_steps: needs an evaluation set; set val_size (e.g. 0.1) or eval_dataset")
    if not cfg.get("metric_for_best_model") and not cfg.get("load_best_model_at_end"):
        problems.append("early_stopping_steps: needs metric_for_best_model (e.g. eval_loss); "
                        "vlm render-config --early-stopping N sets it with load_best_model_at_end: true")
    return problems


def _best_metric_problems(cfg: dict[str, Any]) -> list[str]:
    """metric_for_best_model must be a metric LLaMA-Factory's SFT evaluation reports, or the Trainer raises a
    KeyError at its first evaluation, after the model loaded and eval_steps steps trained. It reports the loss,
    plus accuracy with compute_accuracy, or ROUGE/BLEU with predict_with_generate (never vlm's F1 or nTED)."""
    metric = cfg.get("metric_for_best_model")
    evaluates = str(cfg.get("eval_strategy", "no")).lower() != "no"
    if not metric or not evaluates or cfg.get("stage", "sft") != "sft" or cfg.get("eval_on_each_dataset"):
        return []  # eval_on_each_dataset prefixes each metric with its dataset's name
    name = str(metric).removeprefix("eval_")
    reported = ["loss"] + (["rouge-1", "rouge-2", "rouge-l", "bleu-4"] if cfg.get("predict_with_generate")
                           else ["accuracy"] if cfg.get("compute_accuracy") else [])
    if name in reported:
        return []
    return [f"metric_for_best_model: {metric!r} is not reported by LLaMA-Factory's evaluation here (it reports "
            + ", ".join(f"eval_{m}" for m in reported) + "; eval_accuracy needs compute_accuracy: true); "
            "use eval_loss, and rank checkpoints on F1 or nTED after training with vlm select"]
