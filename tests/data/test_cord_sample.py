"""scripts/make_cord_sample.py: an offline CORD-v2-like sample that datasets can load."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

from vlm.schema import schema_keys

SCRIPTS = ROOT / "scripts"
sys.path.insert(0, str(SCRIPTS))

import make_cord_sample  # noqa: E402

datasets = pytest.importorskip("datasets")

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out / "data").glob("*.parquet"))}


def _raw(ds):
    """Rows with undecoded image bytes."""
    return ds.cast_column("image", datasets.Image(decode=False))


def _walk_keys(value, found: set[str]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            found.add(key)
            _walk_keys(inner, found)
    elif isinstance(value, list):
        for inner in value:
            _walk_keys(inner, found)


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cord") / "sample"
    counts = make_cord_sample.generate(out)
    assert counts == {"train": 24, "validation": 6, "test": 6, "bad_records": 0}
    return out


@pytest.fixture(scope="module")
def loaded(sample, tmp_path_factory):
    return datasets.load_dataset(str(sample), cache_dir=str(tmp_path_factory.mktemp("hf_cache")))


def test_layout_and_size(sample):
    names = sorted(p.name for p in (sample / "data").iterdir())
    assert names == [
        "test-00000-of-00001.parquet",
        "train-00000-of-00001.parquet",
        "validation-00000-of-00001.parquet",
    ]
    total = sum(p.stat().st_size for p in (sample / "data").iterdir())
    assert total < 3 * 1024 * 1024
    # Built in a temp dir next to OUT and renamed: nothing left behind.
    assert [p.name for p in sample.parent.iterdir()] == ["sample"]


def test_loads_with_three_splits(loaded, sample, tmp_path):
    assert {name: len(split) for name, split in loaded.items()} == {"train": 24, "validation": 6, "test": 6}
    assert isinstance(loaded["train"].features["image"], datasets.Image)
    assert loaded["train"].features["ground_truth"] == datasets.Value("string")
    test = datasets.load_dataset(str(sample), split="test", cache_dir=str(tmp_path / "c"))
    assert len(test) == 6
    image = test[0]["image"]  # decodes to a PIL image
    assert image.size[0] >= 320


def test_images_and_ground_truth(loaded):
    formats, sizes = set(), set()
    menu_dict = nested_sub = single_sub = non_ascii = no_subtotal = False
    keys: set[str] = set()
    allowed = schema_keys()
    for split, ds in loaded.items():
        for i, row in enumerate(_raw(ds)):
            data = row["image"]["bytes"]
            assert row["image"]["path"] is None
            if data.startswith(JPEG_MAGIC):
                formats.add("jpeg")
            elif data.startswith(PNG_MAGIC):
                formats.add("png")
            gt = json.loads(row["ground_truth"])
            meta = gt["meta"]
            assert meta["version"] == "2.0.0" and meta["split"] == split and meta["image_id"] == i
            size = (meta["image_size"]["width"], meta["image_size"]["height"])
            sizes.add(size)
            assert 320 <= size[0] <= 640
            parse = gt["gt_parse"]
            assert set(parse) >= {"menu", "total"}
            _walk_keys(parse, keys)
            menu = parse["menu"]
            if isinstance(menu, dict):
                menu_dict = True
                menu = [menu]
            for item in menu:
                assert {"nm", "cnt", "price"} <= set(item)
                if isinstance(item.get("sub"), list):
                    nested_sub = True
                elif isinstance(item.get("sub"), dict):
                    single_sub = True
                non_ascii |= not item["nm"].isascii()
            assert "total_price" in parse["total"]  # the subtotal is omitted on some receipts, as in CORD
            no_subtotal |= "subtotal_price" not in parse.get("sub_total", {})
            # Every labelled word lies inside the image, and the printed words spell the values.
            words_by_cat: dict[str, list[str]] = {}
            for line in gt["valid_line"]:
                assert line["words"] and "." in line["category"] and isinstance(line["group_id"], int)
                for word in line["words"]:
                    q = word["quad"]
                    assert 0 <= q["x1"] < q["x3"] <= size[0] and 0 <= q["y1"] < q["y3"] <= size[1]
                    if not word["is_key"]:
                        words_by_cat.setdefault(line["category"], []).append(word["text"])
            printed = " ".join(words_by_cat["total.total_price"])
            assert printed == parse["total"]["total_price"]
            assert " ".join(words_by_cat["menu.nm"]) == " ".join(item["nm"] for item in menu)
    assert formats == {"jpeg", "png"}
    assert len(sizes) >= 4
    assert menu_dict and nested_sub and single_sub and non_ascii and no_subtotal
    assert keys <= allowed, keys - allowed
    assert {"unitprice", "num", "tax_price", "cashprice", "changeprice", "menuqty_cnt"} <= keys


def test_same_seed_same_bytes(sample, tmp_path):
    again = tmp_path / "again"
    make_cord_sample.generate(again)
    assert _digests(again) == _digests(sample)
    other = tmp_path / "other"
    make_cord_sample.generate(other, seed=1)
    assert _digests(other) != _digests(sample)


def test_bad_records(tmp_path):
    out = tmp_path / "bad"
    counts = make_cord_sample.generate(out, train=3, validation=1, test=1, bad_records=4)
    assert counts["train"] == 7 and counts["bad_records"] == 4
    ds = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "c"))
    rows = list(_raw(ds))
    assert len(rows) == 7
    from PIL import Image

    for row in rows[:3]:
        Image.open(io.BytesIO(row["image"]["bytes"])).load()
        assert "gt_parse" in json.loads(row["ground_truth"])
    corrupt, not_json, no_parse, corrupt2 = rows[3:]
    with pytest.raises(Exception):
        Image.open(io.BytesIO(corrupt["image"]["bytes"])).load()
    with pytest.raises(Exception):
        Image.open(io.BytesIO(corrupt2["image"]["bytes"])).load()
    assert "gt_parse" in json.loads(corrupt["ground_truth"])
    with pytest.raises(json.JSONDecodeError):
        json.loads(not_json["ground_truth"])
    Image.open(io.BytesIO(not_json["image"]["bytes"])).load()
    parsed = json.loads(no_parse["ground_truth"])
    assert "gt_parse" not in parsed and parsed["meta"]["split"] == "train"
    Image.open(io.BytesIO(no_parse["image"]["bytes"])).load()


def test_cli_refuses_existing_dir_without_force(tmp_path):
    out = tmp_path / "cli"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    cmd = [sys.executable, str(SCRIPTS / "make_cord_sample.py"), str(out), "--train", "2", "--validation", "1",
           "--test", "0"]
    refused = subprocess.run(cmd, capture_output=True, text=True)
    assert refused.returncode == 2 and "--force" in refused.stderr
    assert (out / "keep.txt").exists()
    done = subprocess.run([*cmd, "--force"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not (out / "keep.txt").exists()
    # A split asked for with 0 rows gets no file (datasets cannot read an empty parquet file).
    assert sorted(p.name for p in (out / "data").iterdir()) == [
        "train-00000-of-00001.parquet",
        "validation-00000-of-00001.parquet",
    ]


def test_photo_like_record():
    image, gt = make_cord_sample.render_record((0, "train", 0, True))
    assert image.startswith(JPEG_MAGIC)
    assert 1.5e6 < len(image) < 4e6
    meta = json.loads(gt)["meta"]
    assert meta["image_size"]["width"] >= 1500 and meta["image_size"]["height"] >= 2200
