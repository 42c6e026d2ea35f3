"""Multi-block answers as real models write them (issue "Multi-block answers from real models"): section blocks,
then often a "final output" block; bare objects between prose lines; flat section keys under a heading.

Each fixture is written the way a chatty VLM answers "extract this receipt as JSON". (When these rules were added,
every string literal of the test suite and 7,200 generated answers with random edits were checked to parse exactly
as before; that one-off check is not kept, so later changes of the parser are not tied to a frozen copy.)
"""

from __future__ import annotations

import json

import pytest

from vlm.inference.blocks import Block, named_section, section_of
from vlm.inference.parsing import parse_prediction

MENU = [{"nm": "Nasi Goreng Spesial", "cnt": "1", "price": "35,000"},
        {"nm": "Es Teh Manis", "cnt": "2", "price": "16,000"}]
SUB_TOTAL = {"subtotal_price": "51,000", "tax_price": "5,100"}
TOTAL = {"total_price": "56,100", "cashprice": "100,000", "changeprice": "43,900"}
WHOLE = {"menu": MENU, "sub_total": SUB_TOTAL, "total": TOTAL}
WHOLE_TEXT = json.dumps(WHOLE, indent=2)


def fence(value: object) -> str:
    return f"```json\n{json.dumps(value, indent=2)}\n```"


# The shape of the issue: flat sections (the menu a list), then the whole object. Merged, every field came twice.
FLAT_SECTIONS = f"""I'll go through the receipt part by part.

**1. Menu items**
{fence(MENU)}

**2. Sub-total**
{fence(SUB_TOTAL)}

**3. Total**
{fence(TOTAL)}
"""
FLAT_THEN_FINAL = FLAT_SECTIONS + f"\nFinal output:\n```json\n{WHOLE_TEXT}\n```\n"

NESTED_SECTIONS = f"""To extract the receipt as JSON, let's look at each section.

For the menu:
{fence({"menu": MENU})}

For the sub-total:
{fence({"sub_total": SUB_TOTAL})}

For the total, the customer paid cash, so:
{fence({"total": {**TOTAL, "changeprice": "44,900"}})}
"""
CORRECTED = {**WHOLE, "total": TOTAL}  # the final block corrects the change, 44,900 -> 43,900


def test_a_final_block_holding_the_flat_sections_is_the_answer_not_merged_twice():
    r = parse_prediction(FLAT_THEN_FINAL)
    assert r.value == WHOLE and r.error is None and not r.valid
    assert r.repairs == ["code_fence", "surrounding_text", "final_block"]


def test_a_final_block_with_a_small_correction_is_the_answer():
    text = NESTED_SECTIONS + f"\nCombining all the sections, the final output is:\n{fence(CORRECTED)}"
    r = parse_prediction(text)
    assert r.value == CORRECTED and r.repairs == ["code_fence", "surrounding_text", "final_block"]
    # the same with flat sections, where the blocks' keys are disjoint and were merged
    flat = FLAT_SECTIONS.replace('"changeprice": "43,900"', '"changeprice": "44,900"')
    r = parse_prediction(flat + f"\nSo the final output:\n{fence(CORRECTED)}")
    assert r.value == CORRECTED and r.repairs == ["code_fence", "surrounding_text", "final_block"]


def test_a_final_block_needs_every_section_and_half_the_values():
    no_sub_total = {"menu": MENU, "total": TOTAL}
    # it drops a section: not final; the blocks share keys, so the last one stands as before
    r = parse_prediction(NESTED_SECTIONS + f"\nFinal output:\n{fence(no_sub_total)}")
    assert r.value == no_sub_total and r.repairs == ["code_fence", "surrounding_text", "last_block"]
    # flat sections, nested, now overlap it as well: no field given twice any more
    r = parse_prediction(FLAT_SECTIONS + f"\nFinal output:\n{fence(no_sub_total)}")
    assert r.value == no_sub_total and r.repairs == ["code_fence", "surrounding_text", "last_block"]
    # most values differ: another reading, not the sections restated; the last block stands as before
    other = {"menu": [{"nm": "Mie Ayam", "cnt": "3", "price": "84,000"}], "sub_total": {"subtotal_price": "84,000"},
             "total": {"total_price": "84,000", "cashprice": "84,000"}}
    r = parse_prediction(NESTED_SECTIONS + f"\nFinal output:\n{fence(other)}")
    assert r.value == other and r.repairs == ["code_fence", "surrounding_text", "last_block"]


def test_one_draft_then_the_whole_stays_last_block():
    r = parse_prediction(f"The menu:\n{fence({'menu': MENU})}\nSo, the final output should be:\n{fence(WHOLE)}")
    assert r.value == WHOLE and r.repairs == ["code_fence", "surrounding_text", "last_block"]


def test_one_mixed_flat_block_then_the_final_block():
    """Keys of two sections in one block are not nested, yet the final block is seen to hold them."""
    totals = {**SUB_TOTAL, "total_price": "56,100"}
    text = f"Totals at the bottom of the receipt:\n{fence(totals)}\n\nFinal output:\n{fence(WHOLE)}"
    r = parse_prediction(text)
    assert r.value == WHOLE and r.repairs == ["code_fence", "surrounding_text", "final_block"]


BARE_SECTIONS = """Here is the information from the receipt.

Menu:
{"menu": [{"nm": "Kopi Susu", "cnt": "2", "price": "44,000"}, {"nm": "Roti Bakar", "cnt": "1", "price": "25,000"}]}

Sub-total:
{"sub_total": {"subtotal_price": "69,000", "service_price": "3,450"}}

Total:
{"total": {"total_price": "72,450", "cashprice": "72,450"}}

Let me know if you need anything else!"""
BARE_WHOLE = {"menu": [{"nm": "Kopi Susu", "cnt": "2", "price": "44,000"},
                       {"nm": "Roti Bakar", "cnt": "1", "price": "25,000"}],
              "sub_total": {"subtotal_price": "69,000", "service_price": "3,450"},
              "total": {"total_price": "72,450", "cashprice": "72,450"}}


def test_bare_objects_between_prose_lines_are_all_read():
    r = parse_prediction(BARE_SECTIONS)
    assert r.value == BARE_WHOLE and r.repairs == ["surrounding_text", "bare_blocks", "merged_blocks"]
    assert not r.valid


def test_bare_flat_sections_then_a_bare_final_block():
    text = f"""For the menu:
{json.dumps(MENU[0])}
For sub-total:
{json.dumps(SUB_TOTAL)}
For total:
{json.dumps(TOTAL)}

Final output:
{json.dumps({**WHOLE, "menu": MENU[0]}, indent=2)}"""
    r = parse_prediction(text)
    assert r.value == {**WHOLE, "menu": MENU[0]} and r.repairs == ["surrounding_text", "bare_blocks", "final_block"]
    # without the final block the flat sections are nested and merged ("For the menu:" places nm and price)
    r = parse_prediction(text[:text.index("\n\nFinal output:")])
    assert r.value == {**WHOLE, "menu": MENU[0]}
    assert r.repairs == ["surrounding_text", "bare_blocks", "nested_section_keys", "merged_blocks"]


@pytest.mark.parametrize("text", [
    '{"total": {"total_price": "5,000"}}\nLet me double-check the receipt.\n{"total": {"total_price": "5,000"}}',
    WHOLE_TEXT + '\nNote: the line {"nm": "Es Teh Manis"} was hard to read.\n',  # an object inside a sentence
    WHOLE_TEXT + "\n" + json.dumps({"menu": MENU}),  # no prose between: a repeat of a part
    "Sure! " + WHOLE_TEXT + "\n\nNote: prices are in IDR.",
])
def test_bare_objects_that_are_not_blocks_read_as_before(text):
    """A repeat, an object quoted in a sentence, adjacent objects after the answer: the first object, as before."""
    r = parse_prediction(text)
    first = json.JSONDecoder().raw_decode(text[text.index("{"):])[0]
    assert r.value == first
    assert not {"bare_blocks", "final_block", "merged_blocks", "nested_section_keys"} & set(r.repairs)


def test_bare_correction_after_prose_is_the_last_block():
    text = ('{"total": {"total_price": "5,000"}}\nWait, I misread the total. The corrected JSON:\n'
            '{"total": {"total_price": "5,500"}}')
    r = parse_prediction(text)
    assert r.value == {"total": {"total_price": "5,500"}}
    assert r.repairs == ["surrounding_text", "bare_blocks", "last_block"]


FLAT_NO_FINAL = f"""Sure, here is the receipt in JSON, section by section.

{fence({"menu": MENU})}

For sub-total:
{fence(SUB_TOTAL)}

For total:
{fence(TOTAL)}"""


def test_flat_section_keys_are_nested_in_their_section():
    r = parse_prediction(FLAT_NO_FINAL)
    assert r.value == WHOLE
    assert r.repairs == ["code_fence", "surrounding_text", "nested_section_keys", "merged_blocks"]


def test_a_heading_places_keys_of_several_sections():
    """``nm``, ``price`` and ``etc`` are in two sections each: only a heading that names one places them."""
    text = (f"**Menu**\n{fence({'nm': 'Es Jeruk', 'cnt': '1', 'price': '12,000'})}\n"
            f"**Void menu**\n{fence({'nm': 'Es Jeruk', 'price': '-12,000'})}\n"
            f"**Sub-total**\n{fence({'subtotal_price': '0', 'etc': 'PB1 included'})}\n"
            f"**Total**\n{fence({'total_price': '0'})}")
    r = parse_prediction(text)
    assert r.value == {"menu": {"nm": "Es Jeruk", "cnt": "1", "price": "12,000"},
                       "void_menu": {"nm": "Es Jeruk", "price": "-12,000"},
                       "sub_total": {"subtotal_price": "0", "etc": "PB1 included"}, "total": {"total_price": "0"}}
    assert r.repairs == ["code_fence", "surrounding_text", "nested_section_keys", "merged_blocks"]


def test_blocks_of_one_section_in_turn_are_merged_into_it():
    text = (f"Menu:\n{fence({'menu': MENU})}\nSubtotal:\n{fence({'subtotal_price': '51,000'})}\n"
            f"Tax (10%):\n{fence({'tax_price': '5,100'})}\nTotal:\n{fence({'total': TOTAL})}")
    r = parse_prediction(text)
    assert r.value == WHOLE and "nested_section_keys" in r.repairs and r.repairs[-1] == "merged_blocks"


@pytest.mark.parametrize("heading, value, section", [
    ("For sub-total:", {"subtotal_price": "1", "tax_price": "2"}, "sub_total"),
    ("", {"cashprice": "1", "changeprice": "2"}, "total"),  # each key in total only: no heading needed
    ("Items:", {"nm": "Teh", "price": "1"}, None),  # nm and price are menu or void_menu; "Items" names neither
    ("Sub-total and total:", {"etc": "x"}, None),  # names two sections
    ("Subtotal:", {"subtotal_price": "1", "rounding": "0"}, None),  # a key outside the schema
    ("Totals:", {"subtotal_price": "1", "total_price": "2"}, None),  # two sections, none named alone
    ("Total:", {"total": {"total_price": "1"}}, None),  # already a section
])
def test_which_flat_blocks_are_nested(heading, value, section):
    assert section_of(Block(value, heading)) == section


@pytest.mark.parametrize("text, section", [
    ("**2. Sub-total**", "sub_total"), ("SUBTOTAL", "sub_total"), ("sub_total:", "sub_total"),
    ("For the total:", "total"), ("Void menu", "void_menu"), ("Menu items", "menu"), ("Totals", None),
    ("The receipt", None), ("Menu and total", None),
])
def test_a_heading_names_one_section(text, section):
    assert named_section(text) == section


def test_one_flat_object_alone_is_not_nested():
    for text in ('{"subtotal_price": "5,000", "tax_price": "500"}',
                 'Sub-total:\n```json\n{"subtotal_price": "5,000"}\n```'):
        r = parse_prediction(text)
        assert "sub_total" not in r.value and "nested_section_keys" not in r.repairs

