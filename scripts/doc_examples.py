#!/usr/bin/env python
"""Write the example output in docs/data.md from a real run of the demo's data steps, or check that it is current.

    python scripts/doc_examples.py           # run scripts/demo_data.sh in a temp folder, rewrite the blocks
    python scripts/doc_examples.py --check   # the same run; exit 1 with a diff when a block is out of date

Each generated block in docs/data.md sits between ``<!-- example: NAME -->`` and ``<!-- /example -->`` and holds
the command as the demo runs it, then what it printed (scripts/demo_data.sh keeps it in $OUT/examples/NAME.txt).
The temp folder is shown as ``demo_out``, the folder ``make demo`` uses, and elapsed times as 0:00:00, so a block
changes only when what the commands print changes.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "data.md"
COMMANDS = {  # what scripts/demo_data.sh runs, as a reader would type it
    "export": "vlm save-cord-dataset-in-sharegpt-format demo_out/data --source demo_out/cord-sample "
              "--prompt-file demo_out/prompt.txt",
    "stats": "vlm stats demo_out/demo.yaml",
}
BLOCK = re.compile(r"(<!-- example: (\w+) -->\n)(.*?)(<!-- /example -->)", re.S)
TIME = re.compile(r"\b\d+:\d\d:\d\d\b")


def run_demo_data(out: Path) -> dict[str, str]:
    """Run the demo's data steps into ``out``; each example's output, with the paths and times made stable."""
    env = {**os.environ, "DEMO_DIR": str(out), "COLUMNS": "120"}
    r = subprocess.run(["bash", str(ROOT / "scripts" / "demo_data.sh")], cwd=ROOT, env=env, capture_output=True,
                       text=True)
    if r.returncode:
        sys.exit(f"scripts/demo_data.sh failed ({r.returncode}):\n{r.stderr[-3000:]}")
    found = {}
    for name in COMMANDS:
        text = (out / "examples" / f"{name}.txt").read_text(encoding="utf-8")
        text = text.replace(str(out.resolve()), "demo_out").replace(str(out), "demo_out")
        found[name] = TIME.sub("0:00:00", text).strip("\n")
    return found


def render(doc: str, outputs: dict[str, str]) -> str:
    def block(m: re.Match) -> str:
        name = m.group(2)
        if name not in outputs:
            sys.exit(f"{DOC}: unknown example {name!r}; known: {', '.join(COMMANDS)}")
        return f"{m.group(1)}```console\n$ {COMMANDS[name]}\n{outputs[name].rstrip()}\n```\n{m.group(4)}"

    return BLOCK.sub(block, doc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when docs/data.md is out of date")
    args = parser.parse_args()
    doc = DOC.read_text(encoding="utf-8")
    if len(BLOCK.findall(doc)) != len(COMMANDS):
        sys.exit(f"{DOC} must hold one generated block per example: {', '.join(COMMANDS)}")
    with tempfile.TemporaryDirectory(prefix="vlm-doc-examples-") as tmp:
        new = render(doc, run_demo_data(Path(tmp) / "demo"))
    if new == doc:
        print(f"{DOC.relative_to(ROOT)} is current")
        return 0
    if args.check:
        sys.stdout.writelines(difflib.unified_diff(doc.splitlines(True), new.splitlines(True), "docs/data.md (now)",
                                                   "docs/data.md (what the demo prints)"))
        print("\nout of date: run python scripts/doc_examples.py", file=sys.stderr)
        return 1
    DOC.write_text(new, encoding="utf-8")
    print(f"rewrote the examples in {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
