"""`vlm evaluate` on prediction files: both formats, the JSON interface, deltas and report files."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from helpers import VLM

from vlm.evaluation.compare import evaluate_groups, fixed_and_broken, group_from_file

GTS = [
    {"menu": [{"nm": "Kopi", "cnt": "1", "price": "20,000"}], "total": {"total_price": "20,000"}},
    {"menu": {"nm": "Teh", "price": "5,000"}, "sub_total": {"subtotal_price": "5,000"},
     "total": {"total_price": "5,000"}},
    {"menu": [{"nm": "Nasi", "price": "30,000"}, {"nm": "Es", "price": "3,000"}], "total": {"total_price": "33,000"}},
    {"menu": [{"nm": "Mie", "price": "15,000", "sub": [{"nm": "Telur", "price": "3,000"}]}],
     "total": {"total_price": "18,000", "cashprice": "20,000", "changeprice": "2,000"}},
]


def write_lf(path: Path, preds: list[str]) -> Path:
    """LLaMA-Factory's generated_predictions.jsonl: prompt, predict, label."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"prompt": "p", "predict": p, "label": json.dumps(g)}) + "\n"
                            for p, g in zip(preds, GTS)))
    return path


def write_ids(path: Path, preds: list[str]) -> Path:
    path.write_text("".join(json.dumps({"id": f"doc{i}", "prediction": p, "ground_truth": g}) + "\n"
                            for i, (p, g) in enumerate(zip(preds, GTS))))
    return path


def test_perfect_vs_empty_through_the_cli(tmp_path: Path):
    perfect = write_lf(tmp_path / "perfect" / "generated_predictions.jsonl", [json.dumps(g) for g in GTS])
    broken = write_ids(tmp_path / "broken.jsonl", ["", "not json", "{}", "```json\n" + json.dumps(GTS[3]) + "\n```"])
    r = subprocess.run([*VLM, "evaluate", "--predictions", str(perfect), str(broken), "--json",
                        "--output", str(tmp_path / "report")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert set(result) == {"perfect", "broken"}
    assert result["perfect"]["documents"] == 4
    assert result["perfect"]["valid_json"] == 1.0 and result["perfect"]["ted_accuracy"] == 1.0
    assert result["perfect"]["f1"] == 1.0
    # "" and "not json" are invalid; "{}" is valid but empty; the fenced one is repaired and perfect.
    assert result["broken"]["valid_json"] == 0.5
    assert result["broken"]["ted_accuracy"] == pytest.approx(0.25)
    delta = result["broken"]["delta"]["ted_accuracy"]
    assert delta["delta"] == pytest.approx(-0.75) and delta["ci95"][0] <= -0.75 + 1e-9 <= delta["ci95"][1] + 1e-9
    for name in ("report.md", "metrics.json", "per_document.csv", "chart.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    assert (tmp_path / "report" / "chart.png").read_bytes().startswith(b"\x89PNG")
    assert "perfect" in (tmp_path / "report" / "report.md").read_text()


def test_identical_groups_have_zero_delta_and_interval(tmp_path: Path):
    a = group_from_file(write_ids(tmp_path / "a.jsonl", [json.dumps(GTS[0]), "{}", json.dumps(GTS[2]), "x"]))
    b = group_from_file(write_ids(tmp_path / "b.jsonl", [json.dumps(GTS[0]), "{}", json.dumps(GTS[2]), "x"]))
    b.name = "b2"
    result = evaluate_groups([a, b], resamples=200)
    for key, d in result["groups"]["b2"]["delta"].items():
        assert d["delta"] == 0 and d["ci95"] == [0.0, 0.0], key


def test_fixed_and_broken_documents(tmp_path: Path):
    base = group_from_file(write_ids(tmp_path / "base.jsonl", ["", json.dumps(GTS[1]), "", json.dumps(GTS[3])]))
    tuned = group_from_file(write_ids(tmp_path / "tuned.jsonl", [json.dumps(GTS[0]), "{}", "", json.dumps(GTS[3])]))
    result = evaluate_groups([base, tuned], resamples=100)
    changes = fixed_and_broken(result, "tuned")
    assert [r["id"] for r in changes["fixed"]] == ["doc0"]
    assert [r["id"] for r in changes["broken"]] == ["doc1"]


def test_bad_prediction_file_is_a_clear_error(tmp_path: Path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"foo": 1}\n')
    r = subprocess.run([*VLM, "evaluate", "--predictions", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2 and "neither predict/label" in r.stderr and "Traceback" not in r.stderr


def _store_group(store_path: Path, group: str, backend: str | None, image_max_pixels: int) -> None:
    from vlm.inference.store import Prediction, Store

    generation = {"max_new_tokens": 64, **({"backend": backend} if backend else {})}  # None: logged before vLLM
    with Store(store_path, write=True) as store:
        store.log_run(group, "test", {"generation": generation,
                                      "settings": {"template": "qwen2_vl", "image_max_pixels": image_max_pixels},
                                      "prompt_hash": "p1"})
        store.put_many([Prediction(group, "test", f"doc{i}", json.dumps(g), g, None, [], g)
                        for i, g in enumerate(GTS)])


def test_groups_predicted_differently_are_flagged(tmp_path: Path):
    """Mixing backends or image sizes across compared groups is a confound: evaluate says so (and still scores)."""
    store = tmp_path / "predictions.sqlite"
    _store_group(store, "vanilla-model", "vllm", 262144)
    _store_group(store, "finetuned-model", "llamafactory", 262144)
    _store_group(store, "finetuned-same", "vllm", 262144)
    mixed = subprocess.run([*VLM, "evaluate", "--groups", "vanilla-model", "finetuned-model", "--store", str(store),
                            "--json"], capture_output=True, text=True)
    assert mixed.returncode == 0, mixed.stderr
    assert "differ in backend (vanilla-model: vllm, finetuned-model: llamafactory)" in " ".join(mixed.stderr.split())
    assert "image_max_pixels" not in mixed.stderr
    assert json.loads(mixed.stdout)["finetuned-model"]["f1"] == 1.0
    same = subprocess.run([*VLM, "evaluate", "--groups", "vanilla-model", "finetuned-same", "--store", str(store),
                           "--json"], capture_output=True, text=True)
    assert same.returncode == 0 and "differ" not in same.stderr
    _store_group(store, "older-model", None, 262144)  # a group from before the vLLM backend: LLaMA-Factory's
    old = subprocess.run([*VLM, "evaluate", "--groups", "older-model", "finetuned-model", "--store", str(store),
                          "--json"], capture_output=True, text=True)
    assert old.returncode == 0 and "differ" not in old.stderr


# --- issue 11: validity, repairs, pairing, refusals --------------------------------------------------------------

def _store_answers(store_path: Path, group: str, answers: list[str]) -> None:
    from vlm.inference.store import Prediction, Store

    with Store(store_path, write=True) as store:
        store.put_many([Prediction(group, "test", f"doc{i}", a, None, None, [], g) for i, (a, g) in
                        enumerate(zip(answers, GTS))])


# Answers shaped like a base model's: fenced, prose around, a trailing comma, split objects, an unquoted total.
MESSY = ["```json\n" + json.dumps(GTS[0]) + "\n```",
         json.dumps(GTS[1])[:-1] + ",}",
         json.dumps({"menu": GTS[2]["menu"]}) + ", " + json.dumps({"total": GTS[2]["total"]}),
         'Sure! {"menu": [{"nm": "Mie", "price": 15,000}], "subtotal": {"subtotal_price": "15,000"}}']


@pytest.mark.parametrize("source", ["file", "store"])
def test_validity_and_repairs_are_reported_per_group(tmp_path: Path, source: str):
    """valid_json counts answers that are JSON once fences and prose go; repairs are counted per group."""
    if source == "file":
        args = ["--predictions", str(write_ids(tmp_path / "messy.jsonl", MESSY))]
    else:
        _store_answers(tmp_path / "p.sqlite", "messy", MESSY)
        args = ["--groups", "messy", "--store", str(tmp_path / "p.sqlite")]
    r = subprocess.run([*VLM, "evaluate", *args, "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    g = json.loads(r.stdout)["messy"]
    assert g["valid_json"] == 0.25  # only the fenced one; the others needed real repairs
    a = g["answers"]
    assert a["recovered"] == 1.0 and a["repaired"] == 0.75
    assert a["repairs"] == {"code_fence": 1, "trailing_comma": 1, "split_objects": 1, "surrounding_text": 1,
                            "thousands_separator": 1}
    assert a["out_of_schema"] == {"documents": 1, "keys": {"subtotal": {"count": 1, "likely": "sub_total"}}}
    assert "subtotal x1 (likely sub_total)" in " ".join(r.stderr.split())


def test_an_api_envelope_is_counted_and_explained(tmp_path: Path):
    envelope = json.dumps({"object": "chat.completion", "choices": [{"message": {"content": json.dumps(GTS[0])}}]})
    f = tmp_path / "api.jsonl"
    f.write_text(json.dumps({"id": "a", "prediction": envelope, "ground_truth": GTS[0]}) + "\n"
                 + json.dumps({"id": "b", "prediction": json.loads(envelope), "ground_truth": GTS[1]}) + "\n")
    r = subprocess.run([*VLM, "evaluate", "--predictions", str(f), "--json"], capture_output=True, text=True)
    g = json.loads(r.stdout)["api"]
    assert g["valid_json"] == 0.0 and g["answers"]["api_envelopes"] == 2
    assert "whole API responses" in r.stderr


def test_files_with_ids_pair_by_id_even_when_ids_look_like_line_numbers(tmp_path: Path):
    """Ids "0".."3" in line order once meant pairing by line: reordering the file changed the scores."""
    preds = [json.dumps(GTS[0]), "{}", json.dumps(GTS[2]), "not json"]
    rows = [json.dumps({"id": str(i), "prediction": p, "ground_truth": g}) for i, (p, g) in enumerate(zip(preds, GTS))]
    (tmp_path / "a.jsonl").write_text("".join(r + "\n" for r in rows))
    (tmp_path / "b.jsonl").write_text("".join(r + "\n" for r in reversed(rows)))
    base = tmp_path / "base.jsonl"
    base.write_text("".join(json.dumps({"id": str(i), "prediction": p, "ground_truth": g}) + "\n"
                            for i, (p, g) in enumerate(zip([json.dumps(g) for g in GTS], GTS))))
    assert not group_from_file(base).positional and not group_from_file(tmp_path / "b.jsonl").positional
    straight = evaluate_groups([group_from_file(base), group_from_file(tmp_path / "a.jsonl", "x")], resamples=200)
    shuffled = evaluate_groups([group_from_file(base), group_from_file(tmp_path / "b.jsonl", "x")], resamples=200)
    assert straight["groups"]["x"] == shuffled["groups"]["x"]
    assert straight["per_document"]["x"] == shuffled["per_document"]["x"]


def test_a_reordered_file_without_ids_is_caught_by_its_ground_truths(tmp_path: Path):
    a = write_lf(tmp_path / "a" / "generated_predictions.jsonl", [json.dumps(g) for g in GTS])
    b = tmp_path / "b" / "generated_predictions.jsonl"
    b.parent.mkdir()
    b.write_text("".join(reversed(a.read_text().splitlines(keepends=True))))
    r = subprocess.run([*VLM, "evaluate", "--predictions", str(a), str(b)], capture_output=True, text=True)
    assert r.returncode == 2 and "different ground truths" in r.stderr and "Traceback" not in r.stderr


def test_duplicate_ids_are_refused_with_their_lines(tmp_path: Path):
    f = tmp_path / "dup.jsonl"
    rows = [{"id": d, "prediction": "{}", "ground_truth": GTS[0]} for d in ("doc0", "doc1", "doc0", "doc2", "doc1")]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = subprocess.run([*VLM, "evaluate", "--predictions", str(f)], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "'doc0' on lines 1, 3" in r.stderr and "'doc1' on lines 2, 5" in r.stderr


@pytest.mark.parametrize("line", ["42", "null", '"a bare string"', "[1, 2]"])
def test_a_line_that_is_not_an_object_is_named(tmp_path: Path, line: str):
    f = tmp_path / "odd.jsonl"
    f.write_text(json.dumps({"id": "a", "prediction": "{}", "ground_truth": GTS[0]}) + "\n" + line + "\n")
    r = subprocess.run([*VLM, "evaluate", "--predictions", str(f)], capture_output=True, text=True)
    assert r.returncode == 2 and f"{f}:2 is a JSON" in r.stderr and "not an object" in r.stderr
    assert "Traceback" not in r.stderr


def test_block_bootstrap_equals_scoring_each_resample():
    """The vectorised bootstrap's rows are bit for bit ``aggregate`` of the same draws (odd sizes, None metrics)."""
    import numpy as np

    from vlm.evaluation.metrics import aggregate, resampled, score_documents

    preds = [GTS[0], {}, None, {"total": {"total_price": "33,000"}}, GTS[3]] * 3 + [{"menu": [{"nm": "Teh"}]}]
    gts = (GTS + [GTS[0]]) * 3 + [GTS[1]]
    scores = score_documents(preds, gts)
    idx = np.random.default_rng(3).integers(0, len(preds), (50, len(preds)))
    rows = resampled(scores, idx)
    for r, draw in enumerate(idx):
        for key, value in aggregate(scores, draw).items():
            got = rows[key][r]
            assert (value is None and np.isnan(got)) or value == got, (key, r)
