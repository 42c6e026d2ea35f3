"""Image bytes: their type from the leading bytes, their size from the header, and whether they are whole.

Shared by the export, the augmented copies and the training preflight, which all need to know that an
image is what it claims to be before LLaMA-Factory reads it.
"""

from __future__ import annotations

import os
import re
import zlib
from io import BytesIO

from PIL import Image

# Leading bytes -> file extension. The extension comes from the bytes, not from a name.
_MAGIC = (
    (b"\xff\xd8\xff", "jpg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tif"),
    (b"MM\x00*", "tif"),
)


def sniff_extension(data: bytes | memoryview) -> str | None:
    """The image type named by the leading bytes, or None if they name none we know."""
    data = bytes(data[:16])
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    return None


# PIL names the file object it read in some messages ("cannot identify image file <_io.BytesIO object at
# 0x7f...>"): an address that differs on every run, and that would make two exports' skip lists differ.
_OBJECT_REPR = re.compile(r" ?<[^<>]* at 0x[0-9a-fA-F]+>")


def _reason(e: Exception) -> str:
    return _OBJECT_REPR.sub("", str(e)).strip() or type(e).__name__


def image_info(data: bytes) -> tuple[str, int, int]:
    """Format and size from the image header only (PIL opens lazily: no pixel decode)."""
    ext = sniff_extension(data)
    if ext is None:
        raise ValueError("image bytes are not a known image format")
    try:
        with Image.open(BytesIO(data)) as im:
            width, height = im.size
    except Exception as e:
        raise ValueError(f"image header unreadable: {_reason(e)}") from None
    return ext, width, height


def decode_fully(data: bytes | memoryview | str | os.PathLike) -> None:
    """Raise ValueError unless every byte of the image decodes (a cut file has a good header but no tail).

    JPEGs decode in draft mode (1/8 scale): the whole entropy-coded stream is still read,
    so truncation is caught, at a fraction of the cost. PIL releases the GIL while decoding,
    so the export's worker threads verify in parallel.
    """
    try:
        with Image.open(data if isinstance(data, (str, os.PathLike)) else BytesIO(data)) as im:
            if im.format == "JPEG":
                im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
    except Exception as e:  # OSError "image file is truncated", SyntaxError, DecompressionBombError...
        raise ValueError(f"image does not decode: {_reason(e)}") from None


# How an export checks each image, weakest first (a rerun trusts an image checked at least as strongly as asked):
#   structure: JPEG segments walked to the end-of-image marker; PNG chunks walked to IEND, every CRC checked;
#              other formats decoded. Catches cut files and damaged PNGs in less time than the image's sha256
#              (0.8 ms for a 2.4 MB photo-like receipt, against 1.4 ms to hash it and 47 ms to decode it).
#   full:      the structure check, then a full decode (JPEGs at 1/8 scale), which also catches damage inside
#              compressed data that the structure cannot show (a JPEG has no checksum). The structure check
#              comes first because a decoder pads a JPEG that lost only its last bytes, and passes it.
CHECKS = ("structure", "full")

# After a JPEG scan's header, its entropy-coded data runs to the next marker: 0xFF followed by a byte that is not
# 0x00 (a stuffed 0xFF data byte), not 0xD0-0xD7 (a restart marker inside the scan) and not 0xFF (fill bytes,
# which may precede any marker).
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_EOI, _SOS = 0xD9, 0xDA
_NO_LENGTH = {0x01, *range(0xD0, 0xD8)}  # TEM and RSTn stand alone: no length field follows them


def _truncated(detail: str) -> ValueError:
    return ValueError(f"image is truncated: {detail}")


def _corrupt(detail: str) -> ValueError:
    return ValueError(f"image is corrupt: {detail}")


def _check_jpeg(data: memoryview) -> None:
    """Walk the segments by their lengths (skipping any embedded thumbnail, whose own EOI would fool a search),
    scan each scan's data to its closing marker, and stop at EOI.

    Bytes after EOI are accepted and kept: some cameras append data there (a second image, a video), decoders
    stop at EOI, and the export copies the file byte for byte. A cut file has no EOI (or no complete segment).
    """
    n, pos, scans = len(data), 2, 0
    while True:
        if pos >= n or data[pos] != 0xFF:
            if pos >= n:
                raise _truncated(f"JPEG ends at byte {n} without its end-of-image marker (EOI)")
            raise _corrupt(f"JPEG has no marker at byte {pos} (0x{data[pos]:02X})")
        while pos < n and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            raise _truncated(f"JPEG ends at byte {n} inside a marker")
        marker, pos = data[pos], pos + 1
        if marker == _EOI:
            if not scans:
                raise _corrupt("JPEG ends (EOI) before any image data (no SOS)")
            return
        if marker in _NO_LENGTH:
            continue
        if marker in (0x00, 0xD8):
            raise _corrupt(f"JPEG has an invalid marker 0xFF{marker:02X} at byte {pos - 2}")
        if pos + 2 > n:
            raise _truncated(f"JPEG ends at byte {n} inside the length of marker 0xFF{marker:02X}")
        length = data[pos] << 8 | data[pos + 1]
        if length < 2:
            raise _corrupt(f"JPEG marker 0xFF{marker:02X} at byte {pos - 2} has length {length}")
        pos += length
        if pos > n:
            raise _truncated(f"JPEG ends at byte {n} inside segment 0xFF{marker:02X} (of {length} bytes)")
        if marker == _SOS:
            scans += 1
            end = _SCAN_END.search(data, pos)
            if end is None:
                raise _truncated(f"JPEG scan {scans} runs to byte {n} without an end-of-image marker (EOI)")
            pos = end.start()


def _check_png(data: memoryview) -> None:
    """Walk the chunks to IEND, checking each one's CRC (zlib.crc32 releases the GIL on large chunks).

    Bytes after IEND are accepted and kept, as decoders ignore them (and as for JPEG).
    """
    n, pos, chunks, idat = len(data), 8, 0, False
    while True:
        if pos + 8 > n:
            raise _truncated(f"PNG ends at byte {n} after {chunks} chunk(s), without its IEND chunk")
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = bytes(data[pos + 4:pos + 8])
        name = kind.decode("latin-1")
        end = pos + 12 + length
        if length > 0x7FFFFFFF or not kind.isalpha():
            raise _corrupt(f"PNG chunk {chunks + 1} at byte {pos} has an invalid header ({name!r}, {length} bytes)")
        if end > n:
            raise _truncated(f"PNG ends at byte {n} inside chunk {name!r} at byte {pos} (of {length} bytes)")
        if zlib.crc32(data[pos + 4:end - 4]) != int.from_bytes(data[end - 4:end], "big"):
            raise _corrupt(f"PNG chunk {name!r} at byte {pos} fails its CRC")
        chunks, idat = chunks + 1, idat or kind == b"IDAT"
        if kind == b"IEND":
            if not idat:
                raise _corrupt("PNG has no image data (no IDAT chunk)")
            return
        pos = end


def verify_image(data: bytes | memoryview, check: str = "structure") -> None:
    """Raise ValueError (why, no object addresses) unless the image is whole by ``check`` (one of CHECKS).

    Formats without a structure walk here (GIF, BMP, TIFF, WEBP) are decoded by either check: Pillow's
    ``Image.verify()`` checks nothing for them beyond the header (only its PNG plugin checks more), so it
    would pass a cut file; they are rare in document datasets, so decoding them costs little.
    """
    if check not in CHECKS:
        raise ValueError(f"unknown image check {check!r} (choose from {', '.join(CHECKS)})")
    view = memoryview(data).cast("B")  # Arrow's buffers index as signed bytes; the walks need 0..255
    ext = sniff_extension(view)
    if ext == "jpg":
        _check_jpeg(view)
    elif ext == "png":
        _check_png(view)
    elif ext is None:
        raise ValueError("image bytes are not a known image format")
    else:
        decode_fully(data)
        return
    if check == "full":
        decode_fully(data)
