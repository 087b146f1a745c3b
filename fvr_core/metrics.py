"""Metrics of a fake-vs-real detector from labels and probabilities (numpy, and scikit-learn for
the ROC, so tables and charts load without torch).

"Positive" means fake throughout (the detector's job is to catch fakes): precision is the share
of images called fake that are fake, recall the share of fakes caught.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np

from fvr_core.settings import CLASSES, FAKE


def roc_auc(is_fake: np.ndarray, prob_fake: np.ndarray) -> float | None:
    """Area under the ROC curve (ties count half); None with one class only."""
    from sklearn.metrics import roc_auc_score  # imported on first use: torch-free pages start faster without it

    is_fake = np.asarray(is_fake, dtype=bool)
    if is_fake.all() or not is_fake.any():
        return None
    return float(roc_auc_score(is_fake, np.asarray(prob_fake, dtype=np.float64)))


def roc_curve(is_fake: np.ndarray, prob_fake: np.ndarray) -> dict[str, list[float]]:
    """False- and true-positive rates at every threshold (the first one inf: nothing called fake),
    for plotting. With one class only, the other class's rate is 0 throughout."""
    from sklearn.exceptions import UndefinedMetricWarning  # imported on first use, as in roc_auc
    from sklearn.metrics import roc_curve as sklearn_roc_curve  # scikit-learn loads on first use (start-up speed)

    is_fake = np.asarray(is_fake, dtype=bool)
    if not len(is_fake):
        return {"fpr": [0.0], "tpr": [0.0], "thresholds": [float("inf")]}
    with warnings.catch_warnings():
        # one class only: scikit-learn warns and gives the missing class's rate as NaN; 0 still draws a curve
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        fpr, tpr, thresholds = sklearn_roc_curve(is_fake, np.asarray(prob_fake, dtype=np.float64), pos_label=True,
                                                 drop_intermediate=False)
    return {"fpr": np.nan_to_num(fpr).tolist(), "tpr": np.nan_to_num(tpr).tolist(), "thresholds": thresholds.tolist()}


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
