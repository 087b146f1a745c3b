"""Where fvr keeps things: runs, decoded-image caches and data, each overridable by an environment variable."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# fixed class indices: the original used torchvision's ImageFolder, which sorts folder names
CLASSES: tuple[str, str] = ("fake", "real")
FAKE, REAL = 0, 1

# ImageNet statistics, as the original write-up normalised with them (and pretrained weights expect them)
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def runs_root() -> Path:
    """Default folder of training runs: $FVR_RUNS_DIR, else checkpoints/runs in the project."""
    return Path(os.environ.get("FVR_RUNS_DIR") or PROJECT_ROOT / "checkpoints" / "runs")


def cache_root() -> Path:
    """Folder of decoded-image caches: $FVR_CACHE_DIR, else ~/.cache/fvr."""
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fvr"
    return Path(os.environ.get("FVR_CACHE_DIR") or default)


def data_root() -> Path:
    """Folder where downloaded and demo data sets go: $FVR_DATA_DIR, else ~/.cache/fvr/data."""
    return Path(os.environ.get("FVR_DATA_DIR") or cache_root() / "data")
