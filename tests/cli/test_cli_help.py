"""`vlm --help` and every command's help stay fast: no heavy imports, examples shown."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "datasets", "llamafactory", "peft", "pyarrow", "matplotlib")

PROBE = """
import json, sys
sys.argv = ["vlm", *json.loads(sys.argv[1])]
from vlm.cli import main
try:
    main()
except SystemExit:
    pass
print("\\n" + json.dumps(sorted(m for m in {heavy} if m in sys.modules)))
"""


def _help(args: list[str]) -> tuple[str, list[str]]:
    r = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), json.dumps(args)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text, _, last = r.stdout.rstrip().rpartition("\n")
    return text, json.loads(last)


def _commands() -> list[str]:
    import typer.main

    from vlm.cli import app

    return sorted(typer.main.get_command(app).commands)


def test_top_level_help_imports_nothing_heavy():
    text, heavy = _help(["--help"])
    assert heavy == []
    for command in ("save-cord-dataset-in-sharegpt-format", "register-dataset", "train", "predict", "evaluate"):
        assert command in text


@pytest.mark.parametrize("command", _commands())
def test_command_help_has_examples_and_no_heavy_imports(command: str):
    text, heavy = _help([command, "--help"])
    assert heavy == [], f"{command} --help imported {heavy}"
    assert "Examples" in text and f"vlm {command}" in text


def test_groups_take_several_values():
    from vlm.cli import expand_multi_value_options

    assert expand_multi_value_options(["evaluate", "--groups", "a", "b", "--split", "test"]) == [
        "evaluate", "--groups", "a", "--groups", "b", "--split", "test"]
    assert expand_multi_value_options(["evaluate", "--predictions", "x.jsonl", "--json"]) == [
        "evaluate", "--predictions", "x.jsonl", "--json"]


def test_backend_choices_match_the_library():
    """--backend offers exactly the engines predict knows (the option is an enum; the library keeps a tuple)."""
    from vlm.commands.common import Backend
    from vlm.inference.vllm_backend import BACKENDS

    assert tuple(b.value for b in Backend) == BACKENDS
