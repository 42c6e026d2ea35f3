"""export-predictions flags what vlm evaluate scores: the answer parsed again, not the parse an older vlm stored."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from vlm.evaluation.consistency import flags
from vlm.inference.parsing import parse_prediction
from vlm.inference.store import Prediction, Store

GT = {"menu": [{"nm": "Teh", "price": "8,000"}], "sub_total": {"subtotal_price": "8,000"},
      "total": {"total_price": "8,000"}}
# A fenced answer: today's parser reads it; say an older vlm stored no parse for it (an unparseable answer).
RAW = "Here is the receipt:\n```json\n" + json.dumps(GT) + "\n```"
STALE = [
    (None, "no JSON object found", []),  # the older parse failed
    ({"total": {"total_price": "1"}, "sub_total": {"subtotal_price": "9,999"}}, None, []),  # a different object
]


def test_export_flags_come_from_the_parse_evaluate_uses(tmp_path):
    store = tmp_path / "p.sqlite"
    with Store(store, write=True) as s:
        s.put_many([Prediction("g", "test", f"d{k}", RAW, parsed, error, repairs, GT, 0.1)
                    for k, (parsed, error, repairs) in enumerate(STALE)])
    out = tmp_path / "out.jsonl"
    r = subprocess.run([sys.executable, "-m", "vlm.cli", "export-predictions", "--group", "g", str(out), "--store",
                        str(store)], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    now = parse_prediction(RAW)
    assert now.valid and flags(now.value)["verdict"] == "consistent"
    for row in rows:
        assert row["parsed"] == now.value and row["parse_error"] is None and row["repairs"] == now.repairs
        assert row["flags"] == flags(now.value)
