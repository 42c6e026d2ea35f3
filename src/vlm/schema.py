"""The CORD-v2 extraction schema, named once.

The prompt, the export targets and the evaluator's field lists all derive from
``CORD_SCHEMA`` so they cannot drift apart (the blog code asked for ``subtotal``
while CORD's data says ``sub_total``).
"""

from __future__ import annotations

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
        return f'"menu": a list of item rows with keys {", ".join(keys)}, and "sub" (a list of sub-item rows with keys {", ".join(MENU_SUB_KEYS)})'
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
