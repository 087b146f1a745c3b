"""The small CNNs: the original write-up's model (registry name `cnn`), its variant with ReLUs
between the linear layers (`cnn_relu`), fvr's earlier reconstruction (`cnn_v0`, kept so runs
trained with it still load), a tiny CNN for smoke tests (`tiny_cnn`), and the high-pass input
wrapper of the residual models."""

from __future__ import annotations

import torch
from torch import nn

WRITEUP_GRID = 17  # the spatial size a 300x300 input reaches after the write-up's four conv blocks


class WriteupCNN(nn.Module):
    """The write-up's `fake_vs_real_Model`, layer for layer, returning logits.

    Four conv blocks (3->6 k5, 6->12 k5, 12->26 k5, 26->32 k3 padding 1, each ReLU and max-pool 2:
    300 -> 296 -> 148 -> 144 -> 72 -> 68 -> 34 -> 34 -> 17), a flatten of 32x17x17 = 9248 values
    and six linear layers 9248 -> 512 -> 256 -> 128 -> 64 -> 32 -> 2 with no activation between
    them, as the original had (`linear_relu=True` adds ReLUs: the registry's `cnn_relu`).
    4,927,728 parameters.

    Fixed where the original was a bug: it returns raw logits; the original ended in a Softmax and
    then fed that to CrossEntropyLoss, which applies its own.

    Other sizes: the original flattened straight into `fc1`, so it only ran at 300x300. An
    adaptive average pool to 17x17 stands before the flatten; at 300x300 the map is already 17x17
    and the pool is the identity (same weights, same output). It makes any input of 44 px or more
    work (smaller inputs leave no pixel after the fourth block).

    Each block pools before its ReLU. Max-pooling and ReLU commute (ReLU never changes which value
    is largest), so outputs and gradients are the original's, but the ReLU touches a quarter of the
    values: on a CPU the layers right after the 300x300 input are bound by memory traffic.
    `relu_first=True` builds the write-up's order; the weights are interchangeable.
    """

    def __init__(self, num_classes: int = 2, linear_relu: bool = False, relu_first: bool = False):
        super().__init__()

        def block(c_in: int, c_out: int, kernel: int, padding: int = 0) -> list[nn.Module]:
            conv, act, pool = nn.Conv2d(c_in, c_out, kernel, padding=padding), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2)
            return [conv, act, pool] if relu_first else [conv, pool, act]

        self.features = nn.Sequential(*block(3, 6, 5), *block(6, 12, 5), *block(12, 26, 5), *block(26, 32, 3, padding=1))
        self.pool = nn.AdaptiveAvgPool2d(WRITEUP_GRID)
        widths = (32 * WRITEUP_GRID**2, 512, 256, 128, 64, 32)
        layers: list[nn.Module] = [nn.Flatten()]
        for i, (w_in, w_out) in enumerate(zip(widths, widths[1:] + (num_classes,))):
            layers.append(nn.Linear(w_in, w_out))
            if linear_relu and i < len(widths) - 1:
                layers.append(nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


class ReconstructedCNN(nn.Module):
    """fvr's first CNN (registry name `cnn_v0`), a reconstruction made before the write-up's code
    was found: three conv blocks of 16/32/64 channels with 3x3 kernels and FC 78400 -> 128 -> 2
    (10.1 M parameters). Not the original: kept so that runs trained with it still load and
    predict. The adaptive pool is the identity at 300x300 and lets inputs of 32 px or more work."""

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


class TinyCNN(nn.Module):
    """Two conv layers and a linear head, about 1.4 K parameters (a checkpoint of 6 KB): checks the
    whole pipeline (data, training, checkpoints, resume, predictions) in seconds and without the
    ~100 MB of checkpoints a `cnn` run writes. Not a detector worth training for its answers."""

    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.MaxPool2d(2), nn.ReLU(inplace=True),
                                      nn.Conv2d(8, 16, 3), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16, num_classes))

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
