"""Where a data set comes from and what it holds at a glance: the dashboard's Data page and a
notebook both use these to choose a data set (a folder, the Kaggle download, an uploaded zip or
the synthetic demo set) and to describe it (class counts, split sizes, sample images)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from fvr_core import settings
from fvr_core.data.dataset import (DataError, ImageSet, Source, find_dataset_root, load_dataset, parse_sources, resolve_sources, scan_dataset,
                      scan_one_class, stratified_split)
from fvr_core.runs.store import Run
from fvr_core.files import atomic_write_json, read_json
from fvr_core.settings import CLASSES, AppLimits
from fvr_core.workspace.uploads import is_visible
from fvr_core.workspace.uploads import visible_uploads

# decoded size of the Data page's look at a set: small to be quick, and the cache it leaves behind
# is the one the "Quick look" preset trains from
PREVIEW_IMAGE_SIZE = 64


def shared_datasets_dir() -> Path:
    """The team's shared data sets: $FVR_SHARED_DATASETS, else ../shared/datasets beside the checkout."""
    return Path(os.environ.get("FVR_SHARED_DATASETS") or settings.PROJECT_ROOT.parent / "shared" / "datasets")


def known_datasets(limits: AppLimits | None = None, session: str | None = None) -> dict[str, Path]:
    """Data sets already on this machine, by a label for a list: the demo set, uploads, downloads
    and (unless in demo mode) the shared data sets and $FVR_DATA. In demo mode, of the uploads
    only those of `session` (see fvr_core.workspace.uploads)."""
    found: dict[str, Path] = {}
    root = settings.data_root()
    candidates: list[tuple[str, Path]] = []
    if root.is_dir():
        for folder in sorted(root.iterdir()):
            if folder.name == "uploads":
                candidates += [(f"upload {p.name}", p) for p in visible_uploads(limits, session)]
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


def resolve_user_data(text: str, limits: AppLimits | None = None) -> str:
    """A data value a user gave (one folder, or sources joined by ';'), each source checked like a
    typed folder; the value a run's config stores."""
    parts = []
    for source in parse_sources(text):
        if source.label is None:
            parts.append(str(resolve_user_path(source.path, limits)))
        else:
            parts.append(Source(str(resolve_user_folder(source.path, limits)), source.label).spec)
    return ";".join(parts)


def _resolve_choice(text: str, limits: AppLimits | None) -> Path | str:
    """One folder as its data set root (a Path), several sources as the joined value (a str)."""
    sources = parse_sources(text)
    if len(sources) == 1 and sources[0].label is None:
        return resolve_user_path(sources[0].path, limits)
    return resolve_user_data(text, limits)


def default_dataset(runs: Sequence[Run], limits: AppLimits | None = None, session: str | None = None) -> Path | str | None:
    """The data set to show first: $FVR_DATA, else the newest run's, else the first one known (in
    demo mode never another session's upload)."""
    candidates: list[str] = []
    if os.environ.get("FVR_DATA") and (limits is None or limits.allow_paths):
        candidates.append(os.environ["FVR_DATA"])
    for run in runs:
        try:
            candidates.append(";".join(Source(str(settings.beside_project(s.path)), s.label).spec
                                       for s in parse_sources(run.config.data)))
        except Exception:
            continue
    for text in candidates:
        try:
            path = _resolve_choice(text, limits)
        except DataError:
            continue
        if limits is None or is_visible(path, limits, session):
            return path
    known = known_datasets(limits, session)
    return next(iter(known.values()), None)


def remember_dataset(path: str | Path, limits: AppLimits | None = None) -> None:
    """Remember the data set last chosen on this machine, so that a new tab or a restarted app
    starts from it instead of from whatever default exists. Not in demo mode, where the server's
    visitors are strangers: there the page's link (?data=...) alone carries the choice."""
    if limits is not None and not limits.allow_paths:
        return
    atomic_write_json(settings.data_root() / ".last_dataset.json", {"data": str(path)})


def remembered_dataset(limits: AppLimits | None = None) -> Path | str | None:
    """The data set remember_dataset kept, if it is still a usable folder (None in demo mode)."""
    if limits is not None and not limits.allow_paths:
        return None
    text = (read_json(settings.data_root() / ".last_dataset.json", {}) or {}).get("data")
    if not isinstance(text, str) or not text:
        return None
    try:
        return _resolve_choice(text, limits)
    except DataError:
        return None


@dataclass
class DataOverview:
    """What the Data page shows of a data set."""

    data: ImageSet
    split_sizes: dict[str, dict[str, int]]
    samples: dict[str, list[str]]

    @property
    def counts(self) -> dict[str, int]:
        return self.data.class_counts()


def split_sizes(labels: Sequence[int], fractions: Sequence[float], seed: int,
                strata: Sequence[int] | None = None) -> dict[str, dict[str, int]]:
    """Images of each class in each split, exactly as training will split them (`strata`: an
    ImageSet's strata(), for a data set of several sources)."""
    labels = np.asarray(labels)
    parts = stratified_split(labels if strata is None else np.asarray(strata), fractions, seed)
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
    return DataOverview(data, split_sizes(data.labels, fractions, seed, data.strata()), sample_ids(data, per_class, seed))


def source_counts(data: ImageSet) -> list[dict[str, object]]:
    """Per source of a data set: its folder and how many fakes and reals it gives."""
    return [{"source": name, "folder": str(root),
             **{c: int(((data.sources == s) & (data.labels == i)).sum()) for i, c in enumerate(CLASSES)}}
            for s, (name, root) in enumerate(zip(data.source_names, data.source_roots))]


def one_class_folders(limits: AppLimits | None = None) -> dict[str, str]:
    """Folders of the shared data sets that hold images of one class only (a generator's fakes,
    as in extra-gan-fakes/), as `fake:PATH` sources by a label for a list. Their class is read from
    the path (a 'real' in it: real, else fake); none in demo mode, which reads no outside folders."""
    found: dict[str, str] = {}
    shared = shared_datasets_dir()
    if (limits is not None and not limits.allow_paths) or not shared.is_dir():
        return found
    for folder in sorted(p for p in shared.glob("*/*") if p.is_dir() and not p.name.startswith(".")):
        if folder.name.lower() in CLASSES or (folder.parent / "data.csv").is_file():
            continue  # a class folder of a two-class data set: offered with that set
        if not any(p.suffix.lower() in settings.IMAGE_EXTENSIONS for p in folder.iterdir()):
            continue
        cls = "real" if "real" in folder.name.lower() else "fake"
        found[f"shared {folder.parent.name}/{folder.name} ({cls}s only)"] = f"{cls}:{folder.resolve()}"
    return found


def known_sources(limits: AppLimits | None = None) -> dict[str, str]:
    """Every source the Data page offers for a data set of several sources: the data sets found
    (both classes) and the one-class folders, as source specs by label."""
    return {**{label: str(path) for label, path in known_datasets(limits).items()}, **one_class_folders(limits)}


def combine_sources(chosen: Sequence[str], typed: str = "", limits: AppLimits | None = None) -> str:
    """The data set spec of the sources picked from a list and typed one a line (PATH or
    CLASS:PATH), each checked (and, in demo mode, kept inside the data root); DataError naming the
    first that cannot be read."""
    specs = list(chosen) + [line.strip() for line in (typed or "").splitlines() if line.strip()]
    if not specs:
        raise DataError("no source chosen: pick at least one data set or folder")
    sources = parse_sources(";".join(specs))
    for source in sources:
        folder = resolve_user_folder(source.path, limits, "a data set folder")
        if source.label is None:
            find_dataset_root(folder)
    spec = resolve_sources(";".join(s.spec for s in sources))
    if len(set(spec.split(";"))) != len(sources):
        raise DataError("the same source is chosen twice: choose each folder once")
    return spec


def dataset_title(data: str | Path) -> str:
    """A short name for a data set spec: its folder's name, or its sources' names."""
    sources = parse_sources(str(data))
    names = [Path(s.path).name for s in sources]
    return names[0] if len(names) == 1 else f"{len(names)} sources: " + " + ".join(names)


def count_images(data: str | Path) -> dict[str, object]:
    """Images of each class in a data set spec and its sources' layouts, from a scan (nothing decoded)."""
    counts = {c: 0 for c in CLASSES}
    layouts = []
    for source in parse_sources(str(data)):
        root, records, report = scan_dataset(source.path) if source.label is None else scan_one_class(source.path, source.label)
        for record in records:
            counts[CLASSES[record.label]] += 1
        layouts.append(f"{root.name}: {report.layout}")
    return {**counts, "total": sum(counts.values()), "layout": "; ".join(layouts)}
