#!/usr/bin/env python
"""Build a tiny, randomly initialised Qwen2-VL with a full processor, offline.

The model has Qwen2-VL's real architecture (mRoPE text decoder, windowless ViT
with 2x2 patch merging) at toy width, so LLaMA-Factory's ``qwen2_vl`` template,
LoRA and generation run on it for real in seconds on a CPU. Nothing is
downloaded: the byte-level BPE tokenizer is trained on a small seeded corpus and
carries Qwen2-VL's special tokens and chat template.

    python scripts/make_tiny_qwen2vl.py OUT_DIR [--seed 0] [--size tiny|medium|small] [--force]

``--size medium`` (width 128) is for CPU tests that need a model that learns. ``--size small`` (width 256,
head size 64, bfloat16) is for GPU engines such as
vLLM, whose attention kernels need a head size of at least 64.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
    "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]

# Qwen2-VL's chat template (message content may be a string or a list of parts).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _corpus(seed: int) -> list[str]:
    """Text the BPE merges are learned from: the prompt plus CORD-like JSON."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from vlm.schema import cord_prompt

    rng = random.Random(seed)
    words = ["Nasi", "Goreng", "Ayam", "Es", "Teh", "Kopi", "Café", "Latte", "Mie", "Bakso", "Jus", "Jeruk"]
    lines = [cord_prompt(), "You are a helpful assistant."]
    for _ in range(400):
        item = {"nm": " ".join(rng.sample(words, 2)), "cnt": f"{rng.randint(1, 4)} x",
                "price": f"{rng.randint(5, 99)},{rng.choice(['000', '500'])}"}
        total = {"total_price": f"{rng.randint(10, 999)},000", "cashprice": f"{rng.randint(10, 999)},000"}
        lines.append(json.dumps({"menu": [item], "sub_total": {"subtotal_price": item["price"]}, "total": total},
                                ensure_ascii=False))
    return lines


def build_tokenizer(seed: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=1024, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[3:], chat_template=CHAT_TEMPLATE,
        model_max_length=32768, padding_side="right", clean_up_tokenization_spaces=False,
    )


# Text and vision widths per size; head size = hidden / heads (64 for "small", which vLLM's kernels need).
SIZES = {
    "tiny": dict(hidden=32, intermediate=64, heads=2, kv_heads=1, mrope=[2, 3, 3], vision=32, vision_heads=2,
                 dtype="float32", embed_std=0.5),
    # Wide enough that a short fine-tune makes the output depend on the image and its positions (the
    # width-32 model emits the same filler whatever it is shown); still trains in seconds on a CPU.
    "medium": dict(hidden=128, intermediate=256, heads=4, kv_heads=2, mrope=[4, 6, 6], vision=64, vision_heads=2,
                   dtype="float32", embed_std=0.15),
    "small": dict(hidden=256, intermediate=512, heads=4, kv_heads=2, mrope=[8, 12, 12], vision=128, vision_heads=2,
                  dtype="bfloat16", embed_std=0.5),
}


def build(out_dir: Path, seed: int = 0, size: str = "tiny") -> Path:
    import torch
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    torch.manual_seed(seed)
    dims = SIZES[size]
    tokenizer = build_tokenizer(seed)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=dims["hidden"], intermediate_size=dims["intermediate"],
            num_hidden_layers=2, num_attention_heads=dims["heads"], num_key_value_heads=dims["kv_heads"],
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": dims["mrope"]},
            tie_word_embeddings=True, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(depth=2, embed_dim=dims["vision"], hidden_size=dims["hidden"],
                           num_heads=dims["vision_heads"], mlp_ratio=2,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    model = Qwen2VLForConditionalGeneration(config).eval()
    # The tied embedding is also the output head, and LoRA leaves it frozen. At the default 0.02
    # init the logits span only about +-0.6, so no adapter could push the loss far below ln(vocab).
    # A wider embedding lets a LoRA fine-tune actually learn, as it does on a real model.
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0.0, dims["embed_std"])
    model = model.to(getattr(torch, dims["dtype"]))
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.do_sample = False
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=512 * 512),
        video_processor=Qwen2VLVideoProcessor(),
        tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
    )

    return save_model_dir(out_dir, model, processor)


def save_model_dir(out_dir: Path, model, processor) -> Path:
    """Save model and processor into a temp folder beside ``out_dir``, then rename it into place."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny",
                        help="tiny (CPU tests), medium (CPU tests that need learning) or small (GPU engines)")
    parser.add_argument("--force", action="store_true", help="replace an existing OUT_DIR")
    args = parser.parse_args(argv)
    if args.out_dir.exists() and any(args.out_dir.iterdir()) and not args.force:
        print(f"error: {args.out_dir} exists; pass --force to replace it", file=sys.stderr)
        return 2
    build(args.out_dir, seed=args.seed, size=args.size)
    print(f"{args.size} Qwen2-VL written to {args.out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
