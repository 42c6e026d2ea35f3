"""A tolerant JSON object parser for model answers that ``json`` rejects, naming each repair it makes.

A small tokenizer and an explicit-stack parser (no recursion, depth capped at
``MAX_DEPTH``). ``vlm.inference.parsing`` decides which part of an answer to feed it; this
module only turns one object's text into a dict. Values are recovered the way a
careful reader would, and only where the reading is unambiguous:

* ``"price": 29,500`` (an unquoted number with thousands separators, as a dict
  value) becomes the string ``"29,500"``, as printed (``thousands_separator``);
* ``"tax_price": 56000 * 0.1`` (plain arithmetic) is evaluated exactly with
  ``decimal``, never ``eval``, to ``5600`` (``arithmetic``); one that cannot be
  evaluated (division by zero, too long) is dropped (``dropped_arithmetic``);
* a value the end of the output cut off (an open string, a number or word
  running into the end, ``29,5`` at the end) is dropped, not scored as if
  complete, and the answer is marked ``truncated``.
"""

from __future__ import annotations

import ast
import re
import sys
from decimal import Decimal, InvalidOperation, localcontext

MAX_DEPTH = 64
_NUMBER = re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# 1,234 or 12,345,678.50 followed by no further digit: a thousands-separated number, not two values
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d,])|-?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?=,\s*[\"'}\]])")
# digits, a comma and one or two digits at the very end: "29,5" cut off mid-number
_CUT_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})*,\d{0,2}\s*\Z")
_OPERAND = r"\(*\s*-?(?:\d+\.?\d*|\.\d+)\s*\)*"
# "-" and "/" only with spaces around them: 2019-05-01 and 12/05/2019 are dates, not sums
_ARITH = re.compile(rf"{_OPERAND}(?:(?:\s+[-+*/]\s+|\s*[*+]\s*){_OPERAND})+")
_MAX_EXPR = 200
_LITERALS = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "/": "/", "\\": "\\", '"': '"', "'": "'"}


class Num(float):
    """A float that remembers how it was printed: ``31.000`` is 31.0 to Donut's metric, ``"31.000"`` to numnorm."""

    literal: str

    def __new__(cls, literal: str) -> Num:
        value = super().__new__(cls, literal)
        value.literal = literal
        return value


def number(text: str) -> int | float | str:
    """A JSON number token: an int, or a ``Num`` keeping its literal; json's ``parse_float`` and ``parse_int`` too.

    An integer of more digits than Python converts (``sys.get_int_max_str_digits()``, 4,300 by default) stays
    its text: Donut's metric compares values as strings anyway, and one runaway answer must not stop an
    evaluation."""
    if any(ch in text for ch in ".eE"):
        return Num(text)
    limit = sys.get_int_max_str_digits()
    return int(text) if not limit or len(text) - text.startswith("-") <= limit else text


_OPS = {ast.Add: Decimal.__add__, ast.Sub: Decimal.__sub__, ast.Mult: Decimal.__mul__, ast.Div: Decimal.__truediv__}


def _arith(node: ast.AST) -> Decimal:
    if isinstance(node, ast.Expression):
        return _arith(node.body)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_arith(node.left), _arith(node.right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _arith(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return Decimal(repr(node.value))
    raise ValueError("not plain arithmetic")


def evaluate_arithmetic(expr: str) -> int | float | None:
    """``56000 * 0.1`` -> 5600, exactly (decimal, no ``eval``): + - * / and parentheses on numbers; else None."""
    if len(expr) > _MAX_EXPR:
        return None
    try:
        with localcontext() as ctx:
            ctx.prec = 34
            value = _arith(ast.parse(expr.strip(), mode="eval"))
            if value == value.to_integral_value():
                return int(value)
            return float(value)
    except (SyntaxError, ValueError, ArithmeticError, InvalidOperation, RecursionError, MemoryError):
        return None


class Tolerant:
    """Tokens and an explicit stack; each frame is [container, key or None, state].

    ``run`` parses one object starting at ``pos`` (an opening brace) and leaves
    ``i`` just past it, so the caller can look at what follows.
    """

    def __init__(self, text: str, pos: int, repairs: list[str]):
        self.s, self.i, self.repairs, self.after_comma, self.cut = text, pos, repairs, False, False

    def note(self, name: str) -> None:
        if name not in self.repairs:
            self.repairs.append(name)

    def _at_end(self, pos: int) -> bool:
        return not self.s[pos:].strip()

    def token(self, dict_value: bool = False) -> tuple[str, object]:
        """The next token as (kind, value); kinds: one of ``{}[]:,``, ``v`` (a scalar), ``s`` (a string), ``$`` (end).

        ``self.cut`` is set when the token ran into the end of the text (it may be incomplete).
        """
        s, n = self.s, len(self.s)
        self.cut = False
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
            if dict_value and (m or c == "("):
                special = self._dict_number(self.i)
                if special is not None:
                    return special
            if m:
                self.i, t = m.end(), m.group()
                self.cut = self._at_end(self.i)
                try:
                    return "v", number(t)
                except ValueError:  # more digits than int() takes
                    return "s", t
            m = _WORD.match(s, self.i)
            if m:
                self.i, w = m.end(), m.group()
                self.cut = self._at_end(self.i)
                if w in _LITERALS:
                    if w[0].isupper():
                        self.note("python_literals")
                    return "v", _LITERALS[w]
                self.note("unquoted_text")
                return "s", w
            self.note("dropped_characters")
            self.i += 1

    def _dict_number(self, start: int) -> tuple[str, object] | None:
        """Arithmetic, thousands separators, or a number cut mid-group, where a dict value starts with a number."""
        s = self.s
        e = _ARITH.match(s, start)
        if e:
            expr = e.group()
            while expr.count(")") > expr.count("("):  # a closing parenthesis of the surrounding prose
                expr = expr[:expr.rindex(")")]
            self.i = start + len(expr)
            self.cut = self._at_end(self.i)
            value = evaluate_arithmetic(expr)
            if value is None:
                self.note("dropped_arithmetic")
                return "drop", None
            self.note("arithmetic")
            return "v", value
        if _CUT_NUMBER.match(s, start):
            self.i = len(s)
            self.cut = True
            return "v", None
        t = _THOUSANDS.match(s, start)
        if t:
            self.i = t.end()
            self.cut = self._at_end(self.i)
            self.note("thousands_separator")
            return "s", t.group()
        return None

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
            self.cut = True
        self.i += 1
        text = "".join(out)
        if any("\ud800" <= ch <= "\udfff" for ch in text):  # pair up surrogates, replace lone ones
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return text

    def run(self) -> tuple[dict | None, str | None]:
        """(the object, None), or (None, why) when it nests too deep."""
        self.token()  # the opening brace
        stack: list[list] = [[{}, None, "key"]]  # states: key, colon, value, comma
        result = stack[0][0]
        while stack:
            frame = stack[-1]
            state, is_dict = frame[2], isinstance(frame[0], dict)
            kind, val = self.token(dict_value=is_dict and state == "value")
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
                    return None, f"the answer nests deeper than {MAX_DEPTH} levels"
                stack.append([{} if kind == "{" else [], None, "key" if kind == "{" else "value"])
                continue
            if kind == "drop" or self.cut:  # a value that could not be read, or one the end of the output cut off
                if self.cut:
                    self.note("truncated")
                frame[1], frame[2] = None, "comma"
                continue
            self._put(frame, val)
        return result, None

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
