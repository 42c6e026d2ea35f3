#!/usr/bin/env bash
# The README's "does augmentation help?" demo: the demo's medium Qwen2-VL and generated receipts, fully fine-tuned
# on the 48 train receipts alone and on them plus 2 augmented copies of each (vlm sweep --augment 0,2), then the
# final model of each ranked by field F1 on the 32 validation receipts, with the gap's 95% CI.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
D="${DEMO_AUGMENT_DIR:-demo_augment}"
VLM=.venv/bin/vlm
mkdir -p $D
[ -d $D/cord-sample ] || .venv/bin/python scripts/make_cord_sample.py $D/cord-sample --simple --train 48 --validation 32 --test 16
[ -d $D/small-qwen2vl ] || .venv/bin/python scripts/make_tiny_qwen2vl.py $D/small-qwen2vl --size medium
rm -rf $D/data $D/saves $D/sweep $D/runs  # a fresh run: its predictions are not stale ones
echo "Extract the receipt as JSON." > $D/prompt.txt
$VLM save-cord-dataset-in-sharegpt-format $D/data --source $D/cord-sample --prompt-file $D/prompt.txt
A="$(pwd)/$D"  # absolute paths: the sweep runs inside $D, so its store and leaderboard land there
$VLM render-config $D/base.yaml --force --method full --learning-rate 2e-3 --model $A/small-qwen2vl \
  --dataset-dir $A/data --output-dir $A/saves/run --epochs 24 --batch-size 8 \
  gradient_accumulation_steps=1 bf16=false preprocessing_num_workers=2 image_max_pixels=16384 warmup_ratio=0.05 \
  logging_steps=6 save_steps=10000 val_size=0 eval_strategy=no
cd $D
time ../$VLM sweep base.yaml --augment 0,2 --out-dir sweep --run --max-new-tokens 160 --checkpoints last-1
