"""A small prediction store with receipt images, for the consistency and report.html tests.

Six receipts, two groups. By construction (each named in ``EXPECTED``): the fine-tune fixes doc2 and doc3
(nTED up by 0.1 or more) and breaks doc1; vanilla's doc0 (nTED 0.977) and the fine-tune's doc1 do not add
up; both groups read doc5's total as 25,000 where the ground truth says 25,500 (a label-error candidate).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

GTS = [
    {"menu": [{"nm": "Kopi Susu", "cnt": "2", "unitprice": "22,000", "price": "44,000"},
              {"nm": "Roti Bakar", "cnt": "1", "price": "25,000"}],
     "sub_total": {"subtotal_price": "69,000", "tax_price": "6,900"},
     "total": {"total_price": "75,900", "cashprice": "100,000", "changeprice": "24,100"}},
    {"menu": {"nm": "Nasi Goreng", "cnt": "1 x", "unitprice": "35.000", "price": "35.000"},
     "total": {"total_price": "35.000"}},
    {"menu": [{"nm": "Es Teh", "cnt": "3", "price": "24,000"}, {"nm": "Sate Ayam", "cnt": "1", "price": "30,000"}],
     "sub_total": {"subtotal_price": "54,000", "discount_price": "-4,000"},
     "total": {"total_price": "50,000", "menuqty_cnt": "4"}},
    {"menu": [{"nm": "Ramen", "cnt": "1", "price": "60,000"}],
     "sub_total": {"subtotal_price": "60,000", "service_price": "3,000"}, "total": {"total_price": "63,000"}},
    {"menu": [{"nm": "Croissant", "cnt": "2", "price": "54,000"}],
     "sub_total": {"subtotal_price": "54,000"}, "total": {"total_price": "54,000"}},
    {"menu": [{"nm": "Teh Tarik", "cnt": "1", "price": "25,000"}], "total": {"total_price": "25,500"}},
]


def _with(doc: dict, path: tuple, value) -> dict:
    out = copy.deepcopy(doc)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


VANILLA = [
    json.dumps(_with(GTS[0], ("total", "total_price"), "79,500")),  # inconsistent: total != 69,000 + 6,900
    json.dumps(GTS[1]),
    "the receipt shows some food",  # not JSON
    "{}",  # nothing: no check applies
    json.dumps(GTS[4]),
    json.dumps(_with(GTS[5], ("total", "total_price"), "25,000")),
]
FINETUNED = [
    json.dumps(GTS[0]),
    json.dumps({"menu": {"nm": "Nasi Gorang", "cnt": "1 x", "unitprice": "35.000", "price": "53.000"},
                "total": {"total_price": "53.000"}}),  # inconsistent: 1 x 35.000 != 53.000; nTED 0.878
    json.dumps(GTS[2]),
    "```json\n" + json.dumps(GTS[3]) + "\n```",  # one parse repair
    json.dumps(GTS[4]),
    json.dumps(_with(GTS[5], ("total", "total_price"), "25,000")),
]
EXPECTED = {"fixed": [2, 3], "broken": [1], "inconsistent": [1], "label": [5]}  # positions among the six


def expected_ids(kind: str, repeat: int = 1) -> list[str]:
    return [f"doc{i}" for i in range(len(GTS) * repeat) if i % len(GTS) in EXPECTED[kind]]


def char_scores(raw: str, seed: int):
    """Token scores for ``raw`` as if each character were one token, with probabilities between 0.3 and 1
    that vary by character and ``seed`` (a stand-in for what vlm predict stores; the tokens are real in
    tests/inference/test_token_scores.py)."""
    import math

    from vlm.inference.token_scores import TokenScores

    probs = [0.3 + 0.7 * (((seed * 7 + k * 13) % 11) / 10) for k in range(len(raw))]
    return TokenScores(tuple(math.log(min(p, 1.0)) for p in probs), tuple(range(1, len(raw) + 1)))


def make_store(root: Path, repeat: int = 1, scores: bool = False) -> Path:
    """``root/predictions.sqlite`` with groups vanilla-model and finetuned-model on split test, and the
    images and dataset_info.json their logged runs point to; ``repeat`` copies of the six receipts
    (doc ids doc0, doc1, ...). ``scores``: the fine-tune's answers carry token scores (``char_scores``).
    Returns the store's path."""
    from PIL import Image, ImageDraw

    from vlm.inference.parsing import parse_prediction
    from vlm.inference.store import Prediction, Store

    data = root / "data"
    (data / "images").mkdir(parents=True, exist_ok=True)
    records = []
    gts = GTS * repeat
    for i, gt in enumerate(gts):
        image = data / "images" / f"doc{i}.jpg"
        img = Image.new("RGB", (300, 420 + 20 * (i % 6)), (250, 248, 240))
        draw = ImageDraw.Draw(img)
        for line, text in enumerate(json.dumps(gt).split(", ")):
            draw.text((10, 10 + 14 * line), text[:48], fill=(30, 30, 30))
        img.save(image, quality=85)
        records.append({"id": f"doc{i}", "messages": [{"role": "user", "content": "<image>x"},
                                                      {"role": "assistant", "content": json.dumps(gt)}],
                        "images": [str(image.resolve())]})
    (data / "cord_test.json").write_text(json.dumps(records), encoding="utf-8")
    (data / "dataset_info.json").write_text(json.dumps({"cord_test": {"file_name": "cord_test.json"}}))
    store = root / "predictions.sqlite"
    with Store(store, write=True) as s:
        for group, raws in (("vanilla-model", VANILLA), ("finetuned-model", FINETUNED)):
            s.log_run(group, "test", {"settings": {"dataset_dir": str(data), "dataset": "cord_test"}})
            rows = []
            for i, (raw, gt) in enumerate(zip(raws * repeat, gts)):
                p = parse_prediction(raw)
                sc = char_scores(raw, i) if scores and group == "finetuned-model" else None
                rows.append(Prediction(group, "test", f"doc{i}", raw, p.value, p.error, p.repairs, gt, scores=sc))
            s.put_many(rows)
    return store
