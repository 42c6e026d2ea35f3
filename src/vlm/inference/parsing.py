"""Lenient parsing of a model's JSON answer into a dict, recording every repair it needed.

``valid`` is True when the answer is one valid JSON object once code fences and
surrounding prose are removed; such answers need no repair but ``code_fence``
and ``surrounding_text``. Anything else is recovered the way a careful reader
would, naming each repair:

* where the object is: ``code_fence``, ``surrounding_text`` (prose before or
  after), ``bare_blocks`` (objects between prose lines, no fences), and, for
  several blocks (rules below), ``final_block``, ``merged_blocks``,
  ``last_block`` and ``nested_section_keys``; ``split_objects``
  (``{"menu": ...}, {"total": ...}``: objects that follow one another with
  disjoint keys are one answer, merged);
* inside it (``vlm.inference.tolerant_json``): ``single_quotes``, ``python_literals``,
  ``trailing_comma``, ``truncated`` (a value the end cut off is dropped, open
  containers closed), ``missing_comma``, ``missing_colon``, ``missing_value``,
  ``missing_key``, ``stray_colon``, ``mismatched_brackets``, ``unquoted_text``,
  ``control_characters``, ``dropped_characters``, ``thousands_separator``,
  ``arithmetic`` and ``dropped_arithmetic``.

Several blocks (the last three rules are applied by ``vlm.inference.blocks``):

* Which blocks. Fenced answers: the fenced blocks (one fenced block is read as
  an answer without fences). Answers without fences: bare objects, found by
  the same JSON decoder: the first object (with the split objects that
  follow it), then each object after it that opens a line
  (only spaces before its ``{``), with the split objects that follow it. Every
  object is read whole, so an object inside another is never a block; an
  object inside a sentence is prose, and so is a brace in prose. An object
  equal to an earlier block is a repeat, not a block. Bare objects are blocks
  (``bare_blocks``) only when two or more are complete and prose (text other
  than spaces and commas, not a repeat nor a broken object) stands between two
  of them; otherwise the first object is the answer, as for one object. Only
  complete blocks (a non-empty object that is valid JSON) take part; a fenced
  answer with fewer than two is read from its last complete block, else from
  its last block with a ``{``, repaired (``last_block``). A block's heading is
  the last non-blank line before it, after the block before it.
* Flat section keys (two or more complete blocks): a block none of whose keys
  is a CORD section (``menu``, ``void_menu``, ``sub_total``, ``total``) is
  nested in section S when every key is one that ``CORD_SCHEMA`` places in S
  and in no other section (``subtotal_price``, ``tax_price``: ``sub_total``;
  ``total_price``, ``cashprice``, ``changeprice``: ``total``), or when its
  heading names S and no other section ("For sub-total:", "**Void menu**") and
  every key is one of S's (``etc``, ``nm``, ``price`` are placed by a heading).
  Any other block stays as written. ``nested_section_keys`` is counted when a
  nested block is part of the answer. One object alone is never nested.
* Final block: the last block F is the answer (``final_block``) when the blocks
  before it are sections and F holds their content. They are sections when
  they give no key twice (they merge, as below) and either they are two or
  more, or the one shares no top-level key with F (one earlier block whose
  keys F repeats is a draft: ``last_block``). F holds their content
  when, with leaves as Donut's metric flattens them (key path, list items
  sharing their parent's path; values as stripped text, empty values dropped)
  and a top-level key that the schema places in one section read in that
  section: every section in which the earlier blocks have a leaf has a leaf in
  F, and at least half of the earlier blocks' (path, value) leaves, counted as
  a multiset, are F's. The rest are F's corrections.
* Otherwise: blocks that give no key twice are merged
  (``merged_blocks``; a nested block may add keys to the same section of
  another block, none twice), else the last complete block is the answer
  (``last_block``). So a final block that drops a section is the answer as it
  is when it shares keys with the blocks before it.

Not scored (``value`` None, ``error`` says why): a top-level value that is not
an object, an API response envelope (a whole chat-completion JSON), nesting past
``MAX_DEPTH``, and more than ``MAX_NODES`` values. Answers longer than
``MAX_ANSWER_CHARS`` are cut there first and marked truncated, which bounds the
memory and time one answer can take. ``parse_prediction`` never raises.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from vlm.inference.blocks import Block, heading, resolve
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
        ends = [0] + [b.end() for b in blocks]
        value, valid, error = _from_blocks([(heading(text[end:b.start()]), b.group(1))
                                            for end, b in zip(ends, blocks)], repairs)
    return _result(value, repairs, error, valid and set(repairs) <= set(_PLACEMENT), notes)


def _from_blocks(blocks: list[tuple[str, str]], repairs: list[str]) -> tuple[dict | None, bool, str | None]:
    """One fenced block (heading, text): its object. Several: as the module's rules for several blocks say."""
    if len(blocks) == 1:
        return _from_span(blocks[0][1], repairs)
    complete = []
    for title, block in blocks:
        ok, value = _strict(block)
        if ok and isinstance(value, dict) and value:
            complete.append(Block(value, title))
    if len(complete) > 1:
        return resolve(complete, repairs), False, None
    repairs.append("last_block")
    if complete:
        return complete[-1].value, False, None
    with_object = [b for _, b in blocks if "{" in b]
    value, _, error = _from_span((with_object or [b for _, b in blocks])[-1], repairs)
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
    """(object, valid, error) from text with no fences: the first object, with split objects that follow merged;
    or the answer of its bare blocks, when there are.

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
    own = len(repairs)  # the repairs from here on are the first object's own
    value, end, valid, error = _object_at(body, start, repairs)
    if value is None:
        return None, False, error
    complete = valid
    while (m := _NEXT_OBJECT.match(body, end)) and m.end() < len(body):
        more, more_end, more_valid, _ = _object_at(body, m.end(), repairs)
        if not more or not _disjoint([value, more]):
            break
        value.update(more)
        _note(repairs, "split_objects")
        end, valid, complete = more_end, False, complete and more_valid
    if body[end:].strip():
        _note(repairs, "surrounding_text")
        first = [Block(value, heading(body[:start]))] if complete and value else []
        blocks = _bare_blocks(body, end, first)
        if blocks:
            if not first:  # a broken first object is prose here, as a broken fenced block is
                del repairs[own:]
                _note(repairs, "surrounding_text")
            _note(repairs, "bare_blocks")
            return resolve(blocks, repairs), False, None
    return value, valid, None


def _bare_blocks(body: str, pos: int, first: list[Block]) -> list[Block]:
    """``first`` and the complete objects that open a line after ``pos``, when they are two or more and prose
    stands between two of them; else [].

    Every object after ``pos`` is read whole (an object inside it is never a block of its own), but only one
    that opens its line can be a block: an object quoted inside a sentence is prose. Split objects that follow
    a block are merged into it, as for the first object. An object equal to an earlier block is a repeat, not a
    block, and neither it nor a broken object is prose: an answer said twice reads as it did before.
    """
    found = list(first)
    prose, after = False, pos  # ``after``: the end of the last object that opened its line
    while (start := body.find("{", pos)) >= 0:
        opens_line = not body[body.rfind("\n", 0, start) + 1:start].strip(" \t")
        gap = body[after:start]
        try:
            value, pos = DECODER.raw_decode(body, start)
        except (ValueError, RecursionError):  # broken, or a brace in prose: skipped whole
            parser = Tolerant(body, start, [])
            parser.run()
            value, pos = None, max(min(parser.i, len(body)), start + 1)
        while value and (m := _NEXT_OBJECT.match(body, pos)) and m.end() < len(body):
            try:
                more, more_end = DECODER.raw_decode(body, m.end())
            except (ValueError, RecursionError):
                break
            if not more or not _disjoint([value, more]):
                break
            value, pos = {**value, **more}, more_end
        if not opens_line:
            continue
        after = pos
        if value and all(value != block.value for block in found):
            prose = prose or (bool(found) and bool(gap.strip(" \t\r\n,")))
            found.append(Block(value, heading(gap)))
    return found if prose and len(found) > 1 else []


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
