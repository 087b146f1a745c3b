"""Shared fixtures: isolated cache and runs folders, the shared real data set, small images."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SHARED_DATASETS = Path(os.environ.get("FVR_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))
SHARED_FACES = SHARED_DATASETS / "tpdne-vs-ffhq-300"
KAGGLE_CSV = SHARED_DATASETS / "hardfakevsrealfaces-data.csv"


def _disk_usage(root: Path) -> int:
    """Bytes of the files under `root` (what du counts, give or take block rounding); files that
    vanish while it walks (tests clean up as it counts) are skipped."""
    total = 0
    for folder, _, files in os.walk(root, onerror=lambda exc: None):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_blocks * 512
            except OSError:
                pass
    return total


class TempDiskMeter:
    """The session's temporary disk: pytest's base temp folder, which also holds TMPDIR and torch
    inductor's cache for every process the tests start. Sampled every 2 s and after each test;
    the peak is printed at the end of the run (CI's limit is 2 GB)."""

    def __init__(self, root: Path):
        self.root, self.peak, self.peak_test = root, 0, ""
        self.current_test = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_every, args=(2.0,), daemon=True)
        self._thread.start()

    def sample(self) -> int:
        used = _disk_usage(self.root)
        if used > self.peak:
            self.peak, self.peak_test = used, self.current_test
        return used

    def _sample_every(self, seconds: float) -> None:
        while not self._stop.wait(seconds):
            self.sample()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.sample()


_meter: TempDiskMeter | None = None


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory):
    """The decoded-image cache of the whole session, set before any module fixture trains (those
    run before the per-test settings below, and would otherwise fill the user's ~/.cache/fvr).
    Temporary files of this process and of every process a test starts (TMPDIR), and torch
    inductor's compiled kernels, go under pytest's base temp folder too: counted, and removed."""
    base = tmp_path_factory.getbasetemp()
    scratch = base / "tmp"
    scratch.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FVR_CACHE_DIR", str(base / "fvr-cache"))
        mp.setenv("TMPDIR", str(scratch))
        mp.setattr(tempfile, "tempdir", str(scratch))
        mp.setenv("TORCHINDUCTOR_CACHE_DIR", str(base / "torchinductor"))
        mp.setenv("TRITON_CACHE_DIR", str(base / "triton"))
        yield


def pytest_sessionstart(session):
    """The meter runs in the process that reports: the only one, or the controller of pytest-xdist's
    workers (`-n 2`), whose base temp folder holds each worker's (popen-gw0, popen-gw1, ...)."""
    global _meter
    if not hasattr(session.config, "workerinput"):  # an xdist worker has workerinput
        _meter = TempDiskMeter(session.config._tmp_path_factory.getbasetemp())


def pytest_runtest_logstart(nodeid, location):
    if _meter is not None:
        _meter.current_test = nodeid


def pytest_runtest_logfinish(nodeid, location):
    if _meter is not None:
        _meter.sample()


def pytest_terminal_summary(terminalreporter):
    if _meter is None:
        return
    at_end = _meter.stop()
    terminalreporter.write_line(
        f"temporary disk: peak {_meter.peak / 1024**2:.0f} MB (while or after {_meter.peak_test or 'before the first test'}), "
        f"{at_end / 1024**2:.0f} MB at the end, in {_meter.root} (du -sh it to check)"
    )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        item.fvr_failed = True  # its runs and data folders are kept to look at
    return report


@pytest.fixture(autouse=True)
def isolated_folders(tmp_path_factory, monkeypatch, request):
    """Every test gets its own runs and data folders, removed after it unless it failed (run
    folders hold checkpoints); the decoded-image cache is shared by the session."""
    runs, data = tmp_path_factory.mktemp("runs"), tmp_path_factory.mktemp("data")
    monkeypatch.setenv("FVR_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "fvr-cache"))
    monkeypatch.setenv("FVR_RUNS_DIR", str(runs))
    monkeypatch.setenv("FVR_DATA_DIR", str(data))
    # no shipped reference runs, no demo mode and no default data set unless a test asks for them
    monkeypatch.setenv("FVR_REFERENCE_DIR", str(tmp_path_factory.getbasetemp() / "no-reference-runs"))
    monkeypatch.setenv("FVR_SHARED_DATASETS", str(tmp_path_factory.getbasetemp() / "no-shared-datasets"))  # the app's list
    monkeypatch.setenv("FVR_PREWARM_SECONDS", "0")  # no idle workers outliving a test, unless it asks
    for name in ("FVR_DEMO_MODE", "FVR_DATA", "FVR_PAGE_THREADS"):
        monkeypatch.delenv(name, raising=False)
    yield
    if not getattr(request.node, "fvr_failed", False):
        for folder in (runs, data):
            shutil.rmtree(folder, ignore_errors=True)  # a worker a test left running may still write: best effort


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


def wait_until(condition, timeout: float, what: str) -> None:
    """Poll the app's own state (a run's files, its status) until `condition()` holds; fail naming
    `what` after `timeout` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout:.0f} s for {what}"
        time.sleep(0.2)


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
    from fvr_core.data.demo import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.getbasetemp() / "demo", per_class=40, size=64)


def make_planted_folders(root: Path, size: int = 48, pictures: int = 30) -> Path:
    """fake/: smooth pictures (coarse random colours enlarged smoothly: only low frequencies) with a
    faint checkerboard planted on them (period 2 px, +-5 levels, random phase: the kind of trace a
    transposed convolution leaves); real/: such pictures blurred (sigma 1 px), which removes it.
    Half of the pictures go to each class, so colours and shapes tell nothing: only the
    high-frequency trace does. Lossless PNG, so the pattern survives."""
    from PIL import ImageFilter

    rng = np.random.default_rng(0)
    y, x = np.mgrid[:size, :size]
    for i in range(pictures):
        coarse = Image.fromarray(rng.uniform(40, 215, (6, 6, 3)).astype(np.uint8))
        smooth = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
        board = np.where((x + y + rng.integers(2)) % 2 == 0, 5.0, -5.0)[..., None]
        picture = Image.fromarray(np.clip(smooth + board, 0, 255).astype(np.uint8))
        label = "fake" if i % 2 == 0 else "real"
        image = picture if label == "fake" else picture.filter(ImageFilter.GaussianBlur(1.0))
        (root / label).mkdir(parents=True, exist_ok=True)
        image.save(root / label / f"{label}_{i}.png")
    return root
