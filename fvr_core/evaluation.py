"""Metrics of a fake-vs-real detector, and evaluation of a run on its own or another data set.

"Positive" means fake throughout (the detector's job is to catch fakes): precision is the share
of images called fake that are fake, recall the share of fakes caught.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .augment import normalize
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


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    images: np.ndarray | torch.Tensor,
    indices: np.ndarray | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Logits of a model over uint8 (N,3,S,S) images (only `indices` if given), in eval mode
    without autograd. Returns a float32 CPU tensor (N, 2)."""
    was_training = model.training
    model.eval()
    device = torch.device(device)
    order = np.arange(len(images)) if indices is None else np.asarray(indices)
    outputs = []
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = images[chunk] if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images[chunk]))
        x = normalize(batch.to(device, non_blocking=True))
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            outputs.append(model(x).float().cpu())
    model.train(was_training)
    return torch.cat(outputs) if outputs else torch.zeros(0, len(CLASSES))


def prob_fake_from_logits(logits: torch.Tensor) -> np.ndarray:
    return torch.softmax(logits.float(), dim=1)[:, FAKE].numpy()


def evaluate_run(run, data: str | Path | None = None, split: str = "test", which: str = "best", device: str = "cpu") -> dict[str, Any]:
    """Metrics of a run's checkpoint on its saved split ('test' or 'val') or on every image of a
    labelled data set ('all'). `data` overrides where the data set lives now."""
    from .checkpoint import load_checkpoint
    from .dataset import load_dataset

    config = run.config
    model, meta = load_checkpoint(run.checkpoint(which), device=device)
    image_set = load_dataset(data or config.data, meta.get("image_size", config.image_size))
    if split == "all":
        indices = np.arange(len(image_set))
    elif split in ("train", "val", "test"):
        indices = image_set.indices_of(run.split()[split])
    else:
        raise ValueError(f"split {split!r}: choose test, val, train or all")
    logits = predict_logits(model, image_set.images, indices, device=device)
    probs = prob_fake_from_logits(logits)
    labels = image_set.labels[indices]
    result = classification_metrics(labels, probs)
    result.update(
        run=run.id, split=split, data=str(image_set.root), checkpoint=which,
        predictions=[
            {"id": image_set.ids[i], "label": CLASSES[int(y)], "prob_fake": float(p)}
            for i, y, p in zip(indices, labels, probs)
        ],
    )
    return result
