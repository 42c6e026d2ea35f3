# The two commands in the README: `make demo` and `make test`. Each sets everything up first.
.PHONY: setup setup-vllm demo lint test test-fast bench clean

setup: .venv/.setup-done

.venv/.setup-done: requirements.lock pyproject.toml setup.py src/vlm/evaluation/_ted.c src/vlm/evaluation/_walk.c scripts/setup.sh
	bash scripts/setup.sh
	touch $@

# Optional, for `vlm predict --backend vllm` on a GPU machine: .venv-vllm with vLLM 0.26 and torch 2.11.
setup-vllm: .venv-vllm/.setup-done

.venv-vllm/.setup-done: requirements-vllm.lock pyproject.toml scripts/setup.sh
	VLM_VENV=.venv-vllm VLM_LOCK=requirements-vllm.lock bash scripts/setup.sh
	touch $@

demo: setup
	HF_HUB_OFFLINE=1 bash scripts/demo.sh

# ruff, then the architecture contracts in pyproject.toml (import-linter; custom types in lint/vlm_contracts.py).
lint: setup
	.venv/bin/ruff check src tests bench scripts lint
	PYTHONPATH=lint .venv/bin/lint-imports --no-cache

# Two pytest-xdist workers; a test file is the unit of work, so a module fixture (a fine-tune shared by a file's
# tests) is built once, and tests/conftest.py puts the files with slow tests first, in collection order.
# PYTEST_WORKERS=0 runs everything in one process.
PYTEST_WORKERS ?= 2
PYTEST = HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q -p no:cacheprovider --durations=25 -n $(PYTEST_WORKERS) --dist loadfile \
	--no-loadscope-reorder

test: setup lint
	$(PYTEST)

test-fast: setup lint
	$(PYTEST) -m "not slow"

bench: setup
	.venv/bin/python bench/bench_metrics.py
	.venv/bin/python bench/bench_export.py

clean:
	rm -rf demo_out runs .pytest_cache
