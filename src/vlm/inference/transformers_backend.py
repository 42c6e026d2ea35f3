"""The transformers backend of ``vlm predict``: LLaMA-Factory's model, prompts and images, our ``generate`` call.

Why not LLaMA-Factory's own ``do_predict``: in LLaMA-Factory 0.9.5 under transformers 5.6 it calls
Qwen2-VL's ``generate`` without ``mm_token_type_ids`` (its collator gets no model when
``predict_with_generate`` is on, so it computes no positions either). transformers then
silently gives every image token a plain 1-D text position and sets ``rope_deltas`` to zero,
while training used the 3-D M-RoPE positions. Predictions then come from a model that sees its
image tokens in the wrong places.

This engine keeps everything else LLaMA-Factory's:

* the model is loaded by LLaMA-Factory's ``load_model`` (a LoRA adapter is merged into the
  weights, as ``do_predict`` merges it);
* prompts and pixels come from ``vlm.lf.inputs.PromptEncoder`` (LLaMA-Factory's converter,
  template, predict-time processor and image plugin, at the training resolution);
* generation is greedy, left-padded and batched, and stops where ``do_predict`` stops (EOS and
  every additional special token); the answer is decoded with special tokens skipped.

It adds the ``mm_token_type_ids`` that the model's M-RoPE needs, built as LLaMA-Factory's
training collator builds them. The model is loaded once per run, not once per chunk.
"""

from __future__ import annotations

import copy
from typing import Any

from vlm.errors import VlmError
from vlm.inference.constrain import Constraint, GrammarMasks
from vlm.inference.token_scores import Generated, TokenScores, answer_length, token_ends
from vlm.lf.data import quiet
from vlm.lf.inputs import PromptEncoder

# LLaMA-Factory's infer_dtype choices; "auto" lets LLaMA-Factory pick (bf16 on a GPU that has it).
DTYPES = ("auto", "float32", "bfloat16", "float16")


class TransformersGenerator:
    """One model for the whole run; ``generate`` takes a chunk of records and returns raw texts in order, each
    with its tokens' log-probabilities (``vlm.inference.token_scores``)."""

    def __init__(self, settings: dict[str, Any], dataset_info: dict[str, Any], max_new_tokens: int,
                 batch_size: int, constraint: Constraint | None = None):
        self.max_new_tokens, self.batch_size = max_new_tokens, max(1, batch_size)
        self.repetition_penalty = float(settings.get("repetition_penalty", 1.0))
        with quiet():
            self.encoder = PromptEncoder(settings, dataset_info, expand_images=True)
            self.model = _load_model(settings, self.encoder)
        self.device = next(self.model.parameters()).device
        self.masks = None  # --constrain: the grammar's token masks, applied to the logits at every step
        if constraint is not None and constraint.active:
            width = self.model.get_output_embeddings().weight.shape[0]
            self.masks = GrammarMasks(constraint, self.encoder.tokenizer, width, self.encoder.stop_token_ids)

    def generate(self, records: list[dict[str, Any]]) -> list[Generated]:
        texts: list[Generated] = []
        for start in range(0, len(records), self.batch_size):
            texts += self._generate(records[start: start + self.batch_size])
        return texts

    def generate_ids(self, records: list[dict[str, Any]]) -> list[list[int]]:
        """Each record's generated token ids as ``generate`` decodes them (stop and padding tokens included):
        what ``vlm merge --verify`` and ``vlm parity`` compare token by token."""
        rows: list[list[int]] = []
        for start in range(0, len(records), self.batch_size):
            rows += self._answer_ids(records[start: start + self.batch_size])
        return rows

    def _answer_ids(self, records: list[dict[str, Any]]) -> list[list[int]]:
        sequences, prompt_length, _ = self._run(records)
        return sequences[:, prompt_length:].tolist()

    def _generate(self, records: list[dict[str, Any]]) -> list[Generated]:
        sequences, prompt_length, logprobs = self._run(records)
        answers = sequences[:, prompt_length:]
        texts = self.encoder.tokenizer.batch_decode(answers.tolist(), skip_special_tokens=True)
        return [Generated(text, scores) for text, scores in zip(texts, self._scores(logprobs, answers, texts))]

    def _run(self, records: list[dict[str, Any]]) -> tuple[Any, int, Any]:
        """The generated sequences, the prompts' padded length, and each step's chosen-token log-probability under
        the raw logits ((batch, steps), None when nothing was generated)."""
        import torch
        from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

        inputs = self.encoder.batch(records, self.model)
        inputs = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in inputs.items()}
        if "pixel_values" in inputs:  # the vision tower runs in the model's dtype
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        tokenizer = self.encoder.tokenizer
        prompt_length = inputs["input_ids"].shape[1]
        # The recorder runs first, on the raw logits; the penalty and the grammar mask come after it, in that
        # order (the order generate would use). Passing the penalty as our own processor (and 1.0 to generate)
        # is what puts it after the recorder: generate runs its own processors before the ones it is given.
        recorder = _ChosenLogprobs(prompt_length)
        processors = [recorder]
        if self.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(self.repetition_penalty))
        if self.masks:
            processors.append(self.masks.processor())
        with torch.inference_mode():
            sequences = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                            num_beams=1, repetition_penalty=1.0,
                                            logits_processor=LogitsProcessorList(processors),
                                            eos_token_id=self.encoder.stop_token_ids,
                                            pad_token_id=tokenizer.pad_token_id)
            return sequences, prompt_length, recorder.finish(sequences)

    def _scores(self, logprobs: Any, answers: Any, texts: list[str]) -> list[TokenScores | None]:
        """Each answer's token log-probabilities under the model's raw logits (what any logits processor
        saw before it changed them), up to its first stop token, with the tokens' character ends."""
        if logprobs is None:
            return [TokenScores((), ()) if not t else None for t in texts]
        chosen = answers[:, : logprobs.shape[1]]
        stop = set(self.encoder.stop_token_ids)
        out: list[TokenScores | None] = []
        for ids, lp, text in zip(chosen.tolist(), logprobs.tolist(), texts):
            n = answer_length(ids, stop)
            ends = token_ends(self.encoder.tokenizer, ids[:n], text)
            out.append(None if ends is None else TokenScores(tuple(lp[:n]), ends))
        return out


class _ChosenLogprobs:
    """A logits processor that records, step by step, the log-probability of the token each row chose, under the
    raw logits it is handed (it changes nothing). It keeps one step's (batch, vocab) distribution at a time:
    generate's ``output_logits`` keeps every step's, which for Qwen2-VL's 151,936-token vocabulary is about 5 GB
    for a batch of 8 running 1,024 tokens."""

    def __init__(self, prompt_length: int):
        self.prompt_length = prompt_length
        self.previous: Any = None  # log-softmax of the last step's raw logits, (batch, vocab)
        self.steps: list[Any] = []  # per finished step, (batch,)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if input_ids.shape[1] > self.prompt_length:  # the last column is the token chosen at the previous step
            self.steps.append(self.previous.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self.previous = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, sequences: Any) -> Any:
        """(batch, steps) log-probabilities of every generated token, or None when none was generated."""
        import torch

        if self.previous is None:
            return None
        last = self.previous.gather(-1, sequences[:, -1:].to(self.previous.device)).squeeze(-1)
        return torch.stack([*self.steps, last], dim=1).cpu()


def _load_model(settings: dict[str, Any], encoder: Any) -> Any:
    """The model (with the adapter merged in, if any) as LLaMA-Factory loads it for inference."""
    from llamafactory.hparams import FinetuningArguments
    from llamafactory.model import load_model

    dtype = str(settings.get("infer_dtype", "auto"))
    if dtype not in DTYPES:
        raise VlmError(f"infer_dtype={dtype!r} is not one of {', '.join(DTYPES)}", hint="e.g. infer_dtype=float32")
    model_args = copy.copy(encoder.model_args)  # the encoder's own arguments stay as they were
    model_args.infer_dtype = dtype
    adapter = settings.get("adapter_name_or_path")
    if adapter:
        model_args.adapter_name_or_path = [str(adapter)]
    try:
        model = load_model(encoder.tokenizer, model_args, FinetuningArguments(finetuning_type="lora"),
                           is_trainable=False)
    except (OSError, ValueError) as e:
        raise VlmError(f"LLaMA-Factory cannot load {settings['model_name_or_path']}"
                       f"{' with adapter ' + str(adapter) if adapter else ''}: {e}") from None
    return model.eval()
