"""Helpers that tests in several folders import (``from helpers import ...``): data writers and configs.

tests/ is on ``sys.path`` because pytest's default (prepend) import mode puts tests/conftest.py's folder there;
conftest.py keeps only fixtures.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import ENV, VLM

# ---------------------------------------------------------------- receipt photos in the hub layout (augmentation)


def photo_jpeg(width: int, height: int, seed: int) -> bytes:
    """A cheap receipt-like JPEG: paper on a table, some text-like bars (augmenting it costs what a photo costs)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), (120, 100, 80))
    draw = ImageDraw.Draw(img)
    draw.rectangle((width // 6, height // 20, 5 * width // 6, height - height // 20), fill=(245, 243, 235))
    for k in range(20):
        y = height // 10 + k * height // 25
        draw.rectangle((width // 4, y, width // 4 + (seed * 37 + k * 53) % (width // 2), y + height // 80),
                       fill=(30, 30, 40))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_photo_source(root: Path, n: int = 8, size: tuple[int, int] = (320, 480)) -> Path:
    """A local directory in the hub layout (data/{split}-00000-of-00001.parquet) of ``n`` receipt photos a split."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "ground_truth": datasets.Value("string")})
    for split in ("train", "validation", "test"):
        images = [{"bytes": photo_jpeg(*size, seed=i + 100 * len(split)), "path": None} for i in range(n)]
        gts = [json.dumps({"gt_parse": {"total": {"total_price": f"{i},000"}}}) for i in range(n)]
        ds = datasets.Dataset.from_dict({"image": images, "ground_truth": gts}, features=features)
        (root / "data").mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    return root


def export_cord(source: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """``vlm save-cord-dataset-in-sharegpt-format OUT --source SOURCE --workers 1 --json EXTRA`` in a child process."""
    return subprocess.run([*VLM, "save-cord-dataset-in-sharegpt-format", str(out), "--source", str(source),
                           "--workers", "1", "--json", *extra], capture_output=True, text=True, env=ENV)


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` but hidden ones, by relative path, with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


# ---------------------------------------------------------------- four receipts a model can learn (medium model)

RECEIPT_COLOURS = [(220, 40, 40), (40, 180, 60), (40, 70, 220), (30, 30, 30)]
RECEIPT_SIZES = [(84, 112), (112, 84), (140, 112), (112, 140)]  # under 20000 pixels: neither resizer changes them


def write_receipts(root: Path) -> Path:
    """Four receipts per split in the export's layout, each image a colour and size of its own."""
    from PIL import Image

    info = {}
    for split in ("train", "validation", "test"):
        (root / "images" / split).mkdir(parents=True)
        records = []
        for i, (colour, size) in enumerate(zip(RECEIPT_COLOURS, RECEIPT_SIZES)):
            image = root / "images" / split / f"{split}-{i:05d}.png"
            Image.new("RGB", size, colour).save(image)
            answer = {"menu": [{"nm": f"item {i}", "cnt": "1", "price": f"{i + 1}0,000"}],
                      "total": {"total_price": f"{i + 1}0,000"}}
            records.append({"id": f"{split}-{i:05d}", "images": [str(image)], "messages": [
                {"role": "user", "content": "<image>Extract the receipt as JSON."},
                {"role": "assistant", "content": json.dumps(answer, separators=(",", ":"))}]})
        (root / f"cord_{split}.json").write_text(json.dumps(records))
        info[f"cord_{split}"] = {"file_name": f"cord_{split}.json", "formatting": "sharegpt",
                                 "columns": {"messages": "messages", "images": "images"},
                                 "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                          "assistant_tag": "assistant"}}
    (root / "dataset_info.json").write_text(json.dumps(info))
    return root


# ---------------------------------------------------------------- training configs and a stand-in llamafactory-cli


def write_config(path: Path, model: Path | str, data: Path, output_dir: str, **extra) -> Path:
    """A tiny CPU training config in the recipe's shape."""
    cfg = {
        "model_name_or_path": str(model), "image_max_pixels": 65536, "image_min_pixels": 3136, "stage": "sft",
        "do_train": True, "finetuning_type": "lora", "lora_target": "all", "dataset": "cord_train",
        "dataset_dir": str(data), "template": "qwen2_vl", "cutoff_len": 1024, "preprocessing_num_workers": 1,
        "output_dir": output_dir, "logging_steps": 2, "save_steps": 8, "report_to": "none",
        "per_device_train_batch_size": 1, "gradient_accumulation_steps": 1, "learning_rate": 1e-4,
        "num_train_epochs": 8, "lr_scheduler_type": "cosine", "bf16": False, **extra,
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def fake_cli(path: Path, body: str) -> Path:
    """An executable Python script standing in for llamafactory-cli."""
    path.write_text(f"#!{sys.executable}\n{body}", encoding="utf-8")
    path.chmod(0o755)
    return path
