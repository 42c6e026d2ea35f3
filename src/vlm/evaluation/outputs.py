"""The report files of ``vlm evaluate --output``: every file rendered first, then all moved in together.

The renderers (``report``, ``trust``, ``html_report``, ``qa``) only return text or bytes; this module is the
one place that writes them. All files are written into a temp folder inside the output folder, and moved
into place only once every one of them was written, so a failure (a full disk, a folder where a file
should go) leaves the old report whole instead of half old and half new.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from vlm.errors import VlmError
from vlm.evaluation import confidence_report, html_report, qa, report, trust
from vlm.fsutil import TEMP_MARK, dumps_json


def _metrics_json(result: dict[str, Any], extra: dict[str, Any] | None = None) -> str:
    return dumps_json({k: v for k, v in result.items() if k != "per_document"} | (extra or {}))


def write_files(out_dir: Path, files: dict[str, str | bytes]) -> list[Path]:
    """Write ``files`` (name -> content) into ``out_dir``: all of them, or, on any error, none."""
    out_dir = Path(out_dir)
    targets = [out_dir / name for name in files]
    for t in targets:
        if t.is_dir() and not t.is_symlink():
            raise VlmError(f"{t} is a directory, so the report cannot be written there",
                           hint="move that directory away, or pass another --output folder.")
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".report{TEMP_MARK}", dir=out_dir))
    try:
        for name, content in files.items():
            data = content.encode("utf-8") if isinstance(content, str) else content
            with open(staging / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(staging / name, 0o644)
        for name, target in zip(files, targets):
            os.replace(staging / name, target)  # same folder's file system: each rename is atomic
    except OSError as e:
        raise VlmError(f"cannot write the report in {out_dir}: {e.strerror or e} ({e.filename or out_dir})",
                       hint="free some space or choose another --output folder; the old report files were kept.") \
            from None
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)
    return targets


def write_extraction_report(result: dict[str, Any], out_dir: Path, candidates: list[dict[str, Any]], limit: int,
                            store: Path | None = None, split: str = "test", aligned: dict | None = None) -> list[Path]:
    """report.md, metrics.json, per_document.csv, chart.png, coverage.png and report.html in ``out_dir``; with
    field confidence also reliability.png and risk_coverage.png.

    ``store``: the prediction store the groups came from, to find each document's image (none: no thumbnails).
    ``aligned``: what ``trust.label_error_candidates`` aligned, reused (and emptied) by the HTML report.
    """
    out_dir = Path(out_dir)
    chart, coverage = report.chart_png(result), trust.coverage_png(result)
    images = html_report.image_paths(Path(store), list(result["groups"]), split) if store else {}
    confidence = confidence_report.charts(result)  # reliability.png, risk_coverage.png where answers have scores
    charts = {"comparison": chart, "coverage": coverage, "reliability": confidence.get("reliability.png"),
              "risk_coverage": confidence.get("risk_coverage.png")}
    return write_files(out_dir, {
        "report.md": report.markdown(result) + confidence_report.markdown(result)
        + trust.markdown(result, candidates, limit),
        "metrics.json": _metrics_json(result),
        "per_document.csv": report.per_document_csv(result),
        "chart.png": chart,
        "coverage.png": coverage,
        **confidence,
        "report.html": html_report.render_html(result, candidates, images, out_dir.resolve(), charts, aligned),
    })


def write_qa_report(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """The forgetting check's report.md, metrics.json (with the verdicts), per_document.csv and chart.png."""
    return write_files(Path(out_dir), {
        "report.md": qa.markdown(result),
        "metrics.json": _metrics_json(result, {"verdicts": qa.forgetting_verdicts(result)}),
        "per_document.csv": qa.per_document_csv(result),
        "chart.png": report.chart_png(result, keys=("anls", "exact_match")),
    })
