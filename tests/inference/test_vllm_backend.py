"""The vLLM backend of ``vlm predict``, in the parts that run without a GPU.

The engine itself needs vLLM and a GPU (``tests/test_vllm_gpu.py``). What is checked here is
everything that decides *what* vLLM is asked: the prompt token ids and the resized images must be
exactly what LLaMA-Factory's ``do_predict`` feeds the model, once vLLM has expanded the image
placeholders the way the HF processor does. Backend choice and its errors are checked for real
(vLLM is not installed in this environment).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vlm.errors import VlmError
from vlm.inference.vllm_backend import PromptEncoder, choose_backend, lora_rank, vllm_installed

needs_no_vllm = pytest.mark.skipif(vllm_installed(), reason="checks the behaviour without vLLM")


def _llamafactory_predict_rows(model: Path, data: Path, datasets: str, max_pixels: int, min_pixels: int,
                               tmp: Path) -> list[dict]:
    """The eval examples as LLaMA-Factory's ``do_predict`` builds them: input ids and model pixel inputs."""
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    model_args, data_args, training_args, _, _ = get_train_args({
        "model_name_or_path": str(model), "template": "qwen2_vl", "dataset_dir": str(data),
        "eval_dataset": datasets, "stage": "sft", "do_predict": True, "predict_with_generate": True,
        "finetuning_type": "lora", "output_dir": str(tmp / "out"), "cutoff_len": 100_000,
        "image_max_pixels": max_pixels, "image_min_pixels": min_pixels, "overwrite_cache": True,
        "report_to": "none", "cache_dir": str(tmp / "hf-cache")})
    module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(module["tokenizer"], data_args)
    rows = get_dataset(template, model_args, data_args, training_args, stage="sft", **module)["eval_dataset"]
    out = []
    for row in rows:
        images = row["images"] or []
        mm = template.mm_plugin.get_mm_inputs(images, [], [], [len(images)], [0], [0], [row["input_ids"]],
                                              module["processor"]) if images else {}
        out.append({"input_ids": row["input_ids"], "grid": mm.get("image_grid_thw"), "pixels": mm.get("pixel_values")})
    return out


def _settings(model: Path, data: Path, dataset: str, max_pixels: int, min_pixels: int) -> dict:
    return {"model_name_or_path": str(model), "template": "qwen2_vl", "dataset_dir": str(data), "dataset": dataset,
            "cutoff_len": 100_000, "image_max_pixels": max_pixels, "image_min_pixels": min_pixels}


@pytest.mark.parametrize("max_pixels,min_pixels", [(262144, 32 * 32), (150 * 170, 100 * 100)])
def test_vllm_inputs_equal_llamafactory_predict_inputs(tiny_model, awkward_data, tmp_path, max_pixels, min_pixels):
    """Prompt ids (placeholders expanded as vLLM does) and pixels equal LLaMA-Factory's, example by example."""
    import torch

    info = json.loads((awkward_data / "dataset_info.json").read_text())
    expected = _llamafactory_predict_rows(tiny_model, awkward_data, "toy,more", max_pixels, min_pixels, tmp_path)
    ours = []
    for name, file in (("toy", "toy.json"), ("more", "more.jsonl")):
        text = (awkward_data / file).read_text()
        records = json.loads(text) if file.endswith(".json") else [json.loads(x) for x in text.splitlines()]
        encoder = PromptEncoder(_settings(tiny_model, awkward_data, name, max_pixels, min_pixels), info)
        for record in records:
            if record["messages"][-1]["role"] != "assistant":  # malformed: do_predict drops it, vlm refuses it
                with pytest.raises(VlmError, match="user/assistant"):
                    encoder.encode(record)
                continue
            prompt, length = encoder.encode(record)
            ours.append((encoder, prompt, length))
    assert len(ours) == len(expected) == 11

    pad = ours[0][0].image_token_id
    for (encoder, prompt, length), want in zip(ours, expected):
        images = (prompt.get("multi_modal_data") or {}).get("image", [])
        assert prompt["prompt_token_ids"].count(pad) == len(images)  # one placeholder per image, for vLLM
        expanded, queue = [], [encoder.image_tokens(im) for im in images]
        for token in prompt["prompt_token_ids"]:
            expanded.extend([pad] * queue.pop(0) if token == pad else [token])
        assert expanded == want["input_ids"]
        assert length == len(want["input_ids"])
        if images:  # vLLM runs the model's HF image processor on the images we hand it
            got = encoder.processor.image_processor(images=images, return_tensors="pt")
            assert torch.equal(got["image_grid_thw"], want["grid"])
            assert torch.equal(got["pixel_values"], want["pixels"])
        else:
            assert want["grid"] is None


def test_a_conversation_llamafactory_drops_is_refused(tiny_model, awkward_data):
    info = json.loads((awkward_data / "dataset_info.json").read_text())
    encoder = PromptEncoder(_settings(tiny_model, awkward_data, "toy", 262144, 1024), info)
    record = {"id": "x", "messages": [{"role": "user", "content": "<image>hi"}, {"role": "assistant", "content": "a"},
                                      {"role": "assistant", "content": "b"}], "images": []}
    with pytest.raises(VlmError, match="user/assistant"):
        encoder.encode(record)


def test_image_max_pixels_reaches_the_images(tiny_model, awkward_data):
    info = json.loads((awkward_data / "dataset_info.json").read_text())
    record = json.loads((awkward_data / "toy.json").read_text())[4]  # a 3000 x 4000 image
    sizes = {}
    for max_pixels in (262144, 50176):
        encoder = PromptEncoder(_settings(tiny_model, awkward_data, "toy", max_pixels, 32 * 32), info)
        image = encoder.encode(record)[0]["multi_modal_data"]["image"][0]
        assert image.width * image.height <= max_pixels and image.mode == "RGB"
        sizes[max_pixels] = image.size
    assert sizes[50176][0] < sizes[262144][0]


def test_stop_tokens_are_do_predicts(tiny_model, awkward_data):
    """do_predict stops on EOS and every additional special token (LLaMA-Factory's SFT workflow); so does vLLM."""
    info = json.loads((awkward_data / "dataset_info.json").read_text())
    encoder = PromptEncoder(_settings(tiny_model, awkward_data, "toy", 262144, 1024), info)
    ids = encoder.stop_token_ids
    for token in ("<|im_end|>", "<|vision_start|>", "<|image_pad|>"):
        assert encoder.tokenizer.convert_tokens_to_ids(token) in ids, token
    assert len(ids) == len(set(ids))


def test_a_prompt_do_predict_would_cut_is_refused(tiny_model, awkward_data):
    info = json.loads((awkward_data / "dataset_info.json").read_text())
    record = json.loads((awkward_data / "toy.json").read_text())[0]
    settings = _settings(tiny_model, awkward_data, "toy", 262144, 1024)
    length = PromptEncoder(settings, info).encode(record)[1]
    with pytest.raises(VlmError, match="do_predict would cut it"):
        PromptEncoder({**settings, "cutoff_len": length}, info).encode(record)  # no room left for the answer
    assert PromptEncoder({**settings, "cutoff_len": 2 * length + 500}, info).encode(record)[1] == length


def test_choose_backend(monkeypatch):
    import vlm.inference.vllm_backend as vb

    for installed, gpu, want in ((True, True, "vllm"), (True, False, "transformers"), (False, True, "transformers")):
        monkeypatch.setattr(vb, "vllm_installed", lambda installed=installed: installed)
        monkeypatch.setattr(vb, "gpu_visible", lambda gpu=gpu: gpu)
        assert choose_backend("auto") == want
    assert choose_backend("llamafactory") == "llamafactory"
    assert choose_backend("transformers") == "transformers"
    with pytest.raises(VlmError, match="unknown backend"):
        choose_backend("tgi")


def test_lora_rank_rounds_up_to_a_rank_vllm_accepts(tmp_path):
    for r, want in ((4, 8), (8, 8), (12, 16), (64, 64), (300, 320)):
        (tmp_path / "adapter_config.json").write_text(json.dumps({"r": r}))
        assert lora_rank(str(tmp_path)) == want
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 1024}))
    with pytest.raises(VlmError, match="above vLLM's largest") as err:
        lora_rank(str(tmp_path))
    assert "drop vllm_lora=true" in err.value.hint
    (tmp_path / "adapter_config.json").write_text("{not json")
    with pytest.raises(VlmError, match="LoRA rank"):
        lora_rank(str(tmp_path))


@needs_no_vllm
def test_backend_vllm_without_vllm_is_a_clear_error(tiny_model, toy_dataset, tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"model_name_or_path": str(tiny_model), "template": "qwen2_vl",
                                      "dataset": "cord_train", "dataset_dir": str(toy_dataset),
                                      "output_dir": str(tmp_path / "adapter")}))
    store = tmp_path / "store.sqlite"
    result = subprocess.run([sys.executable, "-m", "vlm.cli", "predict", "--group", "g", "--config", str(config),
                             "--no-adapter", "--backend", "vllm", "--store", str(store)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert "vLLM is not installed" in result.stderr and "--backend transformers" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not store.exists()  # refused before anything was written


def test_a_group_keeps_one_backend(tmp_path):
    """The backend is part of the generation hash, so one group never mixes backends silently."""
    from vlm.inference.predict import PredictSpec, _digest, run_hashes

    settings = {"model_name_or_path": str(tmp_path), "adapter_name_or_path": None, "image_max_pixels": 262144}
    spec = PredictSpec(group="g")
    lf = run_hashes(settings, "prompt", spec, "llamafactory")[1]
    vl = run_hashes(settings, "prompt", spec, "vllm")[1]
    assert lf["gen_hash"] != vl["gen_hash"] and lf["model_hash"] == vl["model_hash"]
    assert run_hashes(settings, "prompt", spec, "vllm")[1] == vl
    assert run_hashes({**settings, "vllm_lora": "true"}, "prompt", spec, "vllm")[1]["gen_hash"] != vl["gen_hash"]
    spec.batch_size = 1  # vLLM schedules its own batches: --batch-size does not change its results
    assert run_hashes(settings, "prompt", spec, "vllm")[1] == vl
    assert run_hashes(settings, "prompt", spec, "llamafactory")[1]["gen_hash"] != lf["gen_hash"]
    # The llamafactory hash is the one groups were stored with before the vLLM backend existed.
    skew = {"template": None, "image_max_pixels": 262144, "image_min_pixels": None, "cutoff_len": None}
    before = _digest({"max_new_tokens": 1024, "do_sample": False, "batch_size": 1, **skew})
    assert run_hashes(settings, "prompt", spec, "llamafactory")[1]["gen_hash"] == before


def test_auto_keeps_a_groups_backend(tiny_model, toy_dataset, tmp_path, monkeypatch):
    """Installing vLLM later must not strand a group predicted with transformers: auto keeps its backend."""
    import vlm.inference.vllm_backend as vb
    from vlm.inference.predict import PredictSpec, run_predict

    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"model_name_or_path": str(tiny_model), "template": "qwen2_vl",
                                      "dataset": "cord_train", "dataset_dir": str(toy_dataset),
                                      "output_dir": str(tmp_path / "adapter"), "cutoff_len": 2048}))
    spec = PredictSpec(group="g", config=config, no_adapter=True, store=tmp_path / "store.sqlite",
                       work_dir=tmp_path / "work", max_new_tokens=4, limit=1, backend="transformers")
    assert run_predict(spec, show_progress=False)["predicted"] == 1
    monkeypatch.setattr(vb, "vllm_installed", lambda: True)  # as if vLLM and a GPU were there now
    monkeypatch.setattr(vb, "gpu_visible", lambda: True)
    spec.backend = "auto"
    again = run_predict(spec, show_progress=False)
    assert (again["backend"], again["predicted"], again["skipped_done"]) == ("transformers", 0, 1)


@pytest.mark.slow
def test_adapter_is_merged_once_for_vllm(tiny_model, tmp_path):
    """vLLM serves the adapter merged by the real `llamafactory-cli export`, as do_predict does; cached by hash."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import Qwen2VLForConditionalGeneration

    from vlm.inference.predict import _adapter_hash
    from vlm.inference.vllm_backend import MERGED_MARKER, merged_model

    base = Qwen2VLForConditionalGeneration.from_pretrained(tiny_model)
    peft = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(0)
    for name, param in peft.named_parameters():
        if "lora_" in name:  # non-zero B, so the merge changes the weights
            param.data.normal_(0, 0.5)
    adapter = tmp_path / "adapter"
    peft.save_pretrained(adapter)
    lora = {k: v for k, v in load_file(adapter / "adapter_model.safetensors").items()}

    settings = {"model_name_or_path": str(tiny_model), "template": "qwen2_vl", "adapter_name_or_path": str(adapter)}
    cache = tmp_path / "merged"
    out = merged_model(settings, _adapter_hash(str(adapter)), cache)
    assert (out / "config.json").is_file() and (out / MERGED_MARKER).is_file()
    assert (out / "tokenizer.json").is_file() or (out / "tokenizer_config.json").is_file()
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []  # no temp folder left

    merged = load_file(next(out.glob("*.safetensors")))
    original = load_file(next(tiny_model.glob("*.safetensors")))
    key = next(k for k in merged if k.endswith("layers.0.self_attn.q_proj.weight"))
    a = next(v for k, v in lora.items() if "layers.0.self_attn.q_proj.lora_A" in k)
    b = next(v for k, v in lora.items() if "layers.0.self_attn.q_proj.lora_B" in k)
    expected = original[key].float() + (b.float() @ a.float()) * (16 / 8)
    assert torch.allclose(merged[key].float(), expected, atol=1e-4)

    stamp = (out / "config.json").stat().st_mtime_ns
    assert merged_model(settings, _adapter_hash(str(adapter)), cache) == out  # cached: no second export
    assert (out / "config.json").stat().st_mtime_ns == stamp
