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
    renamed into place, so a killed merge never leaves a half-written model; its temp folder is removed
    by the next merge of the same adapter."""
    import shutil
    import tempfile

    from vlm.config import render_yaml
    from vlm.fsutil import atomic_write_json, atomic_write_text
    from vlm.launch import merge_config
    from vlm.procs import find_llamafactory_cli, log_tail, run_child

    out = cache_dir / adapter_hash
    source = {"model": settings["model_name_or_path"], "adapter": str(settings["adapter_name_or_path"]),
              "adapter_hash": adapter_hash}
    marker = out / MERGED_MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("adapter_hash") == adapter_hash:
        return out
    cache_dir.mkdir(parents=True, exist_ok=True)
    for stale in cache_dir.glob(f".{adapter_hash}.*"):  # left by a merge that was killed
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{adapter_hash}.", dir=cache_dir))
    try:
        cfg = merge_config(settings, Path(settings["adapter_name_or_path"]), tmp / "model")
        atomic_write_text(tmp / "merge.yaml", render_yaml(cfg, ["Merge config written by vlm predict for vLLM."]))
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


class PromptEncoder:
    """Turn exported ShareGPT records into vLLM inputs exactly as LLaMA-Factory's ``do_predict`` sees them."""

    def __init__(self, settings: dict[str, Any], dataset_info: dict[str, Any]):
        from llamafactory.data.parser import get_dataset_list
        from llamafactory.data.processor import UnsupervisedDatasetProcessor
        from llamafactory.hparams import DataArguments, ModelArguments

        from vlm.preflight import DATA_KEYS, MODEL_KEYS, load_template, one_placeholder_per_image, record_converter

        given = {k: v for k, v in settings.items() if v is not None}
        try:
            model_args = ModelArguments(
                model_name_or_path=settings["model_name_or_path"],
                **{k: given[k] for k in ("image_max_pixels", "image_min_pixels", *MODEL_KEYS) if k in given})
            self.data_args = DataArguments(template=settings["template"], dataset_dir=settings["dataset_dir"],
                                           cutoff_len=int(settings.get("cutoff_len", 2048)),
                                           **{k: given[k] for k in DATA_KEYS if k in given})
        except (TypeError, ValueError) as e:
            raise VlmError(f"LLaMA-Factory rejects these settings: {e}") from None
        self.max_pixels, self.min_pixels = model_args.image_max_pixels, model_args.image_min_pixels
        module, template = load_template(model_args, self.data_args)
        self.tokenizer, self.processor = module["tokenizer"], module["processor"]
        self.plugin = template.mm_plugin
        untruncated = copy.copy(self.data_args)
        untruncated.cutoff_len = 10**9  # lengths are checked below on the expanded prompt, as do_predict sees it
        # One placeholder per image; vLLM expands it.
        self.encoder = UnsupervisedDatasetProcessor(one_placeholder_per_image(template), self.tokenizer,
                                                    self.processor, untruncated)
        self.stop_token_ids = _stop_token_ids(self.tokenizer, template)
        self.image_token_id = (self.tokenizer.convert_tokens_to_ids(self.plugin.image_token)
                               if self.plugin.image_token else None)
        name = settings["dataset"]
        self.convert = record_converter(get_dataset_list([name], {name: dataset_info[name]})[0], self.data_args)

    def image_tokens(self, image: Any) -> int:
        """How many tokens vLLM (and the HF processor) expand one resized image into."""
        ip = self.processor.image_processor
        patches = ip.get_number_of_image_patches(image.height, image.width, {})
        return patches // (getattr(ip, "merge_size", 1) ** 2)

    def encode(self, record: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """(vLLM prompt, prompt length once vLLM has expanded the image placeholders)."""
        ex = self.convert(record)
        if len(ex["_prompt"]) % 2 != 1:  # do_predict drops these
            raise VlmError(f"document {record.get('id')}: not a user/assistant conversation LLaMA-Factory can read",
                           hint="each record needs messages alternating user/assistant.")
        if ex["_videos"] or ex["_audios"]:
            raise VlmError(f"document {record.get('id')}: video and audio inputs are not supported by vlm predict")
        paths = ex["_images"] or []
        ids, labels = self.encoder._encode_data_example(prompt=ex["_prompt"], response=ex["_response"],
                                                        system=ex["_system"], tools=ex["_tools"], images=paths,
                                                        videos=[], audios=[])
        prompt: dict[str, Any] = {"prompt_token_ids": ids}
        length = len(ids)
        if paths:
            images = self.plugin._regularize_images(paths, image_max_pixels=self.max_pixels,
                                                    image_min_pixels=self.min_pixels)["images"]
            prompt["multi_modal_data"] = {"image": images}
            length += sum(self.image_tokens(im) - 1 for im in images)
        from llamafactory.data.processor.processor_utils import infer_seqlen

        kept, _ = infer_seqlen(length, len(labels), self.data_args.cutoff_len)
        if kept < length:
            raise VlmError(f"document {record.get('id')}: the prompt is {length} tokens; with its answer, "
                           f"do_predict would cut it to {kept} (cutoff_len {self.data_args.cutoff_len})",
                           hint="lower image_max_pixels or raise cutoff_len (see vlm stats CONFIG).")
        return prompt, length


class VllmGenerator:
    """One ``vllm.LLM`` for the whole run; ``generate`` takes a chunk of records, returns raw texts in order."""

    def __init__(self, settings: dict[str, Any], dataset_info: dict[str, Any], max_new_tokens: int,
                 merged: Path | None = None, max_images: int = 1):
        """``merged``: the adapter already merged into the model (see ``merged_model``), so no run-time LoRA.
        ``max_images``: the most images one document has (vLLM reserves room for that many)."""
        self.merged, self.max_images = merged, max(1, max_images)
        # vLLM and LLaMA-Factory log to stdout; keep stdout for --json and the summary line.
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        with stdout_to_stderr():  # the engine's own process inherits this too
            self._start(settings, dataset_info, max_new_tokens)

    def _start(self, settings: dict[str, Any], dataset_info: dict[str, Any], max_new_tokens: int) -> None:
        try:
            from vllm import LLM, SamplingParams
            from vllm.lora.request import LoRARequest
        except Exception as e:  # a broken install raises more than ImportError
            raise VlmError(f"vLLM is installed but cannot be imported: {type(e).__name__}: {e}",
                           hint="reinstall it (make setup-vllm), or use --backend llamafactory.") from None

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
            "trust_remote_code": as_bool(settings.get("trust_remote_code", True)),
            "dtype": settings.get("infer_dtype", "auto"),
            "max_model_len": self.cutoff_len + max_new_tokens,
            "gpu_memory_utilization": _number(settings, "vllm_gpu_util", 0.7, float),
            "enforce_eager": as_bool(settings.get("vllm_enforce_eager", False)),
            "seed": 0,
            "limit_mm_per_prompt": {"image": self.max_images},
            "disable_log_stats": True,
        }
        if adapter:
            rank = max(lora_rank(adapter), _number(settings, "vllm_max_lora_rank", 8, int))
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
                                     stop_token_ids=self.encoder.stop_token_ids,
                                     repetition_penalty=_number(settings, "repetition_penalty", 1.0, float))

    def generate(self, records: list[dict[str, Any]]) -> list[str]:
        with stdout_to_stderr():
            return self._generate(records)

    def _generate(self, records: list[dict[str, Any]]) -> list[str]:
        prompts = [self.encoder.encode(record)[0] for record in records]
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


def _stop_token_ids(tokenizer: Any, template: Any) -> list[int]:
    """What do_predict stops on: the EOS token and every additional special token (as LLaMA-Factory's SFT
    workflow sets ``eos_token_id``), plus the template's stop words."""
    extra = getattr(tokenizer, "additional_special_tokens_ids", None)
    if not isinstance(extra, list):
        extra = tokenizer.convert_tokens_to_ids([str(t) for t in getattr(tokenizer, "_extra_special_tokens", [])])
    ids = [tokenizer.eos_token_id, *extra, *template.get_stop_token_ids(tokenizer)]
    return list(dict.fromkeys(i for i in ids if i is not None and i != -1))


def _number(settings: dict[str, Any], key: str, default: float, kind: type) -> Any:
    try:
        return kind(settings.get(key, default))
    except (TypeError, ValueError):
        raise VlmError(f"{key}={settings.get(key)!r} is not a number", hint=f"e.g. {key}={default}") from None


def as_bool(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes")
