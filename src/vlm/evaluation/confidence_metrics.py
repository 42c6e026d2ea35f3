"""Is a confidence any good: how well it ranks right fields above wrong ones, and how well it is calibrated.

Numpy and scipy only (scikit-learn would be a large dependency for a few lines). Every function takes
field scores and 0/1 labels (1: the field is correct); intervals come from a bootstrap over *documents*
(``doc``: each field's document index), since the fields of one document are not independent.

* ``auroc``: the probability that a random correct field scores above a random wrong one (ties count
  half), the Mann-Whitney statistic; weighted, so a bootstrap draw is a weight per field.
* ``ece``: expected calibration error over ``BINS`` equal-width bins: the mean gap between confidence and
  accuracy, weighted by the share of fields in each bin; ``reliability`` gives the bins for the diagram.
* ``risk_coverage``: keep the most confident fields first; risk = share wrong among those kept. AURC is
  the mean risk over every coverage k/n (lower is better).
* ``isotonic``: a monotone map from score to probability of being right (scipy's pool-adjacent-violators).
* ``threshold_for``: the lowest score threshold whose kept fields reach a precision.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

BINS = 10


def _tie_groups(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The order that sorts ``scores`` ascending, and the start of each run of equal scores in it."""
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    return order, starts


def _auroc_sorted(pos: np.ndarray, neg: np.ndarray, starts: np.ndarray) -> Any:
    """AUROC from per-field positive and negative weights already in score order (ties grouped at ``starts``);
    the weights may be rows of several draws at once (then one AUROC per row, NaN where a class is absent)."""
    p, n = np.add.reduceat(pos, starts, axis=-1), np.add.reduceat(neg, starts, axis=-1)
    total_p, total_n = p.sum(axis=-1), n.sum(axis=-1)
    below = np.cumsum(n, axis=-1) - n  # negative weight strictly below each run of ties
    with np.errstate(invalid="ignore", divide="ignore"):
        value = (p * (below + 0.5 * n)).sum(axis=-1) / (total_p * total_n)
    if np.ndim(value) == 0:
        return float(value) if total_p > 0 and total_n > 0 else None
    return np.where((total_p > 0) & (total_n > 0), value, np.nan)


def auroc(scores: Any, labels: Any, weights: Any = None) -> float | None:
    """AUROC of ``scores`` for ``labels`` (None when only one class is present)."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, float)
    if not len(scores):
        return None
    w = np.ones_like(scores) if weights is None else np.asarray(weights, float)
    order, starts = _tie_groups(scores)
    return _auroc_sorted((w * labels)[order], (w * (1 - labels))[order], starts)


def doc_draws(n_docs: int, resamples: int, seed: int, chunk: int = 32) -> Any:
    """Bootstrap draws of documents, ``chunk`` at a time: (draws, n_docs) counts of each document per draw.
    In chunks, so memory stays small however many fields the documents hold."""
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        yield (rng.multinomial(n_docs, np.full(n_docs, 1.0 / n_docs), size=size) if n_docs
               else np.zeros((size, 0), dtype=int))


def doc_weights(doc: np.ndarray, n_docs: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, fields): each field's weight in a bootstrap draw of documents (how often its document was drawn)."""
    return np.concatenate([counts[:, doc] for counts in doc_draws(n_docs, resamples, seed)])


def auroc_ci(scores: Any, labels: Any, doc: Any, resamples: int = 1000, seed: int = 0) -> list[float] | None:
    """95% percentile interval of AUROC over a bootstrap of documents."""
    scores, labels, doc = np.asarray(scores, float), np.asarray(labels, float), np.asarray(doc, int)
    if not len(scores):
        return None
    docs, doc = np.unique(doc, return_inverse=True)
    order, starts = _tie_groups(scores)
    pos, neg, doc = labels[order], 1 - labels[order], doc[order]
    values = np.concatenate([_auroc_sorted(pos * w, neg * w, starts)
                             for w in (counts[:, doc] for counts in doc_draws(len(docs), resamples, seed))])
    values = values[np.isfinite(values)]
    if len(values) < resamples / 2:  # most draws hold one class only: no interval worth printing
        return None
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def reliability(conf: Any, labels: Any, bins: int = BINS) -> list[dict[str, float]]:
    """Per non-empty bin of confidence: its range, field count, mean confidence and accuracy."""
    conf, labels = np.asarray(conf, float), np.asarray(labels, float)
    idx = np.clip((conf * bins).astype(int), 0, bins - 1)
    out = []
    for b in range(bins):
        m = idx == b
        if m.any():
            out.append({"lo": b / bins, "hi": (b + 1) / bins, "fields": int(m.sum()),
                        "confidence": float(conf[m].mean()), "accuracy": float(labels[m].mean())})
    return out


def ece(conf: Any, labels: Any, bins: int = BINS) -> float | None:
    n = len(conf)
    if not n:
        return None
    return float(sum(b["fields"] / n * abs(b["confidence"] - b["accuracy"]) for b in reliability(conf, labels, bins)))


def risk_coverage(scores: Any, labels: Any, points: int = 200) -> tuple[float | None, list[list[float]]]:
    """(AURC, [[coverage, accuracy of kept], ...]): most confident first. Fields of equal score cannot be told
    apart, so within a tie each is counted at the tie's mean accuracy (the expectation over the tie's orders): the
    input order, e.g. a document's extra fields listed last, must not move the curve."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, float)
    n = len(scores)
    if not n:
        return None, []
    order = np.argsort(-scores, kind="stable")
    ranked, right = scores[order], labels[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])  # where each run of equal scores begins
    sizes = np.diff(np.r_[starts, n])
    right = np.repeat(np.add.reduceat(right, starts) / sizes, sizes)
    kept_right = np.cumsum(right)
    k = np.arange(1, n + 1)
    risk = 1 - kept_right / k
    step = max(1, n // points)
    curve = [[float(i / n), float(1 - risk[i - 1])] for i in range(step, n + 1, step)]
    if curve[-1][0] != 1.0:
        curve.append([1.0, float(1 - risk[-1])])
    return float(risk.mean()), curve


def isotonic(scores: Any, labels: Any) -> dict[str, list[float]]:
    """A monotone step map score -> P(correct), as knots ``{"x": [...], "y": [...]}`` (``apply_isotonic``)."""
    from scipy.optimize import isotonic_regression

    scores, labels = np.asarray(scores, float), np.asarray(labels, float)
    order, starts = _tie_groups(scores)
    x = scores[order][starts]
    counts = np.diff(np.r_[starts, len(scores)])
    y = np.add.reduceat(labels[order], starts) / counts
    fit = isotonic_regression(y, weights=counts, increasing=True).x
    return {"x": x.tolist(), "y": fit.tolist()}


def apply_isotonic(knots: dict[str, list[float]], scores: Any) -> np.ndarray:
    """The map at ``scores``: linear between knots, flat outside them."""
    return np.interp(np.asarray(scores, float), knots["x"], knots["y"])


def threshold_for(scores: Any, labels: Any, target: float) -> dict[str, Any] | None:
    """The lowest threshold t such that fields scoring >= t have precision >= ``target`` (the largest such
    kept set); None when no threshold reaches it."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, float)
    if not len(scores):
        return None
    order = np.argsort(-scores, kind="stable")
    s, right = scores[order], np.cumsum(labels[order])
    k = np.arange(1, len(s) + 1)
    ends = np.r_[s[1:] != s[:-1], True]  # a threshold keeps all tied fields or none
    ok = np.flatnonzero(ends & (right / k >= target))
    if not len(ok):
        return None
    i = ok[-1]
    return {"threshold": float(s[i]), "kept": int(k[i]), "precision": float(right[i] / k[i]),
            "coverage": float(k[i] / len(s))}


def coverage_at_precision(scores: Any, labels: Any, target: float, weights: Any = None) -> float:
    """The largest share of (weighted) fields a confidence threshold keeps at precision >= ``target`` on these
    fields (0 when none): how much of a model's output could be accepted unread, thresholds chosen here."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, float)
    w = np.ones_like(scores) if weights is None else np.asarray(weights, float)
    if not len(scores) or w.sum() <= 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    s, kept, right = scores[order], np.cumsum(w[order]), np.cumsum((w * labels)[order])
    ends = np.r_[s[1:] != s[:-1], True] & (kept > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ok = np.flatnonzero(ends & (right >= target * kept - 1e-12))
    return float(kept[ok[-1]] / kept[-1]) if len(ok) else 0.0


def coverage_delta_ci(base: dict[str, np.ndarray], other: dict[str, np.ndarray], n_docs: int, target: float,
                      resamples: int = 1000, seed: int = 0) -> list[float]:
    """95% CI of coverage_at_precision(other) - (base) over a paired bootstrap of documents (``doc``: the
    documents' shared indices)."""
    deltas = [coverage_at_precision(other["confidence"], other["label"], target, c[other["doc"].astype(int)])
              - coverage_at_precision(base["confidence"], base["label"], target, c[base["doc"].astype(int)])
              for counts in doc_draws(n_docs, resamples, seed) for c in counts]
    return [float(np.percentile(deltas, 2.5)), float(np.percentile(deltas, 97.5))]


def kept_precision_ci(scores: Any, labels: Any, doc: Any, threshold: float, resamples: int = 1000,
                      seed: int = 0) -> dict[str, Any]:
    """Coverage and precision of the fields scoring >= ``threshold``, each with a 95% document-bootstrap CI."""
    scores, labels, doc = np.asarray(scores, float), np.asarray(labels, float), np.asarray(doc, int)
    keep = (scores >= threshold).astype(float)
    out: dict[str, Any] = {"fields": len(scores), "kept": int(keep.sum()),
                           "coverage": float(keep.mean()) if len(scores) else None,
                           "precision": float((keep * labels).sum() / keep.sum()) if keep.sum() else None}
    if not len(scores):
        return out | {"coverage_ci95": None, "precision_ci95": None}
    docs, doc = np.unique(doc, return_inverse=True)
    # per document: its fields, the kept ones, the kept right ones; a draw is then a weighted sum of documents
    per_doc = np.stack([np.bincount(doc, minlength=len(docs)), np.bincount(doc, keep, len(docs)),
                        np.bincount(doc, keep * labels, len(docs))], axis=1).astype(float)
    sums = np.concatenate([counts @ per_doc for counts in doc_draws(len(docs), resamples, seed)])
    cov = sums[:, 1] / sums[:, 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = sums[:, 2] / sums[:, 1]
    prec = prec[np.isfinite(prec)]
    out["coverage_ci95"] = [float(np.percentile(cov, 2.5)), float(np.percentile(cov, 97.5))]
    out["precision_ci95"] = ([float(np.percentile(prec, 2.5)), float(np.percentile(prec, 97.5))]
                             if len(prec) else None)
    return out


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def reliability_png(groups: dict[str, list[dict[str, float]]]) -> bytes:
    """Accuracy against mean confidence per bin, one line per group, the diagonal for reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4), dpi=120)
    ax.plot([0, 1], [0, 1], ":", color="grey", label="calibrated")
    for name, bins in groups.items():
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("field confidence (bin mean)")
    ax.set_ylabel("share of fields correct")
    ax.set_title("reliability of field confidence", fontsize=9)
    ax.legend(fontsize=7)
    return _png(fig)


def risk_coverage_png(curves: dict[str, list[list[float]]]) -> bytes:
    """Accuracy of the kept fields against coverage, one line per (group, ranking)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    for label, curve in curves.items():
        ax.plot([p[0] for p in curve], [p[1] for p in curve], "--" if "rules" in label else "-", label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("coverage (share of fields kept, most trusted first)")
    ax.set_ylabel("field accuracy of kept")
    ax.set_title("fields kept by token confidence vs by the rule-based ranking", fontsize=9)
    ax.legend(fontsize=7)
    return _png(fig)
