"""Helpers the tests import (``from helpers import ...``): how to run the CLI, and writers of small datasets,
configs and stand-ins. conftest.py holds only fixtures, built from these.

tests/ is on ``sys.path`` because pytest's default (prepend) import mode puts tests/conftest.py's folder there, so
``from helpers import`` works from every test folder (and from ``pytest tests/<stage>/test_x.py`` alone).
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from vlm.cli import app

# ---------------------------------------------------------------- the CLI

ROOT = Path(__file__).resolve().parents[1]  # the repository
# One OpenMP thread for torch, here and in every child process (unless the caller chose): the toy models' ops are far
# too small to gain from threads, and on a busy 2-core machine threads that spin waiting for each other made a training
# step of the tiny model 15 times slower (0.9 s instead of 0.06 s). Set before anything imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")
VLM = [sys.executable, "-m", "vlm.cli"]  # the CLI as a user runs it: a fresh process, its real exit code
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_vlm(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``vlm ARGS`` in a child process, offline; the caller checks the exit code."""
    return subprocess.run([*VLM, *args], cwd=cwd, env=ENV, capture_output=True, text=True)


def vlm(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``vlm ARGS`` in a child process that must succeed (its stderr tail is shown if not)."""
    r = run_vlm(*args, cwd=cwd)
    assert r.returncode == 0, f"vlm {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}"
    return r


def invoke(*args: str, catch: bool = False):
    """Run the vlm app in-process (LLaMA-Factory stays imported between tests); known errors propagate
    (``vlm.cli.main`` would turn them into one line and exit 2) unless ``catch``."""
    return CliRunner().invoke(app, list(args), catch_exceptions=catch)


def sigkill_while_store_locked(proc: subprocess.Popen, store: Path) -> None:
    """Hold the store's write lock, so ``proc`` blocks on its next commit, then SIGKILL it: the kill lands
    mid-run whatever the machine's speed."""
    lock = sqlite3.connect(store, timeout=60)
    lock.execute("BEGIN IMMEDIATE")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lock.rollback()
    lock.close()


def copy_run(src: Path, dst: Path) -> Path:
    """A copy of a run folder for one test to write into; symlinks (the shared model) stay links."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


def build_tiny_model(out: Path, *args: str) -> Path:
    """scripts/make_tiny_qwen2vl.py OUT ARGS: a randomly initialised toy Qwen2-VL (``--size medium``: width 128)."""
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_tiny_qwen2vl.py"), str(out), *args], check=True,
                   capture_output=True)
    return out


# ---------------------------------------------------------------- artefacts built once per run


def shared_dir(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    """A folder ``build`` fills once per test run, whatever the number of xdist workers; tests must only read it.

    Without xdist it is a fresh temp folder (the session fixture's cache does the rest). Under xdist every worker's
    basetemp sits in the run's own folder (pytest-N/popen-gwK), so the folder beside them is shared by this run's
    workers only: the lock makes one build it, and ``.done`` (written after a complete build) makes the rest reuse it.
    A build that failed is started again from scratch by the next worker that asks.
    """
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        out = tmp_path_factory.mktemp(name)
        build(out)
        return out
    root = tmp_path_factory.getbasetemp().parent / "shared"
    root.mkdir(exist_ok=True)
    out, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file closes, also if build raises
        if not done.exists():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            build(out)
            done.touch()
    return out


# ---------------------------------------------------------------- small datasets in the export's layout


def make_toy_dataset(root: Path) -> Path:
    """Write a folder laid out like ``vlm save-cord-dataset-in-sharegpt-format DIR`` writes it.

    ``cord_{train,validation,test}.json`` (ShareGPT: ``id``, ``messages``, absolute ``images``),
    ``images/<split>/*.jpg``, ``dataset_info.json`` registering ``cord_train``,
    ``cord_validation`` and ``cord_test``, and ``manifest.json``. Train has 8 records,
    validation and test 2 each. Returns the folder.
    """
    from PIL import Image

    from vlm.schema import cord_prompt

    info, manifest = {}, {"tool": "vlm", "source": "toy", "splits": {}}
    for split, n in (("train", 8), ("validation", 2), ("test", 2)):
        (root / "images" / split).mkdir(parents=True)
        records = []
        for i in range(n):
            doc_id = f"{split}-{i:05d}"
            image = root / "images" / split / f"{doc_id}.jpg"
            Image.new("RGB", (96 + 8 * i, 128), (255 - 20 * i, 250, 240)).save(image, quality=90)
            answer = {"menu": [{"nm": f"item {i}", "cnt": "1", "price": f"{i + 1}0,000"}],
                      "total": {"total_price": f"{i + 1}0,000"}}
            records.append({
                "id": doc_id,
                "messages": [{"role": "user", "content": "<image>" + cord_prompt()},
                             {"role": "assistant", "content": json.dumps(answer, separators=(",", ":"))}],
                "images": [str(image.resolve())],
            })
        (root / f"cord_{split}.json").write_text(json.dumps(records, indent=1), encoding="utf-8")
        info[f"cord_{split}"] = {
            "file_name": f"cord_{split}.json", "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
        }
        manifest["splits"][split] = {"file": f"cord_{split}.json", "records": n, "skipped": 0}
    (root / "dataset_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return root


TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
        "system_tag": "system"}
# (width, height, mode, format): LLaMA-Factory's resize, its <28 px and >200:1 fixes, and min_pixels upscaling.
AWKWARD_SIZES = [(640, 480, "RGB", "jpg"), (1000, 1500, "RGB", "jpg"), (20, 300, "L", "png"),
                 (2000, 600, "RGB", "jpg"), (3000, 4000, "RGB", "jpg"), (64, 64, "RGBA", "png"),
                 (900, 1300, "RGB", "jpg"), (30, 30, "RGB", "jpg"), (6000, 25, "RGB", "png"), (333, 777, "P", "png")]


def _awkward_answer(i: int) -> str:
    return json.dumps({"menu": [{"nm": "Nasi Goreng " * i, "cnt": f"{i} x", "price": f"{i},000"}],
                       "total": {"total_price": f"{i * 7},500"}}, ensure_ascii=False)


def make_awkward_data(data: Path) -> Path:
    """Two ShareGPT multimodal datasets, ``toy`` (JSON) and ``more`` (JSONL), beside awkward images.

    Tiny, huge and extreme-aspect images, two images in one multi-turn example with a system
    prompt, one example without an image, and one malformed record (``toy`` index 9).
    """
    from PIL import Image

    data.mkdir(parents=True, exist_ok=True)
    (data / "images").mkdir()
    names = []
    for i, (w, h, mode, fmt) in enumerate(AWKWARD_SIZES):
        name = f"images/img{i}.{fmt}"
        Image.new(mode, (w, h), color=(i * 20) % 256 if mode in ("L", "P") else None).save(data / name)
        names.append(name)
    toy = [{"messages": [{"role": "user", "content": "<image>Extract the receipt as JSON."},
                         {"role": "assistant", "content": _awkward_answer(i)}], "images": [name]}
           for i, name in enumerate(names[:8])]
    toy.append({"messages": [{"role": "system", "content": "You read receipts."},
                             {"role": "user", "content": "<image><image>Two pages: extract them."},
                             {"role": "assistant", "content": _awkward_answer(3)},
                             {"role": "user", "content": "And the total only?"},
                             {"role": "assistant", "content": "12,500"}], "images": [names[8], names[9]]})
    toy.append({"messages": [{"role": "user", "content": "<image>no answer"}], "images": [names[0]]})  # dropped
    (data / "toy.json").write_text(json.dumps(toy, ensure_ascii=False))
    more = [{"messages": [{"role": "user", "content": "What is this?<image>"},
                          {"role": "assistant", "content": "a receipt " * 40}], "images": [names[4]]},
            {"messages": [{"role": "user", "content": "No image here."}, {"role": "assistant", "content": "ok"}]}]
    (data / "more.jsonl").write_text("\n".join(json.dumps(r) for r in more) + "\n")
    info = {name: {"file_name": file, "formatting": "sharegpt", "columns": {"messages": "messages", "images": "images"},
                   "tags": TAGS} for name, file in (("toy", "toy.json"), ("more", "more.jsonl"))}
    (data / "dataset_info.json").write_text(json.dumps(info))
    return data


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


def write_receipt_splits(root: Path, splits: dict[str, list[tuple[tuple[int, int, int], tuple[int, int], dict]]]
                         ) -> Path:
    """Receipts in the export's layout, registered as ``cord_<split>``: per split, (colour, size, answer) of each
    receipt, its image a plain colour of that size and its target the answer's compact JSON."""
    from PIL import Image

    info = {}
    for split, receipts in splits.items():
        (root / "images" / split).mkdir(parents=True)
        records = []
        for j, (colour, size, answer) in enumerate(receipts):
            image = root / "images" / split / f"{split}-{j:05d}.png"
            Image.new("RGB", size, colour).save(image)
            records.append({"id": f"{split}-{j:05d}", "images": [str(image)], "messages": [
                {"role": "user", "content": "<image>Extract the receipt as JSON."},
                {"role": "assistant", "content": json.dumps(answer, separators=(",", ":"))}]})
        (root / f"cord_{split}.json").write_text(json.dumps(records))
        info[f"cord_{split}"] = {"file_name": f"cord_{split}.json", "formatting": "sharegpt",
                                 "columns": {"messages": "messages", "images": "images"},
                                 "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                          "assistant_tag": "assistant"}}
    (root / "dataset_info.json").write_text(json.dumps(info))
    return root


def write_receipts(root: Path) -> Path:
    """Four receipts per split in the export's layout, each image a colour and size of its own."""
    receipts = [(colour, size, {"menu": [{"nm": f"item {i}", "cnt": "1", "price": f"{i + 1}0,000"}],
                                "total": {"total_price": f"{i + 1}0,000"}})
                for i, (colour, size) in enumerate(zip(RECEIPT_COLOURS, RECEIPT_SIZES))]
    return write_receipt_splits(root, {split: receipts for split in ("train", "validation", "test")})


def export_sample(root: Path, test: int = 6) -> Path:
    """``test`` receipts from scripts/make_cord_sample.py (plus 2 train, 1 validation), exported with CORD's real
    prompt by ``vlm save-cord-dataset-in-sharegpt-format --split test`` into root/data."""
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_cord_sample.py"), str(root / "sample"),
                    "--train", "2", "--validation", "1", "--test", str(test)], check=True, capture_output=True)
    subprocess.run([*VLM, "save-cord-dataset-in-sharegpt-format", str(root / "data"), "--source", str(root / "sample"),
                    "--split", "test"], check=True, capture_output=True, env=ENV)
    return root / "data"


# The LoRA recipe that makes the medium model reproduce its four receipts. Measured: at rank 32 and lr 5e-3 LoRA on
# this random model was still at loss 1.7 after 80 steps; at full rank (128) and lr 1e-3 it reaches 0.002 in 80 steps
# (about 45 s on 2 cores) and reproduces all four.
LORA_PIXELS = 20000
LORA_RECIPE = ["--epochs", "80", "--batch-size", "4", "--lora-rank", "128", "learning_rate=1e-3", "bf16=false",
               "gradient_accumulation_steps=1", "preprocessing_num_workers=1", f"image_max_pixels={LORA_PIXELS}",
               "save_steps=100000", "overwrite_output_dir=true", "warmup_ratio=0", "lr_scheduler_type=constant",
               "val_size=0", "eval_strategy=no", "logging_steps=10"]


def train_lora_run(root: Path, model: Path) -> Path:
    """A run folder: ``model`` (linked), four receipts per split in data/, run.yaml, and the LoRA adapter in
    saves/lora that ``vlm train`` made from them with ``LORA_RECIPE``."""
    (root / "model").symlink_to(model)
    write_receipts(root / "data")
    vlm("render-config", "run.yaml", "--model", str(root / "model"), "--dataset-dir", "data",
        "--output-dir", "saves/lora", *LORA_RECIPE, cwd=root)
    vlm("train", "run.yaml", cwd=root)
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
