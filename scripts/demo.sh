#!/usr/bin/env bash
# The whole pipeline, offline, on a bundled sample: generate a CORD-like sample and a tiny
# Qwen2-VL, export, register, render the recipe (tiny-model overrides), preflight, train with the
# real llamafactory-cli, predict the vanilla and fine-tuned groups, and compare them.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT="${DEMO_DIR:-demo_out}"
VLM=.venv/bin/vlm
PY=.venv/bin/python
step() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }

step "1. generate a CORD-v2-like sample and a tiny Qwen2-VL (seeded, cached in $OUT)"
[ -d "$OUT/cord-sample" ] || $PY scripts/make_cord_sample.py "$OUT/cord-sample"
[ -d "$OUT/tiny-qwen2vl" ] || $PY scripts/make_tiny_qwen2vl.py "$OUT/tiny-qwen2vl"
rm -rf "$OUT/saves" "$OUT/predictions.sqlite" "$OUT/report" "$OUT/predict"

step "2. export to LLaMA-Factory's ShareGPT format and register the splits"
$VLM save-cord-dataset-in-sharegpt-format "$OUT/data" --source "$OUT/cord-sample"

step "3. render the recipe with tiny-model overrides"
$VLM render-config "$OUT/demo.yaml" --model "$OUT/tiny-qwen2vl" --dataset-dir "$OUT/data" \
  --output-dir "$OUT/saves/tiny-lora" --epochs 30 --learning-rate 5e-3 --batch-size 4 \
  gradient_accumulation_steps=1 bf16=false preprocessing_num_workers=2 image_max_pixels=16384 \
  lora_rank=16 logging_steps=5 save_steps=100 eval_steps=100 per_device_eval_batch_size=4 overwrite_output_dir=true

step "4. token-budget preflight"
$VLM stats "$OUT/demo.yaml"

step "5. train (real llamafactory-cli train)"
$VLM train "$OUT/demo.yaml"

step "6. predict the test split: base model, then base model + adapter"
$VLM predict --group vanilla-model --config "$OUT/demo.yaml" --no-adapter --store "$OUT/predictions.sqlite" \
  --work-dir "$OUT/predict" --max-new-tokens 256
$VLM predict --group finetuned-model --config "$OUT/demo.yaml" --store "$OUT/predictions.sqlite" \
  --work-dir "$OUT/predict" --max-new-tokens 256

step "7. compare"
$VLM evaluate --groups vanilla-model finetuned-model --store "$OUT/predictions.sqlite" --output "$OUT/report" --no-fields
