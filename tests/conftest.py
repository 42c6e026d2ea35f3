"""Shared fixtures: a tiny Qwen2-VL built offline, and a tiny dataset in the export's layout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
