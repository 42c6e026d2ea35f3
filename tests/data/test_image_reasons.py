"""Skip reasons name what is wrong with an image, the same way on every run (no object addresses)."""

from __future__ import annotations

import pytest

from vlm.data.images import decode_fully, image_info, verify_image

JPEG_HEADER_THEN_GARBAGE = b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF\x00" + b"garbage" * 20
PNG_SIGNATURE_ONLY = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40


@pytest.mark.parametrize("data", [JPEG_HEADER_THEN_GARBAGE, PNG_SIGNATURE_ONLY], ids=["jpeg", "png"])
def test_reasons_carry_no_memory_address(data):
    reasons = []
    for _ in range(2):  # a fresh BytesIO each time: a different address, if it were printed
        for check in (image_info, decode_fully, verify_image, lambda b: verify_image(b, "full")):
            with pytest.raises(ValueError) as e:
                check(bytes(data))
            reasons.append(str(e.value))
    assert all(" at 0x" not in r and "<_io." not in r for r in reasons), reasons
    assert reasons[:4] == reasons[4:]
    assert all(r.split(":", 1)[1].strip() for r in reasons)  # a cause is still given
