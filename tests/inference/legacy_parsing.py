"""vlm.inference.parsing as it was at 52103ff, before the multi-block rules (final_block, bare_blocks,
nested_section_keys): a frozen reference, like tests/reference_metric.py. tests/inference/test_multiblock.py
checks that the parser gives the same result on every answer shape it read before, except where a new rule fires.
Not to be edited: it is what the parser was.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from vlm.inference.tolerant_json import MAX_DEPTH, Tolerant, number

__all__ = ["MAX_ANSWER_CHARS", "MAX_DEPTH", "MAX_NODES", "ParseResult", "api_envelope", "count_nodes",
           "parse_prediction"]

# A CORD answer is 1-10 kB; a generation that runs away is cut, not parsed whole (a 50 MB answer once took 22 GB).
MAX_ANSWER_CHARS = 200_000
MAX_NODES = 20_000
_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?(.*?)(?:```|\Z)", re.DOTALL)
_NEXT_OBJECT = re.compile(r"\s*,?\s*(?=\{)")
_PLACEMENT = ("code_fence", "surrounding_text")  # repairs that leave the answer valid JSON


@dataclass
class ParseResult:
    value: dict | None
    repairs: list[str] = field(default_factory=list)
    error: str | None = None
    valid: bool = False  # one valid JSON object once fences and prose are removed
    notes: list[str] = field(default_factory=list)

    @property
    def truncated(self) -> bool:
        return "truncated" in self.repairs


class _Decoder(json.JSONDecoder):
    """json's decoder; unquoted decimals keep their printed form (tolerant_json.number): 31.000 is 31000 on a
    CORD receipt. An integer of more digits than int() converts stays text instead of failing the answer: the
    plain decoder raises ValueError (not a JSONDecodeError) on one, and only then is the answer decoded again
    with the slower ``parse_int``, so ordinary answers keep json's C fast path."""

    def __init__(self):
        super().__init__(parse_float=number)
        self._long_ints = json.JSONDecoder(parse_float=number, parse_int=number)

    def raw_decode(self, s: str, idx: int = 0):
        try:
            return super().raw_decode(s, idx)
        except json.JSONDecodeError:
            raise
        except ValueError:  # "Exceeds the limit (4300 digits) for integer string conversion"
            return self._long_ints.raw_decode(s, idx)


# One decoder for every answer and line (json.loads(..., parse_float=...) builds a new one per call).
DECODER = _Decoder()


def parse_prediction(text: str) -> ParseResult:
    """The JSON object in ``text``, leniently; ``value`` is None (and ``error`` set) when there is none."""
    try:
        return _parse(text)
    except Exception as e:  # noqa: BLE001 - a last guard: the parser is written not to raise
        return ParseResult(None, [], f"unparseable: {type(e).__name__}: {e}")


def _strict(text: str) -> tuple[bool, object]:
    try:
        return True, DECODER.decode(text)
    except (ValueError, RecursionError):
        return False, None


def count_nodes(value: object, limit: int = MAX_NODES) -> int:
    """Values and containers in ``value``, counted up to just past ``limit`` (so a huge one costs little)."""
    todo, n = [value], 0
    while todo and n <= limit:
        v = todo.pop()
        n += 1
        if isinstance(v, dict):
            todo.extend(v.values())
        elif isinstance(v, list):
            todo.extend(v)
    return n


def _shape(value: dict) -> tuple[bool, int]:
    """(nests at most MAX_DEPTH deep, its values and containers as ``count_nodes`` counts them).

    One walk, level by level, for both checks: they were a quarter of reading an answer. The walk stops once
    the value is too deep; its size is bounded by MAX_ANSWER_CHARS.
    """
    level, depth, n = [value], 0, 1
    while level:
        depth += 1
        if depth > MAX_DEPTH:
            return False, n
        items = [c for v in level for c in (v.values() if isinstance(v, dict) else v)]
        n += len(items)
        level = [c for c in items if isinstance(c, (dict, list))]
    return True, n


def api_envelope(value: object) -> str | None:
    """The kind of API response ``value`` is (an answer wrapped in its transport), or None."""
    if not isinstance(value, dict):
        return None
    choices = value.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict) and (
            "message" in choices[0] or "text" in choices[0] or "delta" in choices[0]):
        return str(value.get("object") or "chat.completion") + " (the answer is in choices[0].message.content)"
    content = value.get("content")
    if value.get("type") == "message" and value.get("role") == "assistant" and isinstance(content, list):
        return "Anthropic message (the answer is in content[0].text)"
    if isinstance(value.get("candidates"), list) and value["candidates"] and "content" in value["candidates"][0]:
        return "Gemini response (the answer is in candidates[0].content.parts[0].text)"
    return None


def _parse(text: str) -> ParseResult:
    if not isinstance(text, str):
        return ParseResult(None, [], f"expected text, got {type(text).__name__}")
    repairs: list[str] = []
    notes: list[str] = []
    if len(text) > MAX_ANSWER_CHARS:
        notes.append(f"the answer is {len(text):,} characters; only the first {MAX_ANSWER_CHARS:,} were parsed")
        repairs.append("truncated")
        text = text[:MAX_ANSWER_CHARS]
    ok, whole = _strict(text)
    blocks = [] if ok else list(_FENCE.finditer(text))
    if not blocks:
        value, valid, error = _from_span(text, repairs, (ok, whole))
    else:
        repairs.append("code_fence")
        outside = text[:blocks[0].start()] + "".join(text[a.end():b.start()] for a, b in zip(blocks, blocks[1:]))
        if (outside + text[blocks[-1].end():]).strip():
            repairs.append("surrounding_text")
        value, valid, error = _from_blocks([b.group(1) for b in blocks], repairs)
    return _result(value, repairs, error, valid and set(repairs) <= set(_PLACEMENT), notes)


def _from_blocks(blocks: list[str], repairs: list[str]) -> tuple[dict | None, bool, str | None]:
    """One fenced block: its object. Several: merged when they are sections (disjoint keys), else the last object."""
    if len(blocks) == 1:
        return _from_span(blocks[0], repairs)
    complete = []
    for block in blocks:
        ok, value = _strict(block)
        if ok and isinstance(value, dict) and value:
            complete.append(value)
    if len(complete) > 1 and _disjoint(complete):
        repairs.append("merged_blocks")
        return {k: v for obj in complete for k, v in obj.items()}, False, None
    repairs.append("last_block")
    if complete:
        return complete[-1], False, None
    with_object = [b for b in blocks if "{" in b]
    value, _, error = _from_span((with_object or blocks)[-1], repairs)
    return value, False, error


def _disjoint(objects: list[dict]) -> bool:
    seen: set = set()
    for obj in objects:
        if seen & obj.keys():
            return False
        seen |= obj.keys()
    return True


def _from_span(text: str, repairs: list[str], strict: tuple[bool, object] | None = None,
               ) -> tuple[dict | None, bool, str | None]:
    """(object, valid, error) from text with no fences: the first object, with split objects that follow merged.

    ``strict``: ``_strict(text)``, where the caller already has it (decoding every answer twice was a tenth of
    reading a file).
    """
    ok, value = _strict(text) if strict is None else strict
    if ok:
        return (value, True, None) if isinstance(value, dict) else \
            (None, False, f"the answer is a JSON {type(value).__name__}, not an object")
    body = text.lstrip()
    if not body:
        return None, False, "no JSON object found (empty answer)"
    start = body.find("{")
    if start < 0 or body[0] == "[":
        return None, False, "the answer is not a JSON object"
    if start > 0:
        _note(repairs, "surrounding_text")
    value, end, valid, error = _object_at(body, start, repairs)
    if value is None:
        return None, False, error
    while (m := _NEXT_OBJECT.match(body, end)) and m.end() < len(body):
        more, more_end, _, _ = _object_at(body, m.end(), repairs)
        if not more or not _disjoint([value, more]):
            break
        value.update(more)
        _note(repairs, "split_objects")
        end, valid = more_end, False
    if body[end:].strip():
        _note(repairs, "surrounding_text")
    return value, valid, None


def _object_at(body: str, start: int, repairs: list[str]) -> tuple[dict | None, int, bool, str | None]:
    """(object, end, strictly valid, error) of the object that opens at ``start``."""
    try:
        value, end = DECODER.raw_decode(body, start)
        return value, end, True, None
    except (ValueError, RecursionError):
        pass
    parser = Tolerant(body, start, repairs)
    value, error = parser.run()
    return value, min(parser.i, len(body)), False, error


def _note(repairs: list[str], name: str) -> None:
    if name not in repairs:
        repairs.append(name)


def _result(value: object, repairs: list[str], error: str | None, valid: bool, notes: list[str]) -> ParseResult:
    if error is not None:
        return ParseResult(None, repairs, error, False, notes)
    if not isinstance(value, dict):
        return ParseResult(None, repairs, f"the answer is a JSON {type(value).__name__}, not an object", False, notes)
    shallow, nodes = _shape(value)
    if not shallow:
        return ParseResult(None, repairs, f"the answer nests deeper than {MAX_DEPTH} levels", False, notes)
    if nodes > MAX_NODES:
        return ParseResult(None, repairs, f"the answer holds more than {MAX_NODES:,} values; not scored", False, notes)
    envelope = api_envelope(value)
    if envelope:
        return ParseResult(None, repairs, f"the answer is an API response envelope, {envelope}; "
                           "store the model's message text, not the whole response", False, notes)
    return ParseResult(value, repairs, None, valid, notes)
