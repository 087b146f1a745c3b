"""The write-up's small CNN, copied verbatim from ../shared/seed/fake-vs-real-faces-writeup.md
(comments translated), Softmax and all: the speed benchmark's original loop trains it, and
tests/test_models.py checks that fvr's `cnn` computes the same function minus the Softmax."""

import torch.nn as nn


class fake_vs_real_Model(nn.Module):
    def __init__(self):
        super(fake_vs_real_Model, self).__init__()
        self.conv1 = nn.Conv2d(in_channels=3, out_channels=6, kernel_size=5, padding=0)  # out_size = (300 - 5 + 0) / 1 + 1 = 296
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2, 2)  # 296 / 2 = 148
        self.conv2 = nn.Conv2d(in_channels=6, out_channels=12, kernel_size=5, padding=0)  # out_size = (148 - 5 + 0) / 1 + 1 = 144
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2, 2)  # 144 / 2 = 72
        self.conv3 = nn.Conv2d(in_channels=12, out_channels=26, kernel_size=5, padding=0)  # out_size = (72 - 5 + 0) / 1 + 1 = 68
        self.relu3 = nn.ReLU()
        self.pool3 = nn.MaxPool2d(2, 2)  # 68 / 2 = 34
        self.conv4 = nn.Conv2d(in_channels=26, out_channels=32, kernel_size=3, padding=1)  # out_size = (34 - 3 + 2) / 1 + 1 = 34
        self.relu4 = nn.ReLU()
        self.pool4 = nn.MaxPool2d(2, 2)  # 34 / 2 = 17
        self.fc1 = nn.Linear(32 * 17 * 17, 512)
        self.fc2 = nn.Linear(512, 256)
        self.fc3 = nn.Linear(256, 128)
        self.fc4 = nn.Linear(128, 64)
        self.fc5 = nn.Linear(64, 32)
        self.fc6 = nn.Linear(32, 2)
        self.output = nn.Softmax(dim=1)

    def forward(self, x):
        x = self.conv1(x)
        x = self.relu1(x)
        x = self.pool1(x)
        x = self.conv2(x)
        x = self.relu2(x)
        x = self.pool2(x)
        x = self.conv3(x)
        x = self.relu3(x)
        x = self.pool3(x)
        x = self.conv4(x)
        x = self.relu4(x)
        x = self.pool4(x)
        x = x.view(x.size(0), -1)
        x = self.fc1(x)
        x = self.fc2(x)
        x = self.fc3(x)
        x = self.fc4(x)
        x = self.fc5(x)
        x = self.fc6(x)
        x = self.output(x)

        return x


# fvr's `cnn` state-dict names for the write-up's layers, in order
FVR_NAMES = {"conv1": "features.0", "conv2": "features.3", "conv3": "features.6", "conv4": "features.9",
             **{f"fc{i}": f"classifier.{i}" for i in range(1, 7)}}


def fvr_state_dict(model: fake_vs_real_Model) -> dict:
    """The write-up model's weights under fvr's `cnn` names (load them with strict=True)."""
    out = {}
    for name, tensor in model.state_dict().items():
        layer, _, kind = name.partition(".")
        out[f"{FVR_NAMES[layer]}.{kind}"] = tensor
    return out
