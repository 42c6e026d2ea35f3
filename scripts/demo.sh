#!/usr/bin/env bash
# The whole pipeline, offline, on a bundled sample: generate a CORD-like sample of plain receipts and a
# small Qwen2-VL (width 128), export, register, render the recipe (small-model overrides), preflight,
# fine-tune it with the real llamafactory-cli, predict the vanilla and fine-tuned groups, and compare them. A random
# model this small cannot read; what the fine-tune teaches it is the receipt's JSON structure and its frequent values,
# which is what the comparison shows. The base model is also predicted with --constrain schema (its answers held to
# CORD's JSON Schema while they are generated), so the comparison shows format and content apart: valid JSON alone
# does not make a reader.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT="${DEMO_DIR:-demo_out}"
VLM=.venv/bin/vlm
PY=.venv/bin/python
step() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }

# Steps 1-4 (sample, export, recipe, token budget) are scripts/demo_data.sh, which also keeps their output for the
# docs (scripts/doc_examples.py).
source scripts/demo_data.sh

step "5. train (real llamafactory-cli train)"
$VLM train "$OUT/demo.yaml"

step "6. predict the test split: the base model, the base model held to the schema, then the fine-tuned one"
$VLM predict --group vanilla-model --config "$OUT/demo.yaml" --no-adapter --store "$OUT/predictions.sqlite" \
  --work-dir "$OUT/predict" --max-new-tokens 160
$VLM predict --group vanilla-schema --config "$OUT/demo.yaml" --no-adapter --constrain schema \
  --store "$OUT/predictions.sqlite" --work-dir "$OUT/predict" --max-new-tokens 160
$VLM predict --group finetuned-model --config "$OUT/demo.yaml" --store "$OUT/predictions.sqlite" \
  --work-dir "$OUT/predict" --max-new-tokens 160

step "7. field confidence: fit it on the validation split (threshold for 90% field precision)"
$VLM predict --group finetuned-model --config "$OUT/demo.yaml" --split validation --store "$OUT/predictions.sqlite" \
  --work-dir "$OUT/predict" --max-new-tokens 160
$VLM calibrate --group finetuned-model --store "$OUT/predictions.sqlite" --target-precision 0.9 \
  --output "$OUT/calibration.json"

step "8. compare (each field's confidence, the coverage at 90% precision on the test split, and format vs content)"
$VLM evaluate --groups vanilla-model vanilla-schema finetuned-model --store "$OUT/predictions.sqlite" \
  --output "$OUT/report" --no-fields --calibration "$OUT/calibration.json"
