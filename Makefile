# The two commands in the README: `make demo` and `make test`. Each sets everything up first.
.PHONY: setup demo test test-fast bench clean

setup: .venv/.setup-done

.venv/.setup-done: requirements.lock pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $@

demo: setup
	HF_HUB_OFFLINE=1 bash scripts/demo.sh

test: setup
	HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q -p no:cacheprovider

test-fast: setup
	HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q -p no:cacheprovider -m "not slow"

bench: setup
	.venv/bin/python bench/bench_metrics.py
	.venv/bin/python bench/bench_export.py

clean:
	rm -rf demo_out runs .pytest_cache
