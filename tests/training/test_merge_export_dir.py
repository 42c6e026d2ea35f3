"""vlm merge names the problem when --export-dir is a file, and leaves the file alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml


def test_export_dir_that_is_a_file(tmp_path: Path):
    adapter = tmp_path / "run"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8}))
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"model_name_or_path": "some/model", "template": "qwen2_vl",
                                      "finetuning_type": "lora", "output_dir": str(adapter)}))
    target = tmp_path / "merged"
    target.write_text("my notes\n")
    r = subprocess.run([sys.executable, "-m", "vlm.cli", "merge", str(config), "--export-dir", str(target)],
                       capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2, r.stderr
    assert f"--export-dir {target} is a file, not a folder" in r.stderr
    assert "File exists" not in r.stderr
    assert target.read_text() == "my notes\n"
