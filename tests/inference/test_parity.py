"""``vlm merge --verify`` and ``vlm parity``: two ways of running a model compared token by token, for real.

A width-128 Qwen2-VL is fine-tuned with LoRA through the real ``vlm train`` until it reproduces its four receipts
(confident answers: the winning logit leads by several units), then merged by the real ``llamafactory-cli export``:

* the merged model writes exactly what its adapter writes on all four validation documents;
* a merge corrupted after the fact (one merged weight tensor doubled in the safetensors) is caught, exit 1, with
  the first differing token and both models' margins there;
* ``vlm parity`` of the transformers backend against itself catches a wrong ``image_max_pixels`` (exit 1), and
  passes (4 of 4 byte-identical) when the second side's setting changes nothing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import copy_run, run_vlm

from vlm.commands.common import NEAR_TIE as CLI_NEAR_TIE
from vlm.inference.parity import NEAR_TIE, first_divergence, verdict

SHORT = ["--verify-max-new-tokens", "64"]  # the receipts' answers are 39 tokens
# Scaling this merged weight by 2 changes the greedy answer of every receipt (measured: margins 2-11 logits on
# the adapter's side). A doubled MLP weight of layer 1 did not: the answers stayed byte-identical.
CORRUPT = "model.layers.0.self_attn.o_proj.weight"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, lora_run: Path) -> Path:
    """Medium model, four receipts, a LoRA adapter that has learned them (conftest's ``lora_run``), and its merge
    checked by --verify."""
    root = copy_run(lora_run, tmp_path_factory.mktemp("parity") / "run")
    r = run_vlm("merge", "run.yaml", "--export-dir", "merged", "--verify", "4", *SHORT, "--json", cwd=root)
    (root / "merge.json").write_text(r.stdout)
    (root / "merge.rc").write_text(str(r.returncode))
    (root / "merge.err").write_text(r.stderr)
    return root


def _corrupt(merged: Path, out: Path, key: str) -> Path:
    """A copy of the merged model with one weight tensor doubled."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(merged, out)
    weights = load_file(out / "model.safetensors")
    weights[key] = weights[key] * 2
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return out


@pytest.mark.slow
def test_merged_model_matches_its_adapter(run: Path):
    assert (run / "merge.rc").read_text() == "0", (run / "merge.err").read_text()[-3000:]
    report = json.loads((run / "merge.json").read_text())["verify"]
    assert (report["a"], report["b"]) == ("adapter", "merged")
    assert report["documents"] == 4 and report["matches"] == 4 and report["drifts"] == 0 and report["ok"]
    assert all(d["verdict"] == "match" and d["tokens_a"] == d["tokens_b"] > 10 for d in report["per_document"])
    assert report["max_logit_diff"] < 1e-3  # measured 0.0: both load the base in float32 and add the same LoRA
    assert (run / "merged" / "config.json").is_file()


@pytest.mark.slow
def test_corrupted_merge_is_caught(run: Path, tmp_path: Path):
    bad = _corrupt(run / "merged", tmp_path / "bad", CORRUPT)
    r = run_vlm("merge", str(run / "run.yaml"), "--export-dir", str(bad), "--verify-only", "--verify", "4", *SHORT,
                "--json", cwd=run)
    assert r.returncode == 1, r.stderr[-3000:]
    report = json.loads(r.stdout)["verify"]
    assert report["drifts"] >= 1 and not report["ok"] and report["matches"] < 4
    for doc in report["per_document"]:
        if doc["verdict"] == "drift":
            assert doc["token_a"] != doc["token_b"] and doc["position"] is not None
            assert doc["margin_a"] > NEAR_TIE  # the adapter was sure of its token: not a near-tie
    assert report["max_logit_diff"] > NEAR_TIE
    text = run_vlm("merge", str(run / "run.yaml"), "--export-dir", str(bad), "--verify-only", "--verify", "4",
                   *SHORT, cwd=run)
    assert text.returncode == 1 and "drift at token" in text.stdout, text.stderr[-2000:]


@pytest.mark.slow
def test_damage_that_leaves_the_answers_alone_shows_in_the_logits(run: Path, tmp_path: Path):
    """Doubling a layer-1 MLP weight leaves the confident answers byte-identical (so the check passes), but the
    report's logit difference shows the merged model is not the adapter's function (measured 3.5 to 4.7)."""
    bad = _corrupt(run / "merged", tmp_path / "bad", "model.layers.1.mlp.down_proj.weight")
    r = run_vlm("merge", str(run / "run.yaml"), "--export-dir", str(bad), "--verify-only", "--verify", "4", *SHORT,
                "--json", cwd=run)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)["verify"]
    assert report["matches"] == 4 and report["max_logit_diff"] > 1.0


@pytest.mark.slow
def test_no_verify_skips_the_check(run: Path, tmp_path: Path):
    r = run_vlm("merge", str(run / "run.yaml"), "--export-dir", str(tmp_path / "m"), "--no-verify", "--json", cwd=run)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["verify"] is None and (tmp_path / "m" / "config.json").is_file()


@pytest.mark.slow
def test_parity_catches_a_wrong_image_max_pixels(run: Path):
    args = ["parity", "--config", "run.yaml", "--backends", "transformers,transformers", "--limit", "4",
            "--max-new-tokens", "64", "--json"]
    wrong = run_vlm(*args, "--set-b", "image_max_pixels=3136", cwd=run)
    assert wrong.returncode == 1, wrong.stderr[-3000:]
    report = json.loads(wrong.stdout)
    assert report["drifts"] >= 1 and not report["ok"]
    assert "image_max_pixels=3136 differs from training" in wrong.stderr
    same = run_vlm(*args, "--set-b", "infer_dtype=float32", cwd=run)  # what auto picks on a CPU: no difference
    assert same.returncode == 0, same.stderr[-3000:]
    assert json.loads(same.stdout)["matches"] == 4


def test_first_divergence_and_verdict():
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence([1, 2], [1, 2, 7]) == 2  # one side stopped at max_new_tokens
    assert verdict(0.1, 0.3, NEAR_TIE) == "near-tie"
    assert verdict(0.1, 2.0, NEAR_TIE) == "drift"
    assert verdict(None, 0.1, NEAR_TIE) == "drift"  # a token outside vLLM's top 20 is far from a tie
    assert CLI_NEAR_TIE == NEAR_TIE  # --near-tie's default, kept off vlm --help's imports


def test_parity_refuses_what_it_cannot_compare(toy_dataset: Path):
    r = run_vlm("parity", "--model", "some/model", "--dataset-dir", str(toy_dataset), "--backends", "transformers")
    assert r.returncode == 2 and "--backends takes two backends" in r.stderr
    r = run_vlm("parity", "--model", "some/model", "--dataset-dir", str(toy_dataset),
                "--backends", "transformers,llamafactory")
    assert r.returncode == 2 and "not 'llamafactory'" in r.stderr


@pytest.mark.slow  # two vlm children that import the prediction stack (about 4 s each)
def test_verify_names_what_is_missing(tmp_path: Path):
    """--verify-only without a merged model, and a run without a validation split: one line and a hint each,
    before any model is loaded."""
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({"r": 8}))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dataset_info.json").write_text(json.dumps({"cord_train": {"file_name": "cord_train.json"}}))
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({"model_name_or_path": str(tmp_path / "base"), "template": "qwen2_vl",
                                  "finetuning_type": "lora", "dataset": "cord_train",
                                  "dataset_dir": str(tmp_path / "data"), "output_dir": str(tmp_path / "adapter")}))
    merged = tmp_path / "merged"
    r = run_vlm("merge", str(config), "--export-dir", str(merged), "--verify-only", cwd=tmp_path)
    assert r.returncode == 2 and f"no merged model (config.json) in {merged}" in r.stderr, r.stderr
    merged.mkdir()
    (merged / "config.json").write_text("{}")
    r = run_vlm("merge", str(config), "--export-dir", str(merged), "--verify-only", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "cannot verify the merge: dataset 'cord_validation'" in r.stderr
    assert "--no-verify" in r.stderr
    # a merge that could not be verified is refused before it runs: nothing is written to its export dir
    fresh = tmp_path / "fresh-merge"
    r = run_vlm("merge", str(config), "--export-dir", str(fresh), cwd=tmp_path)
    assert r.returncode == 2 and "cannot verify the merge: dataset 'cord_validation'" in r.stderr, r.stderr
    assert not fresh.exists()
