#!/usr/bin/env bash
# The README's "Choosing the best checkpoint" demo: the demo's medium Qwen2-VL, fully fine-tuned with a
# checkpoint every 24 steps and eval loss on the validation split, then vlm select over its checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
D="${DEMO_SELECT_DIR:-demo_select}"
VLM=.venv/bin/vlm
[ -d $D/cord-sample ] || .venv/bin/python scripts/make_cord_sample.py $D/cord-sample --simple --train 48 --validation 32 --test 16
[ -d $D/small-qwen2vl ] || .venv/bin/python scripts/make_tiny_qwen2vl.py $D/small-qwen2vl --size medium
rm -rf $D/data $D/saves $D/predictions.sqlite* $D/predict  # a fresh run: its predictions are not stale ones
echo "Extract the receipt as JSON." > $D/prompt.txt
$VLM save-cord-dataset-in-sharegpt-format $D/data --source $D/cord-sample --prompt-file $D/prompt.txt
$VLM render-config $D/full.yaml --force --model $D/small-qwen2vl --dataset-dir $D/data \
  --output-dir $D/saves/full --method full --epochs 24 --learning-rate 2e-3 --batch-size 8 \
  gradient_accumulation_steps=1 bf16=false preprocessing_num_workers=2 image_max_pixels=16384 warmup_ratio=0.05 \
  logging_steps=6 save_steps=24 val_size=0 eval_dataset=cord_validation eval_strategy=steps eval_steps=24 \
  per_device_eval_batch_size=8 overwrite_output_dir=true
time $VLM train $D/full.yaml
time $VLM select $D/full.yaml --store $D/predictions.sqlite --work-dir $D/predict --max-new-tokens 160
