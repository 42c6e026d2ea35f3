"""``vlm sweep --augment``: derived train datasets (originals + N deterministic copies), the axis, and a real run."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import ENV, VLM, export_cord, invoke, make_photo_source, make_toy_dataset, snapshot, write_config

from vlm.errors import VlmError


@pytest.mark.slow  # a vlm child that loads LLaMA-Factory, or photo-sized images: kept out of make test-fast
def test_derived_dataset_is_the_originals_plus_deterministic_copies(tmp_path: Path):
    """From an export made with --augment 1: cord_train_aug2 holds the 4 originals (not the export's copies) and 2
    copies of each, made as export --augment makes them (its copy 0 is the export's file); a rerun changes no byte;
    cord_train_aug0 is the originals alone; the export's files and other registrations are untouched."""
    from vlm.data.augment import POLICIES, AugmentSpec, apply_plan, copy_key, plan_copy
    from vlm.data.augmented_dataset import make_derived, read_base

    n = 4
    source = make_photo_source(tmp_path / "src", n=n, size=(160, 240))
    out = tmp_path / "out"
    r = export_cord(source, out, "--augment", "1")  # medium, seed 0: the sweep's defaults
    assert r.returncode == 0, r.stderr
    before, info_before = snapshot(out), json.loads((out / "dataset_info.json").read_text())
    exported = {rec["id"]: rec for rec in json.loads((out / "cord_train.json").read_text())}
    cfg = {"dataset": "cord_train", "dataset_dir": str(out)}

    base = read_base(cfg)
    originals = [f"train-{k:05d}" for k in range(n)]
    assert [rec["id"] for rec in base.originals] == originals and base.copies_in_base == n
    two = make_derived(base, 2, workers=1)
    assert (two["name"], two["records"], two["copies"]) == ("cord_train_aug2", 3 * n, 2 * n)
    assert (two["made"], two["reused"]) == (n, n)  # copy 0 of each is the export's own file
    records = json.loads((out / "cord_train_aug2.json").read_text())
    assert [rec["id"] for rec in records] == originals + [f"{i}-aug{c}" for i in originals for c in range(2)]
    assert records[:n] == [exported[i] for i in originals]  # the originals, verbatim
    for rec in records[n:]:
        source_id = rec["id"].rsplit("-", 1)[0]
        assert rec["messages"] == exported[source_id]["messages"]  # same target
        assert Path(rec["images"][0]).parent == out / "images" / "train_aug"
    by_id = {rec["id"]: rec for rec in records}
    assert by_id["train-00002-aug0"]["images"] == exported["train-00002-aug0"]["images"]
    # A copy is a pure function of (seed, policy, source and its bytes, copy index).
    src = (out / "images" / "train" / "train-00001.jpg").read_bytes()
    from vlm.fsutil import sha256_bytes

    key = copy_key(AugmentSpec(2), "train-00001", sha256_bytes(src), 1)
    expected = apply_plan(src, plan_copy(POLICIES["medium"], key, 160, 240))
    assert Path(by_id["train-00001-aug1"]["images"][0]).read_bytes() == expected

    after = snapshot(out)
    changed = {k for k in before if after[k] != before[k]} - {"dataset_info.json.bak"}  # registration's backup
    assert changed == {"dataset_info.json", "manifest.json"}  # base file, val/test, every image: the same bytes
    info = json.loads((out / "dataset_info.json").read_text())
    assert {k: v for k, v in info.items() if k in info_before} == info_before
    assert info["cord_train_aug2"]["file_name"] == "cord_train_aug2.json"
    manifest = json.loads((out / "manifest.json").read_text())
    derived = manifest["derived"]["cord_train_aug2"]
    assert derived["base"] == "cord_train" and (derived["augment"]["policy"], derived["augment"]["seed"]) == (
        "medium", 0)
    assert {e["source"] for e in derived["images"].values()} == set(originals) and len(derived["images"]) == 2 * n
    assert manifest["images"] == json.loads(before["manifest.json"])["images"]  # the export's own record kept

    snap = snapshot(out)
    again = make_derived(read_base(cfg), 2, workers=1)
    assert (again["made"], again["reused"], again["changed"]) == (0, 2 * n, False)
    assert snapshot(out) == snap  # byte for byte

    zero = make_derived(base, 0)
    assert zero["name"] == "cord_train_aug0"
    assert json.loads((out / "cord_train_aug0.json").read_text()) == [exported[i] for i in originals]

    r = export_cord(source, out, "--split", "validation")  # a later export keeps the record of derived datasets
    assert r.returncode == 0, r.stderr
    assert set(json.loads((out / "manifest.json").read_text())["derived"]) == {"cord_train_aug0", "cord_train_aug2"}


def test_a_derived_dataset_is_scored_on_its_exports_splits():
    from vlm.data.augmented_dataset import split_dataset_name

    assert split_dataset_name("cord_train", "validation") == "cord_validation"
    assert split_dataset_name("cord_train_aug2", "validation") == "cord_validation"
    assert split_dataset_name("docvqa_train_aug10_heavy_s3", "test") == "docvqa_test"


def _base(tmp_path: Path, **extra) -> tuple[Path, Path]:
    data = make_toy_dataset(tmp_path / "data")
    return data, write_config(tmp_path / "base.yaml", tmp_path / "no-model-needed", data, "saves/run", **extra)


@pytest.mark.slow  # a vlm child that loads LLaMA-Factory, or photo-sized images: kept out of make test-fast
def test_augment_axis_writes_runnable_configs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """--augment 0,2 --print-commands: one config per value, each naming a registered dataset whose file and images
    exist (vlm validate's data checks pass); 0 on an export without copies is its own train dataset."""
    from vlm.training.train import check_config

    monkeypatch.chdir(tmp_path)
    data, base = _base(tmp_path)
    r = invoke("sweep", str(base), "--augment", "0,2", "--lr", "1e-4", "--out-dir", "sweep", "--print-commands",
               "--json")
    assert r.exit_code == 0, r.output
    rows = {Path(row["config"]).stem: row for row in json.loads(r.stdout)}
    assert sorted(rows) == ["base_aug0_lr1e-4", "base_aug2_lr1e-4"]
    info = json.loads((data / "dataset_info.json").read_text())
    sizes = {}
    for stem, row in rows.items():
        cfg = yaml.safe_load(Path(row["config"]).read_text())
        assert cfg["dataset"] == row["dataset"] and cfg["dataset"] in info
        assert (data / info[cfg["dataset"]]["file_name"]).is_file()
        check_config(cfg)  # registered, file there, every image there and whole
        sizes[stem] = (cfg["dataset"], len(json.loads((data / info[cfg["dataset"]]["file_name"]).read_text())))
    assert sizes == {"base_aug0_lr1e-4": ("cord_train", 8), "base_aug2_lr1e-4": ("cord_train_aug2", 24)}
    header = Path(rows["base_aug2_lr1e-4"]["config"]).read_text()
    assert "cord_train_aug2 = the 8 originals of cord_train + 2 augmented copies of each" in header


@pytest.mark.parametrize("case, message", [
    ("no-manifest", "manifest.json not found: --augment derives datasets only from a folder vlm exported"),
    ("other-tool", "manifest.json was not written by vlm export"),
    ("validation", "dataset 'cord_validation' is the validation split; --augment adds copies to train data only"),
    ("missing-image", "train-00003.jpg (the image of train-00003 in"),
    ("jsonl", "dataset 'cord_train' is not a local ShareGPT JSON list (cord_train.jsonl)"),
])
def test_augment_refuses_data_it_cannot_derive_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str,
                                                    message: str):
    monkeypatch.chdir(tmp_path)
    data, base = _base(tmp_path, **({"dataset": "cord_validation"} if case == "validation" else {}))
    if case == "no-manifest":
        (data / "manifest.json").unlink()
    elif case == "other-tool":
        (data / "manifest.json").write_text(json.dumps({"tool": "someone", "splits": {}}))
    elif case == "missing-image":
        (data / "images" / "train" / "train-00003.jpg").unlink()
    elif case == "jsonl":
        records = json.loads((data / "cord_train.json").read_text())
        (data / "cord_train.jsonl").write_text("".join(json.dumps(rec) + "\n" for rec in records))
        info = json.loads((data / "dataset_info.json").read_text())
        info["cord_train"]["file_name"] = "cord_train.jsonl"
        (data / "dataset_info.json").write_text(json.dumps(info))
    before = snapshot(data)
    with pytest.raises(VlmError) as e:
        invoke("sweep", str(base), "--augment", "0,2", "--out-dir", "sweep")
    assert message in e.value.message, e.value.message
    assert e.value.hint
    assert snapshot(data) == before and not (tmp_path / "sweep").exists()


@pytest.mark.slow
def test_augment_sweep_runs_and_ranks_with_a_ci(tmp_path: Path, tiny_model: Path):
    """vlm sweep --augment 0,1 --run on the tiny model: both points train (the aug1 point on twice the records), and
    the leaderboard ranks both runs, the second with its gap to the best and that gap's 95% CI."""
    data = make_toy_dataset(tmp_path / "data")
    base = write_config(tmp_path / "base.yaml", tiny_model, data, "saves/run", num_train_epochs=1, save_steps=8)
    argv = [*VLM, "sweep", str(base), "--augment", "0,1", "--out-dir", "sweep", "--run", "--json",
            "--max-new-tokens", "8", "--checkpoints", "last-1"]
    r = subprocess.run(argv, cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout)
    assert [(p["name"], p["status"]) for p in doc["points"]] == [("base_aug0", "done"), ("base_aug1", "done")]
    steps = {}
    for name in ("aug0", "aug1"):
        state = json.loads((tmp_path / "saves" / f"run_{name}" / "trainer_state.json").read_text())
        steps[name] = state["global_step"]
    assert steps == {"aug0": 8, "aug1": 16}  # one epoch of 8 records, then of 8 + 8 copies
    board = doc["leaderboard"]
    assert {Path(row["config"]).stem for row in board["runs"]} == {"base_aug0", "base_aug1"}
    overall = board["leaderboard"]
    assert {row["run"] for row in overall} == {"saves/run_aug0", "saves/run_aug1"}  # runs are named by output_dir
    assert overall[0]["gap"] is None and overall[0]["best"]
    for row in overall[1:]:
        low, high = row["gap"]["ci95"]
        assert low <= row["gap"]["delta"] <= high
    assert Path(board["leaderboard_file"]) == Path("sweep") / "leaderboard.json"
    assert len(json.loads((tmp_path / "sweep" / "leaderboard.json").read_text())["ranking"]) == len(overall)
