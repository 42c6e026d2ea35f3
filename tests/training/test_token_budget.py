"""The token-budget preflight against LLaMA-Factory 0.9.5's own data pipeline, on the tiny Qwen2-VL.

Every count is compared with what ``llamafactory.data.get_dataset`` really produces
(input_ids, <|image_pad|> tokens, label tokens) for images of awkward sizes: tiny,
huge, extreme aspect ratios, several per example, and multi-turn conversations.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from vlm.cli import app
from vlm.errors import VlmError
from vlm.training.token_budget import (
    LF_CUTOFF_LEN,
    LF_IMAGE_MAX_PIXELS,
    LF_IMAGE_MIN_PIXELS,
    check_config,
    nice_pixel_values,
    token_budget,
)


@pytest.fixture(scope="module")
def data_dir(awkward_data: Path) -> Path:
    return awkward_data


def _llamafactory_rows(model: Path, data: Path, datasets: list[str], image_max_pixels: int, image_min_pixels: int,
                       cutoff_len: int, tmp: Path) -> list[dict]:
    """The examples exactly as LLaMA-Factory's SFT data pipeline builds them."""
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    model_args, data_args, training_args, _, _ = get_train_args({
        "model_name_or_path": str(model), "template": "qwen2_vl", "dataset_dir": str(data),
        "dataset": ",".join(datasets), "stage": "sft", "do_train": True, "finetuning_type": "lora",
        "output_dir": str(tmp / "out"), "cutoff_len": cutoff_len, "image_max_pixels": image_max_pixels,
        "image_min_pixels": image_min_pixels, "overwrite_cache": True, "report_to": "none",
        "cache_dir": str(tmp / "hf-cache")})
    module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(module["tokenizer"], data_args)
    dataset = get_dataset(template, model_args, data_args, training_args, stage="sft", **module)["train_dataset"]
    pad = module["tokenizer"].convert_tokens_to_ids("<|image_pad|>")
    return [{"total": len(r["input_ids"]), "image": r["input_ids"].count(pad),
             "answer": sum(1 for x in r["labels"] if x != -100)} for r in dataset]


@pytest.mark.parametrize("max_pixels,min_pixels", [(LF_IMAGE_MAX_PIXELS, LF_IMAGE_MIN_PIXELS), (150 * 170, 100 * 100)])
def test_counts_equal_llamafactory(tiny_model, data_dir, tmp_path, max_pixels, min_pixels):
    report = token_budget(str(tiny_model), "qwen2_vl", data_dir, ["toy", "more"], image_max_pixels=max_pixels,
                          image_min_pixels=min_pixels, cutoff_len=100_000, show_progress=False)
    rows = _llamafactory_rows(tiny_model, data_dir, ["toy", "more"], max_pixels, min_pixels, 100_000, tmp_path)

    assert report.method == "fast"  # the decoded-image spot check agreed with the header-based counts
    assert report.dropped == [{"dataset": "toy", "index": 9, "reason": "malformed conversation"}]
    ours = [{"total": e.total_tokens, "image": e.image_tokens, "answer": e.answer_tokens} for e in report.examples]
    assert ours == rows
    assert all(e.prompt_tokens == e.total_tokens - e.image_tokens - e.answer_tokens > 0 for e in report.examples)
    assert report.n_total == len(rows) == 11 and report.n_over == 0
    assert [e.image_sizes for e in report.examples][8] == [[6000, 25], [333, 777]]


def test_full_decode_path_agrees(tiny_model, data_dir):
    """Every example counted on its decoded images equals the header-based count."""
    from vlm.training.token_budget import _Counter, _dataset_info, _iter_examples

    info = _dataset_info(str(data_dir), ["toy", "more"])
    counter = _Counter(str(tiny_model), "qwen2_vl", str(data_dir), 200 * 200, LF_IMAGE_MIN_PIXELS, 4096, {})
    for name, index, ex in _iter_examples(counter, str(data_dir), ["toy", "more"], info, None):
        if len(ex["_prompt"]) % 2 == 1 and len(ex["_response"]) == 1:
            assert counter.count(name, index, ex, "fast") == counter.count(name, index, ex, "full")


def test_small_cutoff_recommendation_fits(tiny_model, data_dir, tmp_path):
    base = token_budget(str(tiny_model), "qwen2_vl", data_dir, ["toy"], cutoff_len=100_000, show_progress=False)
    text_only = max(e.total_tokens - e.image_tokens for e in base.examples)
    cutoff = text_only + 60  # room for a few image tokens, far fewer than the default resolution needs

    report = token_budget(str(tiny_model), "qwen2_vl", data_dir, ["toy"], cutoff_len=cutoff, show_progress=False)
    assert report.n_over > 0 and [o.index for o in report.over] == [e.index for e in base.examples
                                                                    if e.total_tokens > cutoff]
    assert report.recommended_cutoff_len % 128 == 0
    assert report.recommended_cutoff_len - 128 < report.max_total_tokens <= report.recommended_cutoff_len
    best = report.recommended_image_max_pixels
    assert best in nice_pixel_values(1, 10**8) and best < LF_IMAGE_MAX_PIXELS
    assert f"image_max_pixels: {best}" in report.recommendation and f"cutoff_len: {report.recommended_cutoff_len}" \
        in report.recommendation

    fixed = token_budget(str(tiny_model), "qwen2_vl", data_dir, ["toy"], image_max_pixels=best, cutoff_len=cutoff,
                         show_progress=False)
    assert fixed.n_over == 0 and fixed.max_total_tokens == report.recommended_max_total_tokens
    larger = [p for p in nice_pixel_values(LF_IMAGE_MIN_PIXELS, LF_IMAGE_MAX_PIXELS) if p > best]
    assert token_budget(str(tiny_model), "qwen2_vl", data_dir, ["toy"], image_max_pixels=larger[0], cutoff_len=cutoff,
                        show_progress=False).n_over > 0  # the recommendation is the largest nice value that fits
    raised = token_budget(str(tiny_model), "qwen2_vl", data_dir, ["toy"], cutoff_len=report.recommended_cutoff_len,
                          show_progress=False)
    assert raised.n_over == 0

    # LLaMA-Factory itself, at the recommended resolution and the small cutoff, truncates nothing.
    rows = _llamafactory_rows(tiny_model, data_dir, ["toy"], best, LF_IMAGE_MIN_PIXELS, cutoff, tmp_path)
    assert [r["total"] for r in rows] == [e.total_tokens for e in fixed.examples]
    assert [r["image"] for r in rows] == [e.image_tokens for e in fixed.examples]


def test_check_config_uses_llamafactory_defaults(tiny_model, data_dir):
    from llamafactory.hparams import DataArguments, ModelArguments

    defaults = {f.name: f.default for f in dataclasses.fields(ModelArguments) + dataclasses.fields(DataArguments)}
    assert (LF_IMAGE_MAX_PIXELS, LF_IMAGE_MIN_PIXELS, LF_CUTOFF_LEN) == (
        defaults["image_max_pixels"], defaults["image_min_pixels"], defaults["cutoff_len"])

    report = check_config({"model_name_or_path": str(tiny_model), "template": "qwen2_vl",
                           "dataset_dir": str(data_dir), "dataset": "toy, more", "max_samples": 2}, show_progress=False)
    assert (report.image_max_pixels, report.image_min_pixels, report.cutoff_len) == (
        LF_IMAGE_MAX_PIXELS, LF_IMAGE_MIN_PIXELS, LF_CUTOFF_LEN)
    assert report.datasets == ["toy", "more"] and report.n_total == 4  # max_samples applies per dataset
    d = report.to_dict()
    assert set(d["percentiles"]) == {"image", "prompt", "answer", "total"}
    assert set(d["percentiles"]["total"]) == {"p50", "p90", "p99", "max"}
    assert "examples" not in d and len(report.to_dict(include_examples=True)["examples"]) == 4


def test_default_system_changes_the_prompt_count(tiny_model, data_dir):
    cfg = {"model_name_or_path": str(tiny_model), "template": "qwen2_vl", "dataset_dir": str(data_dir),
           "dataset": ["more"], "cutoff_len": 4096}
    plain = check_config(cfg, show_progress=False)
    longer = check_config({**cfg, "default_system": "You are a careful receipt reader. " * 5}, show_progress=False)
    assert [e.prompt_tokens for e in longer.examples] > [e.prompt_tokens for e in plain.examples]
    assert [e.answer_tokens for e in longer.examples] == [e.answer_tokens for e in plain.examples]
    again = check_config(cfg, show_progress=False)
    assert again.examples == plain.examples  # LLaMA-Factory's shared template was not left changed


@pytest.mark.parametrize("change,message", [
    ({"dataset": "nope"}, "registered datasets: more, toy"),
    ({"model_name_or_path": "/nonexistent/model"}, "does not exist"),
    ({"model_name_or_path": "no-such-org/no-such-model"}, "not in the Hugging Face cache"),
    ({"template": "qwen9_vl"}, "has no template 'qwen9_vl'"),
])
def test_config_errors(tiny_model, data_dir, change, message):
    cfg = {"model_name_or_path": str(tiny_model), "template": "qwen2_vl", "dataset_dir": str(data_dir),
           "dataset": "toy", **change}
    with pytest.raises(VlmError) as e:
        check_config(cfg, show_progress=False)
    assert message in f"{e.value.message} {e.value.hint}"


def test_missing_files(tiny_model, data_dir, tmp_path):
    broken = tmp_path / "data"
    broken.mkdir()
    info = json.loads((data_dir / "dataset_info.json").read_text())
    (broken / "dataset_info.json").write_text(json.dumps(info))
    with pytest.raises(VlmError, match="data file .*toy.json of dataset 'toy' not found"):
        token_budget(str(tiny_model), "qwen2_vl", broken, ["toy"], show_progress=False)

    (broken / "toy.json").write_text((data_dir / "toy.json").read_text())  # images/ not copied
    with pytest.raises(VlmError, match="image images/img0.jpg of example 0 in dataset 'toy' not found"):
        token_budget(str(tiny_model), "qwen2_vl", broken, ["toy"], show_progress=False)

    with pytest.raises(VlmError, match="no dataset_info.json"):
        token_budget(str(tiny_model), "qwen2_vl", tmp_path, ["toy"], show_progress=False)


def _app() -> typer.Typer:
    """The vlm app, as ``vlm stats`` runs it."""
    return app


def test_stats_command_json(tiny_model, data_dir, tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"model_name_or_path": str(tiny_model), "template": "qwen2_vl",
                                      "dataset_dir": str(data_dir), "dataset": "toy", "cutoff_len": 4096,
                                      "stage": "sft", "finetuning_type": "lora"}))
    runner, app = CliRunner(), _app()

    ok = runner.invoke(app, ["stats", str(config), "--dataset", "more", "--dataset", "toy", "--json",
                             "--fail-on-truncation"])
    assert ok.exit_code == 0, ok.output
    d = json.loads(ok.stdout)
    assert d["datasets"] == ["more", "toy"] and d["n_total"] == 11 and d["n_over"] == 0 and d["cutoff_len"] == 4096

    tight = d["percentiles"]["total"]["max"] - 1
    over = runner.invoke(app, ["stats", str(config), "--cutoff-len", str(tight), "--image-max-pixels", "300000",
                               "--limit", "5", "--json"])
    assert over.exit_code == 0  # reports, does not fail
    o = json.loads(over.stdout)
    assert o["image_max_pixels"] == 300000 and o["cutoff_len"] == tight and o["n_total"] == 5
    assert o["n_over"] == len(o["over"]) and o["recommended_cutoff_len"] % 128 == 0

    failed = runner.invoke(app, ["stats", str(config), "--cutoff-len", "50", "--json", "--fail-on-truncation"])
    assert failed.exit_code == 1 and json.loads(failed.stdout)["n_over"] == 9

    table = runner.invoke(app, ["stats", str(config), "--cutoff-len", "50"])
    assert table.exit_code == 0 and "p99" in table.stdout and "recommended cutoff_len" in table.stdout

    unknown = runner.invoke(app, ["stats", str(config), "--dataset", "nope"])
    assert isinstance(unknown.exception, VlmError) and "registered datasets" in unknown.exception.hint

    assert "Examples:" in runner.invoke(app, ["stats", "--help"]).stdout
