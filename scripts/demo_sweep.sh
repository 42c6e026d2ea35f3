#!/usr/bin/env bash
# The README's sweep demo, "LoRA or full?" as a sweep axis: the demo's medium Qwen2-VL and generated receipts,
# one LoRA and one full fine-tune at the same learning rate, trained one after another by vlm sweep --run,
# then every checkpoint of both ranked on one leaderboard by field F1 on the validation split.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
D="${DEMO_SWEEP_DIR:-demo_sweep}"
VLM=.venv/bin/vlm
mkdir -p $D
[ -d $D/cord-sample ] || .venv/bin/python scripts/make_cord_sample.py $D/cord-sample --simple --train 48 --validation 32 --test 16
[ -d $D/small-qwen2vl ] || .venv/bin/python scripts/make_tiny_qwen2vl.py $D/small-qwen2vl --size medium
rm -rf $D/data $D/saves $D/sweep $D/runs  # a fresh run: its predictions are not stale ones
echo "Extract the receipt as JSON." > $D/prompt.txt
$VLM save-cord-dataset-in-sharegpt-format $D/data --source $D/cord-sample --prompt-file $D/prompt.txt
A="$(pwd)/$D"  # absolute paths: the sweep runs inside $D, so its store and leaderboard land there
$VLM render-config $D/base.yaml --force --model $A/small-qwen2vl --dataset-dir $A/data \
  --output-dir $A/saves/run --epochs 24 --batch-size 8 \
  gradient_accumulation_steps=1 bf16=false preprocessing_num_workers=2 image_max_pixels=16384 warmup_ratio=0.05 \
  logging_steps=6 save_steps=48 val_size=0 eval_dataset=cord_validation eval_strategy=steps eval_steps=48 \
  per_device_eval_batch_size=8
cd $D
time ../$VLM sweep base.yaml --method lora,full --lr 2e-3 --out-dir sweep --run --max-new-tokens 160
