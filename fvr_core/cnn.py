"""The original write-up's small CNN, fixed to return logits at any input size."""

from __future__ import annotations

import torch
from torch import nn


class OriginalCNN(nn.Module):
    """The write-up's small CNN, fixed: three conv blocks and two linear layers, returning logits.

    The original flattened a 300x300 input's 64x35x35 feature map straight into its first linear
    layer, so it only ran at 300x300. The adaptive pool below is the identity at 300x300 (same
    weights, same output as the original) and makes any input size of 32 px or more work.

    Each block pools before its ReLU. Max-pooling and ReLU commute (ReLU never changes which value
    is largest), so outputs and gradients are the original's, but the ReLU and its backward pass
    touch a quarter of the values: the layers right after the 300x300 input are bound by memory
    traffic on a CPU, not by arithmetic. `relu_first=True` builds the original order (the
    benchmarks' reference loop uses it); the weights are interchangeable.
    """

    FEATURE_GRID = 35  # the spatial size 300x300 inputs reach after the three blocks

    def __init__(self, num_classes: int = 2, relu_first: bool = False):
        super().__init__()

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            conv, act, pool = nn.Conv2d(c_in, c_out, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2)
            return [conv, act, pool] if relu_first else [conv, pool, act]

        self.features = nn.Sequential(*block(3, 16), *block(16, 32), *block(32, 64))
        self.pool = nn.AdaptiveAvgPool2d(self.FEATURE_GRID)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * self.FEATURE_GRID**2, 128), nn.ReLU(inplace=True),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


class HighPassInput(nn.Module):
    """The image minus its 3x3 local mean, scaled up: a residual input, as forensic detectors use.
    What a generator's upsampling leaves behind lives in the highest frequencies, where a face's
    shape and colours (which the model should not learn from) barely show."""

    GAIN = 4.0  # residuals are a few percent of the pixel range: bring them near unit scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local_mean = nn.functional.avg_pool2d(nn.functional.pad(x, (1, 1, 1, 1), mode="reflect"), 3, stride=1)
        return (x - local_mean) * self.GAIN


def high_pass(model: nn.Module) -> nn.Module:
    """`model` fed the residual of its input (the wrapped model is submodule "1")."""
    return nn.Sequential(HighPassInput(), model)
