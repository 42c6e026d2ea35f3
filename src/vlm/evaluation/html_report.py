"""report.html: one self-contained file to read a comparison by eye.

The page holds the metric table (with the bootstrap intervals), the charts and the consistency tables, then
one row per document: a receipt thumbnail (click for the full image), and the ground truth beside each
group's prediction as aligned key/value rows coloured correct, wrong, missing or extra, with a character
diff. Filters: fixed, broken, worst N, inconsistent, label-error candidates; sortable by any group's nTED, or
by its least confident field where the answers have token scores (each field then shows its confidence as a
coloured bar and a number).

Everything is inlined (no server, no CDN): charts and thumbnails as base64, the documents as JSON in a
``<script type="application/json">`` block that a small script renders a screenful at a time, so 1,000
documents open quickly. Thumbnails are small JPEGs (about 4 KB); the full-size image is a link to the image
file (relative to the report), which is not copied. HTML comes only from the Jinja2 template, autoescaped.
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Any

from PIL import Image

from vlm.data.records import load_documents
from vlm.evaluation.confidence_report import confidence_lines
from vlm.evaluation.docdiff import align
from vlm.evaluation.report import metric_rows
from vlm.evaluation.trust import trust_tables
from vlm.inference.store import Store

THUMB_SIZE = (120, 220)
THUMB_QUALITY = 60
FIXED_MARGIN = 0.1  # nTED change that counts as fixed or broken, as in vlm.evaluation.compare.fixed_and_broken
TEMPLATES = Path(__file__).parent / "templates"


def image_paths(store_path: Path, names: list[str], split: str) -> dict[str, Path]:
    """Document id -> image file, from the dataset each group's latest ``vlm predict`` run read."""
    found: dict[str, Path] = {}
    with Store(store_path) as store:
        runs = [store.last_run(name, split) for name in names]
    for run in runs:
        settings = (run or {}).get("settings") or {}
        if not settings.get("dataset_dir") or not settings.get("dataset"):
            continue
        try:
            docs = load_documents(settings["dataset_dir"], settings["dataset"])
        except Exception:  # noqa: BLE001 - the dataset moved or changed: the report just has no thumbnails
            continue
        for d in docs:
            if d.get("images") and d["id"] not in found:
                found[d["id"]] = Path(d["images"][0])
    return found


def thumbnail(path: Path) -> str | None:
    """A small JPEG of the image as a data URI, or None when the file cannot be read."""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            img.thumbnail(THUMB_SIZE)
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=THUMB_QUALITY, optimize=True)
    except (OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _png_uri(data: bytes | None) -> str | None:
    return None if not data else "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def document_rows(result: dict[str, Any], candidates: list[dict[str, Any]], images: dict[str, Path],
                  out_dir: Path, aligned: dict | None = None) -> list[dict[str, Any]]:
    """One JSON-ready entry per document: scores, verdicts, aligned field rows, thumbnail and image link.

    ``aligned``: alignments already made, by (group, document index); each is taken out as it is used.
    """
    aligned = {} if aligned is None else aligned
    names = list(result["per_document"])
    flagged: dict[str, list[str]] = {}
    for c in candidates:
        flagged.setdefault(c["id"], []).append(c["field"])
    docs = []
    for k, base in enumerate(result["per_document"][names[0]]):
        per = [result["per_document"][n][k] for n in names]
        table: dict[str, dict[str, Any]] = {}
        for gi, row in enumerate(per):
            rows = aligned.pop((names[gi], k), None)
            for a in align(row.get("ground_truth"), row.get("prediction")) if rows is None else rows:
                entry = table.setdefault(a["path"], {"k": a["path"], "gt": a["gt"], "c": [None] * len(names)})
                if a["status"] != "missing":
                    entry["c"][gi] = {"t": a["pred"], "s": a["status"], **({"d": a["diff"]} if "diff" in a else {})}
                    conf = (row.get("field_confidence") or {}).get(a.get("pred_path"))
                    if conf is not None:
                        entry["c"][gi]["p"] = conf
                else:
                    entry["c"][gi] = {"t": None, "s": "missing"}
        image = images.get(base["id"])
        docs.append({
            "id": base["id"],
            "ted": [round(r["ted_accuracy"], 4) for r in per],
            "verdict": [r.get("verdict", "unchecked") for r in per],
            "failed": [[c for c, s in r.get("checks", {}).items() if s == "fail"] for r in per],
            "valid": [bool(r["valid"]) for r in per],
            "conf": [None if r.get("confidence") is None else round(r["confidence"], 4) for r in per],
            "label": flagged.get(base["id"], []),
            "rows": list(table.values()),
            "thumb": thumbnail(image) if image else None,
            "full": Path(os.path.relpath(image, out_dir)).as_posix() if image else None,
        })
    return docs


def render_html(result: dict[str, Any], candidates: list[dict[str, Any]], images: dict[str, Path], out_dir: Path,
                charts: dict[str, bytes | None], aligned: dict | None = None) -> str:
    """The report as one HTML string, rendered by the Jinja2 template with autoescaping on."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    headers, rows = metric_rows(result)
    names = list(result["groups"])
    data = {"groups": names, "baseline": result["baseline"], "margin": FIXED_MARGIN,
            "docs": document_rows(result, candidates, images, out_dir, aligned)}
    return env.get_template("report.html.j2").render(
        documents=result["documents"], baseline=result["baseline"], groups=names, metric_headers=headers,
        metric_rows=rows, trust=trust_tables(result), gt_consistent=result["ground_truth_checks"]["consistent"],
        charts={k: _png_uri(v) for k, v in charts.items()}, candidates=len(candidates), data=data,
        scored=[any(r.get("field_confidence") is not None for r in result["per_document"][n]) for n in names],
        confidence=confidence_lines(result),
    )
