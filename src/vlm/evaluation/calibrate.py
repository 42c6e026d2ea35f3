"""``vlm calibrate``: fit one group's field confidence on a split (validation by default) and write the file.

The group is read and scored as ``vlm evaluate`` reads it (``compare.evaluate_groups``), so the fields, their
correctness and their confidence are the ones the report shows; ``vlm.evaluation.calibration`` fits them and
finds the threshold. The file is written atomically, and only when the group has scored fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlm.errors import VlmError
from vlm.evaluation import calibration
from vlm.evaluation.compare import evaluate_groups, group_from_file, groups_from_store
from vlm.evaluation.confidence_report import field_table


def calibrate_group(output: Path, target: float, method: str = "isotonic", store: Path | None = None,
                    group: str | None = None, predictions: Path | None = None,
                    split: str = "validation") -> dict[str, Any]:
    """Fit the calibration of ``group`` (from ``store``) or of a prediction file, write it to ``output``."""
    if (group is None) == (predictions is None):
        raise VlmError("calibrate one group", hint="pass --group NAME (from the store) or --predictions FILE.")
    if output.is_dir():
        raise VlmError(f"{output} is a directory", hint="name the JSON file to write, e.g. runs/calibration.json.")
    loaded = groups_from_store(store, [group], split) if group is not None else [group_from_file(predictions)]
    result = evaluate_groups(loaded, resamples=100)
    name = loaded[0].name
    table = field_table(loaded[0], result["per_document"][name])
    if table is None or not len(table["label"]):
        raise VlmError(f"group {name!r} on {split} has no fields with token scores to fit",
                       hint="predict it with this version (vlm predict --overwrite), with the transformers or "
                            "vllm backend.")
    cal = calibration.fit(table, target, method)
    source = {"group": name, "split": split, "store": str(store) if group is not None else None,
              "predictions": str(predictions) if predictions is not None else None}
    calibration.write(output, cal, source)
    return cal | {"output": str(output), "fitted_on": source}
