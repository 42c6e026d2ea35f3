#!/usr/bin/env python
"""Random-weight Qwen2-VL models for the training-cost benchmark, built offline.

``build_2b`` makes a ``Qwen2VLForConditionalGeneration`` with the published
Qwen2-VL-2B-Instruct architecture and random bf16 weights, created directly on the
target device (a 2B model builds in seconds on a GPU), and saves it with a processor
whose image settings match the real ``preprocessor_config.json``. ``build_tiny`` is
``scripts/make_tiny_qwen2vl.py``'s toy model, for the CPU mode.

Sources of the 2B values (checked while writing this):

* text: Qwen/Qwen2-VL-2B-Instruct ``config.json`` (hidden_size 1536, intermediate_size
  8960, 28 layers, 12 heads, 2 KV heads, vocab_size 151936, rope_theta 1e6,
  mrope_section [16, 24, 24], rms_norm_eps 1e-6, tie_word_embeddings true,
  max_position_embeddings 32768, max_window_layers 28, sliding window off);
* vision: that ``config.json`` sets only ``hidden_size: 1536`` (the merger's output
  width) and ``spatial_patch_size: 14``; everything else is ``Qwen2VLVisionConfig``'s
  defaults (depth 32, embed_dim 1280, num_heads 16, mlp_ratio 4, quick_gelu,
  spatial_merge_size 2, temporal_patch_size 2), the same in transformers 4.45 and 5.6;
* image processor: ``preprocessor_config.json`` (min_pixels 3136, max_pixels 12845056,
  patch 14, merge 2, temporal patch 2, CLIP mean/std).

The vocabulary. The real tokenizer has 151,643 regular tokens plus special tokens,
and the model has 151,936 embedding rows (padded). Training cost depends on the rows,
not on the tokenizer: the input embedding and the tied LM head are
``vocab_size x hidden_size`` and the logits are ``tokens x vocab_size``. So the model
gets ``vocab_size = 151936`` while the tokenizer stays the small offline BPE of
``make_tiny_qwen2vl.build_tokenizer`` (1,024 tokens including Qwen2-VL's 14 special
tokens, all ids far below 151,936, which is all LLaMA-Factory needs). Padding the
tokenizer with ~150k filler tokens instead would put 150k added tokens into every
tokenizer load and change nothing that is timed. What the small tokenizer does change
is how many tokens the text takes; the benchmark records the token counts it trained
on so they can be compared.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SOURCE = "https://huggingface.co/Qwen/Qwen2-VL-2B-Instruct (config.json, preprocessor_config.json)"

QWEN2VL_2B_TEXT: dict[str, Any] = {
    "vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
    "num_attention_heads": 12, "num_key_value_heads": 2, "hidden_act": "silu", "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6, "max_window_layers": 28, "use_sliding_window": False, "attention_dropout": 0.0,
    "initializer_range": 0.02, "tie_word_embeddings": True,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
}
QWEN2VL_2B_VISION: dict[str, Any] = {
    "depth": 32, "embed_dim": 1280, "hidden_size": 1536, "hidden_act": "quick_gelu", "mlp_ratio": 4, "num_heads": 16,
    "in_channels": 3, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
}
QWEN2VL_IMAGE_PROCESSOR: dict[str, Any] = {
    "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
}


def tiny_module():
    """``scripts/make_tiny_qwen2vl.py`` as a module (it has no import-time side effects)."""
    if "make_tiny_qwen2vl" in sys.modules:
        return sys.modules["make_tiny_qwen2vl"]
    spec = importlib.util.spec_from_file_location("make_tiny_qwen2vl", ROOT / "scripts" / "make_tiny_qwen2vl.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_tiny_qwen2vl"] = module
    spec.loader.exec_module(module)
    return module


def qwen2vl_2b_config(tokenizer):
    """The published 2B architecture, with special-token ids taken from ``tokenizer``."""
    from transformers import Qwen2VLConfig

    tiny = tiny_module()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in tiny.SPECIAL_TOKENS}
    text = dict(QWEN2VL_2B_TEXT, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"])
    return Qwen2VLConfig(
        text_config=text, vision_config=dict(QWEN2VL_2B_VISION), tie_word_embeddings=True,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )


def count_parameters(config) -> int:
    """Parameters of a model with ``config``, counted on the meta device (no memory, no time)."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    with torch.device("meta"):
        model = Qwen2VLForConditionalGeneration._from_config(config)
    seen, total = set(), 0
    for p in model.parameters():  # tied embedding/LM head counted once
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def build_2b(out_dir: Path, device: str = "cuda", seed: int = 0) -> dict[str, Any]:
    """Build the random-weight 2B model in bf16 on ``device``, save it and its processor; return facts about it."""
    import torch
    from transformers import (
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    tiny = tiny_module()
    torch.manual_seed(seed)
    start = time.perf_counter()
    tokenizer = tiny.build_tokenizer(seed)
    config = qwen2vl_2b_config(tokenizer)
    # Parameters are allocated and randomly initialised where they will live, in bf16:
    # no fp32 copy on the host and no host-to-device transfer.
    with torch.device(device):
        model = Qwen2VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16).eval()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.do_sample = False
    if device.startswith("cuda"):
        torch.cuda.synchronize()  # the init kernels run asynchronously
    built = time.perf_counter() - start
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**QWEN2VL_IMAGE_PROCESSOR), video_processor=Qwen2VLVideoProcessor(),
        tokenizer=tokenizer, chat_template=tiny.CHAT_TEMPLATE,
    )
    n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())

    tiny.save_model_dir(out_dir, model, processor)
    return {"kind": "qwen2vl-2b-random", "parameters": n_params, "build_seconds": round(built, 2),
            "build_and_save_seconds": round(time.perf_counter() - start, 2), "dtype": "bfloat16",
            "vocab_size": QWEN2VL_2B_TEXT["vocab_size"], "tokenizer_size": len(tokenizer),
            "text_config": QWEN2VL_2B_TEXT, "vision_config": QWEN2VL_2B_VISION,
            "image_processor": QWEN2VL_IMAGE_PROCESSOR, "source": SOURCE}


def build_tiny(out_dir: Path, seed: int = 0) -> dict[str, Any]:
    """``scripts/make_tiny_qwen2vl.py``'s toy model (fp32, CPU); return facts about it."""
    start = time.perf_counter()
    tiny_module().build(Path(out_dir), seed=seed)
    config = json.loads((Path(out_dir) / "config.json").read_text(encoding="utf-8"))
    text = config.get("text_config", config)
    return {"kind": "tiny-qwen2vl", "build_and_save_seconds": round(time.perf_counter() - start, 2),
            "vocab_size": text.get("vocab_size"), "hidden_size": text.get("hidden_size"),
            "num_hidden_layers": text.get("num_hidden_layers"), "source": "scripts/make_tiny_qwen2vl.py"}


def device_info() -> dict[str, Any]:
    """The accelerator this process sees (name, memory, CUDA version), or that there is none."""
    import torch

    if not torch.cuda.is_available():
        return {"gpu": None, "torch_cuda": torch.version.cuda}
    props = torch.cuda.get_device_properties(0)
    return {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 1024**3, 1),
            "gpu_count_visible": torch.cuda.device_count(), "torch_cuda": torch.version.cuda,
            "capability": list(torch.cuda.get_device_capability(0))}


def main(argv: list[str] | None = None) -> int:
    """Build one model and print facts about it as JSON on stdout.

    The benchmark runs this in a child process, so that the benchmark process itself
    never holds a CUDA context (or GPU memory) while the training runs are measured.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, nargs="?")
    parser.add_argument("--size", choices=("2b", "tiny"), default="2b")
    parser.add_argument("--device", default="cuda", help="where the 2B model is created (cuda or cpu)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device-info", action="store_true", help="only print the device facts")
    args = parser.parse_args(argv)
    if args.device_info:
        print(json.dumps({"device": device_info()}))
        return 0
    if args.out_dir is None:
        parser.error("OUT_DIR is required unless --device-info")
    if args.size == "2b":
        facts = build_2b(args.out_dir, device=args.device, seed=args.seed)
    else:
        facts = build_tiny(args.out_dir, seed=args.seed)
    facts["device"] = device_info()
    print(json.dumps(facts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
