"""Shared fixtures: a tiny Qwen2-VL built offline and small datasets (helpers.py writes them; tests import their
helpers from there, not from here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import build_tiny_model, make_awkward_data, make_toy_dataset


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised toy Qwen2-VL (scripts/make_tiny_qwen2vl.py), built once per session."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "tiny-qwen2vl")


@pytest.fixture
def toy_dataset(tmp_path: Path) -> Path:
    """A toy CORD export in ``tmp_path/toy-cord`` (see ``helpers.make_toy_dataset``)."""
    return make_toy_dataset(tmp_path / "toy-cord")


@pytest.fixture(scope="session")
def awkward_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two ShareGPT multimodal datasets beside awkward images (see ``helpers.make_awkward_data``)."""
    return make_awkward_data(tmp_path_factory.mktemp("data"))
