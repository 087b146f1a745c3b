"""Forensic residual detectors: they look at what is left of a photo once its content is taken
away (high-pass residuals at native resolution), where a generator's upsampling leaves its traces.

- `SRMNet` (registry name `srm_net`): fixed SRM high-pass filters, truncated, then a small CNN that
  keeps full resolution for its first layers; trained on native-resolution crops (`train_crop`)
  and evaluated on the whole image.
- `CoocDetector` (registry names `cooc_lr`, and `cooc_lr4` with diagonal neighbours too): co-occurrence histograms of quantised, truncated
  residuals (SPAM/SRM-style "rich model" features, per colour channel) and a linear classifier,
  fitted in closed form by logistic regression (`fit_cooc`), in seconds on a CPU.

Both take the normalised input every fvr model takes and undo the normalisation to work on pixel
values (0-255), so quantisation steps mean the same thing whatever the normalisation.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fvr_core.settings import FAKE, IMAGENET_MEAN, IMAGENET_STD
from fvr_core.metrics import classification_metrics


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """Normalised (B,3,H,W) -> pixel values in [0, 255] (exact integers again for uint8 images, up to
    float error)."""
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * std + mean) * 255.0


def _line_kernel(taps: list[float], direction: str, size: int = 5) -> np.ndarray:
    """A 1-D residual filter laid along a direction in a size x size kernel, its first tap at the
    centre minus (len(taps)-1)//2."""
    kernel = np.zeros((size, size), dtype=np.float32)
    centre, start = size // 2, -((len(taps) - 1) // 2)
    step = {"h": (0, 1), "v": (1, 0), "d": (1, 1), "a": (1, -1)}[direction]
    for i, tap in enumerate(taps):
        offset = start + i
        kernel[centre + step[0] * offset, centre + step[1] * offset] = tap
    return kernel


def srm_kernels() -> tuple[np.ndarray, np.ndarray]:
    """(K,5,5) high-pass kernels and each one's quantisation step q: first-, second- and third-order
    differences in the four directions (third: horizontal and vertical), and SRM's 3x3 and 5x5
    "square" kernels (KB, KV). q is each kernel's typical residual scale, so residual / q is near
    unit size for all of them."""
    kernels, steps = [], []
    for taps, q in (([-1, 1], 1.0), ([1, -2, 1], 2.0), ([-1, 3, -3, 1], 3.0)):
        for direction in ("h", "v", "d", "a") if len(taps) < 4 else ("h", "v"):
            kernels.append(_line_kernel(taps, direction))
            steps.append(q)
    kb = np.zeros((5, 5), dtype=np.float32)
    kb[1:4, 1:4] = [[-1, 2, -1], [2, -4, 2], [-1, 2, -1]]
    kv = np.array([[-1, 2, -2, 2, -1], [2, -6, 8, -6, 2], [-2, 8, -12, 8, -2], [2, -6, 8, -6, 2], [-1, 2, -2, 2, -1]],
                  dtype=np.float32)
    kernels += [kb, kv]
    steps += [4.0, 12.0]
    return np.stack(kernels), np.asarray(steps, dtype=np.float32)


class Residuals(nn.Module):
    """Fixed high-pass filters on each colour channel of the pixel values, each divided by its
    step q: (B,3,H,W) normalised -> (B, 3K, H-4, W-4), channel c*K+k = kernel k on colour c.
    The kernels are buffers, saved with the weights, so a checkpoint keeps the filters it was
    trained with."""

    def __init__(self):
        super().__init__()
        kernels, steps = srm_kernels()
        weight = torch.from_numpy(kernels / steps[:, None, None]).unsqueeze(1).repeat(3, 1, 1, 1)  # (3K,1,5,5)
        self.register_buffer("weight", weight)
        self.count = len(kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(to_pixels(x), self.weight.to(x.dtype), groups=3)


class Truncate(nn.Module):
    """Clip residuals to [-T, T] (a "truncated linear unit"): the rare large values are edges of
    the face, not the generator's traces."""

    def __init__(self, threshold: float):
        super().__init__()
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(-self.threshold, self.threshold)


class SRMNet(nn.Module):
    """SRM residuals (36 channels), truncated at 3, then two 3x3 convolutions at full resolution
    before any pooling, and three more stages halving the resolution each, a global average pool
    and a linear head. Global pooling makes it run on any size: train on crops, test on the whole
    image. About 0.28M parameters."""

    def __init__(self, num_classes: int = 2, width: int = 32):
        super().__init__()
        residuals = Residuals()
        channels = 3 * residuals.count

        def conv(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            residuals, Truncate(3.0),
            *conv(channels, width), *conv(width, width),  # full resolution: 2..7
            nn.AvgPool2d(2), *conv(width, 2 * width),  # 8..11
            nn.AvgPool2d(2), *conv(2 * width, 4 * width),  # 12..15
            nn.AvgPool2d(2), *conv(4 * width, 4 * width),  # 16..19; 19 is the last activation (Grad-CAM)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


# ---- the classical detector

COOC_STEPS = (1.0, 2.0)  # quantisation steps q (on residual / kernel step): fine and coarse
COOC_T = 2  # truncation: quantised residuals in -T..T, 2T+1 = 5 values
COOC_ORDER = 3  # co-occurrences of 3 neighbouring values: 5**3 = 125 bins


NEIGHBOURS = {"h": (0, 1), "v": (1, 0), "d": (1, 1), "a": (1, -1)}  # direction -> (row step, column step)


class CoocFeatures(nn.Module):
    """Co-occurrence histograms of quantised residuals: for each SRM kernel, colour channel and
    quantisation step, round(residual / q) clipped to -T..T, and the normalised histogram of the
    triples of neighbouring values along each direction (5**3 bins each): "hv" (horizontal,
    vertical; 12 kernels x 3 colours x 2 steps x 2 directions x 125 bins = 18000 features) or
    "hvda" (with both diagonals: 36000). Each histogram sums to 1.
    Not differentiable (it counts), and it needs no training: a fixed feature extractor."""

    def __init__(self, directions: str = "hv"):
        super().__init__()
        self.residuals = Residuals()
        self.bins = (2 * COOC_T + 1) ** COOC_ORDER
        self.directions = directions

    @property
    def dim(self) -> int:
        return self.residuals.count * 3 * len(COOC_STEPS) * len(self.directions) * self.bins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a few images at a time: the bin indices of a 300 px image take 25 MB
        return torch.cat([self._image_features(chunk) for chunk in x.float().split(4)])

    def _image_features(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.residuals(x)  # (B, 3K, H, W)
        histograms = []
        for q in COOC_STEPS:
            # uint8 symbols and codes: four times less memory traffic than int64, where the time goes
            symbols = (residual / q).round_().clamp_(-COOC_T, COOC_T).add_(COOC_T).to(torch.uint8)
            histograms += [self._histogram(symbols, direction) for direction in self.directions]
        return torch.cat(histograms, dim=1)

    def _histogram(self, symbols: torch.Tensor, direction: str) -> torch.Tensor:
        dy, dx = NEIGHBOURS[direction]
        span = COOC_ORDER - 1
        height, width = symbols.shape[2] - span * dy, symbols.shape[3] - span * abs(dx)
        left = span if dx < 0 else 0  # the anti-diagonal runs down and to the left
        code = None
        for i in range(COOC_ORDER):
            value = symbols[:, :, i * dy : i * dy + height, left + i * dx : left + i * dx + width]
            code = value if code is None else code * (2 * COOC_T + 1) + value  # < 125: fits uint8
        rows = code.reshape(code.shape[0] * code.shape[1], -1)  # one row per (image, channel)
        # a bincount per row on the uint8 codes: ten times faster than one bincount of int64
        # codes offset by row, which spent its time widening and adding the offsets
        counts = torch.stack([torch.bincount(row, minlength=self.bins) for row in rows])
        return counts.view(code.shape[0], -1).float() / rows.shape[1]


class CoocDetector(nn.Module):
    """CoocFeatures, a square root (histogram counts vary over orders of magnitude; the root
    evens them, as the Hellinger kernel does), standardisation with the training split's mean and
    spread (buffers), and a linear layer. `fit_cooc` sets the buffers and the layer."""

    def __init__(self, num_classes: int = 2, directions: str = "hv"):
        super().__init__()
        self.features = CoocFeatures(directions)
        self.register_buffer("feature_mean", torch.zeros(self.features.dim))
        self.register_buffer("feature_scale", torch.ones(self.features.dim))
        self.classifier = nn.Linear(self.features.dim, num_classes)

    def standardised(self, x: torch.Tensor) -> torch.Tensor:
        return (self.features(x).sqrt() - self.feature_mean) / self.feature_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.standardised(x))


# inverse L2 strength, chosen on validation; on the shared set validation AUC peaks near C=1
# (`benchmarks/cooc_variants.py`), so the grid stops a decade above it
COOC_C_GRID = (1e-3, 1e-2, 0.1, 0.3, 1.0, 3.0, 10.0)


def fit_cooc(model: CoocDetector, train_x: torch.Tensor, train_y: np.ndarray, val_x: torch.Tensor, val_y: np.ndarray,
             progress: Callable[[str], None] | None = None) -> dict:
    """Fit the detector in place: standardisation on the training images' features, then a
    class-balanced L2 logistic regression for each C in COOC_C_GRID, keeping the C with the best
    validation ROC AUC (ties: lower validation log-loss). `*_x` are normalised image batches (one
    tensor or an iterable of them), `*_y` labels (0 = fake). Returns the chosen C, each C's
    validation scores, and the fitted model's train and validation logits."""
    from sklearn.linear_model import LogisticRegression  # scikit-learn loads on first use (start-up speed)

    progress = progress or (lambda message: None)
    progress("computing residual co-occurrence features")
    train_f = _features(model, train_x)
    val_f = _features(model, val_x)
    mean, scale = train_f.mean(0), train_f.std(0)
    scale = np.where(scale > 1e-8, scale, 1.0)  # a bin that never varies contributes nothing
    train_z, val_z = (train_f - mean) / scale, (val_f - mean) / scale
    is_fake_train = (np.asarray(train_y) == FAKE).astype(int)
    scores, best = [], None
    for c in COOC_C_GRID:
        progress(f"logistic regression, C={c:.2g}")
        lr = LogisticRegression(C=c, class_weight="balanced", max_iter=2000)
        lr.fit(train_z, is_fake_train)
        p_fake = np.clip(lr.predict_proba(val_z)[:, 1], 1e-7, 1 - 1e-7)
        metrics = classification_metrics(np.asarray(val_y), p_fake)
        is_fake_val = np.asarray(val_y) == FAKE
        log_loss = float(-np.mean(np.where(is_fake_val, np.log(p_fake), np.log(1 - p_fake))))
        row = {"C": c, "val_roc_auc": metrics["roc_auc"], "val_balanced_acc": metrics["balanced_accuracy"], "val_log_loss": log_loss}
        scores.append(row)
        key = (_nan_low(metrics["roc_auc"]), -log_loss)
        if best is None or key > best[0]:
            best = (key, c, lr)
    _, c, lr = best
    # logistic regression gives the log-odds of fake w.x + b; fvr's heads give two logits whose
    # difference is that log-odds: fake = +half, real = -half
    w = torch.from_numpy(lr.coef_[0].astype(np.float32) / 2)
    b = float(lr.intercept_[0]) / 2
    with torch.no_grad():
        model.feature_mean.copy_(torch.from_numpy(mean.astype(np.float32)))
        model.feature_scale.copy_(torch.from_numpy(scale.astype(np.float32)))
        weight = torch.zeros_like(model.classifier.weight)
        weight[FAKE], weight[1 - FAKE] = w, -w
        bias = torch.zeros_like(model.classifier.bias)
        bias[FAKE], bias[1 - FAKE] = b, -b
        model.classifier.weight.copy_(weight)
        model.classifier.bias.copy_(bias)
    with torch.no_grad():  # the fitted model's logits on the features already computed, so the
        # trainer need not extract them again for its loss, validation row and calibration
        device = model.classifier.weight.device
        train_logits, val_logits = (model.classifier(torch.from_numpy(z.astype(np.float32)).to(device)).cpu()
                                    for z in (train_z, val_z))
    return {"C": c, "scores": scores, "features": int(train_f.shape[1]), "train_logits": train_logits, "val_logits": val_logits}


def _nan_low(value: float) -> float:
    return -math.inf if value is None or not math.isfinite(value) else float(value)


@torch.inference_mode()
def _features(model: CoocDetector, images) -> np.ndarray:
    """sqrt co-occurrence features of normalised image batches (an iterable of tensors, or one tensor)."""
    batches = [images] if isinstance(images, torch.Tensor) else images
    return torch.cat([model.features(batch).sqrt().cpu() for batch in batches]).double().numpy()
