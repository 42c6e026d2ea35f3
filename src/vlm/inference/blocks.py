"""Several JSON objects in one answer, read as one: section blocks, a final block, flat section keys.

``vlm.inference.parsing`` finds the blocks (fenced, or bare objects between prose lines) and decodes them;
this module decides what they say together, by the rules in ``parsing``'s docstring:

* a block of flat section keys (``{"subtotal_price": ..., "tax_price": ...}`` under "For sub-total:") is
  nested in its section (``nested_section_keys``);
* a last block that holds the content of the section blocks before it is the answer (``final_block``);
* otherwise blocks with disjoint keys are merged (``merged_blocks``), and else the last one wins
  (``last_block``).

Only CORD's schema (``vlm.schema.CORD_SCHEMA``) is consulted; nothing here parses text but a heading line.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from vlm.schema import CORD_SCHEMA

__all__ = ["Block", "heading", "named_section", "resolve", "section_of"]

# Key -> its section, for the keys CORD places in exactly one section (``etc``, ``nm``, ``price`` are in two).
_PLACES: dict[str, str] = {key: section for section, keys in CORD_SCHEMA.items() for key in keys
                           if sum(key in others for others in CORD_SCHEMA.values()) == 1}

# A section named in a heading: "Sub-total", "sub_total", "SUBTOTAL", "Void menu", "Total". The longer names
# come first, so "sub-total" is not also read as "total"; \b keeps "subtotal" from naming "total".
_HEADING = re.compile(r"\b(void[\s_-]*menu|sub[\s_-]*total|menu|total)\b", re.IGNORECASE)
_HEADING_NAMES = {"voidmenu": "void_menu", "subtotal": "sub_total", "menu": "menu", "total": "total"}


@dataclass(frozen=True)
class Block:
    """One complete object of a multi-block answer, and the last line of prose before it."""

    value: dict
    heading: str = ""


def heading(prose: str) -> str:
    """The last non-blank line of ``prose`` (the text before a block), stripped."""
    for line in reversed(prose.splitlines()):
        if line.strip():
            return line.strip()
    return ""


def named_section(text: str) -> str | None:
    """The one CORD section ``text`` names ("For sub-total:" -> ``sub_total``); None for none or several."""
    names = {_HEADING_NAMES[re.sub(r"[\s_-]", "", m.group(1).lower())] for m in _HEADING.finditer(text)}
    return names.pop() if len(names) == 1 else None


def section_of(block: Block) -> str | None:
    """The section a block of flat section keys belongs in, or None (it has a section key, or none fits)."""
    keys = block.value.keys()
    if any(k in CORD_SCHEMA for k in keys):
        return None
    places = {_PLACES.get(k) for k in keys}
    if len(places) == 1 and None not in places:
        return places.pop()
    named = named_section(block.heading)
    if named and all(k in CORD_SCHEMA[named] for k in keys):
        return named
    return None


def resolve(blocks: list[Block], repairs: list[str]) -> dict:
    """The answer two or more complete blocks give together; each rule applied is appended to ``repairs``."""
    values, nested = [], []
    for block in blocks:
        section = section_of(block)
        values.append({section: block.value} if section else block.value)
        nested.append(section is not None)
    *earlier, last = values
    # One earlier block that shares a key with the last is a draft the last replaces (last_block), not a section.
    eligible = len(earlier) > 1 or not (blocks[0].value.keys() & blocks[-1].value.keys())
    if eligible and _merge(earlier, nested[:-1]) is not None and _holds(last, earlier):
        return _chosen(last, nested[-1], "final_block", repairs)
    merged = _merge(values, nested)
    if merged is not None:
        return _chosen(merged, any(nested), "merged_blocks", repairs)
    return _chosen(last, nested[-1], "last_block", repairs)


def _chosen(value: dict, nested: bool, rule: str, repairs: list[str]) -> dict:
    if nested:  # counted only where a nested block is part of the answer
        repairs.append("nested_section_keys")
    repairs.append(rule)
    return value


def _merge(values: list[dict], nested: list[bool]) -> dict | None:
    """The blocks as one object when no key is given twice; else None.

    A nested block may add keys to the same section of another block (``Subtotal:`` then ``Tax:``), as long as
    no key is given twice there: its section was named by the rules, not by the model.
    """
    out: dict = {}
    from_nested: set[str] = set()
    for value, was_nested in zip(values, nested):
        for key, inner in value.items():
            if key not in out:
                out[key] = inner
                if was_nested:
                    from_nested.add(key)
                continue
            old = out[key]
            if not (was_nested or key in from_nested) or not isinstance(old, dict) or not isinstance(inner, dict) \
                    or old.keys() & inner.keys():
                return None
            out[key] = {**old, **inner}
    return out


def _holds(final: dict, earlier: list[dict]) -> bool:
    """Whether ``final`` holds the content of the ``earlier`` blocks (see ``vlm.inference.parsing``'s rules)."""
    want = Counter(leaf for value in earlier for leaf in _leaves(value))
    if not want:
        return False
    have = Counter(_leaves(final))
    if {path[0] for path, _ in want} - {path[0] for path, _ in have}:
        return False  # a section of the earlier blocks is missing from the final one
    return 2 * sum((want & have).values()) >= sum(want.values())


def _leaves(value: dict) -> list[tuple[tuple[str, ...], str]]:
    """(key path, text) of every leaf, as Donut's metric flattens: list items share their parent's path, values
    are stripped text, empty values are dropped. A top-level key CORD places in one section is read there."""
    out = []
    todo: list[tuple[tuple[str, ...], object]] = [
        ((k,) if k in CORD_SCHEMA or k not in _PLACES else (_PLACES[k], k), v) for k, v in value.items()]
    while todo:  # a stack, not recursion: a block may nest as deep as json decodes
        path, v = todo.pop()
        if isinstance(v, dict):
            todo.extend((path + (k,), inner) for k, inner in v.items())
        elif isinstance(v, list):
            todo.extend((path, inner) for inner in v)
        elif v and str(v).strip():
            out.append((path, str(v).strip()))
    return out
