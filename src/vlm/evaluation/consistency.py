"""Receipt consistency checks: does an extraction add up?

A receipt checks itself: the item prices add up to the subtotal, the subtotal
plus tax and service minus the discount gives the total, cash minus total gives
the change, and count times unit price gives a line's price. A prediction that
breaks one of these rules has a wrong number somewhere; one that passes them all
is more likely right. ``check_document`` runs every rule of a schema's rule set
(``RULES[schema]``; CORD's are the first) and says, per rule, ``pass``, ``fail``
or ``n/a`` (the fields the rule needs are missing, so it cannot be checked).

Money is parsed the way CORD prints it (``parse_money``): ``"60.000"`` and
``"60,000"`` are sixty thousand (a separator before exactly three digits groups
thousands), ``"Rp 165000.00"`` has two decimals, ``"-5,000"``, ``"5,000-"`` and
``"(5,000)"`` are negative. Counts (``parse_count``) read ``"1.00xITEMs"``,
``"2 x"``, ``"x3"``; a count's separator is always a decimal point (nobody buys
1,000 coffees, but "1.000" kg of rice happens). Sums compare within
``abs_tol + rel_tol * |expected|`` so that rounding to the rupiah (tax of 10% of
an odd subtotal) is not a failure.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

from vlm.inference.parsing import parse_prediction
from vlm.schema import CORD_SCHEMA, MENU_SUB_KEYS

PASS, FAIL, NA = "pass", "fail", "n/a"
ABS_TOL = Decimal("0.01")
REL_TOL = Decimal("0.001")  # 0.1%: 165 on a 165,000 total; a misread digit moves a total by far more

_NUM = re.compile(r"\d[\d.,]*")


def _decimal(digits: str, count: bool = False) -> Decimal | None:
    """``digits`` (digits with ``.``/``,`` separators) as a number; None if the separators make no sense."""
    digits = digits.rstrip(".,")
    seps = [c for c in digits if c in ".,"]
    if not seps:
        return Decimal(digits)
    last = max(digits.rfind("."), digits.rfind(","))
    head, tail = digits[:last], digits[last + 1:]
    if len(set(seps)) == 2:  # "1,234.56" / "1.234,56": the last separator is the decimal point
        whole, frac = head.replace(".", "").replace(",", ""), tail
    elif len(seps) > 1:  # "1.234.567": every one groups thousands
        if any(len(g) != 3 for g in digits.split(seps[0])[1:]):
            return None
        whole, frac = digits.replace(seps[0], ""), ""
    elif len(tail) == 3 and not count:  # "60.000" / "60,000": thousands, as CORD's rupiah are printed
        whole, frac = head + tail, ""
    else:  # "165000.00", "12,5", and every count: decimals
        whole, frac = head, tail
    try:
        return Decimal(f"{whole or '0'}.{frac}" if frac else whole or "0")
    except InvalidOperation:
        return None


def parse_money(text: Any) -> Decimal | None:
    """A printed amount as a Decimal (``"Rp 165.000"`` -> 165000); None when it holds no single number.

    Currency words and marks around the number are ignored. A leading or trailing minus, or
    parentheses, make it negative. Text with two numbers (``"2 x 5,000"``) is not an amount.
    """
    if isinstance(text, bool) or text is None:
        return None
    if isinstance(text, (int, float)):
        return Decimal(str(text))
    if not isinstance(text, str):
        return None
    return _money_text(text)


@lru_cache(maxsize=65536)  # receipts repeat their amounts: every check of every group reads them again
def _money_text(text: str) -> Decimal | None:
    s = text.strip()
    numbers = _NUM.findall(s)
    if len(numbers) != 1:
        return None
    value = _decimal(numbers[0])
    if value is None:
        return None
    before, _, after = s.partition(numbers[0])
    if numbers[0][-1] in ".," and after.startswith("-"):  # "60.000,-": Indonesian for "no cents", not a sign
        after = after[1:]
    negative = before.rstrip().endswith("-") or after.strip().startswith("-") or (
        before.strip().startswith("(") and after.strip().endswith(")"))
    return -value if negative else value


def parse_count(text: Any) -> Decimal | None:
    """A printed quantity (``"2 x"``, ``"x2"``, ``"1.00xITEMs"``, ``"3"``); None when there is no number."""
    if isinstance(text, bool) or text is None:
        return None
    if isinstance(text, (int, float)):
        return Decimal(str(text))
    if not isinstance(text, str):
        return None
    return _count_text(text)


@lru_cache(maxsize=65536)
def _count_text(text: str) -> Decimal | None:
    numbers = _NUM.findall(text)
    return _decimal(numbers[0], count=True) if len(numbers) == 1 else None


def close(found: Decimal, expected: Decimal, abs_tol: Decimal = ABS_TOL, rel_tol: Decimal = REL_TOL) -> bool:
    return abs(found - expected) <= abs_tol + rel_tol * abs(expected)


@dataclass(frozen=True)
class CheckResult:
    status: str  # PASS, FAIL or NA
    detail: str = ""  # what was compared, for people: "20,000 + 2,000 = 22,000 vs total 23,000"


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    fields: tuple[str, ...]  # "group.key" paths the rule reads (checked against the schema in tests)
    check: Callable[[dict], CheckResult]


# --------------------------------------------------------------------------- reading a CORD document


def as_rows(value: Any) -> list[dict]:
    """A group stored as one dict or a list of dicts, as a list of dicts (CORD does both)."""
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, dict)]
    return []


def _field(doc: dict, group: str, key: str) -> Any:
    """``doc[group][key]``; a group stored as a list uses its first dict with the key."""
    value = doc.get(group)
    if isinstance(value, dict):  # the common case, without building a list (every check reads fields)
        return value.get(key)
    for row in as_rows(value):
        if key in row:
            return row[key]
    return None


def _money(doc: dict, group: str, key: str) -> Decimal | None:
    return parse_money(_field(doc, group, key))


def _fmt(value: Decimal) -> str:
    value = value.normalize()
    return f"{value:,f}" if value == value.to_integral() else f"{value:,.2f}"


# --------------------------------------------------------------------------- CORD rules


def _line_price(doc: dict) -> CheckResult:
    """Every menu (or sub) row with a count, a unit price and a price: count x unit price = price."""
    checked, bad = 0, []
    rows = as_rows(doc.get("menu"))
    rows += [s for r in rows for s in as_rows(r.get("sub"))]
    for row in rows:
        cnt, unit, price = parse_count(row.get("cnt")), parse_money(row.get("unitprice")), parse_money(row.get("price"))
        if cnt is None or unit is None or price is None:
            continue
        checked += 1
        if not close(price, cnt * unit):
            bad.append(f"{row.get('nm', '?')}: {_fmt(cnt)} x {_fmt(unit)} = {_fmt(cnt * unit)} vs {_fmt(price)}")
    if not checked:
        return CheckResult(NA, "no row with count, unit price and price")
    return CheckResult(FAIL, "; ".join(bad)) if bad else CheckResult(PASS, f"{checked} rows")


def _menu_sum(doc: dict) -> CheckResult:
    """The menu prices add up to the subtotal (with or without the priced sub-items: receipts do both)."""
    subtotal = _money(doc, "sub_total", "subtotal_price")
    rows = as_rows(doc.get("menu"))
    if subtotal is None or not rows:
        return CheckResult(NA, "no subtotal" if subtotal is None else "no menu")
    prices = [parse_money(r.get("price")) for r in rows]
    if any(p is None for p in prices):
        return CheckResult(NA, "a menu row has no price")
    items = sum(prices, Decimal(0))
    subs = sum((p for r in rows for s in as_rows(r.get("sub")) if (p := parse_money(s.get("price"))) is not None),
               Decimal(0))
    if close(items, subtotal) or (subs and close(items + subs, subtotal)):
        return CheckResult(PASS, f"menu {_fmt(items + subs if subs and not close(items, subtotal) else items)}")
    with_subs = f" ({_fmt(items + subs)} with sub-items)" if subs else ""
    return CheckResult(FAIL, f"menu {_fmt(items)}{with_subs} vs subtotal {_fmt(subtotal)}")


def _total(doc: dict) -> CheckResult:
    """subtotal + tax + service + other service - discount = total (absent adjustments count as 0)."""
    subtotal, total = _money(doc, "sub_total", "subtotal_price"), _money(doc, "total", "total_price")
    if subtotal is None or total is None:
        return CheckResult(NA, "no subtotal" if subtotal is None else "no total")
    adds = {k: _money(doc, "sub_total", k) for k in ("tax_price", "service_price", "othersvc_price")}
    discount = _money(doc, "sub_total", "discount_price")
    expected = subtotal + sum((v for v in adds.values() if v is not None), Decimal(0))
    expected -= abs(discount) if discount is not None else 0  # printed as "-5,000" or "5,000": both subtract
    detail = f"expected {_fmt(expected)}, total {_fmt(total)}"
    return CheckResult(PASS if close(total, expected) else FAIL, detail)


def _change(doc: dict) -> CheckResult:
    """cash - total = change."""
    cash, total, change = (_money(doc, "total", k) for k in ("cashprice", "total_price", "changeprice"))
    if cash is None or total is None or change is None:
        return CheckResult(NA, "needs cash, total and change")
    detail = f"{_fmt(cash)} - {_fmt(total)} = {_fmt(cash - total)} vs change {_fmt(change)}"
    return CheckResult(PASS if close(abs(change), cash - total) else FAIL, detail)


def _menu_qty(doc: dict) -> CheckResult:
    """The counts of the menu rows add up to the printed item quantity."""
    qty = parse_count(_field(doc, "total", "menuqty_cnt"))
    rows = as_rows(doc.get("menu"))
    if qty is None or not rows:
        return CheckResult(NA, "no item quantity" if qty is None else "no menu")
    counts = [parse_count(r.get("cnt")) for r in rows]
    if any(c is None for c in counts):
        return CheckResult(NA, "a menu row has no count")
    found = sum(counts, Decimal(0))
    return CheckResult(PASS if close(found, qty) else FAIL, f"counts {_fmt(found)} vs quantity {_fmt(qty)}")


CORD_RULES: tuple[Rule, ...] = (
    Rule("line_price", "count x unit price = price", ("menu.cnt", "menu.unitprice", "menu.price"), _line_price),
    Rule("menu_sum", "menu prices add up to the subtotal", ("menu.price", "sub_total.subtotal_price"), _menu_sum),
    Rule("total", "subtotal + tax + service - discount = total",
         ("sub_total.subtotal_price", "sub_total.tax_price", "sub_total.service_price", "sub_total.othersvc_price",
          "sub_total.discount_price", "total.total_price"), _total),
    Rule("change", "cash - total = change", ("total.cashprice", "total.total_price", "total.changeprice"), _change),
    Rule("menu_qty", "menu counts add up to the item quantity", ("menu.cnt", "total.menuqty_cnt"), _menu_qty),
)
RULES: dict[str, tuple[Rule, ...]] = {"cord": CORD_RULES}


def rule_fields_in_schema(rules: tuple[Rule, ...] = CORD_RULES) -> list[str]:
    """Fields the rules read that the schema does not name (empty when the rules match the schema)."""
    known = {f"{g}.{k}" for g, keys in CORD_SCHEMA.items() for k in keys} | {f"menu.sub.{k}" for k in MENU_SUB_KEYS}
    return [f for r in rules for f in r.fields if f not in known]


def check_document(doc: Any, rules: tuple[Rule, ...] = CORD_RULES) -> dict[str, CheckResult]:
    """Every rule's result for one parsed document (``None`` or a non-dict: every rule ``n/a``)."""
    if not isinstance(doc, dict):
        return {r.name: CheckResult(NA, "no JSON object") for r in rules}
    return {r.name: r.check(doc) for r in rules}


def verdict(statuses: Any, valid: bool = True) -> str:
    """``consistent`` (one check or more passed, none failed), ``inconsistent`` (a check failed, or the
    answer was not JSON), or ``unchecked`` (no check applied: an empty answer is not evidence).

    ``statuses``: the check statuses (``PASS``/``FAIL``/``NA``), or ``check_document``'s results.
    """
    if isinstance(statuses, dict):
        statuses = statuses.values()
    statuses = [s.status if isinstance(s, CheckResult) else s for s in statuses]
    if not valid or FAIL in statuses:
        return "inconsistent"
    return "consistent" if PASS in statuses else "unchecked"


def flags(doc: Any, valid: bool | None = None) -> dict[str, Any]:
    """``{"verdict", "failed", "checks"}`` for one parsed prediction (``valid`` defaults to "is a dict")."""
    results = check_document(doc)
    return {"verdict": verdict(results, isinstance(doc, dict) if valid is None else valid),
            "failed": [name for name, r in results.items() if r.status == FAIL],
            "checks": {name: r.status for name, r in results.items()}}


def flag_rows(rows: list[dict[str, Any]], only_consistent: bool = False) -> list[dict[str, Any]]:
    """Exported prediction rows with a ``flags`` field; optionally only the consistent ones.

    Each answer is parsed again from its raw text, as ``vlm evaluate`` parses it: the ``parsed`` a store
    holds is the parse of the vlm that predicted, which an older version may have made differently, and the
    export must flag what evaluate scores. ``parsed``, ``parse_error`` and ``repairs`` are replaced to match.
    """
    for row in rows:
        raw = row.get("prediction")
        if isinstance(raw, str):
            parsed = parse_prediction(raw)
            row.update(parsed=parsed.value, parse_error=parsed.error, repairs=parsed.repairs)
        row["flags"] = flags(row.get("parsed"))
    return [r for r in rows if r["flags"]["verdict"] == "consistent"] if only_consistent else rows
