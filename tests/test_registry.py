"""Dataset registration against LLaMA-Factory 0.9.5's real dataset_info.json."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from vlm.errors import VlmError
from vlm.registry import register_dataset

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "llamafactory-0.9.5-dataset_info.json"


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of LLaMA-Factory's data folder: its dataset_info.json and one exported file."""
    data = tmp_path / "LLaMA-Factory" / "data"
    data.mkdir(parents=True)
    shutil.copy(FIXTURE, data / "dataset_info.json")
    return data


@pytest.fixture
def exported(tmp_path: Path) -> Path:
    path = tmp_path / "export" / "cord_train.json"
    path.parent.mkdir()
    path.write_text(json.dumps([{"messages": [{"role": "user", "content": "<image>x"},
                                             {"role": "assistant", "content": "{}"}], "images": ["a.jpg"]}]))
    return path


def test_fixture_is_the_real_file():
    assert len(json.loads(FIXTURE.read_text())) == 104


def test_register_preserves_every_entry_and_order(checkout: Path, exported: Path):
    before = json.loads((checkout / "dataset_info.json").read_text())
    reg = register_dataset(exported, "cord_train", checkout / "dataset_info.json")
    after = json.loads((checkout / "dataset_info.json").read_text())
    assert reg.changed
    assert list(after)[:104] == list(before) and len(after) == 105
    assert all(after[k] == before[k] for k in before)
    assert after["cord_train"]["file_name"] == str(exported.resolve())  # outside the checkout: absolute
    assert after["cord_train"]["columns"] == {"messages": "messages", "images": "images"}
    # The original bytes are kept as a backup.
    assert (checkout / "dataset_info.json.bak").read_bytes() == FIXTURE.read_bytes()


def test_register_twice_is_a_byte_identical_no_op(checkout: Path, exported: Path):
    info = checkout / "dataset_info.json"
    register_dataset(exported, "cord_train", info)
    first = info.read_bytes()
    reg = register_dataset(exported, "cord_train", info)
    assert not reg.changed and info.read_bytes() == first


def test_same_name_other_file_needs_force(checkout: Path, exported: Path, tmp_path: Path):
    info = checkout / "dataset_info.json"
    register_dataset(exported, "cord_train", info)
    other = tmp_path / "other.json"
    shutil.copy(exported, other)
    with pytest.raises(VlmError, match="different entry"):
        register_dataset(other, "cord_train", info)
    assert register_dataset(other, "cord_train", info, force=True).changed
    assert list(json.loads(info.read_text()))[-1] == "cord_train"


def test_malformed_file_is_left_byte_identical(tmp_path: Path, exported: Path):
    info = tmp_path / "dataset_info.json"
    broken = FIXTURE.read_bytes()[:-40]
    info.write_bytes(broken)
    with pytest.raises(VlmError, match="not valid JSON"):
        register_dataset(exported, "cord_train", info)
    assert info.read_bytes() == broken
    assert not (tmp_path / "dataset_info.json.bak").exists()


def test_default_location_is_beside_the_data(exported: Path):
    reg = register_dataset(exported, "cord_train")
    assert reg.dataset_info == exported.parent / "dataset_info.json"
    assert json.loads(reg.dataset_info.read_text())["cord_train"]["file_name"] == "cord_train.json"


def test_missing_data_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(VlmError, match="not found"):
        register_dataset(tmp_path / "nope.json", "x")


def _register_one(args):
    data_json, name, info = args
    register_dataset(data_json, name, info)
    return name


def test_parallel_registrations_lose_none(checkout: Path, exported: Path):
    info = checkout / "dataset_info.json"
    names = [f"cord_{i}" for i in range(8)]
    with ProcessPoolExecutor(8) as pool:
        assert sorted(pool.map(_register_one, [(exported, n, info) for n in names])) == sorted(names)
    after = json.loads(info.read_text())
    assert len(after) == 104 + 8 and all(n in after for n in names)


def test_cli_register_and_error_exit(checkout: Path, exported: Path):
    vlm = [sys.executable, "-m", "vlm.cli"]
    ok = subprocess.run([*vlm, "register-dataset", str(exported), "--name", "cord_train", "--dataset-info",
                         str(checkout / "dataset_info.json"), "--json"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["changed"] is True
    bad = subprocess.run([*vlm, "register-dataset", str(exported.parent / "missing.json"), "--name", "x"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "not found" in bad.stderr and "Traceback" not in bad.stderr
