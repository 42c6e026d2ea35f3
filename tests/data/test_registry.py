"""Dataset registration against LLaMA-Factory 0.9.5's real dataset_info.json."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from helpers import ROOT

from vlm.data.registry import register_dataset
from vlm.errors import VlmError

# shared/ sits beside the repository (as in a fresh clone on CI).
FIXTURE = ROOT.parent / "shared" / "fixtures" / "llamafactory-0.9.5-dataset_info.json"


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


# ---------------------------------------------------------------- issue 12


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vlm.cli", *args], capture_output=True, text=True)


def test_symlinked_dataset_info_is_written_through(tmp_path: Path, exported: Path):
    """D4: the link stays a link; the file it points to gets the entry, atomically, with its backup beside it."""
    real = tmp_path / "shared" / "dataset_info.json"
    real.parent.mkdir()
    real.write_text('{"other": {"file_name": "x.json"}}\n')
    link = exported.parent / "dataset_info.json"
    link.symlink_to(real)
    r = _cli("register-dataset", str(exported), "--name", "cord_train")
    assert r.returncode == 0, r.stderr
    assert link.is_symlink() and link.resolve() == real
    info = json.loads(real.read_text())
    assert list(info) == ["other", "cord_train"]
    # LLaMA-Factory joins file_name to the link's folder; the target's folder differs, so it is absolute.
    assert info["cord_train"]["file_name"] == str(exported.resolve())
    assert (real.parent / "dataset_info.json.bak").read_text() == '{"other": {"file_name": "x.json"}}\n'

    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "gone" / "dataset_info.json")
    r = _cli("register-dataset", str(exported), "--name", "cord_train", "--dataset-info", str(dangling))
    assert r.returncode == 2 and "dangling symlink" in r.stderr and str(dangling) in r.stderr
    assert dangling.is_symlink() and not (tmp_path / "gone").exists()


@pytest.mark.parametrize("content, ok, reason", [
    (b"[]\n", True, None),
    (b"  [ ]  ", True, None),
    (b'\xef\xbb\xbf[{"messages": [{"role": "user", "content": "x"}]}]', False, "byte-order mark"),
    (b'[{"messages": [{"role": "user", "content": "<image>x"}], "images": ["a.jpg"]}, {"messages": [{"ro', False,
     "invalid JSON"),
    (b'[{"messages": [{"role": "user", "content": "x"}]}, {"text": "no messages"}]', False,
     "record 1 is not a ShareGPT record: it has no 'messages' list"),
    (b'[{"messages": [{"role": "user", "content": "x"}], "images": "a.jpg"}]', False, "'images' must be a list"),
    (b'{"messages": []}', False, "not a JSON list"),
])
def test_data_json_is_parsed_and_checked(tmp_path: Path, content: bytes, ok: bool, reason: str | None):
    """D17: the whole file is parsed (streaming) and every record's shape is checked."""
    data = tmp_path / "d.json"
    data.write_bytes(content)
    r = _cli("register-dataset", str(data), "--name", "d")
    assert (r.returncode == 0) is ok, r.stderr
    if reason:
        assert reason in r.stderr and "Traceback" not in r.stderr
        assert not (tmp_path / "dataset_info.json").exists()


def test_streaming_parser_reads_a_large_file_in_small_chunks(tmp_path: Path):
    from vlm.data.registry import iter_json_list

    records = [{"messages": [{"role": "user", "content": "é" * (i % 50)}], "images": [f"{i}.jpg"], "n": -1.5e-7 * i}
               for i in range(2000)]
    data = tmp_path / "big.json"
    data.write_text(json.dumps(records, indent=1, ensure_ascii=False), encoding="utf-8")
    assert list(iter_json_list(data, chunk=7)) == records


@pytest.mark.parametrize("name", ["it's", 'say"hi', "a$b", "cord\r", "a..b", ".."])
def test_dataset_names_are_restricted(exported: Path, name: str):
    """D18: only letters, digits, '_', '-' and '.', and no '..'."""
    r = _cli("register-dataset", str(exported), "--name", name)
    assert r.returncode == 2 and "invalid dataset name" in r.stderr
    assert not (exported.parent / "dataset_info.json").exists()
