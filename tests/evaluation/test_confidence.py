"""Field confidence: each value's characters in the raw answer, the tokens over them, and what a repair does.

Spans are checked on generated answers of CORD's shape written every way ``json.dumps`` writes them (spaces,
indents, escapes, non-ASCII, values equal to keys or to other values, numbers), plus fenced and repaired
answers; the stored answers of a real trained model are checked in tests/inference/test_learning.py.
"""

from __future__ import annotations

import json
import math
import random

from vlm.evaluation.confidence import (
    REPAIRED_FACTOR,
    accepted_fields,
    document_confidence,
    field_confidences,
    value_spans,
)
from vlm.evaluation.docdiff import prediction_fields
from vlm.inference.parsing import parse_prediction
from vlm.inference.token_scores import TokenScores, as_json

WORDS = ["item", "nm", "cnt", "price", "1", "10,000", "a \"quoted\" b", "back\\slash", "tab\there", "é ñ 東京",
         "  padded  ", "total", ":", "x,y", "31.000", "menu", "{}", "line\nbreak"]


def _answer(r: random.Random) -> dict:
    row = lambda: {k: r.choice(WORDS) for k in r.sample(["nm", "cnt", "price", "unitprice"], r.randint(1, 4))}  # noqa: E731
    doc = {"menu": [row() for _ in range(r.randint(1, 4))]}
    if r.random() < 0.7:
        doc["sub_total"] = {"subtotal_price": r.choice(WORDS), "tax_price": r.choice([r.randint(0, 999), 12.5])}
    doc["total"] = {"total_price": r.choice(WORDS + [r.randint(0, 99999)]), "menuqty_cnt": r.choice(WORDS)}
    return doc


def _dump(doc: dict, r: random.Random) -> str:
    kind = r.randrange(4)
    if kind == 0:
        return json.dumps(doc, ensure_ascii=False)
    if kind == 1:
        return json.dumps(doc, ensure_ascii=True, indent=2)
    if kind == 2:
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
    return "```json\n" + json.dumps(doc, ensure_ascii=False, indent=1) + "\n```"


def _expected(raw: str, text: str, span: tuple[int, int]) -> bool:
    """Whether ``raw[span]`` is the value as the answer writes it: a JSON string's escaped characters (either
    escaping), or a number's literal."""
    got = raw[span[0]: span[1]]
    if got in (json.dumps(text, ensure_ascii=False)[1:-1], json.dumps(text)[1:-1]):
        return True
    try:
        return float(got) == float(text)
    except ValueError:
        return False


def test_field_spans_cover_exactly_the_characters_of_each_value():
    r = random.Random(7)
    checked = 0
    for _ in range(400):
        raw = _dump(_answer(r), r)
        parsed = parse_prediction(raw)
        fields = prediction_fields(parsed.value)
        spans = value_spans(raw, fields)
        last = 0
        for (path, text), (span, exact) in zip(fields, spans):
            assert span is not None and exact, (raw, path, text)
            assert _expected(raw, text, span), (raw, path, text, raw[span[0]: span[1]])
            assert span[0] >= last, (raw, path)  # in the order written, never reusing a character
            last = span[1]
            checked += 1
    assert checked > 2000


def test_a_shortened_decimal_is_found_by_its_printed_form():
    raw = '{"menu": [{"nm": "31.0", "price": 31.000}], "total": {"total_price": 31.000}}'
    fields = prediction_fields(parse_prediction(raw).value)
    got = [raw[s[0]: s[1]] for s, _ in value_spans(raw, fields)]
    assert got == ["31.0", "31.000", "31.000"]


def _char_scores(raw: str, low_at: set[int]) -> TokenScores:
    """One token per character; probability 0.2 at ``low_at``, else 0.95."""
    return TokenScores(tuple(math.log(0.2 if k in low_at else 0.95) for k in range(len(raw))),
                       tuple(range(1, len(raw) + 1)))


def test_field_confidence_is_the_min_and_mean_probability_of_the_tokens_over_its_value():
    raw = '{"menu": [{"nm": "Kopi Susu", "cnt": "2"}], "total": {"total_price": "40,000"}}'
    low = raw.index("Susu") + 1
    parsed = parse_prediction(raw)
    fields = field_confidences(raw, parsed.value, parsed.valid, _char_scores(raw, {low}))
    by = {f.path: f for f in fields}
    assert by["menu[0].nm"].min == 0.2 and by["menu[0].nm"].tokens == len("Kopi Susu")
    assert abs(by["menu[0].nm"].mean - (0.2 + 0.95 * 8) / 9) < 1e-12
    assert by["menu[0].cnt"].min == by["total.total_price"].min == 0.95
    assert not any(f.repaired for f in fields)
    assert document_confidence(fields) == by["menu[0].nm"].confidence == 0.2


def test_values_recovered_from_a_broken_answer_are_flagged_and_trusted_less():
    raw = '{"menu": [{"nm": "Kopi", "cnt": "2",}], "total": {"total_price": "40,000"'  # trailing comma, cut off
    parsed = parse_prediction(raw)
    assert not parsed.valid and parsed.value
    fields = field_confidences(raw, parsed.value, parsed.valid, _char_scores(raw, set()))
    assert fields and all(f.repaired for f in fields)
    assert all(abs(f.confidence - 0.95 * REPAIRED_FACTOR) < 1e-12 for f in fields)


def test_answers_without_token_scores_have_no_confidence_and_export_accepts_nothing():
    raw = '{"total": {"total_price": "40,000"}}'
    parsed = parse_prediction(raw)
    assert field_confidences(raw, parsed.value, parsed.valid, None) is None
    assert document_confidence(None) is None
    assert document_confidence([]) == 0.0  # scored, nothing extracted: sorted first, not last
    row = accepted_fields({"id": "d", "prediction": raw, "token_scores": None}, 0.5)
    assert row["fields"] == [] and "no token scores" in row["note"]
    low = raw.index("40,000")
    row = accepted_fields({"id": "d", "prediction": raw, "token_scores": as_json(_char_scores(raw, {low}))}, 0.5)
    assert row["fields"] == [] and row["rejected_fields"] == 1
    row = accepted_fields({"id": "d", "prediction": raw, "token_scores": as_json(_char_scores(raw, set()))}, 0.5)
    assert row["fields"] == [{"path": "total.total_price", "value": "40,000", "confidence": 0.95}]


def test_evaluate_reports_confidence_where_answers_have_scores_and_says_where_they_have_none(tmp_path):
    from trust_fixtures import make_store

    from vlm.evaluation.compare import evaluate_groups, groups_from_store
    from vlm.evaluation.confidence_report import markdown
    from vlm.evaluation.report import per_document_csv

    store = make_store(tmp_path, scores=True)  # the fine-tune's answers have token scores, the base model's not
    result = evaluate_groups(groups_from_store(store, ["vanilla-model", "finetuned-model"], "test"), resamples=100)
    vanilla, tuned = (result["groups"][g]["confidence"] for g in ("vanilla-model", "finetuned-model"))
    assert vanilla["fields"] == 0 and vanilla["documents_without_scores"] == 6 and "no token scores" in vanilla["note"]
    assert tuned["fields"] > 0 and tuned["documents_without_scores"] == 0
    assert result["groups"]["vanilla-model"]["confidence_auroc"] is None
    assert result["groups"]["finetuned-model"]["confidence_auroc"] == tuned["auroc"]["confidence"]
    rows = result["per_document"]["finetuned-model"]
    assert all(abs(r["confidence"] - min(r["field_confidence"].values())) < 1e-4 for r in rows if r["field_confidence"])
    text = markdown(result)
    assert "vanilla-model: no token scores" in text and "reliability.png" in text
    assert per_document_csv(result).splitlines()[0].endswith("confidence,least_confident_field,fields_scored")
    plain = evaluate_groups(groups_from_store(make_store(tmp_path / "plain"), ["finetuned-model"], "test"),
                            resamples=100)
    assert "reliability.png" not in markdown(plain) and "confidence_auroc" not in plain["groups"]["finetuned-model"]


def test_a_prediction_file_with_token_scores_gives_the_stores_confidence(tmp_path):
    from trust_fixtures import make_store

    from vlm.evaluation.compare import evaluate_groups, group_from_file, groups_from_store
    from vlm.inference.store import Store

    store = make_store(tmp_path, scores=True)
    with Store(store) as s:
        rows = s.export_jsonl("finetuned-model", "test")
    path = tmp_path / "finetuned-model.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from_store = evaluate_groups(groups_from_store(store, ["finetuned-model"], "test"), resamples=100)
    from_file = evaluate_groups([group_from_file(path)], resamples=100)
    a, b = from_store["groups"]["finetuned-model"]["confidence"], from_file["groups"]["finetuned-model"]["confidence"]
    assert a["fields"] > 0 and {k: a[k] for k in ("fields", "auroc", "auroc_ci95", "ece", "aurc")} == \
        {k: b[k] for k in ("fields", "auroc", "auroc_ci95", "ece", "aurc")}


def test_a_single_row_the_truth_holds_as_a_list_keeps_its_confidence():
    """The truth lists ``total`` as rows (CORD has such documents), the prediction writes one object: align's
    prediction path must be the one prediction_fields gives the field, or the field silently loses its confidence."""
    from vlm.evaluation.docdiff import align

    gt = {"total": [{"total_price": "5"}, {"total_price": "6"}]}
    pred = {"total": {"total_price": "5"}}
    paths = {path for path, _ in prediction_fields(pred)}
    aligned = [row["pred_path"] for row in align(gt, pred) if row.get("pred_path")]
    assert aligned and set(aligned) == paths, (aligned, paths)


def test_a_non_finite_token_score_gives_no_confidence_rather_than_a_nan():
    raw = '{"total": {"total_price": "40,000"}}'
    parsed = parse_prediction(raw)
    scores = _char_scores(raw, set())
    bad = raw.index("40,000") + 2
    scores = TokenScores(tuple(float("nan") if k == bad else x for k, x in enumerate(scores.logprobs)), scores.ends)
    (field,) = field_confidences(raw, parsed.value, parsed.valid, scores)
    assert field.min is None and field.confidence == 0.0
