"""Lenient prediction parsing: one example per repair, and fuzzing that it never raises."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlm.inference.parsing import MAX_DEPTH, ParseResult, parse_prediction

GOOD = {"menu": [{"nm": "Nasi Goreng", "cnt": "1 x", "price": "45,000"}], "total": {"total_price": "45,000"}}


def test_valid_json_needs_no_repair():
    r = parse_prediction(json.dumps(GOOD))
    assert r == ParseResult(GOOD, [], None, valid=True)
    assert parse_prediction("  \n" + json.dumps(GOOD, indent=2) + "\n").repairs == []


@pytest.mark.parametrize("text, value, repairs", [
    ('```json\n{"a": "x"}\n```', {"a": "x"}, ["code_fence"]),
    ('```\n{"a": "x"}', {"a": "x"}, ["code_fence"]),
    ('Sure! Here it is:\n```json\n{"a": 1}\n```\nAnything else?', {"a": 1}, ["code_fence", "surrounding_text"]),
    ('Here you go: {"a": 1} hope it helps', {"a": 1}, ["surrounding_text"]),
    ('{"a": 1}\n\nNote: prices in IDR.', {"a": 1}, ["surrounding_text"]),
    ("{'a': 'b', 'c': 'it\\'s'}", {"a": "b", "c": "it's"}, ["single_quotes"]),
    ("{'a': None, 'b': True, 'c': False}", {"a": None, "b": True, "c": False}, ["single_quotes", "python_literals"]),
    ('{"a": [1, 2,], "b": 3,}', {"a": [1, 2], "b": 3}, ["trailing_comma"]),
    ('{"menu": [{"nm": "Nasi Gor', {"menu": [{}]}, ["truncated"]),  # the cut-off value is dropped
    ('{"a": "x", "b":', {"a": "x"}, ["truncated"]),
    ('{"a": "x", "b"', {"a": "x"}, ["truncated"]),
    ('{"a": "x", ', {"a": "x"}, ["truncated"]),
    ('{"a": {"b": [1, 2', {"a": {"b": [1]}}, ["truncated"]),
    ('{"a": {"b": [1, 2]', {"a": {"b": [1, 2]}}, ["truncated"]),
    ('{"a": "x\\', {}, ["truncated"]),
    ('{"a": "1" "b": "2"}', {"a": "1", "b": "2"}, ["missing_comma"]),
    ('{"a" "1"}', {"a": "1"}, ["missing_colon"]),
    ('{"a": , "b": 2}', {"b": 2}, ["missing_value"]),
    ('{"a": [1, 2}', {"a": [1, 2]}, ["mismatched_brackets"]),
    ('{"a": "line\nbreak"}', {"a": "line\nbreak"}, ["control_characters"]),
    ('{a: "x"}', {"a": "x"}, ["unquoted_text"]),
    ('{"a": "\\u00e9\\ud83d\\ude00"}', {"a": "é😀"}, []),
    ('{"a": "\\ud83d\\ude00", "b": \'x\'}', {"a": "😀", "b": "x"}, ["single_quotes"]),
])
def test_repairs(text, value, repairs):
    r = parse_prediction(text)
    assert r.value == value and r.repairs == repairs and r.error is None


@pytest.mark.parametrize("text", ["[1, 2]", '[{"a": 1}]', "42", '"text"', "null", "", "   ", "no json here",
                                  "```json\n[1]\n```"])
def test_top_level_non_object_is_invalid(text):
    r = parse_prediction(text)
    assert r.value is None and r.error


@pytest.mark.parametrize("text", ["{" * 100_000, '{"a":' * 5000, '{"a": [' * 3000 + "]}" * 3000,
                                  json.dumps(json.loads("[" * 200 + "]" * 200)).join(['{"a": ', "}"])])
def test_deep_nesting_is_capped_not_a_crash(text):
    r = parse_prediction(text)
    assert r.value is None and "deeper" in r.error


def test_deep_top_level_list_is_invalid_not_a_crash():
    r = parse_prediction("[" * 100_000)
    assert r.value is None and r.error


def test_nesting_within_the_cap_is_fine():
    deep = {}
    node = deep
    for _ in range(MAX_DEPTH - 1):
        node["a"] = {}
        node = node["a"]
    assert parse_prediction(json.dumps(deep)).value == deep
    node["a"] = {}  # one level more
    r = parse_prediction(json.dumps(deep))
    assert r.value is None and f"deeper than {MAX_DEPTH}" in r.error


def test_non_string_input_does_not_raise():
    assert parse_prediction(None).value is None  # type: ignore[arg-type]


# --- fuzzing -------------------------------------------------------------------------------------------------

_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
_row = st.dictionaries(st.sampled_from(["nm", "cnt", "price", "unitprice", "discountprice"]), _text, max_size=4)
_cord = st.fixed_dictionaries({}, optional={
    "menu": st.one_of(st.lists(_row, max_size=5), _row),
    "sub_total": st.dictionaries(st.sampled_from(["subtotal_price", "tax_price", "etc"]), _text, max_size=3),
    "total": st.dictionaries(st.sampled_from(["total_price", "cashprice", "changeprice"]),
                             st.one_of(_text, st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                                       st.none(), st.booleans()), max_size=3),
})


@settings(max_examples=3000, deadline=None)
@given(st.text())
def test_never_raises_on_any_text(text):
    r = parse_prediction(text)
    assert isinstance(r, ParseResult)
    assert (r.value is None) == (r.error is not None)
    assert r.value is None or isinstance(r.value, dict)


@settings(max_examples=3000, deadline=None)
@given(_cord, st.booleans(), st.sampled_from([None, 2]))
def test_valid_json_round_trips_without_repairs(doc, ascii_only, indent):
    r = parse_prediction(json.dumps(doc, ensure_ascii=ascii_only, indent=indent))
    assert r.value == doc and r.repairs == [] and r.error is None


@settings(max_examples=3000, deadline=None)
@given(_cord, st.data())
def test_mutated_and_truncated_json_never_raises(doc, data):
    text = json.dumps(doc, ensure_ascii=data.draw(st.booleans()))
    op = data.draw(st.sampled_from(["truncate", "delete", "insert", "quotes", "fence"]))
    if op == "truncate":
        text = text[: data.draw(st.integers(1, len(text)))]
    elif op == "delete":
        k = data.draw(st.integers(0, len(text) - 1))
        text = text[:k] + text[k + data.draw(st.integers(1, 5)):]
    elif op == "insert":
        k = data.draw(st.integers(0, len(text)))
        text = text[:k] + data.draw(st.sampled_from(list("{}[]:,'\"\\` \n") + ["None", "```"])) + text[k:]
    elif op == "quotes":
        text = text.replace('"', "'")
    else:
        text = f"Here:\n```json\n{text}\n```"
    r = parse_prediction(text)
    assert isinstance(r, ParseResult)
    assert r.value is None or isinstance(r.value, dict)
    if op == "truncate":
        assert isinstance(r.value, dict)  # any prefix of an object still yields an object
    if op == "fence":
        assert r.value == doc and r.repairs == ["code_fence", "surrounding_text"]


# --- real-output shapes (issue 11): each was seen in CORD answers of fine-tuned and API models -----------------

MENU = '{"menu": [{"nm": "Nasi Goreng Spesial", "cnt": "1", "price": "17,500"}]'


def test_split_top_level_objects_are_one_answer():
    """A fine-tune closes its object early and goes on: the objects that follow, with disjoint keys, are merged."""
    text = MENU + ', "sub_total": {"subtotal_price": "17,500"}}, {"total": {"cashprice": "17,500"}}'
    r = parse_prediction(text)
    assert r.value == {"menu": [{"nm": "Nasi Goreng Spesial", "cnt": "1", "price": "17,500"}],
                       "sub_total": {"subtotal_price": "17,500"}, "total": {"cashprice": "17,500"}}
    assert r.repairs == ["split_objects"] and not r.valid
    # the same keys again is a repetition, not a continuation: the first object stands, the rest is extra text
    again = parse_prediction('{"total": {"total_price": "5,000"}}\n{"total": {"total_price": "6,000"}}')
    assert again.value == {"total": {"total_price": "5,000"}} and again.repairs == ["surrounding_text"]


def test_several_code_blocks_last_object_or_merged_sections():
    drafts = ('For tables:\n```json\n[{"nm": "Kopi Susu"}]\n```\nThe menu:\n```json\n{"menu": [{"nm": "Kopi Susu"}]}\n'
              '```\nSo, the final output should be:\n```json\n{"menu": [{"nm": "Kopi Susu", "price": "20,000"}], '
              '"total": {"total_price": "20,000"}}\n```')
    r = parse_prediction(drafts)
    assert r.value == {"menu": [{"nm": "Kopi Susu", "price": "20,000"}], "total": {"total_price": "20,000"}}
    assert r.repairs == ["code_fence", "surrounding_text", "last_block"]
    sections = ('**Menu**\n```json\n{"menu": [{"nm": "Es Teh", "price": "5,000"}]}\n```\n**Subtotal**\n```json\n'
                '{"sub_total": {"subtotal_price": "5,000", "tax_price": "500"}}\n```\n**Total**\n```json\n'
                '{"total": {"total_price": "5,500"}}\n```')
    r = parse_prediction(sections)
    assert r.value == {"menu": [{"nm": "Es Teh", "price": "5,000"}],
                       "sub_total": {"subtotal_price": "5,000", "tax_price": "500"}, "total": {"total_price": "5,500"}}
    assert r.repairs == ["code_fence", "surrounding_text", "merged_blocks"] and not r.valid


def test_arithmetic_is_evaluated_safely_or_dropped():
    r = parse_prediction('{"sub_total": {"subtotal_price": "56,000", "tax_price": 56000 * 0.1}, '
                         '"total": {"total_price": (56000 + 5600)}}')
    assert r.value == {"sub_total": {"subtotal_price": "56,000", "tax_price": 5600}, "total": {"total_price": 61600}}
    assert r.repairs == ["arithmetic"]
    r = parse_prediction('{"sub_total": {"tax_price": 5600 / 0, "service_price": "0"}}')
    assert r.value == {"sub_total": {"service_price": "0"}} and r.repairs == ["dropped_arithmetic"]
    r = parse_prediction('{"total": {"total_price": __import__("os").system("x") * 2}}')  # no eval: words are text
    assert r.value is not None and "arithmetic" not in r.repairs


def test_unquoted_thousands_separators_are_one_number():
    r = parse_prediction('{"menu": [{"nm": "Ayam Bakar", "price": 29,500}], "total": {"total_price": 1,029,500, '
                         '"cashprice": 1,050,000.00}}')
    assert r.value == {"menu": [{"nm": "Ayam Bakar", "price": "29,500"}],
                       "total": {"total_price": "1,029,500", "cashprice": "1,050,000.00"}}
    assert r.repairs == ["thousands_separator"]


@pytest.mark.parametrize("tail", ['"29,', "29,5", "29", '"Ayam Bak'])
def test_value_cut_off_by_the_end_is_dropped(tail):
    r = parse_prediction(MENU + ', "total": {"total_price": "17,500", "cashprice": ' + tail)
    assert r.value == {"menu": [{"nm": "Nasi Goreng Spesial", "cnt": "1", "price": "17,500"}],
                       "total": {"total_price": "17,500"}}
    assert r.truncated and not r.valid


@pytest.mark.parametrize("text, valid", [
    ('{"total": {"total_price": "5,000"}}', True),
    ('Here is the JSON:\n```json\n{"total": {"total_price": "5,000"}}\n```\nLet me know!', True),
    ('{"total": {"total_price": "5,000",}}', False),  # recovered, but not valid JSON
    ("{'total': {'total_price': '5,000'}}", False),
    ('{"total": {"total_price": "5,0', False),
])
def test_valid_means_valid_json_once_fences_and_prose_are_removed(text, valid):
    r = parse_prediction(text)
    assert r.value is not None and r.valid is valid


def test_an_api_envelope_is_explained_not_scored():
    content = json.dumps({"total": {"total_price": "5,000"}})
    envelope = json.dumps({"id": "chatcmpl-9", "object": "chat.completion", "model": "gpt-4o-mini",
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                        "finish_reason": "stop"}]})
    r = parse_prediction(envelope)
    assert r.value is None and not r.valid and "API response" in r.error and "choices[0].message.content" in r.error


def test_a_huge_answer_is_cut_and_marked_not_parsed_whole():
    """A runaway generation (here 6 MB of menu rows, cut mid-value) is bounded: cut, marked, with a note."""
    from vlm.inference.parsing import MAX_ANSWER_CHARS, MAX_NODES

    row = '{"nm": "Es Teh Manis", "cnt": "1", "price": "5,000"}, '
    text = '{"menu": [' + row * (6_000_000 // len(row)) + '{"nm": "Es Te'
    r = parse_prediction(text)
    assert r.truncated and r.notes and f"{MAX_ANSWER_CHARS:,}" in r.notes[0]
    assert r.value is None or sum(len(x) + 1 for x in r.value["menu"]) <= MAX_NODES


def test_the_node_cap_counts_every_value_and_container():
    """MAX_NODES values and containers are scored; one more is refused (one walk checks depth and size)."""
    from vlm.inference.parsing import MAX_NODES

    fits = {"a": [1] * (MAX_NODES - 2)}  # the object, the list and its items
    assert parse_prediction(json.dumps(fits)).value == fits
    over = parse_prediction(json.dumps({"a": [1] * (MAX_NODES - 1)}))
    assert over.value is None and f"{MAX_NODES:,} values" in over.error
    nested = {"a": [{"b": [1, 2]}, {"c": {"d": 3}}] * ((MAX_NODES - 2) // 7)}  # 7 nodes per pair of rows
    assert parse_prediction(json.dumps(nested)).value == nested
