"""Metrics, checked against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from fvr_core.metrics import classification_metrics, roc_auc, roc_curve

FAKE, REAL = 0, 1


def test_perfect_and_inverted_rankings():
    labels = np.array([FAKE, FAKE, REAL, REAL])
    assert roc_auc(labels == FAKE, np.array([0.9, 0.8, 0.2, 0.1])) == 1.0
    assert roc_auc(labels == FAKE, np.array([0.1, 0.2, 0.8, 0.9])) == 0.0


def test_auc_counts_ties_as_half():
    # fakes score 0.5 and 0.9, reals 0.5 and 0.1: pairs (f,r) = 4; wins: 0.9>0.5, 0.9>0.1, 0.5>0.1, tie 0.5=0.5
    assert roc_auc(np.array([True, True, False, False]), np.array([0.5, 0.9, 0.5, 0.1])) == pytest.approx(3.5 / 4)


def test_auc_is_undefined_with_one_class():
    assert roc_auc(np.array([True, True]), np.array([0.3, 0.6])) is None


def test_classification_metrics_by_hand():
    # 4 fakes: 3 caught; 6 reals: 1 wrongly called fake
    labels = [FAKE] * 4 + [REAL] * 6
    probs = [0.9, 0.8, 0.7, 0.2] + [0.6, 0.1, 0.2, 0.3, 0.4, 0.1]
    m = classification_metrics(labels, probs)
    assert m["accuracy"] == pytest.approx(8 / 10)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 5 / 6) / 2)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(3 / 4)
    assert m["confusion_matrix"] == [[3, 1], [1, 5]]  # rows true fake/real, columns predicted fake/real


def test_always_real_scores_high_accuracy_but_chance_balanced_accuracy():
    labels = [FAKE] * 200 + [REAL] * 600
    m = classification_metrics(labels, [0.1] * 800)
    assert m["accuracy"] == 0.75 and m["balanced_accuracy"] == 0.5


def test_roc_curve_runs_from_origin_to_one():
    curve = roc_curve(np.array([True, False, True, False]), np.array([0.9, 0.4, 0.6, 0.1]))
    assert curve["fpr"][0] == 0 and curve["tpr"][0] == 0
    assert curve["fpr"][-1] == 1 and curve["tpr"][-1] == 1
    assert all(a <= b for a, b in zip(curve["fpr"], curve["fpr"][1:]))
