"""How ``vlm select`` shows its ranking: the table, the verdict (tied or not, in words), and selection.png.

The plot puts the validation scores of every checkpoint (field F1, nTED accuracy) above LLaMA-Factory's own
loss curve (``trainer_log.jsonl``: training loss, and eval loss when the run evaluated), on one step axis, so a
checkpoint chosen on the task metric can be seen against the one eval loss would have chosen.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from rich.table import Table

from vlm.fsutil import atomic_write_bytes
from vlm.lf.progress import TRAINER_LOG, parse_lines
from vlm.output import info
from vlm.output import out as stdout

SELECTION_PLOT = "selection.png"
NAMES = {"f1": "field F1", "ted_accuracy": "nTED accuracy", "valid_json": "valid JSON"}


def _name(metric: str) -> str:
    """A metric's label: coverage@0.99 is the share of fields kept at 99% precision (needs token scores)."""
    return NAMES.get(metric, metric)


def _other(metric: str) -> str:
    return "ted_accuracy" if metric == "f1" else "f1"


def _who(row: dict[str, Any], several: bool) -> str:
    name = row["label"] + "".join(f" = {a}" for a in row["aliases"])
    return f"{row['run']} {name}" if several else name


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def table(rows: list[dict[str, Any]], metric: str, several: bool):
    """The ranking as a rich table: the chosen metric first, then the others and the gap to the best."""
    name, other = _name(metric), _other(metric)
    t = Table(title=f"{rows[0]['documents']} documents; ranked by {name}; "
                    "gaps to the best with 95% paired-bootstrap CIs")
    for col in ("#", *(["run"] if several else []), "checkpoint", "step", name, NAMES[other], "valid JSON",
                f"Δ {name} vs best [95% CI]", "note"):
        t.add_column(col, justify="right" if col not in ("run", "checkpoint", "note") else "left")
    for r in rows:
        m = r["metrics"]
        gap = "" if r["gap"] is None else "{:+.3f} [{:+.3f}, {:+.3f}]".format(r["gap"]["delta"], *r["gap"]["ci95"])
        note = "best" if r["best"] else ("tied with the best" if r["tied"] else "")
        if r["reused_from"]:
            note = (note + "; " if note else "") + f"same weights as {r['reused_from']}"
        t.add_row(str(r["rank"]), *([r["run"]] if several else []), _who(r, False),
                  "" if r["step"] is None else str(r["step"]), _num(m[metric]), _num(m[other]),
                  _num(m["valid_json"]), gap, note)
    return t


def verdict(rows: list[dict[str, Any]], metric: str, several: bool) -> list[str]:
    """The winner, and in plain words whether the data can tell it from the runners-up."""
    name, other = _name(metric), NAMES[_other(metric)]
    best = rows[0]
    m = best["metrics"]
    lines = [f"best by {name}: {_who(best, several)}" + (f" (step {best['step']})" if best["step"] is not None else "")
             + f": {name} {_num(m[metric])}, {other} {_num(m[_other(metric)])}"]
    tied = [_who(r, several) for r in rows if r["tied"]]
    if len(rows) == 1:
        lines.append("only one model to choose from.")
    elif tied:
        lines.append(f"statistically tied: the 95% CI of the gap to {_who(best, several)} includes 0 for "
                     f"{', '.join(tied)}. On {best['documents']} documents the data cannot tell them apart; "
                     f"{_who(best, several)} is kept as the highest point estimate. Score more documents to "
                     "separate them.")
    else:
        lines.append(f"not a tie: every other model's gap to it has a 95% CI below 0 ({best['documents']} documents).")
    return lines


def _trainer_log(output_dir: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    path = output_dir / TRAINER_LOG
    records = parse_lines(path.read_text(encoding="utf-8", errors="replace")) if path.is_file() else []
    loss = [(int(r["current_steps"]), float(r["loss"])) for r in records
            if isinstance(r.get("loss"), (int, float)) and "current_steps" in r]
    evals = [(int(r["current_steps"]), float(r["eval_loss"])) for r in records
             if isinstance(r.get("eval_loss"), (int, float)) and "current_steps" in r]
    return loss, evals


def plot_run(output_dir: Path, rows: list[dict[str, Any]], metric: str, split: str) -> Path:
    """F1 and nTED by checkpoint step over the loss curve, one PNG, written atomically to output_dir."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted((r for r in rows if r["step"] is not None), key=lambda r: r["step"])
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(7.5, 6.5), gridspec_kw={"height_ratios": [3, 2]})
    steps = [r["step"] for r in points]
    for key, style in (("f1", "o-"), ("ted_accuracy", "s-")):
        top.plot(steps, [r["metrics"][key] for r in points], style, label=f"{NAMES[key]} ({split})")
    best = rows[0]
    if best["step"] is not None:
        top.axvline(best["step"], color="grey", linestyle=":", label=f"best by {_name(metric)}: {best['label']}")
    for r in points:
        if r["tied"]:
            top.plot([r["step"]], [r["metrics"][metric]], "o", markersize=12, markerfacecolor="none",
                     markeredgecolor="grey")
    top.set_ylim(-0.02, 1.02)
    top.set_ylabel("score")
    top.set_title(f"{best['run']}: {best['documents']} {split} documents per checkpoint"
                  + (" (grey rings: tied with the best)" if any(r["tied"] for r in rows) else ""), fontsize=10)
    top.legend(loc="upper left", fontsize=8)
    top.grid(alpha=0.3)
    loss, evals = _trainer_log(output_dir)
    if loss:
        bottom.plot(*zip(*loss), "-", color="tab:red", label="training loss")
    if evals:
        bottom.plot(*zip(*evals), "o--", color="tab:purple", label="eval loss")
    if loss or evals:
        if min(v for _, v in loss + evals) > 0:
            bottom.set_yscale("log")
        bottom.legend(loc="upper right", fontsize=8)
    else:
        bottom.text(0.5, 0.5, "no trainer_log.jsonl in the output_dir", ha="center", va="center",
                    transform=bottom.transAxes)
    bottom.set_ylabel("loss (LLaMA-Factory)")
    bottom.set_xlabel("training step")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    path = output_dir / SELECTION_PLOT
    atomic_write_bytes(path, buf.getvalue())
    return path


def print_selection(result: dict[str, Any]) -> None:
    """The ranked table and the tie verdict on stdout; the files written on stderr (vlm select, sweep --run)."""
    metric, several = result["metric"], len(result["runs"]) > 1
    stdout.print(table(result["leaderboard"], metric, several))
    for line in verdict(result["leaderboard"], metric, several):
        stdout.print(line, highlight=False)
    if several:
        stdout.print("best of each run: " + "; ".join(f"{r['run']}: {r['winner']['label']}" for r in result["runs"]),
                     highlight=False)
    for run in result["runs"]:
        info(f"wrote {run['selection']}" + (f" and {run['plot']}" if run["plot"] else ""))
    info("use the winner: vlm predict --config CONFIG --checkpoint best ...")
