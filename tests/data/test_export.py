"""CORD export: byte-identical images, bad records, and kill-and-rerun identity."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import VLM, snapshot


def _jpeg(width: int, height: int, pad: int = 0, seed: int = 0) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (255, 250 - seed % 50, 240)).save(buf, "JPEG", quality=90)
    # Trailing bytes after EOI keep the file valid and make it big (a photo-sized payload, cheaply).
    return buf.getvalue() + os.urandom(pad)


def _png(width: int, height: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (width, height), 200).save(buf, "PNG")
    return buf.getvalue()


def make_source(root: Path, n: int = 6, pad: int = 0, bad: bool = False) -> Path:
    """A local directory in the hub layout: data/{split}-00000-of-00001.parquet."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "ground_truth": datasets.Value("string")})
    for split in ("train", "validation", "test"):
        images, gts = [], []
        for i in range(n):
            data = _png(90 + i, 60) if i % 3 == 0 else _jpeg(120 + 10 * i, 80 + i, pad, seed=i)
            images.append({"bytes": data, "path": None})
            menu = ({"nm": "Café Latte", "price": "30,000"} if i % 2
                    else [{"nm": f"item {i}", "cnt": "1 x", "price": "5,000"}])
            gts.append(json.dumps({"gt_parse": {"menu": menu, "total": {"total_price": "35,000"}}, "meta": {},
                                   "valid_line": []}))
        if bad and split == "train":
            images += [{"bytes": b"\xff\xd8 not really a jpeg", "path": None}, {"bytes": _png(30, 30), "path": None},
                       {"bytes": _png(31, 31), "path": None}]
            good_gt = json.dumps({"gt_parse": {"total": {"total_price": "1"}}})
            gts += [good_gt, "{not json", json.dumps({"meta": {}})]
        ds = datasets.Dataset.from_dict({"image": images, "ground_truth": gts}, features=features)
        (root / "data").mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    return root


def test_images_are_byte_identical_and_records_are_sharegpt(tmp_path: Path):
    import datasets

    src = make_source(tmp_path / "src")
    out = tmp_path / "out"
    r = subprocess.run([*VLM, "save-cord-dataset-in-sharegpt-format", str(out), "--source", str(src), "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["registered"] == ["cord_train", "cord_validation", "cord_test"]
    source = datasets.load_dataset(str(src), split="test").cast_column("image", datasets.Image(decode=False))
    records = json.loads((out / "cord_test.json").read_text())
    assert len(records) == len(source) == 6
    for rec, row in zip(records, source):
        image = Path(rec["images"][0])
        assert image.is_absolute() and image.read_bytes() == row["image"]["bytes"]
        assert image.suffix == (".png" if row["image"]["bytes"].startswith(b"\x89PNG") else ".jpg")
        assert rec["messages"][0]["content"].startswith("<image>")
        assert "sub_total" in rec["messages"][0]["content"] and "subtotal\"" not in rec["messages"][0]["content"]
        assert json.loads(rec["messages"][1]["content"]) == json.loads(row["ground_truth"])["gt_parse"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["test"]["records"] == 6 and len(manifest["images"]) == 18
    from vlm.fsutil import sha256_file

    for entry in manifest["images"].values():
        assert sha256_file(out / entry["file"]) == entry["sha256"]
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["cord_test"]["file_name"] == "cord_test.json"


def test_bad_records_are_skipped_and_reported(tmp_path: Path):
    src = make_source(tmp_path / "src", n=3, bad=True)
    out = tmp_path / "out"
    r = subprocess.run([*VLM, "save-cord-dataset-in-sharegpt-format", str(out), "--source", str(src),
                        "--split", "train", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    reasons = sorted(s["reason"] for s in result["skipped"])
    assert len(reasons) == 3 and result["splits"]["train"]["records"] == 3
    assert any("not valid JSON" in x for x in reasons) and any("gt_parse" in x for x in reasons)
    assert any("image" in x for x in reasons)
    strict = subprocess.run([*VLM, "save-cord-dataset-in-sharegpt-format", str(tmp_path / "strict"), "--source",
                             str(src), "--split", "train", "--strict"], capture_output=True, text=True)
    assert strict.returncode == 1 and "bad record" in strict.stderr and "Traceback" not in strict.stderr
    assert not (tmp_path / "strict" / "cord_train.json").exists()


def test_missing_source_is_a_clear_error(tmp_path: Path):
    r = subprocess.run([*VLM, "save-cord-dataset-in-sharegpt-format", str(tmp_path / "o"), "--source",
                        str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert r.returncode == 2 and "source directory not found" in r.stderr and "Traceback" not in r.stderr


def test_limit_and_single_split(tmp_path: Path):
    src = make_source(tmp_path / "src")
    r = subprocess.run([*VLM, "save-cord-dataset-in-sharegpt-format", str(tmp_path / "o"), "--source", str(src),
                        "--split", "validation", "--limit", "2", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert list(json.loads(r.stdout)["splits"]) == ["validation"]
    assert len(json.loads((tmp_path / "o" / "cord_validation.json").read_text())) == 2


@pytest.mark.slow
def test_sigkill_then_rerun_equals_a_clean_run(tmp_path: Path):
    src = make_source(tmp_path / "src", n=150, pad=400_000)
    out = tmp_path / "out"
    cmd = [*VLM, "save-cord-dataset-in-sharegpt-format", str(out), "--source", str(src), "--workers", "1"]
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    clean = snapshot(out)
    subprocess.run(["rm", "-rf", str(out)], check=True)

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    train_images = out / "images" / "train"
    deadline = time.time() + 120
    while time.time() < deadline and (not train_images.exists() or len(list(train_images.glob("*"))) < 20):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Killed part-way: some images, no JSON for the last split yet, no half-written file.
    assert not (out / "cord_test.json").exists() and not (out / "manifest.json").exists()
    assert not any(p.name.endswith(".tmp") and not p.name.startswith(".") for p in out.rglob("*"))

    r = subprocess.run([*cmd, "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["splits"]["train"]["reused_images"] > 0
    assert snapshot(out) == clean
    assert not list(out.rglob(".*.tmp"))  # leftovers of the killed run's atomic writes are cleaned up


# ---------------------------------------------------------------- issue 12: lose nothing, say why


def _export(out: Path, src: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*VLM, "save-cord-dataset-in-sharegpt-format", str(out), "--source", str(src), *args],
                          capture_output=True, text=True)


def test_rerun_removes_only_its_own_temp_files(tmp_path: Path):
    """D2: a rerun cleans up a killed run's temp files, never the user's own hidden .*.tmp files."""
    src = make_source(tmp_path / "src", n=2)
    out = tmp_path / "out"
    assert _export(out, src, "--split", "test").returncode == 0
    mine = [out / ".notes.tmp", out / "images" / "test" / ".draft.tmp", out / "sub" / ".keep.tmp"]
    for path in mine:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("user data")
    ours = out / ".cord_test.json.vlm-abcd1234.tmp"  # what a killed atomic write leaves
    ours.write_text("half")
    r = _export(out, src, "--split", "test")
    assert r.returncode == 0, r.stderr
    assert all(p.read_text() == "user data" for p in mine)
    assert not ours.exists()


@pytest.mark.slow  # a vlm child that loads LLaMA-Factory, or photo-sized images: kept out of make test-fast
def test_manifest_describes_every_split_in_the_folder(tmp_path: Path):
    """D3: exporting some splits into an existing export merges the manifest, also when two exports run at once."""
    src = make_source(tmp_path / "src", n=2)
    out = tmp_path / "out"
    assert _export(out, src, "--split", "train").returncode == 0
    r = _export(out, src, "--split", "test")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["splits"]) == ["train", "test"]
    assert sorted(manifest["images"]) == ["test-00000", "test-00001", "train-00000", "train-00001"]

    both = tmp_path / "both"
    cmd = [*VLM, "save-cord-dataset-in-sharegpt-format", str(both), "--source", str(src), "--split"]
    procs = [subprocess.Popen([*cmd, split], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for split in ("validation", "test")]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    manifest = json.loads((both / "manifest.json").read_text())
    assert sorted(manifest["splits"]) == ["test", "validation"] and len(manifest["images"]) == 4
    assert sorted(json.loads((both / "dataset_info.json").read_text())) == ["cord_test", "cord_validation"]


def _image_source(root: Path, images: list[bytes]) -> Path:
    """A train split of these images, each with a good target."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "ground_truth": datasets.Value("string")})
    gt = json.dumps({"gt_parse": {"total": {"total_price": "1"}}})
    (root / "data").mkdir(parents=True)
    datasets.Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in images],
                                "ground_truth": [gt] * len(images)}, features=features).to_parquet(
        str(root / "data" / "train-00000-of-00001.parquet"))
    return root


def _truncated_source(root: Path) -> tuple[Path, bytes]:
    """A train split whose record 1 is a JPEG cut to a third: its header is fine, its pixels are not; and whose
    record 2 lost only its end-of-image marker, which a decoder pads over (the check before this one passed it)."""
    from PIL import Image

    whole = _jpeg(400, 300, pad=0, seed=3)
    buf = io.BytesIO()
    Image.radial_gradient("L").resize((128, 96)).convert("RGB").save(buf, "JPEG", quality=95)
    return _image_source(root, [whole, whole[: len(whole) // 3], buf.getvalue()[:-2]]), whole


@pytest.mark.parametrize("check", ["structure", "full"])
def test_truncated_image_is_skipped_and_listed(tmp_path: Path, check: str):
    """D9: a cut JPEG has a good header; the export checks its structure (and with full, decodes it) and skips it."""
    src, _ = _truncated_source(tmp_path / "src")
    out = tmp_path / "out"
    for run in range(2):  # the rerun reuses the good image (sha256) and still skips the bad ones
        r = _export(out, src, "--split", "train", "--json", "--verify-images", check)
        assert r.returncode == 0, r.stderr
        result = json.loads(r.stdout)
        assert result["splits"]["train"]["records"] == 1
        assert result["splits"]["train"]["reused_images"] == run
        assert [(s["id"], s["reason"].split(":")[0]) for s in result["skipped"]] == [
            ("train-00001", "image is truncated"), ("train-00002", "image is truncated")]
    assert [rec["id"] for rec in json.loads((out / "cord_train.json").read_text())] == ["train-00000"]
    assert not list((out / "images" / "train").glob("train-00001*"))
    assert json.loads((out / "manifest.json").read_text())["splits"]["train"]["images_verified"] == check


def _damaged_png_under_good_crcs() -> bytes:
    """A PNG whose compressed data is damaged but whose CRCs were recomputed: its structure is fine, its pixels
    are not, so only --verify-images full refuses it."""
    import zlib

    png = bytearray(_png(64, 48))
    idat = png.index(b"IDAT")
    length = int.from_bytes(png[idat - 4:idat], "big")
    for offset in range(idat + 6, idat + length, 3):
        png[offset] ^= 0x5A
    png[idat + 4 + length:idat + 8 + length] = zlib.crc32(png[idat:idat + 4 + length]).to_bytes(4, "big")
    return bytes(png)


def test_verify_images_full_and_what_a_rerun_trusts(tmp_path: Path, monkeypatch):
    """--verify-images full decodes too; the manifest records the check, and a rerun skips the check only for
    images checked at least as strongly as it is asked to (never those of a weaker check, nor of vlm before it)."""
    from vlm.data import export
    from vlm.data.export import ExportSpec, run_export

    src = _image_source(tmp_path / "src", [_jpeg(120, 80), _damaged_png_under_good_crcs(), _png(40, 30)])
    out = tmp_path / "out"
    checked: list[str] = []
    real = export.verify_image
    monkeypatch.setattr(export, "verify_image", lambda data, check: (checked.append(check), real(data, check)))

    def run(check: str) -> dict:
        checked.clear()
        spec = ExportSpec(out_dir=out, source=str(src), name="cord", prompt="p", splits=("train",), workers=1,
                          verify_images=check)
        result = run_export(spec, register=False, show_progress=False)
        assert json.loads((out / "manifest.json").read_text())["splits"]["train"]["images_verified"] == check
        return result

    first = run("structure")  # the damaged PNG passes its structure check
    assert first["splits"]["train"]["records"] == 3 and len(checked) == 3
    again = run("structure")  # same check: every image trusted by its sha256
    assert again["splits"]["train"]["reused_images"] == 3 and checked == []
    full = run("full")  # a stronger check than recorded: every image checked again, and the damaged PNG skipped
    assert checked == ["full"] * 3
    assert [(s["id"], s["reason"].split(":")[0]) for s in full["skipped"]] == [("train-00001", "image does not decode")]
    run("structure")  # a weaker check trusts the full one's images
    assert checked == ["structure"]  # only the PNG the full check skipped (it is not in the manifest)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["splits"]["train"]["images_verified"] = "decoded"  # as vlm wrote it before the structure check
    (out / "manifest.json").write_text(json.dumps(manifest))
    run("structure")
    assert len(checked) == 3


def test_verify_images_choices(tmp_path: Path):
    from vlm.commands.data import VerifyImages
    from vlm.data.images import CHECKS

    assert tuple(v.value for v in VerifyImages) == CHECKS
    r = _export(tmp_path / "out", make_source(tmp_path / "src", n=1), "--verify-images", "none")
    assert r.returncode == 2 and "--verify-images" in r.stderr and not (tmp_path / "out").exists()


def test_all_records_skipped_is_an_error_with_the_reasons(tmp_path: Path):
    """D11 and D21: a split with no good record names the causes, writes no file, and leaves no empty folder."""
    src = make_source(tmp_path / "src", n=0, bad=True)  # train: 3 bad records only
    out = tmp_path / "out"
    r = _export(out, src, "--split", "train")
    assert r.returncode == 1, r.stderr
    assert "all 3 record(s) were skipped" in r.stderr and "'messages'" not in r.stderr
    assert "1 x target is not valid JSON" in r.stderr and "1 x target has no field 'gt_parse'" in r.stderr
    assert "1 x image" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_zero_row_split_says_so_and_leaves_no_folder(tmp_path: Path):
    """D12 and D21: a zero-row parquet in an existing local directory is named as such."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "src"
    (src / "data").mkdir(parents=True)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(pa.table({"image": pa.array([], image_type), "ground_truth": pa.array([], pa.string())}),
                   src / "data" / "train-00000-of-00001.parquet")
    out = tmp_path / "out"
    r = _export(out, src, "--split", "train")
    assert r.returncode == 2
    assert f"split 'train' of {src} has no rows" in r.stderr and "exists either" not in r.stderr
    assert not out.exists()


def test_missing_source_leaves_no_folder(tmp_path: Path):
    """D21: the output folder is created only once the source has loaded."""
    r = _export(tmp_path / "out" / "nested", tmp_path / "nowhere")
    assert r.returncode == 2 and not (tmp_path / "out").exists()


def test_rerun_does_not_claim_to_register(tmp_path: Path):
    """D22: 'registered' is printed only when dataset_info.json changed."""
    src = make_source(tmp_path / "src", n=2)
    out = tmp_path / "out"
    first = _export(out, src, "--split", "test")
    assert first.returncode == 0 and f"registered cord_test in {out}" in first.stderr
    info = (out / "dataset_info.json").read_bytes()
    again = _export(out, src, "--split", "test")
    assert again.returncode == 0, again.stderr
    assert "\nregistered" not in "\n" + again.stderr
    assert "already registered (file unchanged): cord_test" in again.stderr
    assert (out / "dataset_info.json").read_bytes() == info
