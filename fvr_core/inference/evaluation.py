"""Evaluation of a model or run: logits over images without autograd, and a run's metrics on its
own or another data set. The metrics themselves live in fvr_core.metrics (numpy only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fvr_core.data.augment import normalize
from fvr_core.data.dataset import per_source_recall
from fvr_core.metrics import classification_metrics
from fvr_core.settings import CLASSES, FAKE, beside_project
from fvr_core.data.dataset import load_dataset
from fvr_core.runs.checkpoint import load_checkpoint


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
    pin = device.type == "cuda"  # pinned host memory lets the copy overlap the previous batch's work
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = images[chunk] if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images[chunk]))
        if pin and batch.device.type == "cpu":
            batch = batch.pin_memory()
        x = normalize(batch.to(device, non_blocking=True))
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            outputs.append(model(x).float())
    model.train(was_training)
    # one copy back at the end: a copy per batch would wait for the device every batch
    return torch.cat(outputs).cpu() if outputs else torch.zeros(0, len(CLASSES))


def prob_fake_from_logits(logits: torch.Tensor) -> np.ndarray:
    return torch.softmax(logits.float(), dim=1)[:, FAKE].numpy()


def load_run_model_and_data(run, data=None, which: str = "best", device: str = "cpu"):
    """(model, ImageSet) of a run's checkpoint and the data set it was trained on, decoded at the
    checkpoint's image size. `data` overrides where the data set lives now."""
    model, meta = load_checkpoint(run.checkpoint(which), device=device)
    image_set = load_dataset(data or beside_project(run.config.data), meta.get("image_size", run.config.image_size))
    return model, image_set


def run_split_indices(run, image_set, split: str) -> np.ndarray:
    """Positions in `image_set` of a run's saved split ('train', 'val', 'test') or of every image ('all')."""
    if split == "all":
        return np.arange(len(image_set))
    if split in ("train", "val", "test"):
        return image_set.indices_of(run.split()[split])
    raise ValueError(f"split {split!r}: choose test, val, train or all")


def evaluate_run(run, data: str | Path | None = None, split: str = "test", which: str = "best", device: str = "cpu") -> dict[str, Any]:
    """Metrics of a run's checkpoint on its saved split ('test' or 'val') or on every image of a
    labelled data set ('all'). `data` overrides where the data set lives now."""
    model, image_set = load_run_model_and_data(run, data, which, device)
    indices = run_split_indices(run, image_set, split)
    logits = predict_logits(model, image_set.images, indices, device=device)
    probs = prob_fake_from_logits(logits)
    labels = image_set.labels[indices]
    result = classification_metrics(labels, probs)
    result.update(
        per_source=per_source_recall(image_set, indices, probs),
        run=run.id, split=split, data=str(image_set.root), checkpoint=which,
        predictions=[
            {"id": image_set.ids[i], "label": CLASSES[int(y)], "prob_fake": float(p)}
            for i, y, p in zip(indices, labels, probs)
        ],
    )
    return result
