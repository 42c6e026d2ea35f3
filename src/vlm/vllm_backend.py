"""The vLLM backend of ``vlm predict``: LLaMA-Factory's prompt and image handling, vLLM's generation.

Train/inference skew is the thing to avoid, so nothing about the input is vLLM's own:

* the prompt is encoded by LLaMA-Factory's template and its predict-time processor
  (``UnsupervisedDatasetProcessor``, what ``do_predict`` uses), from the same
  ``dataset_info.json`` entry, with one ``<|image_pad|>`` per image that vLLM expands;
* images are resized by LLaMA-Factory's plugin to the training ``image_max_pixels`` /
  ``image_min_pixels`` before vLLM sees them;
* generation is greedy and stops on the template's stop tokens;
* a LoRA adapter is merged into the base model by ``llamafactory-cli export`` first (cached
  per adapter), as LLaMA-Factory's own do_predict merges it, and vLLM serves the merged
  model. On an H100, vLLM's run-time LoRA gave outputs that differed from LLaMA-Factory's
  from the first token while base-model outputs matched, so run-time LoRA is opt-in:
  ``vllm_lora=true``.

Engine settings use LLaMA-Factory's names: ``vllm_gpu_util``, ``vllm_enforce_eager``,
``vllm_max_lora_rank`` and ``vllm_config`` (a dict of any other ``vllm.LLM`` argument).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vlm.errors import VlmError

BACKENDS = ("auto", "llamafactory", "vllm")
# Settings that belong to the vLLM engine, not to LLaMA-Factory's do_predict.
VLLM_KEYS = ("vllm_gpu_util", "vllm_enforce_eager", "vllm_max_lora_rank", "vllm_config", "vllm_lora")
MERGED_MARKER = "vlm_merged.json"
_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def gpu_visible() -> bool:
    import torch

    return torch.cuda.is_available()


def choose_backend(requested: str) -> str:
    """``auto`` is vLLM when it is installed and a GPU is visible, else LLaMA-Factory; ``vllm`` without vLLM
    is an error."""
    if requested not in BACKENDS:
        raise VlmError(f"unknown backend {requested!r}", hint=f"choose one of: {', '.join(BACKENDS)}.")
    if requested == "auto":
        return "vllm" if vllm_installed() and gpu_visible() else "llamafactory"
    if requested == "vllm" and not vllm_installed():
        raise VlmError("--backend vllm, but vLLM is not installed in this environment",
                       hint="install a vLLM build that matches your torch and CUDA (pip install vllm), "
                            "or use --backend llamafactory.")
    return requested


def lora_rank(adapter: str) -> int:
    """The adapter's rank rounded up to a rank vLLM accepts for ``max_lora_rank``."""
    try:
        r = int(json.loads((Path(adapter) / "adapter_config.json").read_text())["r"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise VlmError(f"cannot read the LoRA rank from {adapter}/adapter_config.json: {e}") from None
    for allowed in _LORA_RANKS:
        if r <= allowed:
            return allowed
    raise VlmError(f"LoRA rank {r} in {adapter} is above vLLM's largest ({_LORA_RANKS[-1]})",
                   hint="drop vllm_lora=true: by default vlm merges the adapter into the model for vLLM.")


def merged_model(settings: dict[str, Any], adapter_hash: str, cache_dir: Path) -> Path:
    """The base model with the adapter merged in, by ``llamafactory-cli export``; reused while
    ``adapter_hash`` (which should cover the base model too) is unchanged. Written to a temp folder and
    renamed into place, so a killed merge leaves nothing behind."""
    import shutil
    import tempfile

    from vlm.fsutil import atomic_write_json, atomic_write_text
    from vlm.launch import merge_config
    from vlm.procs import find_llamafactory_cli, log_tail, run_child

    out = cache_dir / adapter_hash
    source = {"model": settings["model_name_or_path"], "adapter": str(settings["adapter_name_or_path"]),
              "adapter_hash": adapter_hash}
    marker = out / MERGED_MARKER
    if marker.is_file() and json.loads(marker.read_text()) == source:
        return out
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{adapter_hash}.", dir=cache_dir))
    try:
        cfg = merge_config(settings, Path(settings["adapter_name_or_path"]), tmp / "model")
        atomic_write_text(tmp / "merge.yaml", yaml_dump(cfg))
        log = cache_dir / f"{adapter_hash}.merge.log"
        code = run_child([find_llamafactory_cli(), "export", str(tmp / "merge.yaml")], log,
                         env={**os.environ, "DISABLE_VERSION_CHECK": "1"})
        if code != 0 or not (tmp / "model" / "config.json").is_file():
            raise VlmError(f"merging the adapter for vLLM failed (exit {code}):\n{log_tail(log)}",
                           hint=f"full log: {log}; or pass vllm_lora=true to apply the adapter at run time.")
        atomic_write_json(tmp / "model" / MERGED_MARKER, source)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp / "model", out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def yaml_dump(cfg: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(cfg, sort_keys=False)


class PromptEncoder:
    """Turn exported ShareGPT records into vLLM inputs exactly as LLaMA-Factory's ``do_predict`` sees them."""

    def __init__(self, settings: dict[str, Any], dataset_info: dict[str, Any]):
        from llamafactory.data import TEMPLATES, get_template_and_fix_tokenizer
        from llamafactory.data.converter import get_dataset_converter
        from llamafactory.data.parser import get_dataset_list
        from llamafactory.data.processor import UnsupervisedDatasetProcessor
        from llamafactory.hparams import DataArguments, ModelArguments
        from llamafactory.model import load_tokenizer

        model_args = ModelArguments(
            model_name_or_path=settings["model_name_or_path"],
            trust_remote_code=bool(settings.get("trust_remote_code", True)),
            **{k: settings[k] for k in ("image_max_pixels", "image_min_pixels") if settings.get(k) is not None})
        self.data_args = DataArguments(template=settings["template"], dataset_dir=settings["dataset_dir"],
                                       cutoff_len=int(settings.get("cutoff_len", 2048)))
        self.max_pixels, self.min_pixels = model_args.image_max_pixels, model_args.image_min_pixels
        pristine = copy.copy(TEMPLATES[settings["template"]])
        try:
            module = load_tokenizer(model_args)
            template = get_template_and_fix_tokenizer(module["tokenizer"], self.data_args)
        except (OSError, ValueError) as e:
            raise VlmError(f"LLaMA-Factory cannot load {settings['model_name_or_path']}: {e}") from None
        finally:
            TEMPLATES[settings["template"]] = pristine  # the call edits the shared template; undo that
        self.tokenizer, self.processor = module["tokenizer"], module["processor"]
        self.plugin = template.mm_plugin
        collapsed = copy.copy(template)
        collapsed.mm_plugin = copy.copy(template.mm_plugin)
        collapsed.mm_plugin.expand_mm_tokens = False  # one placeholder per image; vLLM expands it
        self.encoder = UnsupervisedDatasetProcessor(collapsed, self.tokenizer, self.processor, self.data_args)
        self.stop_token_ids = template.get_stop_token_ids(self.tokenizer)
        self.image_token_id = (self.tokenizer.convert_tokens_to_ids(self.plugin.image_token)
                               if self.plugin.image_token else None)
        name = settings["dataset"]
        attr = get_dataset_list([name], {name: dataset_info[name]})[0]
        self.convert = get_dataset_converter(attr.formatting, attr, self.data_args)
        self.columns = [c for c in (attr.messages, attr.system, attr.tools, attr.images, attr.videos, attr.audios)
                        if c]

    def image_tokens(self, image: Any) -> int:
        """How many tokens vLLM (and the HF processor) expand one resized image into."""
        ip = self.processor.image_processor
        patches = ip.get_number_of_image_patches(image.height, image.width, {})
        return patches // (getattr(ip, "merge_size", 1) ** 2)

    def encode(self, record: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """(vLLM prompt, prompt length once vLLM has expanded the image placeholders)."""
        ex = self.convert({**dict.fromkeys(self.columns), **record})
        if len(ex["_prompt"]) % 2 != 1:  # do_predict drops these
            raise VlmError(f"document {record.get('id')}: not a user/assistant conversation LLaMA-Factory can read",
                           hint="each record needs messages alternating user/assistant.")
        if ex["_videos"] or ex["_audios"]:
            raise VlmError(f"document {record.get('id')}: video and audio inputs are not supported by vlm predict")
        paths = ex["_images"] or []
        ids, _ = self.encoder._encode_data_example(prompt=ex["_prompt"], response=ex["_response"],
                                                   system=ex["_system"], tools=ex["_tools"], images=paths,
                                                   videos=[], audios=[])
        prompt: dict[str, Any] = {"prompt_token_ids": ids}
        length = len(ids)
        if paths:
            images = self.plugin._regularize_images(paths, image_max_pixels=self.max_pixels,
                                                    image_min_pixels=self.min_pixels)["images"]
            prompt["multi_modal_data"] = {"image": images}
            length += sum(self.image_tokens(im) - 1 for im in images)
        return prompt, length


class VllmGenerator:
    """One ``vllm.LLM`` for the whole run; ``generate`` takes a chunk of records, returns raw texts in order."""

    def __init__(self, settings: dict[str, Any], dataset_info: dict[str, Any], max_new_tokens: int,
                 merged: Path | None = None):
        """``merged``: the adapter already merged into the model (see ``merged_model``); then no run-time LoRA."""
        self.merged = merged
        # vLLM and LLaMA-Factory log to stdout; keep stdout for --json and the summary line.
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        with stdout_to_stderr():  # the engine's own process inherits this too
            self._start(settings, dataset_info, max_new_tokens)

    def _start(self, settings: dict[str, Any], dataset_info: dict[str, Any], max_new_tokens: int) -> None:
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest

        self.encoder = PromptEncoder(settings, dataset_info)
        self.cutoff_len = self.encoder.data_args.cutoff_len
        adapter = None if self.merged else settings.get("adapter_name_or_path")
        extra = settings.get("vllm_config") or {}
        if isinstance(extra, str):
            try:
                extra = json.loads(extra)
            except ValueError:
                raise VlmError(f"vllm_config is not a JSON object: {extra!r}",
                               hint='pass e.g. vllm_config=\'{"max_num_seqs": 64}\'.') from None
        engine: dict[str, Any] = {
            "model": str(self.merged or settings["model_name_or_path"]),
            "trust_remote_code": bool(settings.get("trust_remote_code", True)),
            "dtype": settings.get("infer_dtype", "auto"),
            "max_model_len": self.cutoff_len + max_new_tokens,
            "gpu_memory_utilization": float(settings.get("vllm_gpu_util", 0.7)),
            "enforce_eager": as_bool(settings.get("vllm_enforce_eager", False)),
            "seed": 0,
            "limit_mm_per_prompt": {"image": 4},
            "disable_log_stats": True,
        }
        if adapter:
            rank = max(lora_rank(adapter), int(settings.get("vllm_max_lora_rank", 8)))
            engine.update(enable_lora=True, max_lora_rank=rank, max_loras=1)
        engine.update(extra)
        try:
            self.llm = LLM(**engine)
        except Exception as e:  # vLLM raises many types (no GPU, out of memory, unsupported model)
            raise VlmError(f"vLLM could not start: {type(e).__name__}: {e}",
                           hint="check the GPU with nvidia-smi, lower vllm_gpu_util=0.5, "
                                "or use --backend llamafactory.") from e
        self.lora = LoRARequest("adapter", 1, str(adapter)) if adapter else None
        self.params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, skip_special_tokens=True,
                                     stop_token_ids=self.encoder.stop_token_ids)
        self.engine_args = {k: v for k, v in engine.items() if k != "model"}

    def generate(self, records: list[dict[str, Any]]) -> list[str]:
        with stdout_to_stderr():
            return self._generate(records)

    def _generate(self, records: list[dict[str, Any]]) -> list[str]:
        prompts = []
        for record in records:
            prompt, length = self.encoder.encode(record)
            if length > self.cutoff_len:
                raise VlmError(f"document {record.get('id')}: the prompt is {length} tokens, over cutoff_len "
                               f"{self.cutoff_len}; LLaMA-Factory would have cut it",
                               hint="lower image_max_pixels or raise cutoff_len (see vlm stats CONFIG).")
            prompts.append(prompt)
        outputs = self.llm.generate(prompts, self.params, use_tqdm=False, lora_request=self.lora)
        return [out.outputs[0].text if out.outputs else "" for out in outputs]


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Point file descriptor 1 at stderr for a while, so vLLM's prints (and its child processes') never
    mix into ``--json`` output on stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def as_bool(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes")
