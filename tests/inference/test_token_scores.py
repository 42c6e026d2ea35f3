"""`vlm predict` keeps the model's own log-probability of every generated token, with each token's end in the answer.

The stored numbers are checked against a teacher-forced forward pass of the same model over the prompt and the
generated tokens (one document at a time, no padding), while the store was written from left-padded batches of
two. Old stores (without the column) still read, and the generation hash is unchanged, so their answers are
not redone; ``--overwrite`` adds the scores. vLLM's output shape is read from a recorded fixture.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import ENV, VLM, export_sample, shared_dir

from vlm.inference.store import Store
from vlm.inference.token_scores import TokenScores, pack, token_ends, unpack
from vlm.inference.vllm_backend import generated

MAX_NEW = 24


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """Four test receipts from the sample generator, exported (once per run; tests only read it)."""
    return shared_dir(tmp_path_factory, "token-scores-export", lambda d: export_sample(d, test=4)) / "data"


def _predict(model: Path, data: Path, store: Path, *extra: str) -> dict:
    r = subprocess.run([*VLM, "predict", "--group", "g", "--backend", "transformers", "--model", str(model),
                        "--dataset-dir", str(data), "--split", "test", "--store", str(store), "--work-dir",
                        str(store.parent / "work"), "--max-new-tokens", str(MAX_NEW), "--batch-size", "2", "--json",
                        *extra, "template=qwen2_vl", "image_max_pixels=16384", "cutoff_len=1024",
                        "infer_dtype=float32"], env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def _teacher_forced(model_dir: Path, data: Path, records: list[dict], constrain: str = "none"
                    ) -> list[tuple[str, list[int], list[float]]]:
    """(text, ids, log-probabilities) of greedy answers recomputed one document at a time: greedy ids from a plain
    generate (held to the grammar when ``constrain`` is not none), then one forward pass over prompt + answer ids:
    the model's own probabilities, whatever the grammar allowed."""
    import torch

    from vlm.inference.constrain import GrammarMasks, resolve_constraint
    from vlm.inference.transformers_backend import TransformersGenerator
    from vlm.lf.data import read_dataset_info

    settings = {"model_name_or_path": str(model_dir), "template": "qwen2_vl", "dataset_dir": str(data),
                "dataset": "cord_test", "cutoff_len": 1024, "image_max_pixels": 16384, "infer_dtype": "float32",
                "adapter_name_or_path": None}
    gen = TransformersGenerator(settings, read_dataset_info(str(data))[1], MAX_NEW, 1)
    tok, model, stop = gen.encoder.tokenizer, gen.model, set(gen.encoder.stop_token_ids)
    masks = None
    if constrain != "none":
        masks = GrammarMasks(resolve_constraint(constrain), tok, model.get_output_embeddings().weight.shape[0],
                             gen.encoder.stop_token_ids)
    out = []
    for record in records:
        inputs = gen.encoder.batch([record], model)
        with torch.inference_mode():
            seq = model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False,
                                 logits_processor=[masks.processor()] if masks else None,
                                 eos_token_id=list(stop), pad_token_id=tok.pad_token_id)
        prompt_len = inputs["input_ids"].shape[1]
        ids = seq[0, prompt_len:].tolist()
        ids = ids[: next((i + 1 for i, t in enumerate(ids) if t in stop), len(ids))]
        full = torch.tensor([inputs["input_ids"][0].tolist() + ids])
        forced = {**inputs, "input_ids": full, "attention_mask": torch.ones_like(full)}
        if "mm_token_type_ids" in inputs:  # answer tokens are text
            forced["mm_token_type_ids"] = torch.cat(
                [inputs["mm_token_type_ids"], torch.zeros((1, len(ids)), dtype=inputs["mm_token_type_ids"].dtype)], 1)
        with torch.inference_mode():
            logits = model(**forced).logits[0, prompt_len - 1: prompt_len - 1 + len(ids)].float()
        lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids)[:, None])[:, 0].tolist()
        out.append((tok.decode(ids, skip_special_tokens=True), ids, lp))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("constrain", ["none", "schema"])
def test_stored_logprobs_equal_a_teacher_forced_forward_pass(tmp_path: Path, tiny_model: Path, exported: Path,
                                                             constrain: str):
    """Also under --constrain: xgrammar masks the logits in place, and generate hands its processors the tensor it
    would keep as the raw logits; the stored numbers must still be the model's, not the grammar's."""
    store = tmp_path / "preds.sqlite"
    _predict(tiny_model, exported, store, "--constrain", constrain)
    with Store(store) as s:
        rows = {p.doc_id: p for p in s.load("g", "test")}
    records = json.loads((exported / "cord_test.json").read_text())
    reference = _teacher_forced(tiny_model, exported, records, constrain)
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(tiny_model)
    for record, (text, ids, lp) in zip(records, reference):
        row = rows[record["id"]]
        assert row.raw == text
        assert row.scores is not None and len(row.scores) == len(ids) > 0
        assert max(abs(a - b) for a, b in zip(row.scores.logprobs, lp)) < 1e-4
        assert row.scores.ends == tuple(len(tok.decode(ids[: i + 1], skip_special_tokens=True))
                                        for i in range(len(ids)))
        assert row.scores.ends[-1] == len(row.raw)


def _drop_scores_column(store: Path) -> None:
    """The store as a version before token scores wrote it: no token_scores column."""
    with sqlite3.connect(store) as db:
        db.execute("ALTER TABLE predictions DROP COLUMN token_scores")


@pytest.mark.slow
def test_old_store_reads_without_scores_keeps_its_answers_and_overwrite_adds_them(tmp_path: Path, tiny_model: Path,
                                                                                  exported: Path):
    store = tmp_path / "preds.sqlite"
    first = _predict(tiny_model, exported, store)
    _drop_scores_column(store)
    with Store(store) as s:  # read-only: no migration, rows read as having no scores
        assert [p.scores for p in s.load("g", "test")] == [None] * 4
    again = _predict(tiny_model, exported, store)  # same settings, same generation hash: nothing redone
    assert again["predicted"] == 0 and again["gen_hash"] == first["gen_hash"]
    with Store(store) as s:
        assert all(p.scores is None for p in s.load("g", "test"))
    redo = _predict(tiny_model, exported, store, "--overwrite")
    assert redo["predicted"] == 4
    with Store(store) as s:
        assert all(p.scores is not None and len(p.scores) for p in s.load("g", "test"))
    out = tmp_path / "g.jsonl"
    subprocess.run([*VLM, "export-predictions", "--group", "g", str(out), "--store", str(store)], check=True,
                   capture_output=True, env=ENV)
    row = json.loads(out.read_text().splitlines()[0])
    assert len(row["token_scores"]["logprobs"]) == len(row["token_scores"]["ends"]) > 0


def test_packed_scores_round_trip_at_float32_precision():
    scores = TokenScores((-0.1234567, -5.5, 0.0, -20.25), (1, 1, 4, 4))
    back = unpack(pack(scores))
    assert back.ends == scores.ends
    assert max(abs(a - b) for a, b in zip(back.logprobs, scores.logprobs)) < 1e-6
    assert len(pack(scores)) == 7 + 5 * 4  # one byte per width
    wide = TokenScores((-1.0, -2.0), (300, 301))  # a token of 300 characters: two bytes per width
    assert unpack(pack(wide)) == wide and len(pack(wide)) == 7 + 6 * 2
    assert unpack(None) is None and unpack(b"") is None


class _ByteTokenizer:
    """A tokenizer whose tokens are single UTF-8 bytes: a prefix can stop inside a character."""

    def batch_decode(self, seqs, skip_special_tokens=True):
        return [bytes(t for t in s if t < 256).decode("utf-8", errors="replace") for s in seqs]


def test_token_ends_give_a_split_character_to_the_token_that_completes_it():
    text = "aé}"
    ids = list(text.encode()) + [999]  # 999: a special (stop) token, decoded to nothing
    assert token_ends(_ByteTokenizer(), ids, text) == (1, 1, 2, 3, 3)
    assert token_ends(_ByteTokenizer(), ids, "other") is None


# What vLLM 0.11's LLM.generate returns for one prompt with SamplingParams(logprobs=1), recorded field for field
# (RequestOutput.outputs[0] is a CompletionOutput; each step maps token id -> Logprob(logprob, rank,
# decoded_token) and holds the sampled token beside the top-1 one).
_VLLM_OUTPUT = {
    "text": "{\"a\":1}",
    "token_ids": [ord(c) for c in "{\"a\":1}"] + [999],
    "logprobs": [{123: [-0.01, 1, "{"]}, {34: [-0.2, 1, "\""]}, {97: [-1.5, 2, "a"], 98: [-0.3, 1, "b"]},
                 {34: [-0.01, 1, "\""]}, {58: [-0.02, 1, ":"]}, {49: [-0.7, 1, "1"]}, {125: [-0.05, 1, "}"]},
                 {999: [-0.001, 1, ""]}],
}


def _recorded_vllm_output() -> SimpleNamespace:
    steps = [{tok: SimpleNamespace(logprob=v[0], rank=v[1], decoded_token=v[2]) for tok, v in step.items()}
             for step in _VLLM_OUTPUT["logprobs"]]
    return SimpleNamespace(outputs=[SimpleNamespace(text=_VLLM_OUTPUT["text"], token_ids=_VLLM_OUTPUT["token_ids"],
                                                    logprobs=steps)])


def test_vllm_output_gives_the_sampled_tokens_logprobs_and_ends():
    got = generated(_recorded_vllm_output(), _ByteTokenizer())
    assert got.text == "{\"a\":1}"
    assert got.scores.logprobs == (-0.01, -0.2, -1.5, -0.01, -0.02, -0.7, -0.05, -0.001)  # the sampled, not top-1
    assert got.scores.ends == (1, 2, 3, 4, 5, 6, 7, 7)
    no_logprobs = SimpleNamespace(outputs=[SimpleNamespace(text="x", token_ids=[120], logprobs=None)])
    assert generated(no_logprobs, _ByteTokenizer()).scores is None
