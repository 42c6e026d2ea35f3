"""Shared fixtures: the toy Qwen2-VLs built offline and small datasets (helpers.py writes them; tests import their
helpers from there, not from here).

Artefacts that tests only read are built once per run, also under pytest-xdist: the first worker to need one builds
it under a file lock in the run's shared temp folder, the others wait for it and reuse it (``helpers.shared_dir``).
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from helpers import (
    build_tiny_model,
    export_sample,
    make_awkward_data,
    make_toy_dataset,
    shared_dir,
    train_lora_run,
)


def pytest_configure(config) -> None:
    """A shell without job control starts a background job (``make test &``) with SIGINT ignored, and every child
    inherits that: the tests that stop vlm with Ctrl-C would then see it ignored. A handled signal is reset to its
    default in a child at exec, so handling it here gives every vlm and llamafactory-cli the user's default."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests first (a stable sort: otherwise in collection order). Under pytest-xdist (``--dist loadfile
    --no-loadscope-reorder``) the files with long fine-tunes start at once and the many short files fill in behind
    them, so neither worker waits alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised toy Qwen2-VL (scripts/make_tiny_qwen2vl.py), built once per run."""
    return shared_dir(tmp_path_factory, "tiny-model", lambda d: build_tiny_model(d / "tiny-qwen2vl")) / "tiny-qwen2vl"


@pytest.fixture(scope="session")
def medium_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The width-128 toy Qwen2-VL (``make_tiny_qwen2vl.py --size medium``), wide enough to learn four receipts;
    built once per run for every test that fine-tunes it."""
    return shared_dir(tmp_path_factory, "medium-model", lambda d: build_tiny_model(d / "model", "--size", "medium")) / \
        "model"


@pytest.fixture(scope="session")
def lora_run(tmp_path_factory: pytest.TempPathFactory, medium_model: Path) -> Path:
    """The medium model LoRA-trained by ``vlm train`` until it reproduces its four receipts (helpers.train_lora_run),
    once per run for every test that needs a trained adapter (learning, parity). Read only: copy it to write
    (helpers.copy_run)."""
    return shared_dir(tmp_path_factory, "lora-run", lambda d: train_lora_run(d, medium_model))


@pytest.fixture(scope="session")
def sample_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six test receipts from scripts/make_cord_sample.py exported with CORD's real prompt (helpers.export_sample),
    once per run for the prediction tests. Read only."""
    return shared_dir(tmp_path_factory, "sample-export", export_sample) / "data"


@pytest.fixture
def toy_dataset(tmp_path: Path) -> Path:
    """A toy CORD export in ``tmp_path/toy-cord`` (see ``helpers.make_toy_dataset``)."""
    return make_toy_dataset(tmp_path / "toy-cord")


@pytest.fixture(scope="session")
def awkward_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two ShareGPT multimodal datasets beside awkward images (see ``helpers.make_awkward_data``)."""
    return shared_dir(tmp_path_factory, "awkward-data", make_awkward_data)
