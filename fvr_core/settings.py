"""Where fvr keeps things: runs, decoded-image caches and data, each overridable by an environment variable."""

from __future__ import annotations

import os
from dataclasses import dataclass
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


def reference_root() -> Path:
    """Reference runs shipped with the repository (read-only): checkpoints/reference."""
    return Path(os.environ.get("FVR_REFERENCE_DIR") or PROJECT_ROOT / "checkpoints" / "reference")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    try:
        return int(value) if value else default
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be a whole number") from None


@dataclass(frozen=True)
class AppLimits:
    """What visitors of the dashboard may do. The defaults trust the user (a local install); demo
    mode (FVR_DEMO_MODE=1, e.g. a public Streamlit Community Cloud app) caps what one visitor can
    make a shared CPU do, and turns off anything that reaches the server's files."""

    demo: bool = False
    max_epochs: int = 1000
    max_image_size: int = 512
    models: tuple[str, ...] = ()  # empty: every registered model
    max_concurrent_runs: int = 1
    max_queued_runs: int = 100
    max_upload_mb: int = 200
    max_upload_files: int = 200
    allow_paths: bool = True  # type a folder path on the server; download from Kaggle
    allow_delete: bool = True

    def allows_model(self, name: str) -> bool:
        return not self.models or name in self.models


DEMO_MODELS = ("cnn", "resnet18", "mobilenet_v3_small")


def app_limits() -> AppLimits:
    """The limits in force, from the environment (Streamlit Community Cloud exports root-level
    secrets as environment variables, so `FVR_DEMO_MODE = "1"` in the app's secrets works)."""
    if not _env_flag("FVR_DEMO_MODE"):
        return AppLimits(max_concurrent_runs=max(1, _env_int("FVR_MAX_CONCURRENT_RUNS", 1)))
    return AppLimits(
        demo=True,
        max_epochs=_env_int("FVR_DEMO_MAX_EPOCHS", 5),
        max_image_size=_env_int("FVR_DEMO_MAX_IMAGE_SIZE", 128),
        models=DEMO_MODELS,
        max_concurrent_runs=1,
        max_queued_runs=_env_int("FVR_DEMO_MAX_QUEUED_RUNS", 3),
        max_upload_mb=_env_int("FVR_DEMO_MAX_UPLOAD_MB", 20),
        max_upload_files=_env_int("FVR_DEMO_MAX_UPLOAD_FILES", 20),
        allow_paths=False,
        allow_delete=False,
    )


def page_threads() -> int:
    """torch threads for the dashboard's own process (inference on Predict, saliency). One by
    default: a training process beside it already uses every core, and with torch's default
    threads both lose (benchmarks/page_contention.py: on 2 cores, predictions 2-3x slower at the
    median and up to 10x at p95, and the trainer slower too)."""
    return max(1, _env_int("FVR_PAGE_THREADS", 1))


def worker_idle_seconds() -> float:
    """How long a worker started when the Train page opens waits for a run (FVR_PREWARM_SECONDS,
    default 120; 0 turns prewarming off). It loads torch while the user picks settings, so the
    first curve of a run appears seconds sooner."""
    return max(0.0, float(_env_int("FVR_PREWARM_SECONDS", 120)))


# calibrated P(fake) inside this band is reported as "unsure" instead of a verdict
DEFAULT_UNSURE_BAND: tuple[float, float] = (0.35, 0.65)


def parse_unsure_band(text: str, where: str = "unsure band") -> tuple[float, float]:
    """"low,high" -> (low, high); ValueError naming `where` unless 0 <= low <= 0.5 <= high <= 1."""
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"{where} {text!r} must be two probabilities, e.g. 0.35,0.65") from None
    if not 0.0 <= low <= 0.5 <= high <= 1.0:
        raise ValueError(f"{where} {text!r} must hold 0.5, within 0 to 1 (e.g. 0.35,0.65)")
    return low, high


def unsure_band() -> tuple[float, float]:
    """The calibrated P(fake) range reported as "unsure" rather than a verdict: FVR_UNSURE_BAND
    ("low,high", default 0.35,0.65)."""
    text = os.environ.get("FVR_UNSURE_BAND", "").strip()
    return parse_unsure_band(text, "environment variable FVR_UNSURE_BAND") if text else DEFAULT_UNSURE_BAND
