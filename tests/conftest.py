"""Shared fixtures and helpers: a tiny Qwen2-VL built offline, a tiny dataset in the export's layout, and ways to
run the CLI (a child process as a user runs it, or in-process)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vlm.cli import app

ROOT = Path(__file__).resolve().parents[1]
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


def pytest_configure(config) -> None:
    """A shell without job control starts a background job (``make test &``) with SIGINT ignored, and every child
    inherits that: the tests that stop vlm with Ctrl-C would then see it ignored. A handled signal is reset to its
    default in a child at exec, so handling it here gives every vlm and llamafactory-cli the user's default."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised toy Qwen2-VL (scripts/make_tiny_qwen2vl.py), built once per session."""
    out = tmp_path_factory.mktemp("tiny-model") / "tiny-qwen2vl"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_tiny_qwen2vl.py"), str(out)], check=True,
                   capture_output=True)
    return out


@pytest.fixture
def toy_dataset(tmp_path: Path) -> Path:
    """A toy CORD export in ``tmp_path/toy-cord`` (see ``make_toy_dataset``)."""
    return make_toy_dataset(tmp_path / "toy-cord")


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
SIZES = [(640, 480, "RGB", "jpg"), (1000, 1500, "RGB", "jpg"), (20, 300, "L", "png"), (2000, 600, "RGB", "jpg"),
         (3000, 4000, "RGB", "jpg"), (64, 64, "RGBA", "png"), (900, 1300, "RGB", "jpg"), (30, 30, "RGB", "jpg"),
         (6000, 25, "RGB", "png"), (333, 777, "P", "png")]


def _answer(i: int) -> str:
    return json.dumps({"menu": [{"nm": "Nasi Goreng " * i, "cnt": f"{i} x", "price": f"{i},000"}],
                       "total": {"total_price": f"{i * 7},500"}}, ensure_ascii=False)


@pytest.fixture(scope="session")
def awkward_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two ShareGPT multimodal datasets, ``toy`` (JSON) and ``more`` (JSONL), beside awkward images.

    Tiny, huge and extreme-aspect images, two images in one multi-turn example with a system
    prompt, one example without an image, and one malformed record (``toy`` index 9).
    """
    from PIL import Image

    data = tmp_path_factory.mktemp("data")
    (data / "images").mkdir()
    names = []
    for i, (w, h, mode, fmt) in enumerate(SIZES):
        name = f"images/img{i}.{fmt}"
        Image.new(mode, (w, h), color=(i * 20) % 256 if mode in ("L", "P") else None).save(data / name)
        names.append(name)
    toy = [{"messages": [{"role": "user", "content": "<image>Extract the receipt as JSON."},
                         {"role": "assistant", "content": _answer(i)}], "images": [name]}
           for i, name in enumerate(names[:8])]
    toy.append({"messages": [{"role": "system", "content": "You read receipts."},
                             {"role": "user", "content": "<image><image>Two pages: extract them."},
                             {"role": "assistant", "content": _answer(3)},
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
