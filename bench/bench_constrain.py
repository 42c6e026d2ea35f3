#!/usr/bin/env python
"""What ``vlm predict --constrain schema`` costs: generated tokens per second with and without the grammar masks,
side by side in one run, on the same model, documents and batches.

Both arms are ``vlm``'s transformers backend (``TransformersGenerator``: LLaMA-Factory's model, template and
images, greedy ``generate``); the constrained arm adds xgrammar's logits processor for CORD's JSON Schema
(``vlm.inference.constrain``), exactly as ``--constrain schema`` does. The model is loaded once; the arms
alternate over ``--repeats`` rounds so drift on a shared machine hits both alike. Tokens are counted from
``generate``'s output: each row's new tokens up to and including its first stop token. Compiling the grammar
happens once per run and is reported apart (it is not per token).

    python bench/bench_constrain.py [--model-size medium] [--docs 8] [--batch-size 4] [--max-new-tokens 256]
    python bench/bench_constrain.py --json

A random model's answers differ in length between the arms (the grammar closes the JSON, the unconstrained
model runs to the token limit), so compare tokens per second, not wall time. The masks' cost per token hardly
depends on the model, while a forward step grows with it: the ratio on a toy model is an upper bound for a
real one (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench_predict import prepare  # the shared setup: sample, model, export

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


class TokenCount:
    """Wraps the model's ``generate`` to count each call's new tokens (up to and including the first stop)."""

    def __init__(self, generator) -> None:
        self.generate, self.stops, self.tokens = generator.model.generate, set(generator.encoder.stop_token_ids), 0
        generator.model.generate = self

    def __call__(self, **kwargs):
        out = self.generate(**kwargs)
        for row in out[:, kwargs["input_ids"].shape[1]:].tolist():
            ends = [k for k, t in enumerate(row) if t in self.stops]
            self.tokens += ends[0] + 1 if ends else len(row)
        return out


class MaskTime:
    """Wraps ``GrammarMasks.processor`` so each logits processor's calls are timed: the masks' own cost, which
    does not depend on how long the answers are. (A class, not a closure: transformers inspects each processor's
    ``__call__`` signature at every step, which for a plain function's wrapper parses text and costs more than
    the masks.)"""

    def __init__(self, masks) -> None:
        self.make, self.seconds = masks.processor, 0.0
        masks.processor = lambda: Timed(self.make(), self)


class Timed:
    def __init__(self, inner, clock: MaskTime) -> None:
        self.inner, self.clock = inner, clock

    def __call__(self, input_ids, scores):
        t0 = time.perf_counter()
        out = self.inner(input_ids, scores)
        self.clock.seconds += time.perf_counter() - t0
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--model-size", choices=("tiny", "medium", "small"), default="tiny",
                   help="tiny (default): its constrained and unconstrained answers are about as long; the random "
                        "medium model closes its constrained JSON at once, so only the mask time compares")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    import torch

    from vlm.data.records import load_documents
    from vlm.inference.constrain import GrammarMasks, resolve_constraint
    from vlm.inference.transformers_backend import TransformersGenerator
    from vlm.lf.data import read_dataset_info

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepare(work, args.docs, args.model_size)
        settings = {"model_name_or_path": str(work / "model"), "template": "qwen2_vl",
                    "dataset_dir": str(work / "data"), "cutoff_len": 2048, "image_max_pixels": 16384,
                    "trust_remote_code": True,
                    "adapter_name_or_path": None, "dataset": "cord_test"}
        _, info = read_dataset_info(settings["dataset_dir"])
        docs = load_documents(settings["dataset_dir"], "cord_test")
        gen = TransformersGenerator(settings, info, args.max_new_tokens, args.batch_size)
        counter = TokenCount(gen)
        t0 = time.perf_counter()
        width = gen.model.get_output_embeddings().weight.shape[0]
        masks = GrammarMasks(resolve_constraint("schema"), gen.encoder.tokenizer, width, gen.encoder.stop_token_ids)
        compile_s = time.perf_counter() - t0
        mask_time = MaskTime(masks)
        gen.generate(docs[: args.batch_size])  # warm-up: first-call allocations, not timed
        rates: dict[str, list[float]] = {"none": [], "schema": []}
        tokens: dict[str, int] = {"none": 0, "schema": 0}
        seconds: dict[str, float] = {"none": 0.0, "schema": 0.0}
        valid = 0
        batches = [docs[k: k + args.batch_size] for k in range(0, len(docs), args.batch_size)]
        for round_ in range(args.repeats):
            # The arms alternate batch by batch (who goes first alternates by round), so load from other
            # processes on a shared machine falls on both alike.
            done = {"none": [0, 0.0], "schema": [0, 0.0]}
            for batch in batches:
                for arm in (("none", "schema") if round_ % 2 == 0 else ("schema", "none")):
                    gen.masks = masks if arm == "schema" else None
                    counter.tokens = 0
                    t0 = time.perf_counter()
                    texts = gen.generate(batch)
                    done[arm][1] += time.perf_counter() - t0
                    done[arm][0] += counter.tokens
                    if arm == "schema":
                        valid += sum(_is_json(g.text) for g in texts)
            for arm, (n, dt) in done.items():
                rates[arm].append(n / dt)
                tokens[arm] += n
                seconds[arm] += dt
    # Tokens per second over all rounds; the slowdown is the median of each round's paired ratio (the two arms of
    # a round run back to back, so machine drift cancels within a round).
    rate = {arm: tokens[arm] / seconds[arm] for arm in tokens}
    share = mask_time.seconds / seconds["schema"]  # of the constrained arm's time, spent in the masks
    slowdown = statistics.median(n / c for n, c in zip(rates["none"], rates["schema"]))
    result = {
        "model_size": args.model_size, "docs": args.docs, "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens, "repeats": args.repeats, "vocab_rows": width,
        "tokens_per_second": {arm: round(v, 1) for arm, v in rate.items()},
        "tokens": tokens, "seconds": {arm: round(v, 2) for arm, v in seconds.items()},
        # tokens per second compare only when both arms wrote about as many tokens (prefill is shared per answer)
        "lengths_comparable": abs(tokens["schema"] - tokens["none"]) <= 0.2 * tokens["none"],
        "slowdown_constrained": round(slowdown, 3),
        "slowdown_per_round": [round(n / c, 3) for n, c in zip(rates["none"], rates["schema"])],
        "mask_ms_per_step": round(1000 * mask_time.seconds / (tokens["schema"] / args.batch_size), 3),
        "mask_share_of_constrained_time": round(share, 4),
        "slowdown_from_mask_time": round(1 / (1 - share), 3),
        "grammar_compile_seconds": round(compile_s, 3),
        "constrained_answers_valid_json": f"{valid}/{args.docs * args.repeats}",
        "versions": {"torch": torch.__version__, "xgrammar": _version("xgrammar"),
                     "transformers": _version("transformers")},
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.docs} docs, {args.model_size} model, batch {args.batch_size}, {args.repeats} rounds: "
          f"{rate['none']:.1f} tokens/s unconstrained, {rate['schema']:.1f} tokens/s with --constrain schema -> "
          f"{result['slowdown_constrained']}x slower; the masks took {100 * share:.1f}% of the constrained time "
          f"({result['mask_ms_per_step']} ms per step of {args.batch_size} rows: "
          f"{result['slowdown_from_mask_time']}x); grammar "
          f"compiled in {compile_s:.2f} s once; constrained answers valid JSON: "
          f"{result['constrained_answers_valid_json']}")
    if not result["lengths_comparable"]:
        print(f"the arms wrote {tokens['none']} and {tokens['schema']} tokens: per answer, the prompt's prefill "
              "weighs differently, so compare the masks' share, not tokens per second")


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    main()
