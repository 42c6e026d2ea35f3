"""Lenient parsing of a model's JSON answer into a dict, recording every repair it needed.

Valid JSON objects parse with no repairs. Otherwise a small tolerant tokenizer
and an explicit-stack parser (no recursion, depth capped at ``MAX_DEPTH``) accept
what models commonly emit, naming each repair: ``code_fence``, ``surrounding_text``
(prose before or after), ``single_quotes``, ``python_literals`` (None/True/False),
``trailing_comma`` (also stray commas), ``truncated`` (open strings and containers
closed, a dangling key dropped), ``missing_comma``, ``missing_colon``,
``missing_value``, ``missing_key`` (the value is dropped), ``stray_colon``,
``mismatched_brackets``, ``unquoted_text``, ``control_characters`` (raw ones in
strings) and ``dropped_characters``. A top-level value that is not an object is
invalid. ``parse_prediction`` never raises.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

MAX_DEPTH = 64
_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?(.*?)(?:```|\Z)", re.DOTALL)
_NUMBER = re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LITERALS = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "/": "/", "\\": "\\", '"': '"', "'": "'"}


@dataclass
class ParseResult:
    value: dict | None
    repairs: list[str] = field(default_factory=list)
    error: str | None = None


def parse_prediction(text: str) -> ParseResult:
    """The JSON object in ``text``, leniently; ``value`` is None (and ``error`` set) when there is none."""
    try:
        return _parse(text)
    except Exception as e:  # noqa: BLE001 - a last guard: the parser is written not to raise
        return ParseResult(None, [], f"unparseable: {type(e).__name__}: {e}")


def _depth_ok(value: object) -> bool:
    level, depth = [value], 0
    while level:
        depth += 1
        if depth > MAX_DEPTH:
            return False
        level = [c for v in level for c in (v.values() if isinstance(v, dict) else v) if isinstance(c, (dict, list))]
    return True


def _strict(text: str) -> tuple[bool, object]:
    try:
        return True, json.loads(text)
    except (ValueError, RecursionError):
        return False, None


def _parse(text: str) -> ParseResult:
    if not isinstance(text, str):
        return ParseResult(None, [], f"expected text, got {type(text).__name__}")
    ok, value = _strict(text)
    if ok:
        return _result(value, [])
    repairs: list[str] = []
    fence = _FENCE.search(text)
    if fence:
        repairs.append("code_fence")
        if text[:fence.start()].strip() or text[fence.end():].strip():
            repairs.append("surrounding_text")
        text = fence.group(1)
        ok, value = _strict(text)
        if ok:
            return _result(value, repairs)
    body = text.lstrip()
    if not body:
        return ParseResult(None, repairs, "no JSON object found (empty answer)")
    start = body.find("{")
    if start < 0 or body[0] == "[":
        return ParseResult(None, repairs, "the answer is not a JSON object")
    if start > 0 and "surrounding_text" not in repairs:
        repairs.append("surrounding_text")
    try:
        value, end = json.JSONDecoder().raw_decode(body, start)
        if body[end:].strip() and "surrounding_text" not in repairs:
            repairs.append("surrounding_text")
        return _result(value, repairs)
    except (ValueError, RecursionError):
        pass
    return _Tolerant(body, start, repairs).run()


def _result(value: object, repairs: list[str]) -> ParseResult:
    if not isinstance(value, dict):
        return ParseResult(None, repairs, f"the answer is a JSON {type(value).__name__}, not an object")
    if not _depth_ok(value):
        return ParseResult(None, repairs, f"the answer nests deeper than {MAX_DEPTH} levels")
    return ParseResult(value, repairs)


class _Tolerant:
    """Tokens and an explicit stack; each frame is [container, key or None, state]."""

    def __init__(self, text: str, pos: int, repairs: list[str]):
        self.s, self.i, self.repairs, self.after_comma = text, pos, repairs, False

    def note(self, name: str) -> None:
        if name not in self.repairs:
            self.repairs.append(name)

    def token(self) -> tuple[str, object]:
        """The next token as (kind, value); kinds: one of ``{}[]:,``, ``v`` (a scalar), ``s`` (a string), ``$`` (end)."""
        s, n = self.s, len(self.s)
        while True:
            while self.i < n and s[self.i].isspace():
                self.i += 1
            if self.i >= n:
                return "$", None
            c = s[self.i]
            if c in "{}[]:,":
                self.i += 1
                return c, None
            if c in "\"'":
                return "s", self.string(c)
            m = _NUMBER.match(s, self.i)
            if m:
                self.i, t = m.end(), m.group()
                try:
                    return "v", (float(t) if any(ch in t for ch in ".eE") else int(t))
                except ValueError:  # more digits than int() takes
                    return "s", t
            m = _WORD.match(s, self.i)
            if m:
                self.i, w = m.end(), m.group()
                if w in _LITERALS:
                    if w[0].isupper():
                        self.note("python_literals")
                    return "v", _LITERALS[w]
                self.note("unquoted_text")
                return "s", w
            self.note("dropped_characters")
            self.i += 1

    def string(self, quote: str) -> str:
        s, n = self.s, len(self.s)
        self.i += 1
        if quote == "'":
            self.note("single_quotes")
        out: list[str] = []
        while self.i < n and s[self.i] != quote:
            c = s[self.i]
            self.i += 1
            if c != "\\":
                if c < " ":
                    self.note("control_characters")
                out.append(c)
            elif self.i < n:
                e = s[self.i]
                hexits = s[self.i + 1:self.i + 5]
                if e == "u" and len(hexits) == 4 and all(h in "0123456789abcdefABCDEF" for h in hexits):
                    out.append(chr(int(hexits, 16)))
                    self.i += 5
                else:
                    out.append(_ESCAPES.get(e, e))
                    self.i += 1
        if self.i >= n:
            self.note("truncated")
        self.i += 1
        text = "".join(out)
        if any("\ud800" <= ch <= "\udfff" for ch in text):  # pair up surrogates, replace lone ones
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return text

    def run(self) -> ParseResult:
        self.token()  # the opening brace
        stack: list[list] = [[{}, None, "key"]]  # states: key, colon, value, comma
        result = stack[0][0]
        while stack:
            kind, val = self.token()
            frame = stack[-1]
            state, is_dict = frame[2], isinstance(frame[0], dict)
            if kind == "$":
                self.note("truncated")
                while stack:
                    self._close(stack)
                break
            if kind in "}]":
                if (kind == "}") != is_dict:
                    self.note("mismatched_brackets")
                if self.after_comma:
                    self.note("trailing_comma")
                self.after_comma = False
                if is_dict and state in ("colon", "value"):
                    self.note("missing_value")
                self._close(stack)
                if (kind == "}") != is_dict and stack:
                    self.i -= 1  # let the parent see this bracket too
                continue
            self.after_comma = kind == ","
            if kind == ",":
                if state == "comma":
                    frame[2] = "key" if is_dict else "value"
                elif is_dict and state in ("colon", "value"):
                    self.note("missing_value")
                    frame[1], frame[2] = None, "key"
                else:
                    self.note("trailing_comma")
                continue
            if kind == ":":
                if is_dict and state == "colon":
                    frame[2] = "value"
                else:
                    self.note("stray_colon")
                continue
            if is_dict and state in ("key", "comma") and kind == "s":
                if state == "comma":
                    self.note("missing_comma")
                frame[1], frame[2] = val, "colon"
                continue
            if is_dict and state in ("key", "comma"):
                self.note("missing_key")
                frame[1] = None
            elif is_dict and state == "colon":
                self.note("missing_colon")
            elif not is_dict and state == "comma":
                self.note("missing_comma")
            if kind in "{[":
                if len(stack) >= MAX_DEPTH:
                    return ParseResult(None, self.repairs, f"the answer nests deeper than {MAX_DEPTH} levels")
                stack.append([{} if kind == "{" else [], None, "key" if kind == "{" else "value"])
                continue
            self._put(frame, val)
        if self.s[self.i:].strip():
            self.note("surrounding_text")
        return ParseResult(result, self.repairs)

    def _put(self, frame: list, value: object) -> None:
        if isinstance(frame[0], list):
            frame[0].append(value)
        elif frame[1] is not None:
            frame[0][frame[1]] = value
        frame[1], frame[2] = None, "comma"

    def _close(self, stack: list[list]) -> None:
        frame = stack.pop()
        if stack:
            self._put(stack[-1], frame[0])
