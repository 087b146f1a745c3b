"""Data: choose the data set (a folder, the Kaggle download, an uploaded zip or the demo set) and
see what it holds: class counts, sample images, split sizes and the files that were skipped."""

import streamlit as st

from fvr_core.data.archive import ArchiveError
from fvr_core.report.charts import class_counts_figure, split_sizes_figure
from fvr_core.config import TrainConfig
from fvr_core.data.dataset import DataError, find_dataset_root
from fvr_core.config import split_sources
from fvr_core.workspace.datasources import combine_sources, dataset_title, known_datasets, known_sources, resolve_user_path, source_counts
from fvr_core.data.demo import make_demo_dataset
from fvr_core.data.download import DownloadError, download_kaggle
from fvr_core.data.images import ImageError, prepare_image
from fvr_core.workspace.uploads import extract_upload
from pages._common import accepted_uploads, choose_dataset, current_dataset, data_overview, demo_banner, limits, session_id

st.title("Data")
demo_banner()
lim = limits()


def choose(path) -> None:
    choose_dataset(path)
    st.session_state.pop("data_error", None)


sources = ["Demo set (synthetic)", "Upload a zip", "On this machine", "Several sources"]
if lim.allow_paths:
    sources += ["Folder path", "Kaggle download"]
source = st.segmented_control("Where the data comes from", sources, default="On this machine", key="data_source")

if source == "Demo set (synthetic)":
    st.caption("240 small SYNTHETIC faces: fakes carry a faint checkerboard, as GAN upsampling leaves. "
               "Good for trying the app, says nothing about real detectors.")
    if st.button("Use the demo set", type="primary"):
        with st.spinner("Writing the demo set..."):
            choose(make_demo_dataset())
elif source == "Upload a zip":
    st.caption("A zip of the folders fake/ and real/ (optionally with data.csv, as on Kaggle).")
    upload = next(iter(accepted_uploads(st.file_uploader("Data set zip", type=["zip"], key="data_zip",
                                                         max_upload_size=lim.max_upload_mb))), None)
    if upload is not None and st.button("Use this zip", type="primary"):
        try:
            with st.spinner("Checking and unpacking the zip..."):
                choose(find_dataset_root(extract_upload(upload, lim, session_id())))
        except (ArchiveError, DataError) as exc:
            st.error(f"{upload.name}: {exc}")
elif source == "Folder path":
    text = st.text_input("Folder holding fake/ and real/", placeholder="/path/to/faces", key="data_folder")
    if st.button("Use this folder", type="primary"):
        try:
            choose(resolve_user_path(text, lim))
        except DataError as exc:
            st.error(str(exc))
elif source == "Kaggle download":
    st.caption("Fake-Vs-Real-Faces (Hard) from Kaggle, through kagglehub (about 60 MB; needs internet).")
    if st.button("Download", type="primary"):
        try:
            with st.spinner("Downloading from Kaggle..."):
                choose(download_kaggle())
        except DownloadError as exc:
            st.error(str(exc))
elif source == "Several sources":
    st.caption("Train on several sources at once, e.g. a set of fakes and reals plus folders of other generators' "
               "fakes. The split is stratified by source and class, and evaluation reports each source's recall.")
    offered = known_sources(lim)
    current = split_sources(str(current_dataset() or ""))
    picked = st.multiselect("Sources", list(offered), default=[k for k, v in offered.items() if v in current],
                            placeholder="choose the data sets and one-class folders to combine")
    typed = st.text_area("More sources, one a line: a folder with fake/ and real/, or fake:PATH / real:PATH for a folder "
                         "of one class", key="data_more_sources") if lim.allow_paths else ""
    if st.button("Use these sources", type="primary"):
        try:
            choose(combine_sources([offered[k] for k in picked], typed, lim))
        except DataError as exc:
            st.error(str(exc))
else:
    known = known_datasets(lim, session_id())
    if not known:
        st.info("No data set on this machine yet: use the demo set, upload a zip" + (", or give a folder." if lim.allow_paths else "."))
    else:
        labels = list(known)
        current = current_dataset() or ""
        index = next((i for i, k in enumerate(labels) if str(known[k]) == current), 0)
        picked = st.selectbox("Data sets found", labels, index=index, format_func=lambda k: f"{k}  ({known[k]})")
        if str(known[picked]) != current:
            choose(known[picked])

data_path = current_dataset()
st.divider()
if data_path is None:
    st.info("Choose a data set above to see what it holds.")
    st.stop()

defaults = TrainConfig()
try:
    info = data_overview(str(data_path), tuple(defaults.split), defaults.seed)
except DataError as exc:
    st.error(f"This data set cannot be used: {exc}")
    st.stop()

data = info.data
st.subheader(dataset_title(data_path))
st.caption(f"`{data.root}` · layout: {data.report.layout} · {len(data)} usable images · "
           f"{len(data.report.skipped)} skipped")
if len(data.source_names) > 1:
    st.dataframe(source_counts(data), hide_index=True, width="stretch")
col1, col2 = st.columns(2)
col1.plotly_chart(class_counts_figure(info.counts), width="stretch")
col2.plotly_chart(split_sizes_figure(info.split_sizes), width="stretch")
st.caption(f"Split {', '.join(f'{f:.0%}' for f in defaults.split)} (train, validation, test), stratified by source and class, "
           f"seed {defaults.seed}: the Train page's defaults. The test split is only used once training ends.")
if min(info.counts.values()) < 3:
    st.warning("One class has fewer than 3 usable images: this set cannot be split for training.")

st.subheader("Sample images")
for name, ids in info.samples.items():
    st.markdown(f"**{name}**")
    cols = st.columns(max(1, len(ids)))
    for col, image_id in zip(cols, ids):
        try:
            col.image(prepare_image(data.path_of(image_id), 160).transpose(1, 2, 0), caption=image_id.rsplit("/", 1)[-1])
        except ImageError as exc:
            col.warning(f"{image_id}: {exc}")

st.subheader("Validation report")
if data.report.skipped:
    st.warning(f"{len(data.report.skipped)} file(s) were skipped and will not be used:")
    st.dataframe([{"file": s.id, "reason": s.reason} for s in data.report.skipped], hide_index=True, width="stretch")
else:
    st.success("Every file was read: nothing was skipped.")
st.page_link("pages/train.py", label="Train on this data", icon=":material/model_training:")
