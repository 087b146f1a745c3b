"""Metrics of a fake-vs-real detector from labels and probabilities (numpy only, so tables and
charts load without torch).

"Positive" means fake throughout (the detector's job is to catch fakes): precision is the share
of images called fake that are fake, recall the share of fakes caught.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .settings import CLASSES, FAKE


def roc_auc(is_fake: np.ndarray, prob_fake: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with ties counted half); None with one class only."""
    is_fake = np.asarray(is_fake, dtype=bool)
    scores = np.asarray(prob_fake, dtype=np.float64)
    n_pos, n_neg = int(is_fake.sum()), int((~is_fake).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(scores)]))
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return float((ranks[is_fake].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(is_fake: np.ndarray, prob_fake: np.ndarray) -> dict[str, list[float]]:
    """False- and true-positive rates at every threshold, for plotting."""
    is_fake = np.asarray(is_fake, dtype=bool)
    scores = np.asarray(prob_fake, dtype=np.float64)
    thresholds = np.unique(scores)[::-1]
    n_pos, n_neg = max(1, int(is_fake.sum())), max(1, int((~is_fake).sum()))
    fpr, tpr = [0.0], [0.0]
    for t in thresholds:
        called = scores >= t
        tpr.append(float((called & is_fake).sum() / n_pos))
        fpr.append(float((called & ~is_fake).sum() / n_neg))
    return {"fpr": fpr, "tpr": tpr, "thresholds": [float("inf"), *map(float, thresholds)]}


def classification_metrics(labels: Sequence[int], prob_fake: Sequence[float], threshold: float = 0.5) -> dict[str, Any]:
    """Accuracy, balanced accuracy, precision, recall, F1 (fake = positive), ROC AUC and the
    confusion matrix (rows: true class, columns: predicted class, in CLASSES order)."""
    labels = np.asarray(labels, dtype=np.int64)
    prob_fake = np.asarray(prob_fake, dtype=np.float64)
    predicted = np.where(prob_fake >= threshold, FAKE, 1 - FAKE)
    is_fake, called_fake = labels == FAKE, predicted == FAKE
    tp, fn = int((is_fake & called_fake).sum()), int((is_fake & ~called_fake).sum())
    fp, tn = int((~is_fake & called_fake).sum()), int((~is_fake & ~called_fake).sum())
    n = len(labels)
    recalls = [r for r in (tp / (tp + fn) if tp + fn else None, tn / (tn + fp) if tn + fp else None) if r is not None]
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    matrix = np.zeros((len(CLASSES), len(CLASSES)), dtype=int)
    np.add.at(matrix, (labels, predicted), 1)
    return {
        "n": n,
        "accuracy": (tp + tn) / n if n else None,
        "balanced_accuracy": float(np.mean(recalls)) if recalls else None,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "roc_auc": roc_auc(is_fake, prob_fake),
        "confusion_matrix": matrix.tolist(),
        "classes": list(CLASSES),
        "threshold": threshold,
    }
