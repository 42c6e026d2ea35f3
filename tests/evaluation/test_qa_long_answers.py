"""--task qa on runaway answers: rapidfuzz's edit distance (equal to the DP it replaced), the extraction task's
cap on what is scored, counted per group, and short predictions in per_document.csv."""

from __future__ import annotations

import json
import random
import time

from vlm.evaluation import qa
from vlm.evaluation.qa_metrics import levenshtein, similarity
from vlm.inference.parsing import MAX_ANSWER_CHARS


def dp_levenshtein(a: str, b: str) -> int:
    """The pure-Python DP qa_metrics used before rapidfuzz, kept here as the reference."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def test_rapidfuzz_distance_equals_the_dp_on_random_strings():
    rng = random.Random(0)
    for alphabet in ("ab", "abcdef ", "aé€𝄞 ,.0"):  # small alphabets make many near matches; non-ASCII too
        for _ in range(300):
            a = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
            b = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
            assert levenshtein(a, b) == dp_levenshtein(a, b), (a, b)


def test_the_length_shortcut_gives_the_same_similarity():
    rng = random.Random(1)
    for _ in range(500):
        a = "".join(rng.choice("abc") for _ in range(rng.randint(0, 12)))
        b = "".join(rng.choice("abc") for _ in range(rng.randint(0, 12)))
        longest = max(len(a), len(b))
        nl = dp_levenshtein(a, b) / longest if longest else 0.0
        assert similarity(a, b) == (0.0 if nl >= 0.5 else 1.0 - nl), (a, b)


ANSWER = "The total amount due is 35,000 rupiahs."  # 39 characters


def test_a_50_mb_answer_is_scored_in_a_few_seconds_and_reported_short(tmp_path):
    path = tmp_path / "runaway.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps({"id": "q0", "prediction": ANSWER + " and so on" * 5_000_000, "ground_truth": [ANSWER]})
                + "\n")
        f.write(json.dumps({"id": "q1", "prediction": "35,000", "ground_truth": ["35,000", "35000"]}) + "\n")
    assert path.stat().st_size > 50_000_000
    start = time.perf_counter()
    result = qa.evaluate_qa([qa.group_from_file(path)], resamples=100)
    csv_text = qa.per_document_csv(result)
    assert time.perf_counter() - start < 10  # the pure-Python DP took about 5 minutes
    assert result["groups"]["runaway"]["predictions"] == {"non_text": 0, "cut": 1}
    assert [r["anls"] for r in result["per_document"]["runaway"]] == [0.0, 1.0]
    shown = result["per_document"]["runaway"][0]["prediction"]
    assert shown.startswith(ANSWER) and shown.endswith(f"… [first 1,000 of over {MAX_ANSWER_CHARS:,} characters]")
    assert len(shown) < 1100 and len(csv_text) < 3000
    assert f"1 predictions were longer than {MAX_ANSWER_CHARS:,} characters" in qa.markdown(result)


def test_only_the_first_max_answer_chars_are_scored(tmp_path):
    """An answer cut at the cap scores as its first MAX_ANSWER_CHARS characters; one at the cap is not cut."""
    long = "a" * MAX_ANSWER_CHARS
    path = tmp_path / "g.jsonl"
    path.write_text(json.dumps({"id": "q0", "prediction": long + "zzz", "ground_truth": long}) + "\n"
                    + json.dumps({"id": "q1", "prediction": long, "ground_truth": long}) + "\n")
    result = qa.evaluate_qa([qa.group_from_file(path)], resamples=100)
    assert result["groups"]["g"]["predictions"]["cut"] == 1
    assert [(r["anls"], r["exact_match"]) for r in result["per_document"]["g"]] == [(1.0, True), (1.0, True)]
    assert result["per_document"]["g"][1]["prediction"].endswith(f"… [first 1,000 of {MAX_ANSWER_CHARS:,} characters]")
