"""The example output in docs/data.md is what the demo's commands print today (scripts/doc_examples.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_docs_examples_are_current():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "doc_examples.py"), "--check"], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 0, f"{r.stdout[-4000:]}\n{r.stderr[-2000:]}"
