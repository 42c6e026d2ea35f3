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
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vlm.errors import VlmError
from vlm.fsutil import atomic_write_json, atomic_write_text
from vlm.inference.constrain import Constraint, grammar_text
from vlm.inference.token_scores import Generated, TokenScores, token_ends
from vlm.lf.cli import find_llamafactory_cli, merge_config
from vlm.lf.inputs import PromptEncoder  # noqa: F401  (re-exported: the vLLM prompt encoder)
from vlm.procs import log_tail, run_child
from vlm.training.config import render_yaml

BACKENDS = ("auto", "transformers", "vllm", "llamafactory")
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
    """``auto`` is vLLM when it is installed and a GPU is visible, else transformers; ``vllm`` without vLLM
    is an error."""
    if requested not in BACKENDS:
        raise VlmError(f"unknown backend {requested!r}", hint=f"choose one of: {', '.join(BACKENDS)}.")
    if requested == "auto":
        return "vllm" if vllm_installed() and gpu_visible() else "transformers"
    if requested == "vllm" and not vllm_installed():
        raise VlmError("--backend vllm, but vLLM is not installed in this environment",
                       hint="install a vLLM build that matches your torch and CUDA (pip install vllm), "
                            "or use --backend transformers.")
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


class VllmGenerator:
    """One ``vllm.LLM`` for the whole run; ``generate`` takes a chunk of records, returns raw texts in order, each
    with its tokens' log-probabilities."""

    def __init__(self, settings: dict[str, Any], dataset_info: dict[str, Any], max_new_tokens: int,
                 merged: Path | None = None, max_images: int = 1, constraint: Constraint | None = None):
        """``merged``: the adapter already merged into the model (see ``merged_model``), so no run-time LoRA.
        ``max_images``: the most images one document has (vLLM reserves room for that many).
        ``constraint``: --constrain, applied by vLLM's structured outputs."""
        self.merged, self.max_images = merged, max(1, max_images)
        self.constraint = constraint or Constraint()
        # vLLM and LLaMA-Factory log to stdout; keep stdout for --json and the summary line.
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        with stdout_to_stderr():  # the engine's own process inherits this too
            self._start(settings, dataset_info, max_new_tokens)

    def _start(self, settings: dict[str, Any], dataset_info: dict[str, Any], max_new_tokens: int) -> None:
        try:
            from vllm import LLM, SamplingParams
            from vllm.lora.request import LoRARequest
            from vllm.sampling_params import StructuredOutputsParams
        except Exception as e:  # a broken install raises more than ImportError
            raise VlmError(f"vLLM is installed but cannot be imported: {type(e).__name__}: {e}",
                           hint="reinstall it (make setup-vllm), or use --backend transformers.") from None

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
                                "or use --backend transformers.") from e
        self.lora = LoRARequest("adapter", 1, str(adapter)) if adapter else None
        # --constrain: vLLM's structured outputs get the grammar the transformers backend applies (xgrammar EBNF
        # of the same schema, with the same options), not the schema, whose conversion could differ.
        structured = (StructuredOutputsParams(grammar=grammar_text(self.constraint))
                      if self.constraint.active else None)
        self.params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, skip_special_tokens=True,
                                     stop_token_ids=self.encoder.stop_token_ids,
                                     repetition_penalty=_number(settings, "repetition_penalty", 1.0, float),
                                     structured_outputs=structured,
                                     # the sampled token's log-probability (vLLM adds it beside the top 1),
                                     # from the raw logits (its default logprobs_mode)
                                     logprobs=1)

    def generate(self, records: list[dict[str, Any]]) -> list[Generated]:
        with stdout_to_stderr():
            return self._generate(records)

    def _generate(self, records: list[dict[str, Any]]) -> list[Generated]:
        prompts = [self.encoder.encode(record)[0] for record in records]
        outputs = self.llm.generate(prompts, self.params, use_tqdm=False, lora_request=self.lora)
        return [generated(out, self.encoder.tokenizer) for out in outputs]


def generated(output: Any, tokenizer: Any) -> Generated:
    """The text and token scores of one ``vllm.RequestOutput``: ``outputs[0]`` has ``text``, ``token_ids`` and
    ``logprobs``, a list (one per generated token) of ``{token_id: Logprob}`` that holds the sampled token."""
    if not output.outputs:
        return Generated("")
    first = output.outputs[0]
    ids, steps = list(first.token_ids or []), first.logprobs
    if steps is None or len(steps) != len(ids):
        return Generated(first.text)
    try:
        logprobs = tuple(float(step[tok].logprob) for tok, step in zip(ids, steps))
    except (KeyError, AttributeError, TypeError):
        return Generated(first.text)
    ends = token_ends(tokenizer, ids, first.text)
    return Generated(first.text, None if ends is None else TokenScores(logprobs, ends))


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


def _number(settings: dict[str, Any], key: str, default: float, kind: type) -> Any:
    try:
        return kind(settings.get(key, default))
    except (TypeError, ValueError):
        raise VlmError(f"{key}={settings.get(key)!r} is not a number", hint=f"e.g. {key}={default}") from None


def as_bool(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes")
