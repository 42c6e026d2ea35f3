"""Training configs: the CORD recipe, overrides, and rendering to commented YAML.

A config is a plain dict of LLaMA-Factory arguments. ``render_recipe`` builds one
from the recipe plus overrides, ``render_yaml`` writes it as deterministic,
commented YAML; ``vlm.training.validation.validate_config`` checks it with LLaMA-Factory's own parser
in-process (imported lazily, as it takes seconds), collecting every problem.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
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
    "early_stopping_steps": "stop after N evaluations in a row without a better metric_for_best_model",
    "metric_for_best_model": "what early stopping watches (vlm select ranks checkpoints on nTED/F1 instead)",
    "load_best_model_at_end": "the final model is the best checkpoint by metric_for_best_model",
}
SECTION_OF = {key: section for section, entries in RECIPE for key, _, _ in entries}
COMMENT_OF = {key: comment for _, entries in RECIPE for key, _, comment in entries} | EXTRA_COMMENTS
SECTION_OF.update(lora_rank="method", quantization_bit="method", quantization_method="method",
                  double_quantization="method", upcast_layernorm="method", freeze_trainable_layers="method",
                  freeze_trainable_modules="method", freeze_vision_tower="method", deepspeed="train",
                  early_stopping_steps="eval", metric_for_best_model="eval", load_best_model_at_end="eval")

# Named flags and the LLaMA-Factory keys they set.
FLAG_KEYS = {
    "model": "model_name_or_path", "dataset": "dataset", "dataset_dir": "dataset_dir", "output_dir": "output_dir",
    "epochs": "num_train_epochs", "learning_rate": "learning_rate", "batch_size": "per_device_train_batch_size",
    "lora_rank": "lora_rank", "early_stopping": "early_stopping_steps",
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
    except UnicodeDecodeError as e:
        raise VlmError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason})",
                       hint="save it as UTF-8, or render a fresh one.") from None
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
    shipped = Path(__file__).resolve().parents[3] / relative  # the checkout this package runs from
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
    if opts.flags.get("early_stopping") is not None:
        # LLaMA-Factory's early_stopping_steps is the Trainer's patience, which needs a metric to watch.
        cfg.update(metric_for_best_model="eval_loss", load_best_model_at_end=True)
    if opts.deepspeed:
        cfg["deepspeed"] = deepspeed_preset(opts.deepspeed)
    overrides = parse_overrides(opts.overrides)
    cfg.update(overrides)
    if str(cfg.get("eval_strategy")) == "no" and "eval_steps" not in overrides:
        cfg.pop("eval_steps", None)  # the recipe's eval_steps would read as if evaluation still ran
    return normalize_numbers(cfg)


# Comments that state the recipe's own values: key -> the keys whose recipe values the comment describes. The
# comment is dropped when an override changes any of them, so it never contradicts the value beside it.
VALUE_COMMENTS = {
    "image_max_pixels": ("image_max_pixels",),
    "image_min_pixels": ("image_min_pixels",),
    "gradient_accumulation_steps": ("gradient_accumulation_steps", "per_device_train_batch_size"),
    "val_size": ("val_size", "dataset"),
    "dataset_dir": ("dataset_dir",),
    "lora_target": ("lora_target",),
    "max_samples": ("dataset",),
}


def _scalar_yaml(key: str, value: Any) -> str:
    if isinstance(value, float) and 0 < abs(value) < 1e-3:  # 1.0e-4, not 0.0001 (both YAML 1.1 and OmegaConf read it)
        mantissa, exponent = f"{value:e}".split("e")
        return f"{key}: {float(mantissa)!r}e{int(exponent):+d}".replace("e+", "e")
    text = yaml.safe_dump({key: value}, default_flow_style=False, sort_keys=False, allow_unicode=True, width=1000)
    return text.rstrip("\n")


def render_yaml(cfg: dict[str, Any], header: list[str]) -> str:
    """Deterministic YAML: header comment lines, then the keys grouped by recipe section, with inline comments."""
    lines = [f"# {h}" if h else "#" for h in header]
    defaults = recipe()
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
            if any(cfg.get(k) != defaults.get(k) for k in VALUE_COMMENTS.get(key, ())):
                comment = ""  # the comment describes the recipe's value, not an override
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
