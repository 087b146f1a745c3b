"""What every page shares: cached loads from fvr_core and the current data set. Streamlit only:
no training, metric or image logic here."""

from __future__ import annotations


import streamlit as st

from PIL import Image

from fvr_core.data.dataset import DataError
from fvr_core.workspace.datasources import default_dataset, overview, remember_dataset, remembered_dataset, resolve_user_data
from fvr_core.runs.store import Run, all_runs
from fvr_core.settings import CLASSES, AppLimits, app_limits, page_threads, prediction_slot

def _leave_old_multipage_mode() -> None:
    """The first session of a fresh server that opens a page's own link (/train) runs that page
    alone, in Streamlit's old pages/-folder mode: without streamlit_app.py (its page setup and its
    st.navigation, whose first call ends that mode for the process). Run it again as a page of
    st.navigation. (Streamlit has no public switch for this; the class flag is what st.navigation sets.)"""
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


_leave_old_multipage_mode()  # once per process: this module is imported by every page

DATA_KEY = "data_path"
DATA_QUERY = "data"  # the link's query parameter naming the data set
SESSION_KEY = "fvr_session"


def limits() -> AppLimits:
    return app_limits()


def session_id() -> str:
    """This browser session's id: in demo mode its uploads and the runs it started are its own."""
    from fvr_core.workspace.uploads import new_session_id

    return st.session_state.setdefault(SESSION_KEY, new_session_id())


def runs() -> list[Run]:
    return all_runs()


def show_current_dataset() -> str | None:
    """The current data set (current_dataset), named in a caption, or a warning with a link to the
    Data page when there is none."""
    data_path = current_dataset()
    if data_path is None:
        st.warning("No data set chosen: pick one on the Data page first (the demo set needs no download).")
        st.page_link("pages/data.py", label="Go to Data", icon=":material/photo_library:")
    else:
        st.caption(f"Data: `{data_path}` (change it on the Data page)")
    return data_path


def current_dataset() -> str | None:
    """The data set chosen in this session (a folder, or several sources joined by ';'), else the
    one in the page's link (?data=...), else the last one chosen on this machine, else a sensible
    default. Written back into the link, so a reload, a new tab or a shared link use the same set."""
    chosen = st.session_state.get(DATA_KEY)
    if not chosen:
        found = None
        linked = st.query_params.get(DATA_QUERY)
        if linked:
            try:
                found = resolve_user_data(linked, limits())
            except DataError as exc:
                st.warning(f"The data set in this page's link cannot be used ({exc}): using another.")
        found = found or remembered_dataset(limits()) or default_dataset(all_runs(include_reference=False), limits(), session=session_id())
        chosen = str(found) if found is not None else None
        if chosen:
            st.session_state[DATA_KEY] = chosen
    if chosen and st.query_params.get(DATA_QUERY) != chosen:
        st.query_params[DATA_QUERY] = chosen
    return chosen or None


def choose_dataset(data) -> None:
    """The user chose a data set: this session, the link and (outside demo mode) this machine keep it."""
    st.session_state[DATA_KEY] = str(data)
    st.query_params[DATA_QUERY] = str(data)
    remember_dataset(data, limits())


@st.cache_resource(ttl=120, max_entries=8, show_spinner="Reading the data set (each image is decoded once, then cached)...")
def data_overview(path: str, fractions: tuple[float, float, float], seed: int):
    return overview(path, fractions, seed)


@st.cache_resource(max_entries=12, show_spinner="Loading the model...")
def _predictor(checkpoint: str, version: tuple[float, float]):
    from fvr_core.inference.predict import Predictor  # torch loads here, not for the first page

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


def prepared_photo(data: bytes, name: str, face_crop: bool):
    """A photo decoded and its faces found once, kept at display size in a cache bounded in bytes
    for all sessions (fvr_core.inference.predict.PhotoCache), not again on every rerun of the page."""
    from fvr_core.inference.predict import photo_cache

    return photo_cache().prepared(data, name, face_crop)


@st.cache_data(max_entries=256, show_spinner=False)
def _heatmap(checkpoint: str, version: tuple[float, float], image: Image.Image, target: str):
    with prediction_slot():
        picture, found = _predictor(checkpoint, version).saliency_picture(image, target=CLASSES.index(target))
    if found.empty:
        return picture, "empty map: no region raised this score"
    return picture, "uniform map: it points at no region at this image size" if found.uniform else ""


def heatmap_overlay(run: Run, image: Image.Image, target: str) -> tuple[Image.Image, str]:
    """The run's Grad-CAM map for `target` over a face, and a note when the map is empty (or,
    for a model without a spatial layer, the face untinted and a note saying so)."""
    from fvr_core.models.registry import has_saliency

    if not has_saliency(run.config.model):
        return image, "no saliency map: this model has no spatial layer to explain"
    return _heatmap(str(run.checkpoint("best")), _version(run), image, target)


def run_label(run: Run, compact: bool = False) -> str:
    """How a run is named in lists: model, name or id tail, and its headline test figure; compact
    (chips, chart titles, legends): "ref · cnn · 026534 · 80.1%"."""
    try:
        config = run.config
        model, name = config.model, config.name
    except Exception:
        model, name = "?", ""
    test = run.test_metrics() or {}
    score = test.get("balanced_accuracy")
    if compact:
        parts = ["ref"] if run.is_reference else []
        parts += [model, (name[:14] + " " if name else "") + run.id[-6:]]
        return " · ".join(parts + ([f"{score:.1%}"] if score is not None else []))
    prefix = "reference · " if run.is_reference else ""
    figure = f" · test bal. acc {score:.1%}" if score is not None else ""
    return f"{prefix}{model} · {name or run.id[-6:]} ({run.id[:15]}){figure}"


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
