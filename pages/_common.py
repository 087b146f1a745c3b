"""What every page shares: cached loads from fvr_core and the current data set. Streamlit only:
no training, metric or image logic here."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from PIL import Image

from fvr_core.datasources import default_dataset, overview
from fvr_core.runs import Run, all_runs
from fvr_core.settings import CLASSES, AppLimits, app_limits, page_threads, prediction_slot

DATA_KEY = "data_path"
WATCH_KEY = "watch_run"


def limits() -> AppLimits:
    return app_limits()


def runs() -> list[Run]:
    return all_runs()


def current_dataset() -> Path | None:
    """The data set chosen on the Data page in this session, else a sensible default."""
    chosen = st.session_state.get(DATA_KEY)
    if chosen:
        return Path(chosen)
    found = default_dataset(all_runs(include_reference=False), limits())
    if found is not None:
        st.session_state[DATA_KEY] = str(found)
    return found


@st.cache_resource(ttl=120, max_entries=8, show_spinner="Reading the data set (each image is decoded once, then cached)...")
def data_overview(path: str, fractions: tuple[float, float, float], seed: int):
    return overview(path, fractions, seed)


@st.cache_resource(max_entries=12, show_spinner="Loading the model...")
def _predictor(checkpoint: str, version: tuple[float, float]):
    from fvr_core.predict import Predictor  # torch loads here, not for the first page

    return Predictor.from_checkpoint(checkpoint)


def _version(run: Run) -> tuple[float, float]:
    """When the weights and their metadata (which carries the calibration) last changed."""
    path = run.checkpoint("best")
    return path.stat().st_mtime, path.with_suffix(".json").stat().st_mtime


def predictor(run: Run):
    """One Predictor per checkpoint file and version, shared by every session of this server.
    Sets this process's torch threads first: a training worker beside it has the cores."""
    import torch

    torch.set_num_threads(page_threads())
    return _predictor(str(run.checkpoint("best")), _version(run))


@st.cache_data(max_entries=64, show_spinner=False)
def prepared_photo(data: bytes, name: str, face_crop: bool):
    """A photo decoded and its faces found once, not again on every rerun of the page."""
    from fvr_core.predict import prepare_photo

    with prediction_slot():  # face detection: a few at a time for all sessions (memory stays bounded)
        return prepare_photo(data, name, face_crop)


@st.cache_data(max_entries=256, show_spinner=False)
def _heatmap(checkpoint: str, version: tuple[float, float], image: Image.Image, target: str):
    with prediction_slot():
        picture, found = _predictor(checkpoint, version).saliency_picture(image, target=CLASSES.index(target))
    return picture, "empty map: no region raised this score" if found.empty else ""


def heatmap_overlay(run: Run, image: Image.Image, target: str) -> tuple[Image.Image, str]:
    """The run's Grad-CAM map for `target` over a face, and a note when the map is empty."""
    return _heatmap(str(run.checkpoint("best")), _version(run), image, target)


def run_label(run: Run) -> str:
    """How a run is named in lists: model, name or id tail, and its headline test figure."""
    try:
        config = run.config
        model, name = config.model, config.name
    except Exception:
        model, name = "?", ""
    test = run.test_metrics() or {}
    score = f" · test bal. acc {test['balanced_accuracy']:.1%}" if test.get("balanced_accuracy") is not None else ""
    prefix = "reference · " if run.is_reference else ""
    return f"{prefix}{model} · {name or run.id[-6:]} ({run.id[:15]}){score}"


def accepted_uploads(uploads) -> list:
    """The uploaded files (one, a list or None) within this app's limits: each file over the size cap
    is refused with a message (the uploader's own cap is checked by the browser only), and only
    the first max_upload_files are kept."""
    lim = limits()
    kept = []
    for upload in uploads if isinstance(uploads, list) else [uploads] if uploads is not None else []:
        problem = lim.upload_problem(upload.name, upload.size)
        if problem:
            st.error(problem)
        else:
            kept.append(upload)
    if len(kept) > lim.max_upload_files:
        st.warning(f"{len(kept)} files uploaded: this app looks at the first {lim.max_upload_files}.")
    return kept[: lim.max_upload_files]


def demo_banner() -> None:
    if limits().demo:
        lim = limits()
        st.caption(
            f":material/public: Public demo: at most {lim.max_epochs} epochs at {lim.max_image_size} px, "
            f"models {', '.join(lim.models)}, {lim.max_queued_runs} runs queued at once."
        )
