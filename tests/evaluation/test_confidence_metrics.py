"""The numbers that say whether a confidence is any good, against their definitions computed the slow way."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from vlm.evaluation import calibration
from vlm.evaluation import confidence_metrics as cm
from vlm.evaluation.confidence_report import apply_calibration


def _pairs_auroc(scores, labels, weights) -> float:
    """AUROC by counting every (right, wrong) pair, ties half, each pair weighted by both fields' weights."""
    num = den = 0.0
    for (s1, y1, w1), (s0, y0, w0) in itertools.product(zip(scores, labels, weights), repeat=2):
        if y1 == 1 and y0 == 0:
            num += w1 * w0 * (1.0 if s1 > s0 else 0.5 if s1 == s0 else 0.0)
            den += w1 * w0
    return num / den


@pytest.mark.parametrize("seed", range(5))
def test_auroc_counts_pairs_with_ties_and_weights(seed):
    r = np.random.default_rng(seed)
    scores = r.choice([0.1, 0.3, 0.5, 0.7, 0.9, 1.0], size=60)  # many ties
    labels = (r.random(60) < scores).astype(float)
    weights = r.integers(0, 4, size=60).astype(float)
    assert abs(cm.auroc(scores, labels) - _pairs_auroc(scores, labels, np.ones(60))) < 1e-12
    assert abs(cm.auroc(scores, labels, weights) - _pairs_auroc(scores, labels, weights)) < 1e-12
    assert cm.auroc(scores, np.ones(60)) is None


def test_auroc_ci_is_over_documents_and_holds_the_estimate():
    r = np.random.default_rng(1)
    doc = np.repeat(np.arange(40), 5)
    labels = (r.random(200) < 0.6).astype(float)
    scores = labels * 0.3 + r.random(200)
    lo, hi = cm.auroc_ci(scores, labels, doc, resamples=300, seed=0)
    assert lo < cm.auroc(scores, labels) < hi and 0.5 < lo
    # Documents, not fields, are drawn: a document's fields are kept or dropped together.
    w = cm.doc_weights(doc, 40, 20, 0)
    assert all(len(set(row[doc == d])) == 1 for row in w for d in range(40))


def test_ece_and_reliability_bins():
    conf = np.array([0.95, 0.95, 0.95, 0.95, 0.15, 0.15])
    labels = np.array([1, 1, 1, 0, 0, 1])
    bins = cm.reliability(conf, labels)
    assert [(b["fields"], b["accuracy"]) for b in bins] == [(2, 0.5), (4, 0.75)]
    assert abs(cm.ece(conf, labels) - (2 / 6 * abs(0.15 - 0.5) + 4 / 6 * abs(0.95 - 0.75))) < 1e-12


def test_risk_coverage_area_is_the_mean_risk_of_every_prefix():
    r = np.random.default_rng(2)
    scores, labels = r.random(50), (r.random(50) < 0.7).astype(float)
    order = np.argsort(-scores)
    risks = [1 - labels[order[:k]].mean() for k in range(1, 51)]
    aurc, curve = cm.risk_coverage(scores, labels)
    assert abs(aurc - np.mean(risks)) < 1e-12 and curve[-1] == [1.0, labels.mean()]


def test_threshold_reaches_the_precision_and_keeps_ties_together():
    scores = np.array([0.99, 0.98, 0.98, 0.9, 0.8, 0.7])
    labels = np.array([1, 1, 0, 1, 1, 0])
    got = cm.threshold_for(scores, labels, 0.75)
    assert got == {"threshold": 0.8, "kept": 5, "precision": 0.8, "coverage": 5 / 6}
    assert cm.threshold_for(scores, labels, 1.0) == {"threshold": 0.99, "kept": 1, "precision": 1.0,
                                                     "coverage": 1 / 6}
    assert cm.threshold_for(np.array([0.5, 0.5]), np.array([1, 0]), 0.9) is None


def test_isotonic_map_is_monotone_and_fits_the_rates():
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    labels = np.array([0, 1, 0, 1, 1, 1])
    knots = cm.isotonic(scores, labels)
    assert np.all(np.diff(knots["y"]) >= 0)
    assert knots["y"] == [0.0, 0.5, 0.5, 1.0, 1.0, 1.0]
    assert cm.apply_isotonic(knots, [0.0, 0.25, 1.0]).tolist() == [0.0, 0.5, 1.0]


def _table(n_docs: int, seed: int) -> dict[str, np.ndarray]:
    r = np.random.default_rng(seed)
    doc = np.repeat(np.arange(n_docs), 4).astype(float)
    conf = r.random(len(doc))
    label = (r.random(len(doc)) < conf).astype(float)
    return {"confidence": conf, "label": label, "doc": doc}


@pytest.mark.parametrize("method", calibration.METHODS)
def test_calibration_fitted_on_validation_reaches_its_target_on_test_within_the_ci(method):
    cal = calibration.fit(_table(200, 0), 0.9, method)
    assert cal["threshold"] is not None and cal["validation"]["precision"] >= 0.9
    assert cal["ece_after"] <= cal["ece_before"] + 1e-9
    got = apply_calibration(cal, _table(200, 1), resamples=300)
    assert got["reached"] and got["precision_ci95"][0] <= 0.9 + 0.05 and "auto-accepted" in got["message"]


def test_calibration_says_when_it_cannot():
    few = calibration.fit(_table(5, 0), 0.99)
    assert few["threshold"] is None and "too few fields" in few["reason"]
    unreachable = {"confidence": np.full(400, 0.5), "label": np.r_[np.ones(200), np.zeros(200)],
                   "doc": np.arange(400.0)}
    none = calibration.fit(unreachable, 0.9)
    assert none["threshold"] is None and "no confidence threshold" in none["reason"]
    assert "no threshold" in apply_calibration(none, _table(200, 1))["message"]


def test_risk_coverage_of_tied_scores_does_not_depend_on_their_order():
    """The rule ranking has few levels, so most fields tie; a document's extra (always wrong) fields come last in
    its list. AURC over a tie is its expectation over the tie's orders, not the input order's."""
    assert cm.risk_coverage([1, 1, 1, 1], [0, 0, 1, 1])[0] == cm.risk_coverage([1, 1, 1, 1], [1, 1, 0, 0])[0] == 0.5
    r = np.random.default_rng(3)
    scores = r.choice([0.2, 0.5, 0.8], size=30)
    labels = (r.random(30) < scores).astype(float)
    shuffled = r.permutation(30)
    assert abs(cm.risk_coverage(scores, labels)[0] - cm.risk_coverage(scores[shuffled], labels[shuffled])[0]) < 1e-12


def test_a_handful_of_accepted_fields_does_not_reach_a_high_target():
    """400 scored fields, 10 above the threshold and 9 of them right: precision 0.9, whose CI reaches 1.0. That is
    not 99% precision shown: with fewer than 1 / (1 - 0.99) accepted fields one error is already below it."""
    conf = np.r_[np.full(10, 0.999), np.full(390, 0.5)]
    label = np.r_[np.ones(9), np.zeros(1), (np.arange(390) % 2).astype(float)]
    table = {"confidence": conf, "label": label, "doc": np.arange(400.0)}
    got = apply_calibration({"target_precision": 0.99, "threshold": 0.99}, table, resamples=300)
    assert not got["reached"] and "too few accepted fields" in got["message"], got
