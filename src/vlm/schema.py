"""The CORD-v2 extraction schema, named once.

The prompt, the export targets and the evaluator's field lists all derive from
``CORD_SCHEMA`` so they cannot drift apart (the blog code asked for ``subtotal``
while CORD's data says ``sub_total``).
"""

from __future__ import annotations

import difflib
import hashlib

# Group -> keys, in CORD-v2's own spelling. ``menu`` is a list of item rows
# (a single row is sometimes stored as a dict); ``sub`` nests inside a menu row.
CORD_SCHEMA: dict[str, tuple[str, ...]] = {
    "menu": (
        "nm", "num", "unitprice", "cnt", "discountprice", "price", "itemsubtotal", "vatyn", "etc", "sub",
    ),
    "void_menu": ("nm", "price"),
    "sub_total": ("subtotal_price", "discount_price", "service_price", "othersvc_price", "tax_price", "etc"),
    "total": (
        "total_price", "total_etc", "cashprice", "changeprice", "creditcardprice", "emoneyprice",
        "menutype_cnt", "menuqty_cnt",
    ),
}
MENU_SUB_KEYS: tuple[str, ...] = ("nm", "unitprice", "cnt", "price", "etc")

# Header fields scored by exact match in ``vlm evaluate``.
HEADER_FIELDS: tuple[str, ...] = (
    "sub_total.subtotal_price",
    "sub_total.tax_price",
    "total.total_price",
    "total.cashprice",
    "total.changeprice",
)


def _describe(group: str, keys: tuple[str, ...]) -> str:
    if group == "menu":
        keys = tuple(k for k in keys if k != "sub")
        return (f'"menu": a list of item rows with keys {", ".join(keys)}, '
                f'and "sub" (a list of sub-item rows with keys {", ".join(MENU_SUB_KEYS)})')
    return f'"{group}": an object with keys {", ".join(keys)}'


def cord_prompt() -> str:
    """The extraction prompt, built from ``CORD_SCHEMA``."""
    lines = [
        "Extract the receipt in this image as JSON.",
        "Use only these top-level keys, and only the inner keys listed for each:",
    ]
    lines += [f"- {_describe(group, keys)}" for group, keys in CORD_SCHEMA.items()]
    lines.append(
        "Copy values exactly as printed, as strings. Leave out keys that do not appear on the receipt. "
        "Answer with the JSON object only."
    )
    return "\n".join(lines)


def prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


def schema_keys() -> set[str]:
    """Every key the schema allows, at any depth (for tests and checks)."""
    keys = set(CORD_SCHEMA)
    for inner in CORD_SCHEMA.values():
        keys.update(inner)
    keys.update(MENU_SUB_KEYS)
    return keys


# Names models use for CORD's keys (the blog's prompt asked for ``subtotal``); checked before a fuzzy match.
_ALIASES = {"subtotal": "sub_total", "qty": "cnt", "quantity": "cnt", "count": "cnt", "name": "nm",
            "item": "nm", "item_name": "nm", "unit_price": "unitprice", "tax": "tax_price",
            "service": "service_price", "discount": "discount_price", "cash": "cashprice", "change": "changeprice",
            "cash_price": "cashprice", "change_price": "changeprice", "total": "total_price"}


def likely_key(key: str, allowed: tuple[str, ...] | set[str]) -> str | None:
    """The schema key ``key`` most likely means, among ``allowed`` (``subtotal`` -> ``sub_total``), or None."""
    alias = _ALIASES.get(key.lower())
    if alias in allowed:
        return alias
    if key.lower() == "subtotal" and "subtotal_price" in allowed:
        return "subtotal_price"
    match = difflib.get_close_matches(key.lower(), list(allowed), n=1, cutoff=0.6)
    return match[0] if match else None


def _rows(value: object) -> list[dict]:
    items = value if isinstance(value, list) else [value]
    return [row for row in items if isinstance(row, dict)]


def unknown_keys(doc: dict) -> list[tuple[str, str | None]]:
    """Each key path in ``doc`` outside ``CORD_SCHEMA`` (``subtotal``, ``menu.qty``), with the likely schema key."""
    out: list[tuple[str, str | None]] = []
    for group, value in doc.items():
        if group not in CORD_SCHEMA:
            out.append((str(group), likely_key(str(group), set(CORD_SCHEMA))))
            continue
        allowed = CORD_SCHEMA[group]
        for row in _rows(value):
            for key, inner in row.items():
                if key not in allowed:
                    out.append((f"{group}.{key}", likely_key(str(key), allowed)))
                elif group == "menu" and key == "sub":
                    out += [(f"menu.sub.{k}", likely_key(str(k), MENU_SUB_KEYS))
                            for sub in _rows(inner) for k in sub if k not in MENU_SUB_KEYS]
    return out
