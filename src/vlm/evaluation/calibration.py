"""``vlm calibrate``: field confidence fitted to field correctness on the validation split, and a threshold.

The fit maps a field's confidence (``vlm.evaluation.confidence``) to the probability that it is right:

* ``isotonic`` (default): a monotone step map (scipy's pool-adjacent-violators), no shape assumed;
* ``temperature``: ``sigmoid(logit(c) / T)``, one parameter fitted by log-loss, for few fields.

Either keeps the ranking of the fields, so the threshold is chosen on the raw confidence: the lowest one
whose kept validation fields reach ``target_precision``. Below ``min_fields(target)`` scored fields (three
times 1/(1 - target): with fewer, one error more or less moves precision past the target) or when no
threshold reaches the target, the file says why and has no threshold. ``vlm evaluate --calibration FILE``
then reports, on the test split, the coverage and the precision at the threshold with document-bootstrap CIs
(``confidence_report.apply_calibration``), and says when the target is not reached within the CI.

``calibrate_group`` reads and scores the group as ``vlm evaluate`` does (``compare.evaluate_groups``), so
the fields, their correctness and their confidence are the ones the report shows; the file is written
atomically, and only when the group has scored fields.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from vlm.errors import VlmError
from vlm.evaluation import confidence_metrics as cm
from vlm.evaluation.compare import evaluate_groups, group_from_file, groups_from_store
from vlm.evaluation.confidence import DEFAULT, REPAIRED_FACTOR
from vlm.evaluation.confidence_report import field_table, min_fields
from vlm.fsutil import atomic_write_json

METHODS = ("isotonic", "temperature")
FORMAT = 1


def _temperature(conf: np.ndarray, y: np.ndarray) -> float:
    from scipy.optimize import minimize_scalar

    c = np.clip(conf, 1e-6, 1 - 1e-6)
    logit = np.log(c / (1 - c))

    def loss(log_t: float) -> float:
        p = np.clip(1 / (1 + np.exp(-logit / math.exp(log_t))), 1e-9, 1 - 1e-9)
        return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())

    return float(math.exp(minimize_scalar(loss, bounds=(-5, 5), method="bounded").x))


def calibrated(cal: dict[str, Any], conf: Any) -> np.ndarray:
    """P(correct) of fields with confidence ``conf`` under the fitted calibration."""
    conf = np.asarray(conf, float)
    if cal["method"] == "isotonic":
        return cm.apply_isotonic(cal["isotonic"], conf)
    c = np.clip(conf, 1e-6, 1 - 1e-6)
    return 1 / (1 + np.exp(-np.log(c / (1 - c)) / cal["temperature"]))


def fit(table: dict[str, np.ndarray], target: float, method: str = "isotonic") -> dict[str, Any]:
    """The calibration of one group's field table (``confidence_report.field_table``) at ``target`` precision."""
    if method not in METHODS:
        raise VlmError(f"unknown calibration method {method!r}", hint=f"choose one of: {', '.join(METHODS)}.")
    if not 0 < target < 1:
        raise VlmError(f"--target-precision {target} is not between 0 and 1", hint="e.g. --target-precision 0.99")
    conf, y = table["confidence"], table["label"]
    out: dict[str, Any] = {"format": FORMAT, "method": method, "signal": DEFAULT, "repaired_factor": REPAIRED_FACTOR,
                           "target_precision": target, "fields": len(y), "documents": len(np.unique(table["doc"])),
                           "accuracy": float(y.mean()) if len(y) else None, "threshold": None}
    if len(y) < min_fields(target):
        out["reason"] = (f"too few fields: {len(y)} scored, {min_fields(target)} needed to tell a precision of "
                         f"{target:g} apart")
        return out
    if method == "isotonic":
        out["isotonic"] = cm.isotonic(conf, y)
    else:
        out["temperature"] = _temperature(conf, y)
    out["ece_before"] = cm.ece(conf, y)
    out["ece_after"] = cm.ece(calibrated(out, conf), y)
    found = cm.threshold_for(conf, y, target)
    if found is None:
        out["reason"] = f"no confidence threshold keeps fields at precision {target:g} on this split"
        return out
    out.update(threshold=found["threshold"], validation={k: found[k] for k in ("kept", "precision", "coverage")})
    return out


def write(path: Path, cal: dict[str, Any], source: dict[str, Any]) -> Path:
    atomic_write_json(Path(path), cal | {"fitted_on": source, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                        time.gmtime())})
    return Path(path)


def read(path: Path) -> dict[str, Any]:
    import json

    try:
        cal = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise VlmError(f"cannot read the calibration file {path}: {e}",
                       hint="pass a file written by vlm calibrate.") from None
    if not isinstance(cal, dict) or cal.get("format") != FORMAT or "target_precision" not in cal:
        raise VlmError(f"{path} is not a calibration file written by vlm calibrate",
                       hint="write one with vlm calibrate --group NAME --output FILE.")
    if cal.get("signal") != DEFAULT or cal.get("repaired_factor") != REPAIRED_FACTOR:
        raise VlmError(f"{path} was fitted on another confidence ({cal.get('signal')}) than this version reports "
                       f"({DEFAULT})", hint="fit it again with vlm calibrate.")
    return cal


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
    cal = fit(table, target, method)
    source = {"group": name, "split": split, "store": str(store) if group is not None else None,
              "predictions": str(predictions) if predictions is not None else None}
    write(output, cal, source)
    return cal | {"output": str(output), "fitted_on": source}
