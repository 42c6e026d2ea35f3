"""`vlm predict --constrain`: a random model's answers are schema-valid JSON only when constrained; a --json-schema
file is honoured or refused clearly; the constraint is a generation setting; `vlm evaluate` shows it and, when
groups differ in it, format and content apart.

(The fine-tuned model's constrained answers equal its unconstrained ones: tests/inference/test_learning.py, which
has the trained model. vLLM's structured outputs: tests/inference/test_vllm_gpu.py.)
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import jsonschema
import pytest
from helpers import invoke, vlm

from vlm.errors import VlmError
from vlm.inference.constrain import CONSTRAINTS, cord_json_schema
from vlm.inference.store import Prediction, Store

MAX_NEW_TOKENS = "320"  # the random tiny model closes the CORD grammar within about 250 tokens (measured)


def _predict(tiny_model: Path, data: Path, store: Path, group: str, *extra: str) -> list[str]:
    return ["predict", "--group", group, "--backend", "transformers", "--model", str(tiny_model),
            "--dataset-dir", str(data), "--split", "test", "--store", str(store), "--work-dir",
            str(store.parent / "work"), "--max-new-tokens", MAX_NEW_TOKENS, "--batch-size", "3", *extra,
            "template=qwen2_vl", "image_max_pixels=16384", "cutoff_len=1024"]


def _answers(store: Path, group: str) -> dict[str, str]:
    with Store(store) as s:
        return {row.doc_id: row.raw for row in s.load(group, "test")}


def _strict(raw: str):
    """The answer as strict JSON: no repairs, no text around it, no repeated key; else None."""
    def no_repeats(pairs):
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            raise ValueError(f"repeated key in {keys}")
        return dict(pairs)

    try:
        return json.loads(raw, object_pairs_hook=no_repeats)
    except ValueError:
        return None


@pytest.mark.slow
def test_a_random_model_writes_schema_valid_json_only_when_constrained(tmp_path: Path, tiny_model: Path,
                                                                        sample_export: Path):
    store = tmp_path / "preds.sqlite"
    vlm(*_predict(tiny_model, sample_export, store, "vanilla"), cwd=tmp_path)
    vlm(*_predict(tiny_model, sample_export, store, "vanilla-schema", "--constrain", "schema"), cwd=tmp_path)
    free, held = _answers(store, "vanilla"), _answers(store, "vanilla-schema")
    assert len(free) == len(held) == 6
    assert all(_strict(raw) is None for raw in free.values()), free  # not one valid answer without the grammar
    schema = cord_json_schema()
    for doc, raw in held.items():
        value = _strict(raw)
        assert value is not None, f"{doc}: {raw!r}"
        jsonschema.validate(value, schema)

    # The constraint is a generation setting: recorded with the run, and part of the generation hash.
    with Store(store) as s:
        run = s.last_run("vanilla-schema", "test")
        hashes = {g: next(iter(s.settings_in(g, "test"))) for g in ("vanilla", "vanilla-schema")}
        assert "constrain" not in s.last_run("vanilla", "test")["generation"]
    assert run["generation"]["constrain"] == "schema" and run["generation"]["schema_source"] == "cord"
    assert run["spec"]["constrain"] == "schema"
    assert hashes["vanilla"][:3] == hashes["vanilla-schema"][:3] and hashes["vanilla"][3] != hashes["vanilla-schema"][3]

    # vlm evaluate names each group's constraint and, as they differ, shows format and content apart.
    report = json.loads(vlm("evaluate", "--groups", "vanilla", "vanilla-schema", "--store", str(store), "--json",
                            "--output", str(tmp_path / "report"), cwd=tmp_path).stdout)
    assert report["vanilla"]["constrain"] == "none" and report["vanilla-schema"]["constrain"] == "schema (cord)"
    fc = report["format_content"]
    assert fc["groups"]["vanilla"]["format"]["valid_json"] == 0.0
    assert fc["groups"]["vanilla-schema"]["format"] == {"valid_json": 1.0, "in_schema": 1.0, "truncated": 0.0}
    assert fc["all_valid_documents"] == 0 and "content_where_all_valid" not in fc["groups"]["vanilla"]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| vanilla [constrain: none] | vanilla-schema [constrain: schema (cord)] |" in md
    assert "## Format and content" in md and "format: valid JSON inside the schema" in md


@pytest.mark.slow
def test_a_json_schema_file_constrains_the_answers(tmp_path: Path, tiny_model: Path, sample_export: Path):
    schema = {"type": "object", "properties": {"total": {"type": "string", "maxLength": 12},
                                               "paid": {"type": "boolean"}},
              "required": ["total", "paid"], "additionalProperties": False}
    (tmp_path / "invoice.json").write_text(json.dumps(schema))
    store = tmp_path / "preds.sqlite"
    out = json.loads(vlm(*_predict(tiny_model, sample_export, store, "invoice", "--constrain", "schema",
                                   "--json-schema", str(tmp_path / "invoice.json"), "--json"), cwd=tmp_path).stdout)
    assert out["constrain"] == "schema (invoice.json)"
    answers = _answers(store, "invoice")
    assert len(answers) == 6
    for doc, raw in answers.items():
        value = _strict(raw)
        assert value is not None, f"{doc}: {raw!r}"
        jsonschema.validate(value, schema)


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot read --json-schema"),
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "holds a JSON list, not a JSON Schema object"),
    ('{"type": "array", "items": {"type": "string"}}', "describes a 'array', but vlm predicts JSON objects"),
    # no root type: {} or a root anyOf compiles to a grammar that lets strings and lists through
    ("{}", 'has no "type": "object" at the top level'),
    ('{"anyOf": [{"type": "string"}, {"type": "object"}]}', 'has no "type": "object" at the top level'),
    ('{"type": "object", "properties": {"a": {"type": "strng"}}}', "cannot be compiled to a grammar"),
])
def test_a_bad_json_schema_file_is_refused_naming_it(tmp_path: Path, content: str | None, message: str):
    path = tmp_path / "schema.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(VlmError, match=message) as e:
        invoke("predict", "--group", "g", "--model", str(tmp_path / "no-model"), "--dataset-dir", str(tmp_path),
               "--store", str(tmp_path / "p.sqlite"), "--constrain", "schema", "--json-schema", str(path))
    assert str(path) in e.value.message
    assert not (tmp_path / "p.sqlite").exists()


def test_json_schema_needs_constrain_schema(tmp_path: Path):
    (tmp_path / "schema.json").write_text('{"type": "object"}')
    with pytest.raises(VlmError, match="--constrain is none") as e:
        invoke("predict", "--group", "g", "--model", "m", "--dataset-dir", str(tmp_path), "--store",
               str(tmp_path / "p.sqlite"), "--json-schema", str(tmp_path / "schema.json"))
    assert "--constrain schema" in e.value.hint


def test_the_llamafactory_backend_refuses_a_constraint(tmp_path: Path, tiny_model: Path):
    from helpers import make_toy_dataset

    data = make_toy_dataset(tmp_path / "toy")
    with pytest.raises(VlmError, match="--constrain json needs the transformers or vllm backend"):
        invoke("predict", "--group", "g", "--model", str(tiny_model), "--dataset-dir", str(data), "--store",
               str(tmp_path / "p.sqlite"), "--backend", "llamafactory", "--constrain", "json", "template=qwen2_vl")


def test_the_constraint_is_part_of_the_generation_hash(tmp_path: Path):
    from vlm.inference.predict import PredictSpec, run_hashes

    settings = {"model_name_or_path": str(tmp_path), "adapter_name_or_path": None, "template": "qwen2_vl"}
    (tmp_path / "a.json").write_text('{"type": "object", "properties": {"x": {"type": "string"}}}')
    (tmp_path / "b.json").write_text('{"type": "object", "properties": {"y": {"type": "string"}}}')

    def run(**kw):
        return run_hashes(settings, "prompt", PredictSpec(group="g", **kw), "transformers")

    gen, plain = run()
    assert not {"constrain", "schema_hash", "grammar"} & set(gen)  # unconstrained runs keep their old hashes
    assert run(constrain="none")[1] == plain
    made = {kind: run(constrain=kind)[1]["gen_hash"] for kind in ("json", "schema")}
    made["a"] = run(constrain="schema", json_schema=tmp_path / "a.json")[1]["gen_hash"]
    made["b"] = run(constrain="schema", json_schema=tmp_path / "b.json")[1]["gen_hash"]
    assert len({plain["gen_hash"], *made.values()}) == 5
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.json").write_text((tmp_path / "a.json").read_text())
    assert run(constrain="schema", json_schema=tmp_path / "sub" / "a.json")[1]["gen_hash"] == made["a"]
    assert run(constrain="schema")[0]["grammar"]["any_order"] is True
    # the grammar as compiled (json: any keys) and the library's version are part of the setting
    assert run(constrain="schema")[0]["grammar"]["strict_mode"] is True
    assert run(constrain="json")[0]["grammar"]["strict_mode"] is False
    assert run(constrain="schema")[0]["grammar"]["version"] == metadata.version("xgrammar")


def test_the_constrain_option_offers_the_library_choices():
    from vlm.commands.inference import Constrain

    assert tuple(c.value for c in Constrain) == CONSTRAINTS


def _store_groups(path: Path, runs: dict[str, tuple[str, dict]]) -> None:
    """Groups written as `vlm predict` writes them: a run's settings, then its rows."""
    gt = {"menu": [{"nm": "Tea", "price": "5,000"}], "total": {"total_price": "5,000"}}
    with Store(path, write=True) as s:
        for group, (raw, generation) in runs.items():
            s.log_run(group, "test", {"generation": generation})
            from vlm.inference.parsing import parse_prediction

            rows = []
            for d in ("a", "b", "c"):
                parsed = parse_prediction(raw)
                rows.append(Prediction(group, "test", d, raw, parsed.value, parsed.error, parsed.repairs, gt, 0.1,
                                       "model", None, "prompt", json.dumps(generation)))
            s.put_many(rows)


def test_evaluate_shows_format_and_content_apart_only_when_constraints_differ(tmp_path: Path):
    from vlm.evaluation.compare import evaluate_groups, groups_from_store
    from vlm.evaluation.report import markdown

    store = tmp_path / "p.sqlite"
    right = json.dumps({"menu": [{"nm": "Tea", "price": "5,000"}], "total": {"total_price": "5,000"}})
    _store_groups(store, {
        "vanilla": ("Here is the receipt: menu Tea 5,000, total 5,000", {"max_new_tokens": 64}),
        "vanilla-schema": ('{"total": {"total_price": "5,000"}}', {"max_new_tokens": 64, "constrain": "schema",
                                                                   "schema_source": "cord"}),
        "finetuned": (right, {"max_new_tokens": 64}),
        "finetuned-2": (right, {"max_new_tokens": 64}),
    })
    plain = evaluate_groups(groups_from_store(store, ["finetuned", "finetuned-2"], "test"), resamples=100)
    assert "format_content" not in plain and "constrain" not in plain["groups"]["finetuned"]
    assert "Format and content" not in markdown(plain) and "[constrain" not in markdown(plain)

    result = evaluate_groups(groups_from_store(store, ["vanilla", "vanilla-schema", "finetuned"], "test"),
                             resamples=100)
    fc = result["format_content"]
    assert [fc["groups"][g]["constrain"] for g in fc["groups"]] == ["none", "schema (cord)", "none"]
    assert fc["groups"]["vanilla"]["format"]["valid_json"] == 0.0
    assert fc["groups"]["vanilla-schema"]["format"]["in_schema"] == 1.0
    # Reading apart from format: the constrained base model found the total but not the menu.
    assert fc["groups"]["vanilla-schema"]["content"]["f1"] == 2 * 1 / (1 + 3)  # 1 right of 1 predicted, 3 true
    assert fc["all_valid_documents"] == 0  # the unconstrained base model wrote no valid answer
    pair = evaluate_groups(groups_from_store(store, ["vanilla-schema", "finetuned"], "test"), resamples=100)
    both = pair["format_content"]
    assert both["all_valid_documents"] == 3
    assert both["groups"]["finetuned"]["content_where_all_valid"]["f1"] == 1.0
    md = markdown(pair)
    assert "| vanilla-schema [constrain: schema (cord)] | finetuned [constrain: none] |" in md
    assert "content, 3 docs all valid: field F1" in md


def test_bounded_strings_stay_json_strings():
    """xgrammar 0.2.7 writes a maxLength string as characters that include raw control characters, which JSON
    forbids; the grammar vlm applies leaves them out (and, like xgrammar's rule, has no escapes: see constrain.py)."""
    import xgrammar as xgr
    from xgrammar.testing import _is_grammar_accept_string as accepts

    from vlm.inference.constrain import Constraint, grammar_text

    schema = {"type": "object", "properties": {"nm": {"type": "string", "maxLength": 4}}, "additionalProperties": False}
    lenient = xgr.Grammar.from_json_schema(json.dumps(schema), any_order=True)
    assert accepts(lenient, '{"nm":"a\x16"}')  # the library's own rule: not JSON
    with pytest.raises(ValueError):
        json.loads('{"nm":"a\x16"}')
    grammar = xgr.Grammar.from_ebnf(grammar_text(Constraint("schema", schema, "test")))
    for text, ok in [('{"nm":"a\x16"}', False), ('{"nm":"a\tb"}', False), ('{"nm":"a\nb"}', False),
                     ('{"nm":"éabc"}', True), ('{"nm":"éabcd"}', False), ('{"nm":"abcd"}', True),
                     ('{"nm":"abcde"}', False), ('{"nm":"a\\"b"}', False), ('{"nm":"a"b"}', False)]:
        assert accepts(grammar, text) is ok, text
        if ok:
            jsonschema.validate(json.loads(text), schema)
