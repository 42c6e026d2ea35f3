"""Consistency checks and money parsing, with hand-computed receipts (including ones where checks do not apply)."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from helpers import ROOT, VLM

from vlm.evaluation.consistency import (
    CORD_RULES,
    FAIL,
    NA,
    PASS,
    check_document,
    flags,
    parse_count,
    parse_money,
    rule_fields_in_schema,
    verdict,
)


@pytest.mark.parametrize("text, value", [
    ("60.000", 60000), ("60,000", 60000), ("Rp 165000.00", Decimal("165000.00")), ("Rp. 20.000", 20000),
    ("1.00xITEMs", 1), ("-5,000", -5000), ("5,000-", -5000), ("(5,000)", -5000), ("Rp -3.000", -3000),
    ("60.000,-", 60000), ("1,234.56", Decimal("1234.56")), ("1.234,56", Decimal("1234.56")),
    ("1.234.567", 1234567), ("12.5", Decimal("12.5")), ("12,50", Decimal("12.50")), ("7000", 7000), (7000, 7000),
    ("  35.000 ", 35000), ("IDR 1,000,000", 1000000),
])
def test_money_formats(text, value):
    assert parse_money(text) == Decimal(value)


@pytest.mark.parametrize("text", ["", "abc", "2 x 5,000", None, True, ["1"], "1.23.4567"])
def test_not_an_amount(text):
    assert parse_money(text) is None


@pytest.mark.parametrize("text, value", [
    ("1.00xITEMs", 1), ("2 x", 2), ("x3", 3), ("4x", 4), ("5", 5), ("1.000", 1), ("0,5", Decimal("0.5")), (2, 2),
])
def test_count_formats(text, value):
    assert parse_count(text) == Decimal(value)


def _status(doc) -> dict[str, str]:
    return {name: r.status for name, r in check_document(doc).items()}


FULL = {  # hand-checked: 2 x 22,000 = 44,000; 44,000 + 25,000 + 5,000 (sub) = 74,000;
          # 74,000 - 4,000 + 3,700 + 7,400 = 81,100; 100,000 - 81,100 = 18,900; 2 + 1 = 3 items
    "menu": [{"nm": "Kopi", "cnt": "2 x", "unitprice": "22.000", "price": "44.000"},
             {"nm": "Roti", "cnt": "1", "price": "25.000", "sub": {"nm": "Keju", "price": "5.000"}}],
    "sub_total": {"subtotal_price": "74.000", "discount_price": "-4.000", "service_price": "3.700",
                  "tax_price": "7.400"},
    "total": {"total_price": "81.100", "cashprice": "100.000", "changeprice": "18.900", "menuqty_cnt": "3"},
}


def test_every_check_passes_on_a_receipt_that_adds_up():
    assert _status(FULL) == {"line_price": PASS, "menu_sum": PASS, "total": PASS, "change": PASS, "menu_qty": PASS}
    assert verdict(check_document(FULL)) == "consistent"


@pytest.mark.parametrize("path, value, failing", [
    (("menu", 0, "price"), "45.000", {"line_price", "menu_sum"}),  # 2 x 22,000 != 45,000, and the sum is off
    (("sub_total", "subtotal_price"), "47.000", {"menu_sum", "total"}),
    (("sub_total", "tax_price"), "8.400", {"total"}),
    (("sub_total", "discount_price"), "4.000", set()),  # a discount printed without its minus still subtracts
    (("total", "total_price"), "81.700", {"total", "change"}),
    (("total", "changeprice"), "19.800", {"change"}),
    (("total", "menuqty_cnt"), "4", {"menu_qty"}),
    (("menu", 0, "cnt"), "3 x", {"line_price", "menu_qty"}),
])
def test_one_wrong_number_fails_exactly_the_checks_that_read_it(path, value, failing):
    doc = json.loads(json.dumps(FULL))
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    status = _status(doc)
    assert {k for k, s in status.items() if s == FAIL} == failing
    assert {k for k, s in status.items() if s == PASS} == set(status) - failing


def test_sub_item_prices_may_or_may_not_be_in_the_subtotal():
    without_subs = json.loads(json.dumps(FULL))
    without_subs["sub_total"]["subtotal_price"] = "69.000"  # 44,000 + 25,000, the sub-item priced into its row
    without_subs["total"].update(total_price="76.100", changeprice="23.900")
    assert _status(without_subs)["menu_sum"] == PASS and _status(without_subs)["total"] == PASS


def test_rounding_tolerance():
    doc = {"sub_total": {"subtotal_price": "165,000", "tax_price": "16,500"}, "total": {"total_price": "181,600"}}
    assert _status(doc)["total"] == PASS  # 100 off on 181,500: within 0.1% (181.5)
    doc["total"]["total_price"] = "181,700"
    assert _status(doc)["total"] == FAIL  # 200 off
    cents = {"sub_total": {"subtotal_price": "10.00", "tax_price": "0.83"}, "total": {"total_price": "10.84"}}
    assert _status(cents)["total"] == PASS  # 0.01 + 0.1% of 10.83 = 0.02 allowed
    cents["total"]["total_price"] = "10.87"
    assert _status(cents)["total"] == FAIL


def test_checks_that_do_not_apply():
    # CORD omits the subtotal on many receipts: the sum and the total cannot be checked, the rest can.
    no_subtotal = {"menu": {"nm": "Nasi", "cnt": "1.00xITEMs", "unitprice": "Rp 35000.00", "price": "Rp 35000.00"},
                   "total": {"total_price": "35.000", "cashprice": "50.000", "changeprice": "15.000"}}
    assert _status(no_subtotal) == {"line_price": PASS, "menu_sum": NA, "total": NA, "change": PASS, "menu_qty": NA}
    # Rows without a unit price, a cash line without change, no quantity line: nothing applies.
    bare = {"menu": [{"nm": "Teh", "cnt": "1", "price": "8,000"}, {"nm": "Es", "price": "3,000"}],
            "total": {"total_price": "11,000", "cashprice": "20,000"}}
    assert set(_status(bare).values()) == {NA}
    assert verdict(check_document(bare)) == "unchecked"
    # A subtotal but a menu row without a price: the sum is not checked (not failed).
    unpriced = {"menu": [{"nm": "Teh", "price": "8,000"}, {"nm": "Es"}], "sub_total": {"subtotal_price": "11,000"}}
    assert _status(unpriced)["menu_sum"] == NA
    # A menu row without a count: the quantity is not checked.
    assert _status({"menu": [{"nm": "A", "cnt": "1"}, {"nm": "B"}], "total": {"menuqty_cnt": "2"}})["menu_qty"] == NA


@pytest.mark.parametrize("doc", [None, [], "text", {}])
def test_no_json_object(doc):
    assert set(_status(doc).values()) == {NA}


def test_verdicts():
    assert verdict([PASS, NA]) == "consistent"
    assert verdict([PASS, FAIL]) == "inconsistent"
    assert verdict([NA, NA]) == "unchecked"
    assert verdict([PASS], valid=False) == "inconsistent"  # not JSON is never trusted
    assert flags(None) == {"verdict": "inconsistent", "failed": [], "checks": {r.name: NA for r in CORD_RULES}}
    assert flags(FULL)["verdict"] == "consistent"


def test_rules_read_only_schema_fields():
    assert rule_fields_in_schema() == []


def test_generated_sample_is_not_consistent_by_construction():
    """The sample generator omits subtotals and prints tax-inclusive or rounded totals on some receipts, so the
    ground truth's pass rate is a measurement, with checks that do not apply."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import make_cord_sample

    statuses = [_status(make_cord_sample.make_doc(make_cord_sample._doc_rng(0, "test", i), i)["gt_parse"])
                for i in range(300)]
    for rule in CORD_RULES:
        seen = {s[rule.name] for s in statuses}
        assert NA in seen and PASS in seen, rule.name
    assert any(s["total"] == FAIL for s in statuses)
    assert all(s[name] != FAIL for s in statuses for name in ("line_price", "menu_sum", "change", "menu_qty"))


def test_export_predictions_flags_and_only_consistent(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from trust_fixtures import make_store

    store = make_store(tmp_path)
    out = tmp_path / "all.jsonl"
    r = subprocess.run([*VLM, "export-predictions", "--group", "finetuned-model", str(out), "--store", str(store)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {row["id"]: row["flags"]["verdict"] for row in rows} == {
        "doc0": "consistent", "doc1": "inconsistent", "doc2": "consistent", "doc3": "consistent",
        "doc4": "consistent", "doc5": "unchecked"}
    assert rows[1]["flags"]["failed"] == ["line_price"]
    kept = tmp_path / "kept.jsonl"
    r = subprocess.run([*VLM, "export-predictions", "--group", "finetuned-model", str(kept), "--store", str(store),
                        "--only-consistent"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert [json.loads(line)["id"] for line in kept.read_text().splitlines()] == ["doc0", "doc2", "doc3", "doc4"]
    assert "wrote 4 predictions" in r.stderr and "(6 stored)" in r.stderr
