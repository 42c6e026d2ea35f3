"""`vlm predict --backend vllm` for real: vLLM on a GPU against the corrected transformers backend.

Skipped unless vLLM is installed and a CUDA GPU is visible (CI has neither). On a GPU machine:
a small random Qwen2-VL (head size 64, bf16) gets a real LoRA fine-tune through ``vlm train``,
then both backends predict the same receipts, with and without the adapter.

The reference is the ``transformers`` backend, which generates with the 3-D M-RoPE image positions
training used (``tests/test_learning.py`` checks it against the model's own processor on the CPU).
It is NOT LLaMA-Factory's do_predict, which under transformers 5.6 gives image tokens 1-D text
positions: on an H100 on 2026-11-24 vLLM (which computes M-RoPE itself) disagreed with do_predict
from the first token on 16 of 16 fine-tuned receipts, which that bug explains. Base-model outputs
must be identical; with the adapter (merged first, as LLaMA-Factory merges it), at least 12 of 16
outputs must agree in their first 8 characters (bf16 on two engines). vLLM's run-time LoRA
(``vllm_lora=true``) is only reported. A second vLLM run resumes with only the missing documents.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ENV, ROOT, VLM

from vlm.inference.vllm_backend import vllm_installed

VLLM_ARGS = ["vllm_enforce_eager=true", "vllm_gpu_util=0.3"]


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not (vllm_installed() and _cuda()), reason="needs vLLM and a CUDA GPU")]


def _run(*args: str, cwd: Path) -> dict:
    r = subprocess.run([*VLM, *args], cwd=cwd, env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout) if "--json" in args else {}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A small model, 16 train and 16 test receipts, and a LoRA adapter trained on them by `vlm train`."""
    root = tmp_path_factory.mktemp("vllm-gpu")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_tiny_qwen2vl.py"), str(root / "model"),
                    "--size", "small"], check=True, capture_output=True)
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_cord_sample.py"), str(root / "sample"),
                    "--train", "16", "--validation", "2", "--test", "16"], check=True, capture_output=True)
    _run("save-cord-dataset-in-sharegpt-format", str(root / "data"), "--source", str(root / "sample"), cwd=root)
    config = {
        "model_name_or_path": str(root / "model"), "stage": "sft", "do_train": True, "finetuning_type": "lora",
        "lora_target": "all", "lora_rank": 8, "template": "qwen2_vl", "dataset": "cord_train",
        "dataset_dir": str(root / "data"), "cutoff_len": 1024, "image_max_pixels": 65536,
        "output_dir": str(root / "adapter"), "overwrite_output_dir": True, "per_device_train_batch_size": 4,
        "num_train_epochs": 40, "learning_rate": 2e-3, "lr_scheduler_type": "constant", "bf16": True,
        "logging_steps": 10, "save_strategy": "no", "report_to": "none", "preprocessing_num_workers": 1,
    }
    (root / "train.yaml").write_text(yaml.safe_dump(config))
    _run("train", str(root / "train.yaml"), cwd=root)
    return root


def _predict(work: Path, group: str, backend: str, *extra: str) -> dict:
    args = ["predict", "--group", group, "--config", str(work / "train.yaml"), "--backend", backend,
            "--store", str(work / "store.sqlite"), "--max-new-tokens", "96", "--json", *extra]
    if backend == "vllm":
        args += VLLM_ARGS
    return _run(*args, cwd=work)


def _texts(work: Path, group: str) -> dict[str, str]:
    out = work / f"{group}.jsonl"
    _run("export-predictions", "--group", group, str(out), "--store", str(work / "store.sqlite"), cwd=work)
    return {row["id"]: row["prediction"] for row in map(json.loads, out.read_text().splitlines())}


def _agreement(a: dict[str, str], b: dict[str, str], chars: int | None = None) -> float:
    """Share of documents whose outputs are identical (or identical in their first ``chars`` characters)."""
    assert a.keys() == b.keys()
    return sum(a[k][:chars] == b[k][:chars] for k in a) / len(a)


def test_vllm_against_transformers(work):
    """Both backends, with and without the adapter, on the same 16 receipts."""
    hf = {}
    for name, extra in (("finetuned", ()), ("vanilla", ("--no-adapter",))):
        result = _predict(work, f"{name}-hf", "transformers", "--batch-size", "8", *extra)
        assert result["backend"] == "transformers" and result["predicted"] == 16
        hf[name] = _texts(work, f"{name}-hf")
    vllm_runs = {"finetuned": ("finetuned", ()), "vanilla": ("vanilla", ("--no-adapter",)),
                 "runtime-lora": ("finetuned", ("vllm_lora=true",))}
    texts = {}
    for name, (reference, extra) in vllm_runs.items():
        result = _predict(work, f"{name}-vllm", "vllm", *extra)
        assert result["backend"] == "vllm" and result["predicted"] == 16
        a, b = hf[reference], _texts(work, f"{name}-vllm")
        texts[name] = (a, b)
        print(f"\n{name}: identical outputs {_agreement(a, b):.0%}, identical first 8 characters "
              f"{_agreement(a, b, chars=8):.0%}, first 2 {_agreement(a, b, chars=2):.0%}; e.g. "
              f"{next(iter(a.values()))[:60]!r} vs {next(iter(b.values()))[:60]!r}")
    assert _agreement(*texts["vanilla"]) == 1.0  # same prompt, template, image size: same greedy output
    assert hf["finetuned"] != hf["vanilla"] and texts["finetuned"][1] != texts["vanilla"][1]  # adapter applied
    assert _agreement(*texts["finetuned"], chars=8) >= 0.75  # merged like LLaMA-Factory merges it: the same model


def test_vllm_resumes_with_only_the_missing_documents(work):
    first = _predict(work, "resume-vllm", "vllm", "--limit", "5")
    assert first["predicted"] == 5
    rest = _predict(work, "resume-vllm", "vllm")
    assert (rest["predicted"], rest["skipped_done"]) == (11, 5)
    again = _predict(work, "resume-vllm", "vllm")
    assert again["predicted"] == 0  # nothing pending: the engine is not even started


def test_vllm_constrained_answers_fit_the_schema(work):
    """--constrain schema on vLLM: its structured outputs get the grammar the transformers backend applies (the
    same xgrammar EBNF), so every finished answer is valid JSON in CORD's schema, and the two backends agree as
    they do unconstrained. An answer still open at the token limit is cut (a random model can run out)."""
    import jsonschema

    from vlm.inference.constrain import cord_json_schema

    texts = {}
    for backend in ("transformers", "vllm"):
        args = ["predict", "--group", f"schema-{backend}", "--config", str(work / "train.yaml"), "--backend",
                backend, "--store", str(work / "store.sqlite"), "--max-new-tokens", "512", "--constrain", "schema",
                "--json", *(VLLM_ARGS if backend == "vllm" else ("--batch-size", "8"))]
        result = _run(*args, cwd=work)
        assert result["constrain"] == "schema (cord)" and result["predicted"] == 16
        texts[backend] = _texts(work, f"schema-{backend}")
    finished = {}
    for backend, answers in texts.items():
        finished[backend] = 0
        for raw in answers.values():
            try:
                value = json.loads(raw)
            except ValueError:
                continue  # cut at --max-new-tokens
            jsonschema.validate(value, cord_json_schema())
            finished[backend] += 1
    print(f"\nconstrained: finished answers {finished}; identical outputs "
          f"{_agreement(texts['transformers'], texts['vllm']):.0%}; e.g. {next(iter(texts['vllm'].values()))[:80]!r}")
    assert finished["vllm"] > 0
    assert _agreement(texts["transformers"], texts["vllm"], chars=8) >= 0.75


def test_vllm_stores_token_scores_close_to_the_transformers_backends(work):
    """vLLM's logprobs=1 of the sampled token, stored as the transformers backend stores its own: on the base
    model (identical greedy outputs) every token's log-probability agrees within bf16 noise, and the token
    ends give back the answer."""
    from vlm.inference.store import Store

    for group, backend in (("scores-hf", "transformers"), ("scores-vllm", "vllm")):
        _predict(work, group, backend, "--no-adapter", *(["--batch-size", "8"] if backend == "transformers" else []))
    with Store(work / "store.sqlite") as store:
        hf = {p.doc_id: p for p in store.load("scores-hf", "test")}
        vl = {p.doc_id: p for p in store.load("scores-vllm", "test")}
    assert hf.keys() == vl.keys() and len(vl) == 16
    for doc_id, row in vl.items():
        assert row.scores is not None and row.scores.ends[-1] == len(row.raw)
        if row.raw == hf[doc_id].raw:
            diffs = [abs(a - b) for a, b in zip(row.scores.logprobs, hf[doc_id].scores.logprobs)]
            # (vLLM may leave the stop token out of its token ids: at most that one token less)
            assert 0 <= len(hf[doc_id].scores) - len(row.scores) <= 1 and max(diffs) < 0.1, (doc_id, max(diffs))


def test_vllm_constrained_answers_of_the_2b_architecture_fit_the_schema(work, tmp_path):
    """The issue's case: a random model with Qwen2-VL-2B's architecture (bench/train_cost_model.py's ``build_2b``:
    151,936 vocabulary rows, 28 layers) predicted by vLLM with --constrain schema. A random model of that size
    writes anything; held to the grammar, every answer that closes within the token limit is CORD-schema JSON."""
    import jsonschema

    sys.path.insert(0, str(ROOT / "bench"))
    from train_cost_model import build_2b

    from vlm.inference.constrain import cord_json_schema

    build_2b(tmp_path / "model-2b")
    config = yaml.safe_load((work / "train.yaml").read_text())
    config.update(model_name_or_path=str(tmp_path / "model-2b"), output_dir=str(tmp_path / "unused"))
    (tmp_path / "2b.yaml").write_text(yaml.safe_dump(config))
    result = _run("predict", "--group", "schema-2b", "--config", str(tmp_path / "2b.yaml"), "--no-adapter",
                  "--backend", "vllm", "--store", str(tmp_path / "store.sqlite"), "--max-new-tokens", "512",
                  "--constrain", "schema", "--json", *VLLM_ARGS, cwd=tmp_path)
    assert result["predicted"] == 16
    from vlm.inference.store import Store

    with Store(tmp_path / "store.sqlite") as store:
        answers = [p.raw for p in store.load("schema-2b", "test")]
    finished = 0
    for raw in answers:
        try:
            value = json.loads(raw)
        except ValueError:
            continue  # still open at --max-new-tokens
        jsonschema.validate(value, cord_json_schema())
        finished += 1
    print(f"\n2B architecture, vLLM, --constrain schema: {finished}/16 answers closed, all in the schema")
    assert finished > 0
