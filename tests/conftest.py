"""Shared fixtures: isolated cache and runs folders, the shared real data set, small images."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SHARED_DATASETS = Path(os.environ.get("FVR_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))
SHARED_FACES = SHARED_DATASETS / "tpdne-vs-ffhq-300"
KAGGLE_CSV = SHARED_DATASETS / "hardfakevsrealfaces-data.csv"


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory):
    """The decoded-image cache of the whole session, set before any module fixture trains (those
    run before the per-test settings below, and would otherwise fill the user's ~/.cache/fvr)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FVR_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "fvr-cache"))
        yield


@pytest.fixture(autouse=True)
def isolated_folders(tmp_path_factory, monkeypatch):
    """Every test gets its own runs and data folders; the decoded-image cache is shared by the session."""
    monkeypatch.setenv("FVR_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "fvr-cache"))
    monkeypatch.setenv("FVR_RUNS_DIR", str(tmp_path_factory.mktemp("runs")))
    monkeypatch.setenv("FVR_DATA_DIR", str(tmp_path_factory.mktemp("data")))
    # no shipped reference runs, no demo mode and no default data set unless a test asks for them
    monkeypatch.setenv("FVR_REFERENCE_DIR", str(tmp_path_factory.getbasetemp() / "no-reference-runs"))
    monkeypatch.setenv("FVR_SHARED_DATASETS", str(tmp_path_factory.getbasetemp() / "no-shared-datasets"))  # the app's list
    monkeypatch.setenv("FVR_PREWARM_SECONDS", "0")  # no idle workers outliving a test, unless it asks
    for name in ("FVR_DEMO_MODE", "FVR_DATA", "FVR_PAGE_THREADS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def shared_faces() -> Path:
    if not (SHARED_FACES / "data.csv").is_file():
        pytest.skip(f"the shared data set is absent ({SHARED_FACES}); CI has it beside the checkout")
    return SHARED_FACES


@pytest.fixture
def kaggle_csv() -> Path:
    if not KAGGLE_CSV.is_file():
        pytest.skip(f"the Kaggle label file is absent ({KAGGLE_CSV}); CI has it beside the checkout")
    return KAGGLE_CSV


def write_image(path: Path, size=(40, 40), color=(120, 80, 60), mode="RGB", fmt=None, **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    arr = np.clip(rng.normal(color, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr).convert(mode) if mode != "RGB" else Image.fromarray(arr)
    img.save(path, format=fmt, **save)
    return path


def make_class_folders(root: Path, n_fake: int = 6, n_real: int = 6, size=(40, 40)) -> Path:
    """A plain class-folder data set of small noisy images (fakes reddish, reals bluish)."""
    for i in range(n_fake):
        write_image(root / "fake" / f"f{i}.jpg", size, (180, 60, 60))
    for i in range(n_real):
        write_image(root / "real" / f"r{i}.jpg", size, (60, 60, 180))
    return root


@pytest.fixture
def demo_data(tmp_path_factory) -> Path:
    """The built-in synthetic demo set, written once per session."""
    from fvr_core.demo import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.getbasetemp() / "demo", per_class=40, size=64)
