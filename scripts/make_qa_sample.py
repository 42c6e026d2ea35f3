#!/usr/bin/env python
"""Generate an offline, seeded DocVQA-style QA sample: receipt images, a question, accepted answers.

For the forgetting check (``vlm evaluate --task qa``) and its tests; no download. The
layout is the hub's (``OUT/data/{split}-00000-of-00001.parquet``) with columns
``image`` (``{"bytes", "path"}``), ``question`` (a string) and ``answers`` (a list of
accepted answers, as DocVQA has), so it exports with::

    vlm export DIR --source OUT --name docvqa --prompt "Answer with a few words from the document." \\
        --question-column question --target-column answers

Receipts come from ``make_cord_sample.py`` (same content, same renderer); every answer is
printed on its receipt. One question per image, so documents are independent for the
bootstrap.

    python scripts/make_qa_sample.py OUT [--train 24] [--validation 6] [--test 12] [--seed 0] [--force]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_cord_sample as cord  # noqa: E402  (a sibling script, not a package)


def _digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


def qa_pair(doc: dict, rng: random.Random) -> tuple[str, list[str]]:
    """One question about the receipt and its accepted answers (printed forms, and the bare number)."""
    gt, header = doc["gt_parse"], doc["header"]
    menu = gt["menu"] if isinstance(gt["menu"], list) else [gt["menu"]]
    total = gt["total"]["total_price"]
    choices = [
        ("What is the total price?", [total, _digits(total)]),
        ("What is the name of the first item?", [menu[0]["nm"]]),
        ("What is the price of the first item?", [menu[0]["price"], _digits(menu[0]["price"])]),
        ("What is the name of the store?", [header["store"]]),
    ]
    if "subtotal_price" in gt.get("sub_total", {}):
        sub = gt["sub_total"]["subtotal_price"]
        choices.append(("What is the subtotal?", [sub, _digits(sub)]))
    question, answers = rng.choice(choices)
    return question, list(dict.fromkeys(answers))  # unique, in order


def record(seed: int, split: str, index: int) -> tuple[bytes, str, list[str]]:
    rng = cord._doc_rng(seed, f"qa-{split}", index)
    doc = cord.make_doc(rng, index)
    image, *_ = cord._render_plain(doc, rng, "JPEG")
    question, answers = qa_pair(doc, random.Random(f"qa-question:{seed}:{split}:{index}"))
    return image, question, answers


def generate(out_dir, *, train: int = 24, validation: int = 6, test: int = 12, seed: int = 0,
             force: bool = False) -> dict:
    """Build the sample at ``out_dir`` (atomically: a temp folder renamed into place); return row counts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise FileExistsError(f"{out_dir} exists and is not empty; pass --force to replace it")
    counts = {"train": train, "validation": validation, "test": test}
    features = {"image": {"_type": "Image"}, "question": {"dtype": "string", "_type": "Value"},
                "answers": {"feature": {"dtype": "string", "_type": "Value"}, "_type": "Sequence"}}
    schema = pa.schema([pa.field("image", pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])),
                        pa.field("question", pa.string()), pa.field("answers", pa.list_(pa.string()))],
                       metadata={"huggingface": json.dumps({"info": {"features": features}})})
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        (tmp / "data").mkdir()
        for split, n in counts.items():
            if n == 0:
                continue  # datasets cannot read a parquet file with no rows
            rows = [record(seed, split, i) for i in range(n)]
            table = pa.table({"image": [{"bytes": img, "path": None} for img, _, _ in rows],
                              "question": [q for _, q, _ in rows], "answers": [a for _, _, a in rows]}, schema=schema)
            pq.write_table(table, tmp / "data" / f"{split}-00000-of-00001.parquet")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="output folder (gets data/*.parquet)")
    parser.add_argument("--train", type=int, default=24)
    parser.add_argument("--validation", type=int, default=6)
    parser.add_argument("--test", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="replace an existing non-empty OUT")
    args = parser.parse_args(argv)
    try:
        counts = generate(args.out_dir, train=args.train, validation=args.validation, test=args.test,
                          seed=args.seed, force=args.force)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out_dir}: " + " ".join(f"{k}={v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
