"""Token budget (``vlm stats``, and ``vlm train``'s check): count exactly what LLaMA-Factory will feed the
model, before training.

LLaMA-Factory 0.9.5 shrinks every image to ``image_max_pixels`` (default 768*768)
before Qwen2-VL's own smart resize, so one CORD photo costs ~750 image tokens.
Against ``cutoff_len: 1024`` that truncates answers, and truncating image tokens
crashes training ("Image features and image tokens do not match").

The counts come from LLaMA-Factory's own code, not from a re-implementation:

* examples: ``data.parser.get_dataset_list`` + ``data.converter.get_dataset_converter``
  (the ShareGPT -> ``_prompt``/``_response``/``_images`` step of ``get_dataset``);
* text and labels: ``SupervisedDatasetProcessor._encode_data_example`` (what
  ``get_dataset`` maps over the data), with a cutoff too large to truncate;
* image tokens: ``template.mm_plugin.process_messages`` on a blank image of the
  photo's size (LLaMA-Factory's resize, then the model's image processor), cached
  per size, so a photo's header is read but its pixels never are.

Text is encoded once with one placeholder token per image; the image-token counts
are then added. The first example with images is also encoded the slow way, on
its real decoded image, and any disagreement switches every example to that path.
"""

from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from vlm.errors import ConfigError, VlmError
from vlm.lf.data import (
    DATA_KEYS,
    MODEL_KEYS,
    dataset_attrs,
    encode_example,
    image_placeholder_tokens,
    lf_default,
    load_template,
    one_placeholder_per_image,
    quiet,
    read_dataset_info,
    read_records,
    record_converter,
)
from vlm.output import counting, warn
from vlm.training.validation import value_problems

# LLaMA-Factory's defaults (hparams.ProcessorArguments / hparams.DataArguments), read from its dataclasses
# on first use: importing them loads transformers, which this module's importers must not pay for.
_LF_DEFAULTS = {"LF_IMAGE_MAX_PIXELS": "image_max_pixels", "LF_IMAGE_MIN_PIXELS": "image_min_pixels",
                "LF_CUTOFF_LEN": "cutoff_len"}


def __getattr__(name: str) -> Any:
    if name in _LF_DEFAULTS:
        return lf_default(_LF_DEFAULTS[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_KINDS = ("image", "prompt", "answer", "total")


@dataclass
class ExampleBudget:
    """One example's tokens as LLaMA-Factory builds them (before any truncation)."""

    dataset: str
    index: int  # position in the dataset file
    image_sizes: list[list[int]]  # [width, height] as stored, before any resize
    image_tokens: int  # image pad tokens (<|image_pad|> for Qwen2-VL)
    prompt_tokens: int  # every other non-trained token: template, system, question, vision start/end
    answer_tokens: int  # tokens with a label (the assistant turns and their end token)
    total_tokens: int  # len(input_ids)


def _percentile(values: list[int], p: float) -> int:
    """Nearest-rank percentile: always a value some example really has."""
    if not values:
        return 0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass
class BudgetReport:
    """Token counts of every example, how many exceed ``cutoff_len``, and a fix."""

    model_name_or_path: str
    template: str
    datasets: list[str]
    image_max_pixels: int
    image_min_pixels: int
    cutoff_len: int
    examples: list[ExampleBudget]
    dropped: list[dict[str, Any]] = field(default_factory=list)  # examples LLaMA-Factory skips as malformed
    method: str = "fast"  # "fast" (header sizes) or "full" (every image decoded)
    recommended_image_max_pixels: int | None = None
    recommended_max_total_tokens: int | None = None  # the longest example at the recommended image_max_pixels
    recommended_cutoff_len: int = 0
    recommendation: str = ""

    @property
    def n_total(self) -> int:
        return len(self.examples)

    @property
    def over(self) -> list[ExampleBudget]:
        return [e for e in self.examples if e.total_tokens > self.cutoff_len]

    @property
    def n_over(self) -> int:
        return len(self.over)

    @property
    def max_total_tokens(self) -> int:
        return max((e.total_tokens for e in self.examples), default=0)

    def percentiles(self) -> dict[str, dict[str, int]]:
        """p50/p90/p99/max of image, prompt, answer and total tokens."""
        table = {}
        for kind in _KINDS:
            values = [getattr(e, f"{kind}_tokens") for e in self.examples]
            table[kind] = {"p50": _percentile(values, 50), "p90": _percentile(values, 90),
                           "p99": _percentile(values, 99), "max": max(values, default=0)}
        return table

    def to_dict(self, include_examples: bool = False) -> dict[str, Any]:
        d = {
            "model_name_or_path": self.model_name_or_path, "template": self.template, "datasets": self.datasets,
            "image_max_pixels": self.image_max_pixels, "image_min_pixels": self.image_min_pixels,
            "cutoff_len": self.cutoff_len, "method": self.method, "n_total": self.n_total, "n_over": self.n_over,
            "n_dropped": len(self.dropped), "max_total_tokens": self.max_total_tokens,
            "percentiles": self.percentiles(),
            "recommended_image_max_pixels": self.recommended_image_max_pixels,
            "recommended_max_total_tokens": self.recommended_max_total_tokens,
            "recommended_cutoff_len": self.recommended_cutoff_len, "recommendation": self.recommendation,
            "over": [{"dataset": e.dataset, "index": e.index, "total_tokens": e.total_tokens} for e in self.over],
            "dropped": self.dropped,
        }
        if include_examples:
            d["examples"] = [asdict(e) for e in self.examples]
        return d


def nice_pixel_values(lo: int, hi: int) -> list[int]:
    """Candidate image_max_pixels, ascending: squares of multiples of 28 and of 128, within [lo, hi]."""
    sides = {28 * k for k in range(2, 56)} | {128 * k for k in range(1, 13)}
    return sorted(s * s for s in sides if lo <= s * s <= hi)


def check_config(cfg: Mapping[str, Any], limit: int | None = None, show_progress: bool = True) -> BudgetReport:
    """Run ``token_budget`` on a LLaMA-Factory training config (missing keys take LLaMA-Factory's defaults)."""
    problems = value_problems(dict(cfg))
    if problems:  # the same value checks as vlm validate and vlm train
        raise ConfigError(problems, hint="fix these keys and rerun (vlm validate checks the whole config).")
    missing = [k for k in ("model_name_or_path", "template", "dataset") if not cfg.get(k)]
    if missing:
        raise VlmError(f"config has no {', '.join(missing)}", hint="token counts need the model, template and dataset.")
    datasets = cfg["dataset"]
    datasets = [d.strip() for d in datasets.split(",")] if isinstance(datasets, str) else [str(d) for d in datasets]
    extra = {k: cfg[k] for k in (*MODEL_KEYS, *DATA_KEYS) if cfg.get(k) is not None}
    return token_budget(
        cfg["model_name_or_path"], cfg["template"], cfg.get("dataset_dir") or "data", datasets,
        image_max_pixels=_int(cfg, "image_max_pixels", lf_default("image_max_pixels")),
        image_min_pixels=_int(cfg, "image_min_pixels", lf_default("image_min_pixels")),
        cutoff_len=_int(cfg, "cutoff_len", lf_default("cutoff_len")), limit=limit, show_progress=show_progress,
        extra=extra,
    )


def _int(cfg: Mapping[str, Any], key: str, default: int) -> int:
    value = cfg.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise VlmError(f"{key} must be a positive integer, not {value!r}", hint=f"e.g. {key}: {default}")
    return value


def token_budget(model_name_or_path: str, template: str, dataset_dir: str | os.PathLike, datasets: list[str],
                 image_max_pixels: int | None = None, image_min_pixels: int | None = None,
                 cutoff_len: int | None = None, limit: int | None = None, show_progress: bool = True,
                 extra: Mapping[str, Any] | None = None) -> BudgetReport:
    """Count image, prompt, answer and total tokens of every example exactly as LLaMA-Factory's SFT
    preprocessing builds them, and recommend an image_max_pixels and a cutoff_len that fit.

    ``extra`` carries further LLaMA-Factory arguments that affect tokenization (e.g.
    ``default_system``, ``mask_history``, ``trust_remote_code``). Settings left out take LLaMA-Factory's
    defaults.
    """
    image_max_pixels = lf_default("image_max_pixels") if image_max_pixels is None else image_max_pixels
    image_min_pixels = lf_default("image_min_pixels") if image_min_pixels is None else image_min_pixels
    cutoff_len = lf_default("cutoff_len") if cutoff_len is None else cutoff_len
    if image_max_pixels < image_min_pixels:
        raise VlmError(f"image_max_pixels ({image_max_pixels}) is smaller than image_min_pixels ({image_min_pixels})")
    dataset_dir = os.fspath(dataset_dir)
    info = _dataset_info(dataset_dir, datasets)
    model_path = resolve_model(model_name_or_path)
    with quiet():
        counter = _Counter(model_path, template, dataset_dir, image_max_pixels, image_min_pixels, cutoff_len,
                           dict(extra or {}))
        examples, dropped = counter.count_all(_iter_examples(counter, dataset_dir, datasets, info, limit),
                                              show_progress)
        report = BudgetReport(model_name_or_path, template, list(datasets), image_max_pixels, image_min_pixels,
                              counter.cutoff_len, examples, dropped, counter.method)
        _recommend(report, counter)
    return report


def resolve_model(name: str) -> str:
    """A local model directory, or a hub id already in the local cache; never downloads."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise VlmError(f"model directory {path} has no config.json",
                           hint="point model_name_or_path at a saved model.")
        return str(path)
    if _HUB_ID.match(name) and not name.startswith("."):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json")
        if isinstance(cached, str):
            return str(Path(cached).parent)
        raise VlmError(f"model {name} is not a local directory and is not in the Hugging Face cache",
                       hint=f"download it first (hf download {name}) or set model_name_or_path to a local directory.")
    raise VlmError(f"model directory {name} does not exist", hint="check model_name_or_path in the config.")


def _dataset_info(dataset_dir: str, datasets: list[str]) -> dict[str, Any]:
    """The entries of ``datasets``, each registered with a local file that exists."""
    info_path, info = read_dataset_info(
        dataset_dir, hint="export and register the data first: vlm save-cord-dataset-in-sharegpt-format DIR")
    unknown = [d for d in datasets if d not in info]
    if unknown:
        raise VlmError(f"dataset {', '.join(map(repr, unknown))} not registered in {info_path}",
                       hint=f"registered datasets: {', '.join(sorted(info)) or 'none'}.")
    for name in datasets:
        file_name = info[name].get("file_name")
        if not file_name:
            raise VlmError(f"dataset {name!r} in {info_path} has no file_name",
                           hint="only local files can be checked; hub datasets are not downloaded.")
        if not (Path(dataset_dir) / file_name).exists():
            raise VlmError(f"data file {Path(dataset_dir) / file_name} of dataset {name!r} not found",
                           hint="re-export the data, or fix file_name in dataset_info.json.")
    return info


def _iter_examples(counter: _Counter, dataset_dir: str, datasets: list[str], info: dict[str, Any],
                   limit: int | None) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """Yield (dataset, index, aligned example) through LLaMA-Factory's own parser and converter."""
    n = 0
    for name, attr in zip(datasets, dataset_attrs(datasets, info)):
        convert = record_converter(attr, counter.data_args)
        records = read_records(Path(dataset_dir) / info[name]["file_name"])
        if counter.data_args.max_samples is not None:
            records = records[: counter.data_args.max_samples]
        for i, record in enumerate(records):
            if limit is not None and n >= limit:
                return
            try:
                example = convert(record)
            except (KeyError, TypeError) as e:
                raise VlmError(f"example {i} of dataset {name!r} does not match its dataset_info.json columns: {e!r}",
                               hint="check the columns and tags of this dataset in dataset_info.json.") from None
            for image in example["_images"] or []:
                if isinstance(image, str) and not os.path.isfile(image):
                    raise VlmError(f"image {image} of example {i} in dataset {name!r} not found",
                                   hint=f"image paths are relative to {counter.data_args.media_dir}.")
            n += 1
            yield name, i, example


class _Counter:
    """LLaMA-Factory's tokenizer, processor and template, set up as ``get_dataset`` sets them up."""

    def __init__(self, model_path: str, template: str, dataset_dir: str, image_max_pixels: int,
                 image_min_pixels: int, cutoff_len: int, extra: dict[str, Any]):
        from llamafactory.data.processor import SupervisedDatasetProcessor
        from llamafactory.extras.constants import IGNORE_INDEX
        from llamafactory.hparams import DataArguments, ModelArguments

        try:
            model_args = ModelArguments(model_name_or_path=model_path, image_max_pixels=image_max_pixels,
                                        image_min_pixels=image_min_pixels,
                                        **{k: v for k, v in extra.items() if k in MODEL_KEYS})
            self.data_args = DataArguments(template=template, dataset_dir=dataset_dir, cutoff_len=cutoff_len,
                                           **{k: v for k, v in extra.items() if k in DATA_KEYS})
        except ValueError as e:
            raise VlmError(f"LLaMA-Factory rejects these arguments: {e}") from None
        self.cutoff_len = self.data_args.cutoff_len  # packing takes one off
        module, self.template = load_template(model_args, self.data_args)
        self.tokenizer, self.processor = module["tokenizer"], module["processor"]
        self.plugin = self.template.mm_plugin
        self.image_token_id = (self.tokenizer.convert_tokens_to_ids(self.plugin.image_token)
                               if self.plugin.image_token else None)
        self.ignore = IGNORE_INDEX
        # Encoding never truncates here: totals are measured, then compared with cutoff_len.
        untruncated = copy.copy(self.data_args)
        untruncated.cutoff_len = 10**9
        self.full = SupervisedDatasetProcessor(self.template, self.tokenizer, self.processor, untruncated)
        # The same template with one placeholder token per image: no pixels are read.
        self.light = SupervisedDatasetProcessor(one_placeholder_per_image(self.template), self.tokenizer,
                                                self.processor, untruncated)
        self.method = "fast"
        self._sizes: dict[str, tuple[int, int]] = {}
        self._probes: dict[tuple[int, int, int], int] = {}
        self._processors: dict[int, Any] = {image_max_pixels: self.processor}
        self.image_max_pixels, self.image_min_pixels = image_max_pixels, image_min_pixels

    def image_size(self, path: str) -> tuple[int, int]:
        """(width, height) from the file header; PIL opens lazily, so no pixels are decoded."""
        if path not in self._sizes:
            try:
                with Image.open(path) as im:
                    self._sizes[path] = im.size
            except (OSError, Image.DecompressionBombError) as e:
                raise VlmError(f"cannot read image {path}: {e}") from None
        return self._sizes[path]

    def image_tokens(self, size: tuple[int, int], max_pixels: int) -> int:
        """Image tokens LLaMA-Factory gives a (width, height) image at ``max_pixels``, via its own plugin."""
        key = (*size, max_pixels)
        if key not in self._probes:
            if max_pixels not in self._processors:
                proc = copy.copy(self.processor)
                proc.image_max_pixels = max_pixels
                self._processors[max_pixels] = proc
            self._probes[key] = image_placeholder_tokens(self.plugin, self._processors[max_pixels], size)
        return self._probes[key]

    def _encode(self, processor: Any, ex: dict[str, Any]) -> tuple[list[int], list[int]]:
        return encode_example(processor, ex)

    def _split(self, ids: list[int], labels: list[int]) -> tuple[int, int]:
        """(image tokens, answer tokens) in one encoded example."""
        image = sum(1 for t in ids if t == self.image_token_id)
        answer = sum(1 for t, lab in zip(ids, labels) if lab != self.ignore and t != self.image_token_id)
        return image, answer

    def count(self, name: str, index: int, ex: dict[str, Any], method: str) -> ExampleBudget:
        images = ex["_images"] or []
        sizes = [self.image_size(p) if isinstance(p, str) else None for p in images]
        fast = method == "fast" and all(sizes) and not ex["_videos"] and not ex["_audios"]
        if fast:
            ids, labels = self._encode(self.light, ex)
            placeholders, answer = self._split(ids, labels)
            fast = placeholders == len(images)  # one placeholder token per image, or this plugin is not suited
        if fast:
            image = sum(self.image_tokens(s, self.image_max_pixels) for s in sizes)
            total = len(ids) - placeholders + image
        else:
            ids, labels = self._encode(self.full, ex)
            (image, answer), total = self._split(ids, labels), len(ids)
        return ExampleBudget(name, index, [list(s) for s in sizes if s], image, total - image - answer, answer, total)

    def count_all(self, examples: Iterator[tuple[str, int, dict[str, Any]]],
                  show_progress: bool) -> tuple[list[ExampleBudget], list[dict[str, Any]]]:
        rows = list(examples)
        budgets: list[ExampleBudget] = []
        dropped: list[dict[str, Any]] = []
        checked = False

        with counting(show_progress, len(rows), "counting tokens") as advance:
            for name, index, ex in rows:
                # SupervisedDatasetProcessor.preprocess_dataset drops these (the converter empties broken ones).
                if len(ex["_prompt"]) % 2 != 1 or len(ex["_response"]) != 1:
                    dropped.append({"dataset": name, "index": index, "reason": "malformed conversation"})
                    advance()
                    continue
                try:
                    budget = self.count(name, index, ex, self.method)
                    if not checked and self.method == "fast" and ex["_images"]:
                        checked = True
                        if budget != self.count(name, index, ex, "full"):  # never expected; stay exact regardless

                            warn("header-based image token counts disagree with LLaMA-Factory; decoding every image")
                            self.method = "full"
                            budget = self.count(name, index, ex, "full")
                except ValueError as e:  # LLaMA-Factory's own check, e.g. images vs <image> placeholders
                    raise VlmError(f"LLaMA-Factory rejects example {index} of dataset {name!r}: {e}") from None
                except OSError as e:  # PIL decoding the pixels: "image file is truncated", unreadable files
                    files = ", ".join(str(p) for p in ex["_images"] or [])
                    raise VlmError(f"cannot decode the image of example {index} of dataset {name!r} ({files}): {e}",
                                   hint="replace that file, or rerun the export (it decodes every image).") from None
                budgets.append(budget)
                advance()
        return budgets, dropped


def _recommend(report: BudgetReport, counter: _Counter) -> None:
    """Fill in the largest nice image_max_pixels that fits every example, and the cutoff_len that fits as is."""
    report.recommended_cutoff_len = max(128, math.ceil(report.max_total_tokens / 128) * 128)
    cutoff = report.cutoff_len
    # Text tokens do not depend on image_max_pixels; the image tokens are recounted per candidate.
    work = sorted(report.examples, key=lambda e: e.total_tokens, reverse=True)

    def worst_total(max_pixels: int) -> int | None:
        """The longest total at ``max_pixels``, or None as soon as one example exceeds the cutoff."""
        worst = 0
        for e in work:
            try:
                image = sum(counter.image_tokens(tuple(s), max_pixels) for s in e.image_sizes)
            except ValueError:  # e.g. a sliver of an image that this resolution shrinks to nothing
                return None
            total = e.total_tokens - e.image_tokens + image
            if total > cutoff:
                return None
            worst = max(worst, total)
        return worst

    best = None
    if counter.method == "fast" and any(e.image_sizes for e in report.examples):
        hi = max(report.image_max_pixels, 1024 * 1024)
        for candidate in reversed(nice_pixel_values(report.image_min_pixels, hi)):
            worst = worst_total(candidate)
            if worst is not None:
                best = candidate
                report.recommended_image_max_pixels, report.recommended_max_total_tokens = candidate, worst
                break

    n, k = report.n_total, report.n_over
    lines = [f"{k} of {n} examples exceed cutoff_len={cutoff} (longest: {report.max_total_tokens} tokens)."
             if k else f"All {n} examples fit in cutoff_len={cutoff} (longest: {report.max_total_tokens} tokens)."]
    if k:
        lines.append(f"Fix: set cutoff_len: {report.recommended_cutoff_len} (keeps image_max_pixels="
                     f"{report.image_max_pixels}, more memory per step)")
        if best is not None:
            lines.append(f"  or set image_max_pixels: {best} ({_side(best)}; longest example becomes "
                         f"{report.recommended_max_total_tokens} tokens, fewer image tokens per receipt)")
        elif counter.method == "fast":
            lines.append("  (no image_max_pixels fits: the text alone is too long, so raise cutoff_len)")
    elif best is not None and best > report.image_max_pixels:
        lines.append(f"image_max_pixels could go up to {best} ({_side(best)}) and still fit.")
    report.recommendation = "\n".join(lines)


def _side(pixels: int) -> str:
    side = math.isqrt(pixels)
    return f"{side}*{side}" if side * side == pixels else f"{pixels} px"
