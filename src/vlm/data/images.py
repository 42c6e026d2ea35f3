"""Image bytes: their type from the leading bytes, their size from the header, and whether they decode.

Shared by the export, the augmented copies and the training preflight, which all need to know that an
image is what it claims to be before LLaMA-Factory reads it.
"""

from __future__ import annotations

import os
import re
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
