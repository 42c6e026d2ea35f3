"""How sure the model was of each field it extracted, from its own token probabilities.

``vlm predict`` stores every generated token's log-probability and where its text ends in the answer
(``vlm.inference.token_scores``). Here each leaf value of the parsed answer is mapped back to its characters
in the raw answer (``value_spans``) and to the tokens that wrote them, and gets:

* ``min``: the lowest probability of those tokens (one unsure digit makes the field unsure);
* ``mean``: their mean probability.

``DEFAULT`` names the one reported as the field's confidence, chosen by measurement (docs/evaluation.md,
"Confidence"). A value the parser recovered from a broken answer (the answer needed repairs other than
removing code fences and prose), or one whose characters are not found as the model wrote them, is
``repaired``: its confidence is multiplied by ``REPAIRED_FACTOR``, since the parser, not the model, decided
part of it; a value not found at all has confidence 0. A document's confidence is that of its least
confident field. Rows predicted before scores were kept have none (``None``), and are counted as such.

Spans: values are found in the order the prediction lists them (the order the model wrote them), each after
the one before. A string value is matched inside quotes as JSON escapes it, not as a key (a key is followed
by ``:``), without the spaces the metric strips; a number or literal as a bare token, a number matched by
its printed form (``31.000`` for the parsed 31.0).
"""

from __future__ import annotations

import bisect
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from vlm.evaluation.docdiff import prediction_fields
from vlm.inference.parsing import parse_prediction
from vlm.inference.token_scores import TokenScores, from_json

KINDS = ("min", "mean")
DEFAULT = "min"
REPAIRED_FACTOR = 0.5


@dataclass(frozen=True)
class FieldConfidence:
    path: str  # the field's path in the prediction (``docdiff.align``'s ``pred_path``)
    text: str
    span: tuple[int, int] | None  # characters of the raw answer that hold the value
    min: float | None
    mean: float | None
    tokens: int
    repaired: bool

    @property
    def confidence(self) -> float:
        """The field's confidence: the ``DEFAULT`` kind, lowered when the parser repaired the value."""
        value = getattr(self, DEFAULT)
        if value is None:
            return 0.0
        return value * (REPAIRED_FACTOR if self.repaired else 1.0)

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "value": self.text, "confidence": round(self.confidence, 6),
                "min": None if self.min is None else round(self.min, 6),
                "mean": None if self.mean is None else round(self.mean, 6), "tokens": self.tokens,
                "span": None if self.span is None else list(self.span), "repaired": self.repaired}


def _find(raw: str, text: str, start: int) -> tuple[tuple[int, int], bool] | None:
    """(span, exact) of ``text`` in ``raw`` at or after ``start``: exact when found as the value token the
    model wrote (a quoted string that is not a key, or a bare number or literal), else a plain occurrence."""
    if not text:
        return None
    escaped = json.dumps(text, ensure_ascii=False)[1:-1]
    at = raw.find(f'"{escaped}"', start)  # the common case, without a regex: the value quoted as is
    if at >= 0 and not raw[at + len(escaped) + 2:].lstrip().startswith(":"):
        return (at + 1, at + 1 + len(escaped)), True
    for form in dict.fromkeys((escaped, json.dumps(text)[1:-1])):  # spaces inside quotes, or \uXXXX escapes
        m = re.compile(r'"[ \t]*(' + re.escape(form) + r')[ \t]*"(?![ \t\r\n]*:)').search(raw, start)
        if m:
            return (m.start(1), m.end(1)), True
    # a bare number or literal; a decimal the parser shortened is matched by its printed zeros (31.000 for 31.0)
    m = re.compile(r"(?<![\w.\"])" + re.escape(text) + ("0*" if "." in text else "") + r"(?![\w.\"])").search(
        raw, start)
    if m:
        return (m.start(), m.end()), True
    at = raw.find(escaped, start)
    if at < 0 and escaped != text:
        at, escaped = raw.find(text, start), text
    return ((at, at + len(escaped)), False) if at >= 0 else None


def value_spans(raw: str, fields: list[tuple[str, str]]) -> list[tuple[tuple[int, int] | None, bool]]:
    """(span, exact) of each field's value in ``raw``, in the fields' order; (None, False) when not found."""
    out: list[tuple[tuple[int, int] | None, bool]] = []
    cursor = 0
    for _, text in fields:
        found = _find(raw, text, cursor) or _find(raw, text, 0)  # out of order: a repair moved it
        if found is None:
            out.append((None, False))
            continue
        out.append(found)
        if found[0][0] >= cursor:
            cursor = found[0][1]
    return out


def _token_range(scores: TokenScores, span: tuple[int, int]) -> list[float]:
    """Log-probabilities of the tokens whose text overlaps ``span`` (a token that only began a character
    covers nothing, and is counted with the token that completes it when that one overlaps)."""
    lo, hi = span
    ends = scores.ends
    first = bisect.bisect_right(ends, lo)  # the first token that ends after the span starts
    last = bisect.bisect_left(ends, hi)  # the token that reaches the span's end
    last = min(last, len(ends) - 1)
    if first > last or first >= len(ends):
        return []
    start = ends[first - 1] if first else 0
    while first > 0 and ends[first - 1] == start and (ends[first - 2] if first > 1 else 0) == start:
        first -= 1  # zero-width tokens just before it: the first bytes of its first character
    return list(scores.logprobs[first: last + 1])


def field_confidences(raw: Any, parsed: dict | None, valid: bool,
                      scores: TokenScores | None) -> list[FieldConfidence] | None:
    """Every predicted field's confidence; None when the answer has no token scores (or is not text)."""
    if scores is None or not isinstance(raw, str) or (scores.ends and scores.ends[-1] != len(raw)):
        return None
    fields = prediction_fields(parsed)
    out = []
    for (path, text), (span, exact) in zip(fields, value_spans(raw, fields)):
        lps = _token_range(scores, span) if span else []
        if not all(math.isfinite(x) for x in lps):  # an overflowed (float16) score: no confidence, not a NaN one
            lps = []
        probs = [math.exp(x) for x in lps]
        out.append(FieldConfidence(path, text, span, min(probs) if probs else None,
                                   sum(probs) / len(probs) if probs else None, len(probs),
                                   repaired=not (valid and exact and probs)))
    return out


def document_confidence(fields: list[FieldConfidence] | None) -> float | None:
    """A document's confidence: its least confident field's; 0 for a scored answer with no field in it (prose, or
    JSON with nothing extracted: nothing there can be trusted, so "least confident first" puts it first); None
    without token scores."""
    if fields is None:
        return None
    return min((f.confidence for f in fields), default=0.0)


def accepted_fields(row: dict[str, Any], min_confidence: float) -> dict[str, Any]:
    """An exported row (``Store.export_jsonl``) cut to the fields whose confidence reaches ``min_confidence``,
    each with its confidence; a row without token scores accepts nothing and says so."""
    raw = row.get("prediction")
    parsed = parse_prediction(raw if isinstance(raw, str) else "")
    fields = field_confidences(raw, parsed.value, parsed.valid, from_json(row.get("token_scores")))
    out = {k: row[k] for k in ("id", "group", "split") if k in row}
    if fields is None:
        return out | {"fields": [], "rejected_fields": None, "confidence": None,
                      "note": "no token scores (predicted before vlm kept them): nothing accepted"}
    kept = [f for f in fields if f.confidence >= min_confidence]
    return out | {"fields": [{"path": f.path, "value": f.text, "confidence": f.confidence} for f in kept],
                  "rejected_fields": len(fields) - len(kept), "confidence": document_confidence(fields)}
