"""Predicting whether images are fake with a trained run's checkpoint.

Images of any size and mode are accepted: they are decoded as in training (EXIF rotation, RGB),
the shorter side is scaled to the model's input size and the centre cut out (never stretched).
A file that cannot be read gets an error in its result, never an exception for the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from .checkpoint import load_checkpoint
from .evaluation import predict_logits, prob_fake_from_logits
from .images import ImageError, ImageSource, prepare_image
from .runs import Run
from .settings import CLASSES


@dataclass
class Prediction:
    source: str
    prob_fake: float | None = None
    error: str | None = None

    @property
    def label(self) -> str | None:
        if self.prob_fake is None:
            return None
        return CLASSES[0] if self.prob_fake >= 0.5 else CLASSES[1]

    def to_dict(self) -> dict:
        return {"source": self.source, "prob_fake": self.prob_fake, "label": self.label, "error": self.error}


class Predictor:
    def __init__(self, model: torch.nn.Module, meta: dict, device: str = "cpu"):
        # channels-last convolutions: 25 -> 13 ms for the cnn, 86 -> 76 ms for resnet18 on one
        # 300 px image on a 2-core CPU (benchmarks/train_speed.py measures the whole prediction)
        self.model = model.to(device).eval().to(memory_format=torch.channels_last)
        self.meta = meta
        self.image_size = int(meta["image_size"])
        self.device = device

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu") -> "Predictor":
        model, meta = load_checkpoint(path, device=device)
        return cls(model, meta, device)

    @classmethod
    def from_run(cls, run: Run, which: str = "best", device: str = "cpu") -> "Predictor":
        return cls.from_checkpoint(run.checkpoint(which), device)

    def predict(self, sources: Sequence[ImageSource], names: Iterable[str] | None = None, batch_size: int = 32) -> list[Prediction]:
        names = list(names) if names is not None else [str(s) if isinstance(s, (str, Path)) else f"image {i + 1}" for i, s in enumerate(sources)]
        results = [Prediction(name) for name in names]
        arrays, positions = [], []
        for i, source in enumerate(sources):
            try:
                arrays.append(prepare_image(source, self.image_size))
                positions.append(i)
            except ImageError as exc:
                results[i].error = str(exc)
        if arrays:
            logits = predict_logits(self.model, np.stack(arrays), batch_size=batch_size, device=self.device)
            for i, p in zip(positions, prob_fake_from_logits(logits)):
                results[i].prob_fake = float(p)
        return results

    def predict_one(self, source: ImageSource) -> Prediction:
        return self.predict([source])[0]


def predict_with_each(predictors: dict[str, Predictor], sources: Sequence[ImageSource], names: Sequence[str]) -> list[dict]:
    """Every image through every predictor: one row per (image, model) with the probability of
    fake, the verdict and any error, in image order (what the Predict page shows and exports)."""
    rows = []
    results = {label: p.predict(sources, names) for label, p in predictors.items()}
    for i, name in enumerate(names):
        for label, preds in results.items():
            pred = preds[i]
            rows.append({"image": name, "model": label, "prob_fake": pred.prob_fake, "label": pred.label, "error": pred.error})
    return rows
