"""The model's own probability of every token it generated, and where each token's text lies in the answer.

``vlm predict`` keeps, with each answer, the natural log-probability of every generated token (under the
model's unprocessed distribution: a logits processor that masks or penalises tokens does not change it) and
the character offset in the raw answer where each token's text ends. ``vlm.evaluation.confidence`` maps a
field's value to the tokens that wrote it with these offsets.

Stored packed (``pack``/``unpack``): a little-endian float32 per token, then the number of characters it adds
to the answer, one byte per token (two where a token adds 256 or more): 5 bytes a token. A token that ends
inside a multi-byte character adds 0 characters; the token that completes it adds the character. The
end-of-sequence token is kept (its probability is the model's belief that the answer is complete) and adds
nothing.

Rows predicted before this existed have no scores (``None``): they get no confidence, and say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

_MAGIC = b"TS1"  # format marker, so a later layout can be told apart: widths as uint16
_MAGIC_NARROW = b"TS2"  # the same with widths as uint8 (every token under 256 characters)
_MAX_WIDTH = 0xFFFF


@dataclass(frozen=True)
class TokenScores:
    """``logprobs[i]``: log-probability of token i; ``ends[i]``: the character offset where its text ends."""

    logprobs: tuple[float, ...]
    ends: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.logprobs)

    def starts(self) -> tuple[int, ...]:
        return (0, *self.ends[:-1])


@dataclass(frozen=True)
class Generated:
    """What a backend generated for one document: the answer text and, where the backend keeps them, its scores."""

    text: str
    scores: TokenScores | None = None


def pack(scores: TokenScores | None) -> bytes | None:
    if scores is None:
        return None
    widths = np.diff(np.asarray((0, *scores.ends), dtype=np.int64))
    if len(widths) and (widths.min() < 0 or widths.max() > _MAX_WIDTH):
        return None  # offsets that go backwards cannot map spans; such a row gets no confidence
    narrow = not len(widths) or widths.max() <= 0xFF  # nearly always: a token rarely writes 256 characters
    return ((_MAGIC_NARROW if narrow else _MAGIC) + np.uint32(len(scores)).tobytes()
            + np.asarray(scores.logprobs, dtype="<f4").tobytes() + widths.astype("u1" if narrow else "<u2").tobytes())


def unpack(blob: bytes | None) -> TokenScores | None:
    if not blob or blob[:3] not in (_MAGIC, _MAGIC_NARROW):
        return None
    n = int(np.frombuffer(blob, dtype="<u4", count=1, offset=3)[0])
    logprobs = np.frombuffer(blob, dtype="<f4", count=n, offset=7)
    widths = np.frombuffer(blob, dtype="u1" if blob[:3] == _MAGIC_NARROW else "<u2", count=n, offset=7 + 4 * n)
    return TokenScores(tuple(logprobs.astype(float).tolist()), tuple(np.cumsum(widths, dtype=np.int64).tolist()))


def as_json(scores: TokenScores | None) -> dict[str, list] | None:
    """The scores in a prediction file's row (``vlm export-predictions``), unrounded: a file read back gives the
    same confidences as the store, so a threshold taken at one field's confidence keeps that field."""
    if scores is None:
        return None
    return {"logprobs": list(scores.logprobs), "ends": list(scores.ends)}


def from_json(value: Any) -> TokenScores | None:
    """Scores read back from a prediction file; anything malformed is no scores, not an error."""
    if not isinstance(value, dict):
        return None
    lp, ends = value.get("logprobs"), value.get("ends")
    if not isinstance(lp, list) or not isinstance(ends, list) or len(lp) != len(ends):
        return None
    try:
        return TokenScores(tuple(float(x) for x in lp), tuple(int(x) for x in ends))
    except (TypeError, ValueError):
        return None


def token_ends(tokenizer: Any, ids: list[int], text: str) -> tuple[int, ...] | None:
    """Where each token's text ends in ``text`` (the answer decoded from ``ids``, special tokens skipped).

    Each end is the length of the decoded prefix up to that token, so it is exact for any tokenizer whose
    decoding of a prefix is a prefix of the whole decoding. A prefix that stops inside a multi-byte character
    decodes to a replacement character, which is not counted; ends are then made non-decreasing from the right.
    None when the decoded tokens do not give ``text`` back (then spans cannot be trusted).
    """
    if not ids:
        return () if not text else None
    prefixes = tokenizer.batch_decode([ids[: i + 1] for i in range(len(ids))], skip_special_tokens=True)
    if prefixes[-1] != text:
        return None
    ends = []
    for p in prefixes:
        end = len(p)
        while end and p[end - 1] == "\ufffd" and text[end - 1: end] != "\ufffd":
            end -= 1  # a character this token only began: it belongs to the token that completes it
        ends.append(end)
    for i in range(len(ends) - 2, -1, -1):
        ends[i] = min(ends[i], ends[i + 1])
    return tuple(ends)


def answer_length(ids: list[int], stop_ids: set[int]) -> int:
    """Tokens of a generated row up to and including its first stop token (the rest is batch padding)."""
    for i, tok in enumerate(ids):
        if tok in stop_ids:
            return i + 1
    return len(ids)
