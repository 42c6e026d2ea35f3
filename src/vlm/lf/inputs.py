"""Model inputs for prediction, built exactly as LLaMA-Factory builds them for training.

Both prediction engines (``vlm.inference.transformers_backend`` and ``vlm.inference.vllm_backend``) start here, so
the prompt, the image resizing and the image positions a model sees at inference are the ones
it was trained on:

* records are converted by LLaMA-Factory's own dataset converter, from the same
  ``dataset_info.json`` entry, and encoded by its predict-time processor
  (``UnsupervisedDatasetProcessor``, what ``do_predict`` uses), with the training template;
* images are resized by the template's multimodal plugin to the training ``image_max_pixels``
  / ``image_min_pixels``;
* M-RoPE models (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, GLM-4V...) get ``mm_token_type_ids``, built
  the way LLaMA-Factory's training collator builds them. LLaMA-Factory 0.9.5's ``do_predict``
  leaves them out, and transformers 5.6's ``generate`` then silently gives every image token a
  1-D text position instead of the 3-D positions training used.
"""

from __future__ import annotations

import copy
import inspect
import json
from pathlib import Path
from typing import Any

from vlm.errors import VlmError
from vlm.lf.data import (
    DATA_KEYS,
    MODEL_KEYS,
    dataset_attrs,
    encode_example,
    lf_default,
    load_template,
    one_placeholder_per_image,
    record_converter,
)


class PromptEncoder:
    """Turn exported ShareGPT records into token ids exactly as LLaMA-Factory's ``do_predict`` sees them.

    ``expand_images=False`` leaves one image token per image (vLLM expands it itself);
    ``expand_images=True`` expands each image into its full run of image tokens, as the
    template's plugin does for training and for transformers' ``generate``.
    """

    def __init__(self, settings: dict[str, Any], dataset_info: dict[str, Any], expand_images: bool = False):
        from llamafactory.data.processor import UnsupervisedDatasetProcessor
        from llamafactory.hparams import DataArguments, ModelArguments

        given = {k: v for k, v in settings.items() if v is not None}
        try:
            self.model_args = ModelArguments(
                model_name_or_path=settings["model_name_or_path"],
                **{k: given[k] for k in ("image_max_pixels", "image_min_pixels", *MODEL_KEYS) if k in given})
            self.data_args = DataArguments(template=settings["template"], dataset_dir=settings["dataset_dir"],
                                           cutoff_len=int(settings.get("cutoff_len", lf_default("cutoff_len"))),
                                           **{k: given[k] for k in DATA_KEYS if k in given})
        except (TypeError, ValueError) as e:
            raise VlmError(f"LLaMA-Factory rejects these settings: {e}") from None
        self.max_pixels, self.min_pixels = self.model_args.image_max_pixels, self.model_args.image_min_pixels
        self.module, self.template = load_template(self.model_args, self.data_args)
        self.tokenizer, self.processor = self.module["tokenizer"], self.module["processor"]
        self.plugin = self.template.mm_plugin
        self.expand_images = expand_images
        untruncated = copy.copy(self.data_args)
        untruncated.cutoff_len = 10**9  # lengths are checked on the expanded prompt, as do_predict sees it
        template = self.template if expand_images else one_placeholder_per_image(self.template)
        self.encoder = UnsupervisedDatasetProcessor(template, self.tokenizer, self.processor, untruncated)
        self.stop_token_ids = stop_token_ids(self.tokenizer, self.template)
        self.image_token_id = (self.tokenizer.convert_tokens_to_ids(self.plugin.image_token)
                               if self.plugin.image_token else None)
        name = settings["dataset"]
        self.convert = record_converter(dataset_attrs([name], dataset_info)[0], self.data_args)

    def image_tokens(self, image: Any) -> int:
        """How many tokens vLLM (and the HF processor) expand one resized image into."""
        ip = self.processor.image_processor
        patches = ip.get_number_of_image_patches(image.height, image.width, {})
        return patches // (getattr(ip, "merge_size", 1) ** 2)

    def token_ids(self, record: dict[str, Any]) -> tuple[list[int], list[Any]]:
        """(prompt token ids, image paths) for one record; refuses what do_predict would drop or cut."""
        ex = self.convert(record)
        if len(ex["_prompt"]) % 2 != 1:  # do_predict drops these
            raise VlmError(f"document {record.get('id')}: not a user/assistant conversation LLaMA-Factory can read",
                           hint="each record needs messages alternating user/assistant.")
        if ex["_videos"] or ex["_audios"]:
            raise VlmError(f"document {record.get('id')}: video and audio inputs are not supported by vlm predict")
        paths = ex["_images"] or []
        ids, labels = encode_example(self.encoder, ex, media=False)
        self._answer_len = len(labels)
        return ids, paths

    def check_length(self, record: dict[str, Any], length: int) -> None:
        """Refuse a prompt that do_predict's truncation rule would cut: cut image tokens break the model,
        and a cut prompt is not what training saw."""
        from llamafactory.data.processor.processor_utils import infer_seqlen

        kept, _ = infer_seqlen(length, self._answer_len, self.data_args.cutoff_len)
        if kept < length:
            raise VlmError(f"document {record.get('id')}: the prompt is {length} tokens; with its answer, "
                           f"do_predict would cut it to {kept} (cutoff_len {self.data_args.cutoff_len})",
                           hint="lower image_max_pixels or raise cutoff_len (see vlm stats CONFIG).")

    def encode(self, record: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """(vLLM prompt, prompt length once vLLM has expanded the image placeholders)."""
        ids, paths = self.token_ids(record)
        prompt: dict[str, Any] = {"prompt_token_ids": ids}
        length = len(ids)
        if paths and not self.expand_images:
            images = self.plugin._regularize_images(paths, image_max_pixels=self.max_pixels,
                                                    image_min_pixels=self.min_pixels)["images"]
            prompt["multi_modal_data"] = {"image": images}
            length += sum(self.image_tokens(im) - 1 for im in images)
        self.check_length(record, length)
        return prompt, length

    def batch(self, records: list[dict[str, Any]], model: Any) -> dict[str, Any]:
        """A left-padded batch of ``records`` for ``model.generate``: ids, attention mask, the pixels from the
        template's plugin (resized to the training resolution) and, for M-RoPE models, ``mm_token_type_ids``."""
        import torch

        assert self.expand_images, "generate() needs the expanded image tokens"
        encoded = [self.token_ids(r) for r in records]
        for record, (ids, _) in zip(records, encoded):
            self.check_length(record, len(ids))
        width = max(len(ids) for ids, _ in encoded)
        pad = self.tokenizer.pad_token_id
        # Left padding, as do_predict pads for generation: every prompt ends where generation starts.
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids, _ in encoded], dtype=torch.long)
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids, _ in encoded], dtype=torch.long)
        images = [p for _, paths in encoded for p in paths]
        inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention}
        if images:
            mm = self.plugin.get_mm_inputs(images, [], [], [len(paths) for _, paths in encoded], [0] * len(records),
                                           [0] * len(records), [ids for ids, _ in encoded], self.processor)
            mm.pop("mm_token_type_ids", None)  # rebuilt below on the padded ids
            inputs.update(mm)
        type_ids = mm_token_type_ids(model, input_ids)
        if type_ids is not None:
            inputs["mm_token_type_ids"] = type_ids
        return inputs


def _rope_index_function(model: Any) -> Any:
    """The model's M-RoPE position function, where LLaMA-Factory's collator looks for it."""
    for owner in (model, getattr(model, "model", None)):
        if owner is not None and hasattr(owner, "get_rope_index"):
            return owner.get_rope_index
    return None


def mm_token_type_ids(model: Any, input_ids: Any) -> Any:
    """``mm_token_type_ids`` for ``input_ids`` (1 image, 2 video, 0 text), or None if the model takes none.

    Built from the model config's image and video token ids, exactly as LLaMA-Factory's training collator
    builds them. An M-RoPE model whose position function takes something else is refused: generating
    without its 3-D positions would silently score a model that sees its image tokens in the wrong places.
    """
    import torch
    from llamafactory.extras.constants import MROPE_MODELS

    config = model.config
    model_type = getattr(config, "model_type", None)
    rope = _rope_index_function(model)
    takes_types = rope is not None and "mm_token_type_ids" in inspect.signature(rope).parameters
    if not takes_types:
        if model_type in MROPE_MODELS or rope is not None:
            raise VlmError(f"vlm predict does not know how to give a {model_type} model the 3-D image positions "
                           "it was trained with",
                           hint="use --backend vllm, or open an issue with the model type.")
        return None
    image_id = getattr(config, "image_token_id", None)
    video_id = getattr(config, "video_token_id", None)
    if image_id is None and video_id is None:
        raise VlmError(f"the {model_type} config names no image or video token id",
                       hint="check the model's config.json (image_token_id).")
    types = torch.zeros_like(input_ids)
    if image_id is not None:
        types[input_ids == image_id] = 1
    if video_id is not None:
        types[input_ids == video_id] = 2
    return types


def model_type(model_path: str) -> str | None:
    """``model_type`` from a local model's config.json, else from the hub's (None if neither can be read)."""
    config = Path(model_path) / "config.json"
    if config.is_file():
        try:
            return json.loads(config.read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError):
            return None
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(model_path, trust_remote_code=True).model_type
    except Exception:  # offline, unknown id, remote code that fails: the caller decides what None means
        return None


def stop_token_ids(tokenizer: Any, template: Any) -> list[int]:
    """What do_predict stops on: the EOS token and every additional special token (as LLaMA-Factory's SFT
    workflow sets ``eos_token_id``), plus the template's stop words."""
    extra = getattr(tokenizer, "additional_special_tokens_ids", None)
    if not isinstance(extra, list):
        extra = tokenizer.convert_tokens_to_ids([str(t) for t in getattr(tokenizer, "_extra_special_tokens", [])])
    ids = [tokenizer.eos_token_id, *extra, *template.get_stop_token_ids(tokenizer)]
    return list(dict.fromkeys(i for i in ids if i is not None and i != -1))


def mrope_model_types() -> set[str]:
    """The model types LLaMA-Factory treats as M-RoPE (3-D image positions)."""
    from llamafactory.extras.constants import MROPE_MODELS

    return set(MROPE_MODELS)
