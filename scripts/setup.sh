#!/usr/bin/env bash
# Creates .venv at the repository root with the exact pinned environment (requirements.lock).
# Safe to rerun: it only installs what is missing. VLM_VENV and VLM_LOCK pick another environment:
# `make setup-vllm` builds .venv-vllm from requirements-vllm.lock (vLLM 0.26, torch 2.11).
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
if ! command -v uv >/dev/null 2>&1 || [ "$(uv --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  python3 -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi
UV="$(command -v uv || echo "$(python3 -m site --user-base)/bin/uv")"
VENV="${VLM_VENV:-.venv}"
LOCK="${VLM_LOCK:-requirements.lock}"
# The system python3 (>=3.11); uv must not try to download an interpreter on an offline machine.
"$UV" venv --quiet --allow-existing --python "$(command -v python3)" "$VENV"
# PyPI's torch (a CUDA build that runs fine on the CPU) with its matching torchvision: the local
# CPU-only torch wheel has no torchvision, and transformers needs torchvision for Qwen2-VL's processor.
# --compile-bytecode: where PYTHONDONTWRITEBYTECODE is set (as on our CI machines), nothing would ever be
# cached, and every process would compile its imports again: 0.3 s per `vlm evaluate`, about 5 s per
# llamafactory-cli run (measured). Stale .pyc files are only ever ignored, never used.
"$UV" pip install --quiet --compile-bytecode --python "$VENV/bin/python" -r "$LOCK"
"$UV" pip install --quiet --python "$VENV/bin/python" --no-deps -e .
"$VENV/bin/python" -m compileall -q src/vlm >/dev/null
echo "environment ready: $VENV/bin/vlm" >&2
