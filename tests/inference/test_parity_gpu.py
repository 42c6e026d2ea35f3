"""``vlm parity --backends transformers,vllm`` for real: both engines on a GPU, compared token by token.

Skipped unless vLLM is installed and a CUDA GPU is visible (CI has neither; the CPU test of the same comparison is
tests/inference/test_parity.py). The small random Qwen2-VL (head size 64, bf16, what vLLM's kernels need) predicts
8 exported receipts through both backends. tests/inference/test_vllm_gpu.py found base-model outputs identical
between the two; here every difference must at least be a near-tie, and the report's match rate is printed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ENV, ROOT, VLM

from vlm.inference.vllm_backend import vllm_installed


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not (vllm_installed() and _cuda()), reason="needs vLLM and a CUDA GPU")]


def test_transformers_against_vllm(tmp_path: Path):
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_tiny_qwen2vl.py"), str(tmp_path / "model"),
                    "--size", "small"], check=True, capture_output=True)
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_cord_sample.py"), str(tmp_path / "sample"),
                    "--train", "2", "--validation", "8", "--test", "2"], check=True, capture_output=True)
    r = subprocess.run([*VLM, "save-cord-dataset-in-sharegpt-format", str(tmp_path / "data"), "--source",
                        str(tmp_path / "sample")], cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([*VLM, "parity", "--model", str(tmp_path / "model"), "--dataset-dir", str(tmp_path / "data"),
                        "--dataset", "cord_validation", "--backends", "transformers,vllm", "--limit", "8",
                        "--max-new-tokens", "96", "template=qwen2_vl", "image_max_pixels=65536",
                        "vllm_enforce_eager=true", "vllm_gpu_util=0.3", "--json"],
                       cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert r.returncode in (0, 1), r.stderr[-4000:]
    report = json.loads(r.stdout)
    print(f"\ntransformers vs vllm: {report['matches']}/{report['documents']} byte-identical, "
          f"{report['near_ties']} near-ties, {report['drifts']} drifts; {report['seconds']}")
    for doc in report["per_document"]:
        if doc["verdict"] != "match":
            print(f"  {doc['id']}: {doc['verdict']} at {doc['position']}: {doc['token_a']!r} ({doc['margin_a']}) vs "
                  f"{doc['token_b']!r} ({doc['margin_b']})")
    assert report["documents"] == 8
    assert r.returncode == 0 and report["drifts"] == 0  # the same model and inputs: at most rounding
