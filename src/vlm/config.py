"""Training configs: the CORD recipe, overrides, rendering to commented YAML, and validation.

A config is a plain dict of LLaMA-Factory arguments. ``render_recipe`` builds one
from the recipe plus overrides, ``render_yaml`` writes it as deterministic,
commented YAML, and ``validate_config`` checks it with LLaMA-Factory's own parser
in-process (imported lazily, as it takes seconds), collecting every problem.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import importlib.util
import json
import os
import re
import shlex
import tempfile
import types
import typing
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path
from typing import Any

import yaml

from vlm.errors import VlmError

DEFAULT_CONFIG = Path("configs/cord.yaml")
DEEPSPEED_PRESETS = {"z2": "ds_z2.json", "z3": "ds_z3.json"}
METHODS = ("lora", "qlora", "full", "freeze")

# The recipe, in sections. Each entry: key, value, inline comment ("" for none).
RECIPE: list[tuple[str, list[tuple[str, Any, str]]]] = [
    ("model", [
        ("model_name_or_path", "Qwen/Qwen2-VL-2B-Instruct", "hub id or local directory"),
        ("image_max_pixels", 262144,
         "512x512: at most 334 image tokens (28-px merged patches), room left in cutoff_len"),
        ("image_min_pixels", 3136, "56x56: Qwen2-VL's own minimum"),
    ]),
    ("method", [
        ("stage", "sft", "supervised fine-tuning"),
        ("do_train", True, ""),
        ("finetuning_type", "lora", "lora | freeze | full (qlora = lora + quantization_bit)"),
        ("lora_target", "all", "LoRA on every linear layer"),
    ]),
    ("dataset", [
        ("dataset", "cord_train", "a name registered in dataset_dir/dataset_info.json"),
        ("dataset_dir", "data/cord", "written by: vlm save-cord-dataset-in-sharegpt-format data/cord"),
        ("template", "qwen2_vl", "must match the model family"),
        ("cutoff_len", 1024,
         "prompt + image tokens + answer; vlm train refuses longer samples unless --allow-truncation"),
        ("max_samples", 1000, "per dataset; CORD's train split has 800"),
        ("overwrite_cache", True, "re-tokenize on every run, so edits to the data are seen"),
        ("preprocessing_num_workers", 16, ""),
    ]),
    ("output", [
        ("output_dir", "saves/qwen2_vl-2b/lora/cord", "checkpoints, logs, the adapter and vlm_run.json"),
        ("logging_steps", 10, ""),
        ("save_steps", 500, "checkpoint every N optimizer steps (vlm train --resume continues from the newest)"),
        ("plot_loss", True, "writes training_loss.png"),
        ("report_to", "none", "wandb | tensorboard | none"),
    ]),
    ("train", [
        ("per_device_train_batch_size", 8, "lower it if you run out of GPU memory"),
        ("gradient_accumulation_steps", 8, "effective batch = 8 x 8 x number of GPUs"),
        ("learning_rate", 1.0e-4, ""),
        ("num_train_epochs", 10, ""),
        ("lr_scheduler_type", "cosine", ""),
        ("warmup_ratio", 0.1, ""),
        ("bf16", True, "needs an Ampere or newer GPU; use fp16: true on older ones"),
    ]),
    ("eval", [
        ("val_size", 0.1, "hold out 10% of cord_train for eval_loss"),
        ("per_device_eval_batch_size", 8, ""),
        ("eval_strategy", "steps", ""),
        ("eval_steps", 500, ""),
    ]),
]

EXTRA_COMMENTS = {
    "lora_rank": "higher is more expressive and uses more memory",
    "quantization_bit": "QLoRA: 4-bit base weights (needs bitsandbytes and a CUDA GPU)",
    "deepspeed": "DeepSpeed preset; 'auto' values are filled in by the HF Trainer",
    "freeze_trainable_layers": "train the last N layers (negative: the first N)",
    "overwrite_output_dir": "start over even when checkpoints exist",
    "resume_from_checkpoint": "set by vlm train --resume",
}
SECTION_OF = {key: section for section, entries in RECIPE for key, _, _ in entries}
COMMENT_OF = {key: comment for _, entries in RECIPE for key, _, comment in entries} | EXTRA_COMMENTS
SECTION_OF.update(lora_rank="method", quantization_bit="method", quantization_method="method",
                  double_quantization="method", upcast_layernorm="method", freeze_trainable_layers="method",
                  freeze_trainable_modules="method", freeze_vision_tower="method", deepspeed="train")

# Named flags and the LLaMA-Factory keys they set.
FLAG_KEYS = {
    "model": "model_name_or_path", "dataset": "dataset", "dataset_dir": "dataset_dir", "output_dir": "output_dir",
    "epochs": "num_train_epochs", "learning_rate": "learning_rate", "batch_size": "per_device_train_batch_size",
    "lora_rank": "lora_rank",
}
_NUMBER = re.compile(r"^[-+]?(\d[\d_]*(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def recipe() -> dict[str, Any]:
    """The CORD LoRA recipe as a flat, ordered dict of LLaMA-Factory arguments."""
    return {key: value for _, entries in RECIPE for key, value, _ in entries}


def parse_value(text: str) -> Any:
    """A command-line value as a YAML scalar; ``1e-4`` is a number, as LLaMA-Factory's loader reads it."""
    if _NUMBER.match(text.strip()):
        number = float(text.replace("_", ""))
        return int(number) if number.is_integer() and not re.search(r"[.eE]", text) else number
    if text.strip().lower() in ("yes", "no", "on", "off", "y", "n"):
        return text.strip()  # YAML 1.1 would make these booleans; eval_strategy=no means the string
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return "" if value is None and text.strip() == "" else value


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["key=value", ...]`` as a dict; every malformed pair is reported at once."""
    result, bad = {}, []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().lstrip("-").replace("-", "_") if sep else key
        if not sep or not _KEY.match(key):
            bad.append(pair)
            continue
        result[key] = parse_value(value)
    if bad:
        raise VlmError(f"overrides must look like key=value: {', '.join(map(repr, bad))}",
                       hint="e.g. learning_rate=5e-5 num_train_epochs=3 (any LLaMA-Factory argument).")
    return result


def normalize_numbers(cfg: dict[str, Any]) -> dict[str, Any]:
    """Read number-like strings (``1e-4``) as numbers, as LLaMA-Factory's OmegaConf loader does."""
    return {k: parse_value(v) if isinstance(v, str) and _NUMBER.match(v.strip()) else v for k, v in cfg.items()}


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a training YAML (a mapping of LLaMA-Factory arguments) and merge ``overrides`` over it."""
    path = Path(path)
    if not path.is_file():
        raise VlmError(f"config file not found: {path}", hint="render one with: vlm render-config configs/cord.yaml")
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise VlmError(f"{path} is not valid YAML: {e}", hint="fix the file, or render a fresh one.") from None
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, dict) or not all(isinstance(k, str) for k in cfg):
        raise VlmError(f"{path} must be a mapping of LLaMA-Factory arguments (key: value)")
    return normalize_numbers({**cfg, **(overrides or {})})


def deepspeed_preset(name: str) -> str:
    """The path of a shipped DeepSpeed preset: relative when it sits under the working directory."""
    if name not in DEEPSPEED_PRESETS:
        raise VlmError(f"unknown DeepSpeed preset {name!r}", hint=f"use one of: {', '.join(DEEPSPEED_PRESETS)}")
    relative = Path("configs/deepspeed") / DEEPSPEED_PRESETS[name]
    if relative.is_file():
        return relative.as_posix()
    shipped = Path(__file__).resolve().parents[2] / relative  # the checkout this package runs from
    if shipped.is_file():
        return str(shipped)
    raise VlmError(f"DeepSpeed preset {relative} not found", hint="run vlm from the project checkout.")


def apply_method(cfg: dict[str, Any], method: str, lora_rank: int | None = None) -> dict[str, Any]:
    """Set the keys a fine-tuning method needs and drop the ones it cannot use."""
    if method not in METHODS:
        raise VlmError(f"unknown method {method!r}", hint=f"use one of: {', '.join(METHODS)}")
    if lora_rank is not None and method not in ("lora", "qlora"):
        raise VlmError(f"--lora-rank applies to lora and qlora, not {method}",
                       hint="drop --lora-rank or use --method lora.")
    cfg = dict(cfg)
    lora_keys = [k for k in cfg if k.startswith("lora_") or k in ("quantization_bit", "quantization_method")]
    if method in ("lora", "qlora"):
        cfg["finetuning_type"] = "lora"
        cfg.setdefault("lora_target", "all")
        if lora_rank is not None:
            cfg["lora_rank"] = lora_rank
        if method == "qlora":
            cfg.update(quantization_bit=4, quantization_method="bnb", double_quantization=True, upcast_layernorm=True)
        return cfg
    for key in lora_keys:
        cfg.pop(key)
    cfg["finetuning_type"] = method
    cfg["learning_rate"] = 1.0e-5  # updating the base weights themselves wants a smaller step than LoRA
    if method == "freeze":
        cfg.update(freeze_trainable_layers=2, freeze_trainable_modules="all")
    cfg["freeze_vision_tower"] = True  # the ViT is kept frozen; only the language model learns
    return cfg


@dataclass
class RenderOptions:
    """What ``vlm render-config`` was asked for; also rebuilds the command line that asked for it."""

    out: str = str(DEFAULT_CONFIG)
    flags: dict[str, Any] = field(default_factory=dict)  # keys of FLAG_KEYS -> value (None: not given)
    method: str = "lora"
    deepspeed: str | None = None
    overrides: list[str] = field(default_factory=list)

    def command(self) -> str:
        """The canonical command line that renders this config (option order fixed, so output is deterministic)."""
        argv = ["vlm", "render-config", self.out]
        for name, value in self.flags.items():
            if value is not None:
                argv += [f"--{name.replace('_', '-')}", str(value)]
        if self.method != "lora":
            argv += ["--method", self.method]
        if self.deepspeed:
            argv += ["--deepspeed", self.deepspeed]
        return shlex.join(argv + list(self.overrides))


def render_recipe(opts: RenderOptions) -> dict[str, Any]:
    """The recipe with the method, flags, DeepSpeed preset and key=value overrides applied, in that order."""
    cfg = apply_method(recipe(), opts.method, opts.flags.get("lora_rank"))
    for name, value in opts.flags.items():
        if value is not None and name != "lora_rank":
            cfg[FLAG_KEYS[name]] = value
    if opts.deepspeed:
        cfg["deepspeed"] = deepspeed_preset(opts.deepspeed)
    cfg.update(parse_overrides(opts.overrides))
    return normalize_numbers(cfg)


def _scalar_yaml(key: str, value: Any) -> str:
    if isinstance(value, float) and 0 < abs(value) < 1e-3:  # 1.0e-4, not 0.0001 (both YAML 1.1 and OmegaConf read it)
        mantissa, exponent = f"{value:e}".split("e")
        return f"{key}: {float(mantissa)!r}e{int(exponent):+d}".replace("e+", "e")
    text = yaml.safe_dump({key: value}, default_flow_style=False, sort_keys=False, allow_unicode=True, width=1000)
    return text.rstrip("\n")


def render_yaml(cfg: dict[str, Any], header: list[str]) -> str:
    """Deterministic YAML: header comment lines, then the keys grouped by recipe section, with inline comments."""
    lines = [f"# {h}" if h else "#" for h in header]
    sections = [name for name, _ in RECIPE] + ["other"]
    order = {key: i for i, key in enumerate(k for _, entries in RECIPE for k, _, _ in entries)}
    for section in sections:
        keys = [k for k in cfg if SECTION_OF.get(k, "other") == section]
        keys.sort(key=lambda k: order.get(k, len(order)))  # recipe keys in recipe order, others as given
        if not keys:
            continue
        lines += ["", f"### {section}"]
        for key in keys:
            text, comment = _scalar_yaml(key, cfg[key]), COMMENT_OF.get(key, "")
            lines.append(f"{text}  # {comment}" if comment and "\n" not in text else text)
    return "\n".join(lines) + "\n"


def config_header(produced_by: str, config_path: str) -> list[str]:
    """The opening comment: the command that produced the file and the one that trains it."""
    return [
        "LLaMA-Factory training config for vlm; keys are LLaMA-Factory arguments.",
        f"Rendered by: {produced_by}",
        f"Train with:  vlm train {shlex.quote(config_path)}",
        f"Override:    vlm train {shlex.quote(config_path)} learning_rate=5e-5 num_train_epochs=3",
        f"Check:       vlm validate {shlex.quote(config_path)}",
    ]


# ---------------------------------------------------------------- validation

PRECISION_KEYS = ("bf16", "fp16", "bf16_full_eval", "fp16_full_eval", "pure_bf16", "tf32")


@dataclass
class Validation:
    """What ``validate_config`` could not check on this machine, and why."""

    relaxed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@contextlib.contextmanager
def _quiet_llamafactory():
    """LLaMA-Factory logs INFO lines to stdout; keep them out of vlm's output while it parses."""
    import logging
    import warnings

    old_env = os.environ.get("LLAMAFACTORY_VERBOSITY")
    os.environ["LLAMAFACTORY_VERBOSITY"] = "ERROR"
    import llamafactory.extras.logging  # noqa: F401  (configures its loggers first, so ours stick)
    import transformers  # noqa: F401

    levels = {lg: lg.level for lg in map(logging.getLogger, ("llamafactory", "transformers"))}
    for lg in levels:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in levels.items():
            lg.setLevel(level)
        os.environ.pop("LLAMAFACTORY_VERBOSITY")
        if old_env is not None:
            os.environ["LLAMAFACTORY_VERBOSITY"] = old_env


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
    with _quiet_llamafactory():
        import torch
        from llamafactory.data.template import TEMPLATES
        from llamafactory.hparams import (DataArguments, FinetuningArguments, GeneratingArguments, ModelArguments,
                                          TrainingArguments, get_train_args)

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
        from vlm.errors import ConfigError

        raise ConfigError(problems, hint="fix these keys (names and values are LLaMA-Factory arguments) "
                                         "and rerun vlm validate.")
    return validation
