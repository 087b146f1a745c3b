"""Where fvr keeps things: runs, decoded-image caches and data, each overridable by an environment variable."""

from __future__ import annotations

import functools
import os
import threading
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence
import ctypes

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# fixed class indices: the original used torchvision's ImageFolder, which sorts folder names
CLASSES: tuple[str, str] = ("fake", "real")
FAKE, REAL = 0, 1
# the verdict on a photo where face search found no face, unless asked to judge the whole photo:
# the models learnt faces framed one way, and their answer on a landscape or a gradient means nothing
NOT_JUDGED = "not judged"
ENSEMBLE = "ensemble"  # the `model` an ensemble run's config and checkpoint name

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


def portable_data_path(path: str) -> str:
    """A data set's path as a shipped run stores it: relative to the project folder when the data
    lies inside it or beside it (`../shared/datasets/...`), else only the folder's name, so no
    path of the machine that trained it travels with the repository. A leading `fake:`/`real:`
    (a single-class source) is kept."""
    label, sep, rest = path.partition(":")
    if sep and label in CLASSES:
        return f"{label}:{portable_data_path(rest)}"
    folder = Path(path).expanduser()
    if not folder.is_absolute():
        return path
    for base, prefix in ((PROJECT_ROOT, ""), (PROJECT_ROOT.parent, "../")):
        if folder.is_relative_to(base):
            return prefix + folder.relative_to(base).as_posix()
    return folder.name


def beside_project(path: str) -> Path:
    """Where a data path a run stores lives now: relative paths (a shipped run's) are read
    against the project folder, whatever the current working folder; absolute ones are kept."""
    folder = Path(path).expanduser()
    return folder if folder.is_absolute() else (PROJECT_ROOT / folder).resolve()


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    try:
        return int(value) if value else default
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be a whole number") from None


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    try:
        return float(value) if value else default
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be a number") from None


@dataclass
class ArchiveLimits:
    """What extracting one zip may take (fvr_core.data.archive)."""

    max_files: int = 20_000  # files extracted
    max_total_bytes: int = 2 * 1024**3  # sum of uncompressed sizes of the files extracted
    max_file_bytes: int = 64 * 1024**2
    max_ratio: float = 200.0  # uncompressed/compressed per entry (zip bomb)


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
    max_trials: int = 1000  # trials of one hyperparameter search (fvr_core.training.search)
    max_upload_mb: int = 200
    max_upload_files: int = 200
    max_extracted_mb: int = 2048  # what one uploaded zip may unpack to on the server's disk
    allow_paths: bool = True  # type a folder path on the server; download from Kaggle
    allow_delete: bool = True  # delete any run (in demo mode a visitor deletes only the runs their session started)
    upload_retention_hours: float = 0.0  # uploads (and their decoded caches) older than this are deleted; 0: kept
    uploads_max_mb: float = 0.0  # all uploads together; past it the oldest are deleted; 0: no cap

    def photo_cap(self, items: list) -> list:
        """The first max_upload_files of the photos given to one prediction, in demo mode; all of them otherwise."""
        return list(items)[: self.max_upload_files] if self.demo else list(items)

    def allows_model(self, name: str) -> bool:
        return not self.models or name in self.models

    def upload_problem(self, name: str, size: int) -> str | None:
        """Why an uploaded file is refused, or None. Streamlit checks an uploader's max_upload_size in
        the browser only (its server checks just server.maxUploadSize), so the pages check again."""
        if size > self.max_upload_mb * 1024**2:
            return f"{name} is {size / 1024**2:.1f} MB: this app takes files up to {self.max_upload_mb} MB; send a smaller one"
        return None

    def archive_limits(self) -> ArchiveLimits:
        """ArchiveLimits for an uploaded zip: at most max_extracted_mb unpacked."""
        defaults = ArchiveLimits()
        total = self.max_extracted_mb * 1024**2
        return ArchiveLimits(max_total_bytes=min(defaults.max_total_bytes, total), max_file_bytes=min(defaults.max_file_bytes, total))


DEMO_MODELS = ("cnn", "resnet18", "mobilenet_v3_small", "cooc_lr")  # cooc_lr: a strong detector in a minute on a CPU


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
        max_trials=_env_int("FVR_DEMO_MAX_TRIALS", 6),
        max_upload_mb=_env_int("FVR_DEMO_MAX_UPLOAD_MB", 20),
        max_upload_files=_env_int("FVR_DEMO_MAX_UPLOAD_FILES", 20),
        max_extracted_mb=_env_int("FVR_DEMO_MAX_EXTRACTED_MB", 200),
        allow_paths=False,
        allow_delete=False,
        upload_retention_hours=_env_float("FVR_DEMO_UPLOAD_RETENTION_HOURS", 24.0),
        uploads_max_mb=_env_float("FVR_DEMO_UPLOADS_MAX_MB", 2048.0),
    )


def enforced_limits(requested: AppLimits | None = None) -> AppLimits:
    """The limits a library call applies: in demo mode always the demo's (whatever the caller
    passed, or if it passed none: a page, a notebook or the CLI on the demo's server are held to
    the same caps), otherwise what the caller asked for, or none (AppLimits())."""
    current = app_limits()
    if current.demo:
        return current
    return requested if requested is not None else AppLimits()


def page_threads() -> int:
    """torch threads for the dashboard's own process (inference on Predict, saliency). One by
    default: a training process beside it already uses every core, and with torch's default
    threads both lose (benchmarks/page_contention.py: on 2 cores, predictions 2-3x slower at the
    median and up to 10x at p95, and the trainer slower too)."""
    return max(1, _env_int("FVR_PAGE_THREADS", 1))


def photo_cache_mb() -> int:
    """The Predict page's cache of decoded photos and face crops, for all sessions together:
    FVR_PHOTO_CACHE_MB, default 256. Entries are kept at display size (fvr_core.inference.predict.for_display)
    and the least recently used go first once the total passes the cap."""
    return max(0, _env_int("FVR_PHOTO_CACHE_MB", 256))


def page_predictions() -> int:
    """How many predictions (face search, model, saliency map) the dashboard's process runs at once,
    for all sessions together: FVR_PAGE_PREDICTIONS, default the usable cores, at most 4. At one
    thread each, that many keep the cores busy; more only add memory (20 predictions with face
    detection at once on 640x480 photos took the page process from 0.77 to 1.37 GB at its peak,
    benchmarks/concurrent_predictions.py --slots 0 --malloc-arenas 0) and make every answer slower."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, _env_int("FVR_PAGE_PREDICTIONS", min(4, cores)))


def bound_thread_memory() -> bool:
    """Let glibc's malloc keep at most FVR_MALLOC_ARENAS (default 2; 0 leaves its default of 8 per
    core) arenas in this process. Streamlit runs every session's rerun in a new thread, and by
    default each busy thread gets an arena that keeps what it freed: 20 sessions predicting with
    face detection raised the page process's peak by 480 MB even with 2 predicting at a time, by
    130-160 MB with 2 arenas (benchmarks/concurrent_predictions.py). True when applied (glibc only;
    elsewhere a no-op)."""
    arenas = _env_int("FVR_MALLOC_ARENAS", 2)
    if arenas <= 0:
        return False
    try:
        return bool(ctypes.CDLL(None).mallopt(-8, arenas))  # -8: M_ARENA_MAX; arenas made from now on
    except (OSError, AttributeError):
        return False


_slots_lock = threading.Condition()
_slots_queue: deque = deque()
_slots_busy = 0


@contextmanager
def prediction_slot() -> Iterator[None]:
    """Hold one of the process's page_predictions() places while predicting; sessions wait their
    turn in arrival order (a plain semaphore lets one busy session starve the others)."""
    global _slots_busy
    me = object()
    with _slots_lock:
        _slots_queue.append(me)
        try:
            _slots_lock.wait_for(lambda: _slots_queue[0] is me and _slots_busy < page_predictions())
        finally:  # taken, or given up (an exception while waiting): out of the line either way
            _slots_queue.remove(me)
            _slots_lock.notify_all()  # the next in line may fit too
        _slots_busy += 1
    try:
        yield
    finally:
        with _slots_lock:
            _slots_busy -= 1
            _slots_lock.notify_all()


def in_prediction_slot(function):
    """`function` run inside a prediction_slot(): measurements the pages start (robustness,
    calibration, speed) take their turn with the predictions instead of adding to them."""

    @functools.wraps(function)
    def in_slot(*args, **kwargs):
        with prediction_slot():
            return function(*args, **kwargs)

    return in_slot


def worker_idle_seconds() -> float:
    """How long a worker started when the Train page opens waits for a run (FVR_PREWARM_SECONDS,
    default 120; 0 turns prewarming off). It loads torch while the user picks settings, so the
    first curve of a run appears seconds sooner."""
    return max(0.0, float(_env_int("FVR_PREWARM_SECONDS", 120)))


# calibrated P(fake) inside this band is reported as "unsure" instead of a verdict
DEFAULT_UNSURE_BAND: tuple[float, float] = (0.35, 0.65)


def valid_unsure_band(band: Sequence[float]) -> tuple[float, float] | None:
    """(low, high) as floats when 0 <= low <= 0.5 <= high <= 1, else None: a band without 0.5 would
    call some photos real (or fake) that the model thinks more likely the other."""
    low, high = (float(v) for v in band)
    return (low, high) if 0.0 <= low <= 0.5 <= high <= 1.0 else None


def parse_unsure_band(text: str, where: str = "unsure band") -> tuple[float, float]:
    """"low,high" -> (low, high); ValueError naming `where` unless 0 <= low <= 0.5 <= high <= 1."""
    try:
        band = valid_unsure_band(text.split(","))
    except ValueError:
        raise ValueError(f"{where} {text!r} must be two probabilities, e.g. 0.35,0.65") from None
    if band is None:
        raise ValueError(f"{where} {text!r} must hold 0.5, within 0 to 1 (e.g. 0.35,0.65)")
    return band


def unsure_band() -> tuple[float, float]:
    """The calibrated P(fake) range reported as "unsure" rather than a verdict: FVR_UNSURE_BAND
    ("low,high", default 0.35,0.65)."""
    text = os.environ.get("FVR_UNSURE_BAND", "").strip()
    return parse_unsure_band(text, "environment variable FVR_UNSURE_BAND") if text else DEFAULT_UNSURE_BAND
