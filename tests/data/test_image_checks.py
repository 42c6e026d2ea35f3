"""The export's image checks (vlm.data.images.verify_image): a cut or damaged image is refused by its structure,
without decoding it, and the structure check agrees with a full decode on every image the sample generator makes."""

from __future__ import annotations

import io
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image

from vlm.data.images import CHECKS, decode_fully, verify_image
from vlm.data.manifest import trusted_images

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import make_cord_sample  # noqa: E402


def _accepts(data: bytes, check: str | None) -> bool:
    """Whether ``check`` passes the image; None is a decode alone (the export's check before this one)."""
    try:
        decode_fully(data) if check is None else verify_image(data, check)
    except ValueError:
        return False
    return True


def _reason(data: bytes, check: str) -> str:
    with pytest.raises(ValueError) as e:
        verify_image(data, check)
    return str(e.value)


@pytest.fixture(scope="module")
def photo() -> bytes:
    """A CORD-scale camera-like receipt (about 2.4 MB, 1600x2400), as the export benchmark uses."""
    return make_cord_sample.render_record((0, "train", 0, True))[0]


def _png(size: tuple[int, int] = (300, 200)) -> bytes:
    buf = io.BytesIO()
    Image.radial_gradient("L").resize(size).save(buf, "PNG")
    return buf.getvalue()


def _cuts(photo: bytes) -> list[int]:
    """50 lengths to cut the photo to: 10 inside the header (SOI, APP0, DQT, SOF, DHT, the SOS header), 37
    through the entropy-coded data, and the last 3 bytes (the last one of the data, then the EOI marker's two)."""
    n, sos = len(photo), photo.index(b"\xff\xda")
    data_start = sos + 2 + int.from_bytes(photo[sos + 2:sos + 4], "big")
    header = [1 + k * (data_start - 1) // 10 for k in range(10)]
    entropy = [data_start + 1 + k * (n - 4 - data_start) // 37 for k in range(37)]
    cuts = sorted(set(header + entropy + [n - 3, n - 2, n - 1]))
    assert len(cuts) == 50 and cuts[-1] < n
    return cuts


@pytest.mark.parametrize("check", CHECKS)
def test_photo_cut_anywhere_is_refused(photo, check):
    verify_image(photo, check)  # whole: accepted
    accepted = [cut for cut in _cuts(photo) if _accepts(photo[:cut], check)]
    assert accepted == []
    assert _reason(photo[:-2], check).startswith("image is truncated: JPEG scan 1 runs to byte")
    assert _reason(photo[:300], check).startswith("image is truncated: JPEG ends at byte 300")


@pytest.mark.parametrize("check", CHECKS)
def test_jpeg_cut_just_before_eoi_is_refused_though_it_decodes(check):
    """A decoder pads a scan that stops early, so a decode alone passes some JPEGs that lost only their end."""
    buf = io.BytesIO()
    Image.radial_gradient("L").resize((128, 96)).convert("RGB").save(buf, "JPEG", quality=95)
    cut = buf.getvalue()[:-2]
    assert _reason(cut, check).startswith("image is truncated: JPEG scan 1 runs to byte")


def test_jpeg_structures_pass_and_their_thumbnails_do_not_end_them():
    """Progressive scans, restart markers, an EXIF thumbnail and a comment holding 0xFFD9: all whole."""
    base = Image.radial_gradient("L").resize((320, 240)).convert("RGB")
    thumb = io.BytesIO()
    base.resize((64, 48)).save(thumb, "JPEG")
    exif = Image.Exif()
    exif[0x010F] = "Camera"
    variants = [{}, {"progressive": True}, {"restart_marker_blocks": 4}, {"optimize": True},
                {"exif": exif.tobytes() + thumb.getvalue(), "comment": b"\xff\xd9 in a comment"}]
    for options in variants:
        buf = io.BytesIO()
        base.save(buf, "JPEG", **options)
        data = buf.getvalue()
        for check in CHECKS:
            verify_image(data, check)
        assert not _accepts(data[:-2], "structure"), options


@pytest.mark.parametrize("check", CHECKS)
def test_jpeg_with_bytes_after_eoi_is_accepted(photo, check):
    """As documented: bytes after EOI (a camera's appended data) are kept and not checked; decoders stop at EOI."""
    verify_image(photo + b"\x00trailer written by a camera\xff\xd8\xff", check)
    verify_image(memoryview(photo + b"junk"), check)


@pytest.mark.parametrize("check", CHECKS)
def test_png_with_a_flipped_idat_byte_is_refused(check):
    """Every flipped byte of the image data breaks its chunk's CRC; a decode alone passes some of these."""
    png = _png()
    idat = png.index(b"IDAT")
    length = int.from_bytes(png[idat - 4:idat], "big")
    for offset in range(idat + 4, idat + 4 + length, max(1, length // 40)):
        damaged = bytearray(png)
        damaged[offset] ^= 0x10
        assert _reason(bytes(damaged), check) == f"image is corrupt: PNG chunk 'IDAT' at byte {idat - 4} fails its CRC"


@pytest.mark.parametrize("check", CHECKS)
def test_png_cut_short_is_refused(check):
    png = _png()
    verify_image(png, check)
    assert [cut for cut in range(8, len(png), 7) if _accepts(png[:cut], check)] == []
    assert [cut for cut in range(len(png) - 12, len(png)) if _accepts(png[:cut], check)] == []  # inside IEND
    assert _reason(png[:100], check).startswith("image is truncated: PNG ends at byte 100 inside chunk 'IDAT'")
    verify_image(png + b"after IEND", check)  # as for JPEG: kept, not checked


def test_png_whose_crcs_were_recomputed_over_bad_data_needs_the_full_check():
    """What only ``full`` catches: damaged compressed data under CRCs that match it."""
    png = bytearray(_png())
    idat = png.index(b"IDAT")
    length = int.from_bytes(png[idat - 4:idat], "big")
    for offset in range(idat + 10, idat + length, 7):
        png[offset] ^= 0x5A
    png[idat + 4 + length:idat + 8 + length] = zlib.crc32(png[idat:idat + 4 + length]).to_bytes(4, "big")
    verify_image(bytes(png), "structure")
    assert _reason(bytes(png), "full").startswith("image does not decode:")


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "WEBP"])
@pytest.mark.parametrize("check", CHECKS)
def test_other_formats_cut_short_are_refused(fmt, check):
    """Pillow's Image.verify() checks nothing past the header for these formats (only PNG's plugin does), so it
    passes a cut GIF, BMP or TIFF; the check decodes them instead."""
    buf = io.BytesIO()
    Image.radial_gradient("L").resize((200, 150)).convert("RGB").save(buf, fmt)
    data = buf.getvalue()
    verify_image(data, check)
    cut = data[: len(data) * 6 // 10]
    if fmt != "WEBP":  # Pillow's WebP plugin decodes when it opens the file
        with Image.open(io.BytesIO(cut)) as im:
            im.verify()  # passes: why verify() alone is not the check
    assert _reason(cut, check).startswith("image does not decode:")


def test_unknown_bytes_and_unknown_checks_are_refused():
    assert _reason(b"GIF90a not an image", "structure") == "image bytes are not a known image format"
    with pytest.raises(ValueError, match="unknown image check 'none'"):
        verify_image(_png(), "none")


def test_structure_and_full_agree_on_every_generated_image(tmp_path: Path, photo):
    """Every image scripts/make_cord_sample.py makes (JPEG and PNG receipts, photo-like ones, its corrupt
    records): the structure check, the full check and a decode alone accept and refuse the same images."""
    import pyarrow.parquet as pq

    make_cord_sample.generate(tmp_path / "sample", bad_records=6)  # 24 + 6 + 6 receipts; 2 corrupt images
    images = [photo, make_cord_sample.render_record((0, "train", 1, True))[0]]
    for path in sorted((tmp_path / "sample" / "data").glob("*.parquet")):
        images += [b for b in pq.read_table(path).column("image").combine_chunks().field("bytes").to_pylist()]
    verdicts = [(_accepts(data, "structure"), _accepts(data, "full"), _accepts(data, None)) for data in images]
    assert len(verdicts) == 44
    assert [v for v in verdicts if len(set(v)) > 1] == []
    assert sum(not v[0] for v in verdicts) == 2  # the two corrupt records, and only they


def test_a_rerun_trusts_only_images_checked_at_least_as_strongly():
    image = {"sha256": "ab"}
    manifest = {"splits": {"train": {"images_verified": "structure"}, "validation": {"images_verified": "full"},
                           "test": {"images_verified": "decoded"}},  # written before the structure check
                "images": {"train-00000": image, "validation-00000": image, "test-00000": image}}
    assert trusted_images(manifest, "structure") == {"train-00000": "ab", "validation-00000": "ab"}
    assert trusted_images(manifest, "full") == {"validation-00000": "ab"}
    assert trusted_images(None, "full") == {}
