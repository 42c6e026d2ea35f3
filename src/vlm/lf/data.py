"""LLaMA-Factory's view of the data: ``dataset_info.json``, records, templates and its defaults.

Everything here answers "what does LLaMA-Factory 0.9.5 read, and how": the registry it looks
datasets up in, the record files it loads (a file or a folder, JSON or JSON lines), the
template it fixes onto the tokenizer, the converter that turns a ShareGPT record into its
``_prompt``/``_response``/``_images`` columns, and the defaults of its argument dataclasses.
The token budget (``vlm.training.token_budget``), the data checks of ``vlm train`` (``vlm.training.train``) and
prediction (``vlm.inference.predict``, ``vlm.lf.inputs``) all read through here, so they agree.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from vlm.errors import VlmError

DATASET_INFO = "dataset_info.json"
EXPORT_HINT = "export the data first: vlm save-cord-dataset-in-sharegpt-format DIR"
# Config keys that change how examples are tokenized; passed on to LLaMA-Factory unchanged.
MODEL_KEYS = ("trust_remote_code", "use_fast_tokenizer", "split_special_tokens", "add_tokens",
              "add_special_tokens", "model_revision", "cache_dir")
DATA_KEYS = ("default_system", "enable_thinking", "preserve_thinking", "tool_format", "train_on_prompt",
             "mask_history", "media_dir", "packing", "neat_packing", "max_samples")


@functools.cache
def lf_defaults() -> dict[str, Any]:
    """The defaults of LLaMA-Factory's ``ModelArguments`` and ``DataArguments`` (e.g. ``cutoff_len``,
    ``image_max_pixels``), read from its own dataclasses so vlm never carries a stale copy."""
    from llamafactory.hparams import DataArguments, ModelArguments

    return {f.name: f.default for cls in (ModelArguments, DataArguments) for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING}


def lf_default(key: str) -> Any:
    return lf_defaults()[key]


def read_dataset_info(dataset_dir: str | os.PathLike, where: str = "", hint: str = EXPORT_HINT,
                      json_hint: str | None = None) -> tuple[Path, dict[str, Any]]:
    """(path, entries) of ``dataset_dir/dataset_info.json``, as LLaMA-Factory reads it.

    ``where`` words the missing-file error (``no dataset_info.json in {where}{dataset_dir}``).
    """
    info_path = Path(dataset_dir) / DATASET_INFO
    if not info_path.is_file():
        raise VlmError(f"no {DATASET_INFO} in {where}{dataset_dir}", hint=hint)
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VlmError(f"{info_path} is not valid JSON: {e}", hint=json_hint) from None
    if not isinstance(info, dict):
        raise VlmError(f"{info_path} must hold a JSON object of dataset entries", hint=json_hint)
    return info_path, info


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a dataset file, or of every file in a folder in name order (as LLaMA-Factory reads a
    folder); ``.jsonl`` one per line, else one JSON list (or one object)."""
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    records: list[dict[str, Any]] = []
    for f in files:
        text = f.read_text(encoding="utf-8")
        try:
            if f.suffix == ".jsonl":
                records += [json.loads(line) for line in text.splitlines() if line.strip()]
            else:
                data = json.loads(text)
                records += data if isinstance(data, list) else [data]
        except json.JSONDecodeError as e:
            raise VlmError(f"{f} is not valid JSON: {e}") from None
    return records


def load_template(model_args: Any, data_args: Any) -> tuple[dict[str, Any], Any]:
    """LLaMA-Factory's tokenizer module and fixed template, set up as ``get_dataset`` sets them up."""
    from llamafactory.data import TEMPLATES, get_template_and_fix_tokenizer
    from llamafactory.model import load_tokenizer

    name, model_path = data_args.template, model_args.model_name_or_path
    if name not in TEMPLATES:
        raise VlmError(f"LLaMA-Factory has no template {name!r}",
                       hint="use the template of the model's family, e.g. qwen2_vl for Qwen2-VL.")
    pristine = copy.copy(TEMPLATES[name])
    try:
        module = load_tokenizer(model_args)
        return module, get_template_and_fix_tokenizer(module["tokenizer"], data_args)
    except (OSError, ValueError) as e:
        raise VlmError(f"LLaMA-Factory cannot load {model_path} with template {name!r}: {e}") from None
    finally:
        TEMPLATES[name] = pristine  # the call sets default_system etc. on the shared template; undo that


def one_placeholder_per_image(template: Any) -> Any:
    """A copy of ``template`` whose plugin leaves one image token per image instead of expanding it."""
    light = copy.copy(template)
    light.mm_plugin = copy.copy(template.mm_plugin)
    light.mm_plugin.expand_mm_tokens = False
    return light


def record_converter(attr: Any, data_args: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """LLaMA-Factory's converter for one dataset's raw records (``_prompt``, ``_response``, ``_images``...)."""
    from llamafactory.data.converter import get_dataset_converter

    convert = get_dataset_converter(attr.formatting, attr, data_args)
    # datasets.load_dataset gives every record every column, None where it is missing; so do we.
    columns = [c for c in (attr.messages, attr.system, attr.tools, attr.images, attr.videos, attr.audios,
                           attr.chosen, attr.rejected, attr.kto_tag) if c]
    return lambda record: convert({**dict.fromkeys(columns), **record})


def dataset_attrs(names: list[str], info: dict[str, Any]) -> list[Any]:
    """LLaMA-Factory's parsed ``DatasetAttr`` of each named entry (columns, tags, formatting)."""
    from llamafactory.data.parser import get_dataset_list

    return get_dataset_list(names, {n: info[n] for n in names})


def encode_example(processor: Any, ex: dict[str, Any], media: bool = True) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one converted example, by a LLaMA-Factory dataset processor's own per-example
    step (what ``get_dataset`` maps over the data); ``media=False`` passes no videos or audios."""
    return processor._encode_data_example(
        prompt=ex["_prompt"], response=ex["_response"], system=ex["_system"], tools=ex["_tools"],
        images=ex["_images"] or [], videos=(ex["_videos"] or []) if media else [],
        audios=(ex["_audios"] or []) if media else [])


def image_placeholder_tokens(plugin: Any, processor: Any, size: tuple[int, int]) -> int:
    """Image tokens the template's plugin expands one (width, height) image into with ``processor``'s resize."""
    from llamafactory.extras.constants import IMAGE_PLACEHOLDER

    blank = Image.new("1", size)  # only the size matters to the resize and to the grid; a 1-bit image is cheap
    messages = plugin.process_messages([{"role": "user", "content": IMAGE_PLACEHOLDER}], [blank], [], [], processor)
    return messages[0]["content"].count(plugin.image_token)


@contextlib.contextmanager
def quiet():
    """Keep LLaMA-Factory's logs (which it writes to stdout) and transformers' warnings off vlm's output.

    Both libraries set their logger levels when first used, so they are configured first; the
    levels, the environment and the warning filters are restored afterwards.
    """
    old_env = os.environ.get("LLAMAFACTORY_VERBOSITY")
    os.environ["LLAMAFACTORY_VERBOSITY"] = "ERROR"
    import llamafactory.extras.logging as lf_logging
    import transformers.utils.logging as hf_logging

    lf_logging.get_logger(__name__)
    hf_logging.get_logger(__name__)
    loggers = [logging.getLogger(name) for name in ("llamafactory", "transformers")]
    levels = [lg.level for lg in loggers]
    bars = hf_logging.is_progress_bar_enabled()  # "Loading weights" bars, one per model load
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        hf_logging.disable_progress_bar()
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if bars:
            hf_logging.enable_progress_bar()
        os.environ.pop("LLAMAFACTORY_VERBOSITY", None)
        if old_env is not None:
            os.environ["LLAMAFACTORY_VERBOSITY"] = old_env


def dataset_names(value: Any) -> list[str]:
    """The names in a ``dataset`` or ``eval_dataset`` value (comma-separated text or a list); blanks dropped."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if v is not None and str(v).strip()]
    return []
