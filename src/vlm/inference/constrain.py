r"""Schema-constrained decoding for ``vlm predict --constrain``: the JSON Schema, its grammar, and the masks.

``--constrain schema`` lets the model write only JSON that the answer schema allows: CORD's, derived here from
``vlm.schema`` (the one place its fields are named), or any JSON Schema given with ``--json-schema FILE``.
``--constrain json`` allows any JSON object. ``none`` (the default) changes nothing.

The grammar is xgrammar's (the library vLLM's structured outputs use by default, so both backends take the same
one): the schema is compiled once to an EBNF grammar, which the transformers backend applies as a logits processor
(a token mask per step) and the vLLM backend passes to its own structured outputs. A mask only removes tokens, so
where a model's greedy answer already is what the grammar allows, the constrained answer is the same text, byte for
byte.

Grammar options, and why:

* keys in any order (``any_order``): JSON Schema does not order keys, and CORD's own targets do not follow one
  order, so a fixed order would rewrite answers that were valid. The price: a key may repeat (a grammar cannot
  remember which keys it has seen without one rule per subset of them).
* whitespace anywhere JSON allows it (a fine-tune writes compact JSON, a base model pretty-prints), at most
  ``MAX_WHITESPACE`` characters in a run, so whitespace alone cannot fill the token budget.
* no keys beyond the schema's (xgrammar's strict mode: ``additionalProperties`` is false unless the schema says
  otherwise).
* CORD's strings are at most ``MAX_STRING`` characters and its lists at most ``MAX_ROWS`` rows (far above any
  receipt's), so a model that repeats itself inside a value is made to close it. xgrammar 0.2.7 turns a string with
  ``maxLength`` into a rule whose characters include raw control characters, which JSON forbids in a string, so
  answers would not be valid JSON; ``_json_string_characters`` takes them out of those rules. Such a rule has no
  escapes either (``\"``, ``\\``, ``\u00e9``), and vlm leaves it so: with escapes the masks cost 11 ms per token
  instead of 0.06 (measured, the tiny model's tokenizer). So a bounded value cannot hold a quote or a backslash
  (any other character, accents included, is written as itself); a model that would write one is steered to
  something else there.

A grammar guarantees the form of a finished answer, not that it finishes: an answer still open at
``--max-new-tokens`` is cut like any other (stored as it is, scored as truncated, counted in ``vlm evaluate``'s
"cut at the token limit"). Give a constrained run the token budget an unconstrained one needs.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from vlm.errors import VlmError
from vlm.schema import CORD_SCHEMA, MENU_SUB_KEYS

CONSTRAINTS = ("none", "json", "schema")
MAX_WHITESPACE = 32  # a pretty-printed answer needs a newline and the indent of its depth (5 levels x 4 spaces)
MAX_STRING = 256  # characters in one CORD value (a receipt line)
MAX_ROWS = 128  # rows in one CORD list (menu, void_menu, a row's sub)
# CORD groups whose value is a list of rows; a single row is sometimes stored as an object, so both are allowed.
_ROW_LISTS = ("menu", "void_menu")
# The xgrammar options every constrained run uses (part of the generation hash: changing them is a new setting).
GRAMMAR_OPTIONS = {"library": "xgrammar", "any_order": True, "any_whitespace": True,
                   "max_whitespace_cnt": MAX_WHITESPACE, "strict_mode": True, "json_string_characters": True}


def _row(keys: tuple[str, ...], sub: dict[str, Any] | None = None) -> dict[str, Any]:
    properties: dict[str, Any] = {k: {"type": "string", "maxLength": MAX_STRING} for k in keys}
    if sub is not None:
        properties["sub"] = sub
    return {"type": "object", "properties": properties, "additionalProperties": False}


def _rows(row: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [{"type": "array", "items": row, "maxItems": MAX_ROWS}, row]}


def cord_json_schema() -> dict[str, Any]:
    """CORD's answer as a JSON Schema, from ``vlm.schema``: each group an object of string values; menu,
    void_menu and a menu row's sub a list of rows (or one row); no key outside the schema; every key optional
    (the prompt says to leave out what the receipt does not show)."""
    properties = {}
    for group, keys in CORD_SCHEMA.items():
        if group == "menu":
            row = _row(tuple(k for k in keys if k != "sub"), sub=_rows(_row(MENU_SUB_KEYS)))
        else:
            row = _row(keys)
        properties[group] = _rows(row) if group in _ROW_LISTS else row
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "CORD-v2 receipt",
            "type": "object", "properties": properties, "additionalProperties": False}


ANY_OBJECT: dict[str, Any] = {"type": "object"}  # --constrain json (compiled without strict mode: any keys)


@dataclass(frozen=True)
class Constraint:
    """What a run's answers are held to: ``kind`` (none, json or schema), the JSON Schema, and where it came
    from (``cord`` or the --json-schema file)."""

    kind: str = "none"
    schema: dict[str, Any] | None = None
    source: str | None = None

    @property
    def active(self) -> bool:
        return self.kind != "none"

    @property
    def name(self) -> str | None:
        """``cord``, or the schema file's name: its folder is left out of the settings, so the same file named
        from another folder (``./s.json``, ``s.json``) is the same setting; its content is in the hash."""
        return None if self.source is None or self.kind != "schema" else Path(self.source).name
    def schema_hash(self) -> str | None:
        if self.schema is None:
            return None
        return hashlib.sha256(json.dumps(self.schema, sort_keys=True).encode()).hexdigest()[:16]

    def settings(self) -> dict[str, Any]:
        """What the run's generation settings record (and its generation hash covers); empty for ``none``, so
        the hashes of unconstrained runs are what they were before constraints existed."""
        if not self.active:
            return {}
        # strict_mode as grammar_text compiles it (json: any keys); the library's version, because a new xgrammar
        # may build other masks from the same options, and a group must not mix rows of two
        grammar = {**GRAMMAR_OPTIONS, "strict_mode": self.kind == "schema", "version": _xgrammar_version()}
        return {"constrain": self.kind, "schema_source": self.name, "schema_hash": self.schema_hash(),
                "grammar": grammar}

    def label(self) -> str:
        """``schema (cord)``, ``schema (FILE NAME)``, ``json`` or ``none``: for reports."""
        return f"{self.kind} ({self.name})" if self.kind == "schema" else self.kind


def _xgrammar_version() -> str | None:
    try:
        return metadata.version("xgrammar")
    except metadata.PackageNotFoundError:
        return None


def resolve_constraint(kind: str, json_schema: Path | None = None) -> Constraint:
    """The constraint of ``--constrain KIND [--json-schema FILE]``; a schema file is read and compiled here,
    before any model loads, so a bad one fails at once, naming the file."""
    if kind not in CONSTRAINTS:
        raise VlmError(f"unknown constraint {kind!r}", hint=f"choose one of: {', '.join(CONSTRAINTS)}.")
    if json_schema is not None and kind != "schema":
        raise VlmError(f"--json-schema {json_schema} is given but --constrain is {kind}",
                       hint="add --constrain schema to hold the answers to that schema.")
    if kind == "none":
        return Constraint()
    if kind == "json":
        return Constraint("json", ANY_OBJECT, "any object")
    if json_schema is None:
        return Constraint("schema", cord_json_schema(), "cord")
    constraint = Constraint("schema", _read_schema(json_schema), str(json_schema))
    grammar_text(constraint, where=str(json_schema))  # compiles it: unsupported keywords fail here
    return constraint


def _read_schema(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise VlmError(f"cannot read --json-schema {path}: {getattr(e, 'strerror', None) or e}",
                       hint="pass a JSON Schema file, e.g. --json-schema schemas/invoice.json.") from None
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as e:
        raise VlmError(f"--json-schema {path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})",
                       hint="fix the file; it must hold one JSON Schema object.") from None
    if not isinstance(schema, dict):
        raise VlmError(f"--json-schema {path} holds a JSON {type(schema).__name__}, not a JSON Schema object",
                       hint='e.g. {"type": "object", "properties": {"total": {"type": "string"}}}.')
    if schema.get("type") != "object":  # {} or a root anyOf/$ref would let strings and lists through
        what = f"describes a {schema['type']!r}" if "type" in schema else 'has no "type": "object" at the top level'
        raise VlmError(f"--json-schema {path} {what}, but vlm predicts JSON objects",
                       hint='give the schema "type": "object" at the top level.')
    return schema


def grammar_text(constraint: Constraint, where: str = "the schema") -> str:
    """The constraint as xgrammar EBNF: the one grammar both backends apply."""
    import xgrammar as xgr

    strict = constraint.kind == "schema"  # --constrain json: any object, any keys
    try:
        grammar = xgr.Grammar.from_json_schema(
            json.dumps(constraint.schema), any_whitespace=True, max_whitespace_cnt=MAX_WHITESPACE,
            strict_mode=strict, any_order=True)
    except Exception as e:  # xgrammar raises RuntimeError or its own types for schemas it cannot compile
        raise VlmError(f"{where} cannot be compiled to a grammar: {type(e).__name__}: {e}",
                       hint="simplify the schema (xgrammar supports most of JSON Schema; see docs/prediction.md).") \
            from None
    return _json_string_characters(str(grammar))


# xgrammar 0.2.7's rule for one character of a string with maxLength (EBNF text): not a quote, backslash, CR or LF;
# and the one vlm applies: not a quote, a backslash or any control character (JSON forbids them raw in a string).
_LENIENT_CHARACTER = r'(([^\"\\\r\n]))'
_JSON_CHARACTER = r'(([^\0-\x1f\"\\]))'
_CHARACTER_RULE = re.compile(r"^(\S+_characters) ::= (.*)$", re.MULTILINE)


def _json_string_characters(ebnf: str) -> str:
    """The grammar with no control characters in xgrammar's maxLength rules (see the module docstring). A rule of
    another shape is refused rather than left as it is: an xgrammar whose output changed must be looked at."""
    def fix(match: re.Match) -> str:
        if match.group(2) != _LENIENT_CHARACTER:
            raise VlmError(f"unexpected xgrammar string rule {match.group(0)!r}",
                           hint="vlm expects xgrammar 0.2.7 (requirements.lock); reinstall it (make setup).")
        return f"{match.group(1)} ::= {_JSON_CHARACTER}"

    return _CHARACTER_RULE.sub(fix, ebnf)


class GrammarMasks:
    """Compiled once per run for one tokenizer; ``processor()`` is a fresh transformers logits processor for
    one ``generate`` call (xgrammar's keeps per-sequence state, so it cannot be reused)."""

    def __init__(self, constraint: Constraint, tokenizer: Any, vocab_size: int, stop_token_ids: list[int]):
        import xgrammar as xgr

        # vocab_size: the model's logits width, which can exceed the tokenizer's (padding rows); stop tokens: what
        # generation stops on, so a finished answer may end with any of them and an unfinished one with none.
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=stop_token_ids)
        self.compiled = xgr.GrammarCompiler(info).compile_grammar(grammar_text(constraint))

    def processor(self) -> Any:
        from xgrammar.contrib.hf import LogitsProcessor

        return LogitsProcessor(self.compiled)  # masks in place: vlm's score recorder runs before it
