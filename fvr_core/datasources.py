"""Where a data set comes from and what it holds at a glance: the dashboard's Data page and a
notebook both use these to choose a data set (a folder, the Kaggle download, an uploaded zip or
the synthetic demo set) and to describe it (class counts, split sizes, sample images)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from . import settings
from .dataset import DataError, ImageSet, find_dataset_root, load_dataset, stratified_split
from .runs import Run
from .settings import CLASSES, AppLimits

# decoded size of the Data page's look at a set: small to be quick, and the cache it leaves behind
# is the one the "Quick look" preset trains from
PREVIEW_IMAGE_SIZE = 64


def shared_datasets_dir() -> Path:
    """The team's shared data sets: $FVR_SHARED_DATASETS, else ../shared/datasets beside the checkout."""
    return Path(os.environ.get("FVR_SHARED_DATASETS") or settings.PROJECT_ROOT.parent / "shared" / "datasets")


def known_datasets(limits: AppLimits | None = None) -> dict[str, Path]:
    """Data sets already on this machine, by a label for a list: the demo set, uploads, downloads
    and (unless in demo mode) the shared data sets and $FVR_DATA."""
    found: dict[str, Path] = {}
    root = settings.data_root()
    candidates: list[tuple[str, Path]] = []
    if root.is_dir():
        for folder in sorted(root.iterdir()):
            if folder.name == "uploads":
                candidates += [(f"upload {p.name}", p) for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")]
            elif folder.is_dir() and not folder.name.startswith("."):
                candidates.append((folder.name, folder))
    if limits is None or limits.allow_paths:
        shared = shared_datasets_dir()
        if shared.is_dir():
            candidates += [(f"shared {p.name}", p) for p in sorted(shared.iterdir()) if p.is_dir()]
        if os.environ.get("FVR_DATA"):
            candidates.append(("$FVR_DATA", Path(os.environ["FVR_DATA"])))
    for label, path in candidates:
        try:
            found[label] = find_dataset_root(path)
        except DataError:
            continue
    return found


def resolve_user_folder(text: str, limits: AppLimits | None = None, what: str = "a folder of photos") -> Path:
    """A folder a user typed; DataError naming the path if it is no folder, or if this app (demo
    mode) does not let visitors read folders outside its data root."""
    text = (text or "").strip().strip('"').strip("'")
    if not text:
        raise DataError(f"no folder given: type the path of {what}")
    try:
        path = Path(text).expanduser().resolve()
        exists, is_dir = path.exists(), path.is_dir()
    except (OSError, ValueError, RuntimeError) as exc:  # a NUL byte, a name too long, ~nosuchuser
        raise DataError(f"{text[:200]!r} is not a path this machine can open ({str(exc)[:200]}): check it, or upload a zip") from None
    if limits is not None and not limits.allow_paths:
        allowed = settings.data_root().resolve()
        if path != allowed and allowed not in path.parents:
            raise DataError(f"this app only reads folders under its data folder ({allowed}); upload a zip instead")
    if not exists:
        raise DataError(f"{path} does not exist: check the spelling, or upload a zip")
    if not is_dir:
        raise DataError(f"{path} is a file: give {what} (or upload a zip)")
    return path


def resolve_user_path(text: str, limits: AppLimits | None = None) -> Path:
    """A folder a user typed, as a data set root (see resolve_user_folder)."""
    return find_dataset_root(resolve_user_folder(text, limits, "a folder holding fake/ and real/"))


def default_dataset(runs: Sequence[Run], limits: AppLimits | None = None) -> Path | None:
    """The data set to show first: $FVR_DATA, else the newest run's, else the first one known."""
    candidates: list[str] = []
    if os.environ.get("FVR_DATA") and (limits is None or limits.allow_paths):
        candidates.append(os.environ["FVR_DATA"])
    for run in runs:
        try:
            candidates.append(str(settings.beside_project(run.config.data)))
        except Exception:
            continue
    for text in candidates:
        try:
            return resolve_user_path(text, limits)
        except DataError:
            continue
    known = known_datasets(limits)
    return next(iter(known.values()), None)


@dataclass
class DataOverview:
    """What the Data page shows of a data set."""

    data: ImageSet
    split_sizes: dict[str, dict[str, int]]
    samples: dict[str, list[str]]

    @property
    def counts(self) -> dict[str, int]:
        return self.data.class_counts()


def split_sizes(labels: Sequence[int], fractions: Sequence[float], seed: int) -> dict[str, dict[str, int]]:
    """Images of each class in each split, exactly as training will split them."""
    labels = np.asarray(labels)
    parts = stratified_split(labels, fractions, seed)
    return {name: {c: int((labels[idx] == i).sum()) for i, c in enumerate(CLASSES)} for name, idx in parts.items()}


def sample_ids(data: ImageSet, per_class: int = 8, seed: int = 0) -> dict[str, list[str]]:
    """A few image ids of each class, the same ones for the same seed."""
    rng = np.random.default_rng(seed)
    out = {}
    for i, name in enumerate(CLASSES):
        members = np.flatnonzero(data.labels == i)
        chosen = rng.choice(members, size=min(per_class, len(members)), replace=False) if len(members) else []
        out[name] = [data.ids[j] for j in sorted(chosen)]
    return out


def overview(path: str | Path, fractions: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 42, per_class: int = 8,
             progress=None) -> DataOverview:
    """Validate (decode every file once, cached) and describe a data set."""
    data = load_dataset(path, PREVIEW_IMAGE_SIZE, progress=progress)
    return DataOverview(data, split_sizes(data.labels, fractions, seed), sample_ids(data, per_class, seed))


def describe_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {name}" for name, n in counts.items())


def image_paths(root: Path, ids: Iterable[str]) -> list[Path]:
    return [root / i for i in ids]
