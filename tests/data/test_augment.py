"""Augmentation at export: deterministic copies, train only, reused on rerun, identical after a kill."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import ENV, VLM, export_cord, make_photo_source, photo_jpeg, snapshot

N = 8  # train records; 2 copies each


def test_copy_bytes_are_a_function_of_seed_source_and_copy_index():
    from vlm.data.augment import POLICIES, AugmentSpec, apply_plan, copy_key, plan_copy

    data = photo_jpeg(240, 360, seed=1)

    def make(seed: int, copy: int, policy: str = "medium") -> bytes:
        key = copy_key(AugmentSpec(1, policy, seed), "train-00000", "sha", copy)
        return apply_plan(data, plan_copy(POLICIES[policy], key, 240, 360))

    first = make(0, 0)
    assert make(0, 0) == first  # same seed, same bytes
    assert make(1, 0) != first  # another seed, other bytes
    assert make(0, 1) != first  # another copy, other bytes
    assert make(0, 0, "heavy") != first
    from PIL import Image

    with Image.open(io.BytesIO(first)) as im:
        assert im.size == (240, 360) and im.format == "JPEG"  # same size: same image tokens


@pytest.mark.slow  # a vlm child that loads LLaMA-Factory, or photo-sized images: kept out of make test-fast
def test_augmented_copies_only_in_train_recorded_and_reused_on_rerun(tmp_path: Path):
    source = make_photo_source(tmp_path / "src")
    out = tmp_path / "out"
    r = export_cord(source, out, "--augment", "2", "--augment-policy", "heavy", "--seed", "7")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["splits"]["train"]["records"] == N * 3
    assert result["splits"]["train"]["augmented"] == {"copies": 2 * N, "made": 2 * N, "reused": 0}
    for split in ("validation", "test"):
        records = json.loads((out / f"cord_{split}.json").read_text())
        assert len(records) == N and not any("aug" in r["id"] for r in records)
        assert all(Path(r["images"][0]).parent == out / "images" / split for r in records)
    assert {p.parent.name for p in (out / "images").rglob("*.jpg") if "aug" in p.name} == {"train_aug"}

    train = json.loads((out / "cord_train.json").read_text())
    by_id = {r["id"]: r for r in train}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["augment"]["policy"] == "heavy" and manifest["augment"]["seed"] == 7
    for k in range(N):
        src = f"train-{k:05d}"
        for c in range(2):
            copy = manifest["images"][f"{src}-aug{c}"]
            assert copy["source"] == src and copy["copy"] == c
            assert [t["name"] for t in copy["transforms"]][0] == "perspective"
            assert copy["transforms"][-1]["name"] == "jpeg"
            original = manifest["images"][src]
            assert (copy["width"], copy["height"]) == (original["width"], original["height"])
            rec = by_id[f"{src}-aug{c}"]
            assert rec["messages"] == by_id[src]["messages"]  # same target
            assert Path(rec["images"][0]) == out / copy["file"]
    # The originals are still the source's bytes.
    import datasets

    ds = datasets.load_dataset(str(source), split="train").cast_column("image", datasets.Image(decode=False))
    assert (out / "images" / "train" / "train-00000.jpg").read_bytes() == ds[0]["image"]["bytes"]

    copies = sorted((out / "images" / "train_aug").glob("*.jpg"))
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in copies}
    train_bytes = (out / "cord_train.json").read_bytes()
    r = export_cord(source, out, "--augment", "2", "--augment-policy", "heavy", "--seed", "7")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["splits"]["train"]["augmented"] == {"copies": 2 * N, "made": 0, "reused": 2 * N}
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in copies} == before  # not rewritten
    assert (out / "cord_train.json").read_bytes() == train_bytes


@pytest.mark.slow  # three exports of photo-sized images with a torch-importing worker each: ~2 min on 2 busy cores
def test_killed_augmenting_export_resumes_to_identical_output(tmp_path: Path):
    source = make_photo_source(tmp_path / "src", size=(1200, 1800))  # ~0.2 s per copy: the kill lands mid-way
    args = ["--augment", "2", "--seed", "3", "--split", "train"]
    killed = tmp_path / "out"  # the same path for both runs: records hold absolute image paths
    r = export_cord(source, killed, *args)
    assert r.returncode == 0, r.stderr
    clean = snapshot(killed)
    os.rename(killed, tmp_path / "clean")
    proc = subprocess.Popen([*VLM, "save-cord-dataset-in-sharegpt-format", str(killed), "--source", str(source),
                             "--workers", "1", "--json", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=ENV, start_new_session=True)
    aug = killed / "images" / "train_aug"
    deadline = time.monotonic() + 300
    while not (aug.is_dir() and any(aug.glob("*.jpg"))):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no augmented copy appeared"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    made = len(list(aug.glob("*.jpg")))
    assert 0 < made < 2 * N, f"the kill did not land mid-way ({made} copies)"
    assert not (killed / "cord_train.json").exists()

    r = export_cord(source, killed, *args)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)["splits"]["train"]["augmented"]
    assert summary["reused"] >= made and summary["made"] + summary["reused"] == 2 * N
    assert snapshot(killed) == clean


@pytest.mark.parametrize("split", ["validation", "test"])
def test_augment_without_train_makes_no_copies(tmp_path: Path, split: str):
    source = make_photo_source(tmp_path / "src", n=2)
    r = export_cord(source, tmp_path / "out", "--augment", "3", "--split", split)
    assert r.returncode == 0, r.stderr
    assert "augmented" not in json.loads(r.stdout)["splits"][split]
    assert not (tmp_path / "out" / "images" / f"{split}_aug").exists()
    assert "augment" not in json.loads((tmp_path / "out" / "manifest.json").read_text())
