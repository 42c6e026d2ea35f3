"""Predictions reproduce what training learned: positions, template, labels, adapter and scoring together.

A width-128 Qwen2-VL (wide enough that its output depends on the image) is fine-tuned with LoRA
through the real ``vlm train`` until it reproduces its four training receipts, which differ in colour,
size and content. Then:

* ``vlm predict`` with the adapter writes exactly the training targets (nTED accuracy 1.0 through
  ``vlm evaluate``), and the base model does not;
* ``vlm predict``'s greedy text equals a reference generation whose inputs come from the model's own
  processor, ``mm_token_type_ids`` included; the same reference without ``mm_token_type_ids`` (what
  LLaMA-Factory 0.9.5's do_predict does under transformers 5.6) writes something else, so this test
  tells the two apart;
* LLaMA-Factory's do_predict backend is refused for this model instead of scoring it silently;
* on held-out receipts it half-knows, field confidence from its token probabilities separates right fields
  from wrong ones (AUROC's CI above 0.5), a calibration fitted on validation keeps the test fields at its
  target precision, and only the accepted fields are exported.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import ENV, LORA_PIXELS, VLM, copy_run, vlm

PIXELS = LORA_PIXELS


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, lora_run: Path) -> Path:
    """A run folder: medium model, four receipts, a LoRA adapter that has learned them (conftest's ``lora_run``,
    trained once per run), both groups predicted (batches of 3, so one batch is left-padded and one is not)."""
    root = copy_run(lora_run, tmp_path_factory.mktemp("learning") / "run")
    for group, extra in (("vanilla-model", ["--no-adapter"]), ("finetuned-model", [])):
        vlm("predict", "--group", group, "--config", "run.yaml", "--split", "train", "--max-new-tokens", "48",
            "--batch-size", "3", *extra, cwd=root)
    return root


@pytest.fixture
def trained(trained_run: Path, tmp_path: Path) -> Path:
    """This test's own copy of the trained run folder (the model stays shared), so no test sees another's writes."""
    return copy_run(trained_run, tmp_path / "learning")


@pytest.mark.slow
def test_finetuned_adapter_reproduces_its_training_targets(trained: Path):
    report = json.loads(vlm("evaluate", "--groups", "vanilla-model", "finetuned-model", "--split", "train",
                            "--json", cwd=trained).stdout)
    assert report["finetuned-model"]["documents"] == 4
    assert report["finetuned-model"]["ted_accuracy"] == 1.0, report["finetuned-model"]
    assert report["finetuned-model"]["valid_json"] == 1.0
    assert report["vanilla-model"]["ted_accuracy"] < 0.5, report["vanilla-model"]


def _reference(root: Path, records: list[dict], with_types: bool) -> list[str]:
    """Greedy text from the model's own processor and transformers alone (adapter merged by peft)."""
    import torch
    from peft import PeftModel
    from PIL import Image
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(root / "model")
    model = Qwen2VLForConditionalGeneration.from_pretrained(root / "model", dtype=torch.float32)
    model = PeftModel.from_pretrained(model, root / "saves" / "lora").merge_and_unload().eval()
    texts = []
    for record in records:
        content = record["messages"][0]["content"]
        assert content.startswith("<image>")
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": content[7:]}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        # The toy images are below image_max_pixels, so neither LLaMA-Factory nor the processor resizes them.
        image = Image.open(record["images"][0]).convert("RGB")
        assert image.width * image.height <= PIXELS
        inputs = processor(text=[prompt], images=[image], return_tensors="pt")
        assert "mm_token_type_ids" in inputs
        if not with_types:
            inputs.pop("mm_token_type_ids")
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=48, do_sample=False)
        texts.append(processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0])
    return texts


@pytest.mark.slow
def test_predictions_equal_a_processor_reference_with_3d_positions(trained: Path):
    records = json.loads((trained / "data" / "cord_train.json").read_text())
    vlm("export-predictions", "--group", "finetuned-model", "--split", "train", "finetuned.jsonl", cwd=trained)
    lines = (trained / "finetuned.jsonl").read_text().splitlines()
    stored = {row["id"]: row["prediction"] for row in map(json.loads, lines)}
    right = _reference(trained, records, with_types=True)
    wrong = _reference(trained, records, with_types=False)
    # The model's output depends on its image positions: without mm_token_type_ids it writes something else.
    assert right != wrong
    assert [stored[r["id"]] for r in records] == right


@pytest.mark.slow
def test_do_predict_backend_is_refused_for_mrope_models(trained: Path):
    r = subprocess.run([*VLM, "predict", "--group", "lf", "--config", "run.yaml", "--split", "train",
                        "--backend", "llamafactory"], capture_output=True, text=True, cwd=trained, env=ENV)
    assert r.returncode == 2
    assert "mm_token_type_ids" in r.stderr and "--backend transformers" in r.stderr
    assert not (trained / "runs" / "predict" / "lf").exists()
    assert yaml.safe_load((trained / "run.yaml").read_text())["template"] == "qwen2_vl"


@pytest.mark.slow
def test_constrained_answers_equal_the_unconstrained_ones_where_those_fit_the_schema(trained: Path):
    """A grammar mask only removes tokens: where the fine-tune's greedy answer already fits the CORD schema, the
    constrained answer is the same text, byte for byte (same batches, so the same left padding)."""
    import jsonschema

    from vlm.inference.constrain import cord_json_schema

    vlm("predict", "--group", "finetuned-schema", "--config", "run.yaml", "--split", "train", "--max-new-tokens", "48",
        "--batch-size", "3", "--constrain", "schema", cwd=trained)
    texts = {}
    for group in ("finetuned-model", "finetuned-schema"):
        vlm("export-predictions", "--group", group, "--split", "train", f"{group}.jsonl", cwd=trained)
        rows = map(json.loads, (trained / f"{group}.jsonl").read_text().splitlines())
        texts[group] = {row["id"]: row["prediction"] for row in rows}
    fitting = []
    for doc, raw in texts["finetuned-model"].items():
        try:
            jsonschema.validate(json.loads(raw), cord_json_schema())
        except (ValueError, jsonschema.ValidationError):
            continue
        fitting.append(doc)
    assert len(fitting) == 4  # the fine-tune reproduces its four targets, each inside the schema
    assert {d: texts["finetuned-schema"][d] for d in fitting} == {d: texts["finetuned-model"][d] for d in fitting}


# ---------------------------------------------------------------- field confidence on receipts the model half-knows

HELD_OUT = 16  # receipts per split (validation, test)


def _write_held_out(root: Path) -> Path:
    """Validation and test receipts the adapter half-knows. Even ones are a trained receipt with its colour
    slightly changed, and that receipt's answer; odd ones have a colour and a size never trained on and a new
    name and price. Every receipt has ``cnt`` 1, as every trained one has: structure and frequent values
    are known, the rest is not."""
    from helpers import RECEIPT_COLOURS, RECEIPT_SIZES, write_receipt_splits

    splits = {}
    for split, offset in (("validation", 0), ("test", 1)):
        receipts = []
        for j in range(HELD_OUT):
            i = (j // 2 + offset) % 4
            if j % 2 == 0:
                colour = tuple(min(255, c + 6 * (1 + j % 3)) for c in RECEIPT_COLOURS[i])
                size, name, price = RECEIPT_SIZES[i], f"item {i}", f"{i + 1}0,000"
            else:
                colour = ((97 * j) % 200 + 40, (53 * j + 90) % 200 + 30, (31 * j + 150) % 200 + 20)
                size, name, price = (96 + 4 * (j % 4), 96 + 2 * (j % 5)), f"item {j + 10}", f"{j + 7}5,500"
            receipts.append((colour, size, {"menu": [{"nm": name, "cnt": "1", "price": price}],
                                            "total": {"total_price": price}}))
        splits[split] = receipts
    return write_receipt_splits(root, splits)


@pytest.mark.slow
def test_field_confidence_separates_right_from_wrong_fields_on_held_out_receipts(trained: Path):
    _write_held_out(trained / "held-out")
    for split in ("validation", "test"):
        vlm("predict", "--group", "finetuned-model", "--config", "run.yaml", "--split", split, "--dataset-dir",
            "held-out", "--dataset", f"cord_{split}", "--max-new-tokens", "48", "--batch-size", "4", cwd=trained)
    report = json.loads(vlm("evaluate", "--groups", "finetuned-model", "--split", "test", "--json",
                            cwd=trained).stdout)["finetuned-model"]
    c = report["confidence"]
    print("held-out test confidence:", {k: c[k] for k in ("fields", "accuracy", "auroc", "auroc_ci95", "ece",
                                                          "aurc", "repaired_fields")})
    assert c["fields"] >= 3 * HELD_OUT and 0.2 < c["accuracy"] < 0.9  # the model half-knows them
    assert c["auroc_ci95"][0] > 0.5, c
    assert report["confidence_auroc"] == c["auroc"]["confidence"]

    # On the model's own answers, every value of a valid one spans exactly its characters, and its tokens.
    from vlm.evaluation.confidence import field_confidences
    from vlm.inference.parsing import parse_prediction
    from vlm.inference.store import Store

    with Store(trained / "runs" / "predictions.sqlite") as store:
        rows = store.load("finetuned-model", "test")
    checked = 0
    for row in rows:
        parsed = parse_prediction(row.raw)
        fields = field_confidences(row.raw, parsed.value, parsed.valid, row.scores)
        assert fields is not None and row.scores.ends[-1] == len(row.raw)
        for f in fields if parsed.valid else []:
            assert row.raw[f.span[0]: f.span[1]] == json.dumps(f.text, ensure_ascii=False)[1:-1], (row.raw, f)
            assert f.tokens >= 1 and not f.repaired
            checked += 1
    assert checked >= 3 * HELD_OUT

    # Calibrated on validation, the threshold keeps test fields at the target precision within its CI.
    cal = json.loads(vlm("calibrate", "--group", "finetuned-model", "--target-precision", "0.9", "--output",
                         "cal.json", "--json", cwd=trained).stdout)
    assert cal["threshold"] is not None and cal["fitted_on"]["split"] == "validation", cal
    out = json.loads(vlm("evaluate", "--groups", "finetuned-model", "--split", "test", "--calibration", "cal.json",
                         "--json", cwd=trained).stdout)["finetuned-model"]
    applied = out["confidence"]["calibrated"]
    print("calibrated on validation, applied to test:", applied["message"])
    assert applied["reached"] and applied["precision_ci95"][1] >= 0.9 and applied["kept"] > 0, applied
    assert out["coverage@0.9"] == applied["coverage"]

    # Only the accepted fields are exported, each with its confidence, at the calibrated threshold.
    vlm("export-predictions", "--group", "finetuned-model", "--split", "test", "accepted.jsonl", "--calibration",
        "cal.json", cwd=trained)
    rows = [json.loads(line) for line in (trained / "accepted.jsonl").read_text().splitlines()]
    kept = [f for r in rows for f in r["fields"]]
    assert len(kept) == applied["kept"]
    assert all(f["confidence"] >= cal["threshold"] for f in kept)
