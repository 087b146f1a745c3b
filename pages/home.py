"""Home: what fvr does, the state of the data and of the runs, and where to go next."""

import pandas as pd
import streamlit as st

from fvr_core.report.compare import readable_table
from fvr_core.data.dataset import DataError
from fvr_core.workspace.datasources import count_images
from fvr_core.runs.store import ACTIVE_STATES, count_states
from pages._common import current_dataset, demo_banner, runs

st.title("fvr: fake vs real faces")
st.write(
    "fvr trains detectors that tell GAN-generated face photos from real ones, on a data set you choose. "
    "Watch the training curves grow live, then compare the models side by side on held-out images. "
    "Finally, upload your own photos and see what each model says about them."
)
demo_banner()

left, right = st.columns(2)
with left:
    st.subheader("Data")
    data = current_dataset()
    if data is None:
        st.info("No data set chosen yet: pick one on the Data page (the built-in demo set needs no download).")
    else:
        try:
            counts = count_images(data)
            st.write(f"`{data}`: {counts['total']} images ({counts['fake']} fake, {counts['real']} real), "
                     f"layout {counts['layout']}.")
        except DataError as exc:
            st.warning(f"The chosen data set cannot be read: {exc}")
    st.page_link("pages/data.py", label="Choose or inspect the data", icon=":material/photo_library:")

with right:
    st.subheader("Runs")
    all_runs = runs()
    own = [r for r in all_runs if not r.is_reference]
    shipped = len(all_runs) - len(own)
    if not own:
        st.info("No runs of yours yet: start one on the Train page (the \"Quick look\" preset takes about a minute).")
    else:
        st.write(f"Your runs: {count_states(own)}.")
        active = sum(r.state in ACTIVE_STATES for r in own)
        if active:
            st.write(f":material/autorenew: {active} training or queued now: follow them live on the Train page.")
    if shipped:
        st.caption(f"Also {shipped} reference runs shipped with fvr (the original comparison, trained once): "
                   "marked \"ref\" on Compare and Predict.")
    st.page_link("pages/train.py", label="Train a model", icon=":material/model_training:")
    st.page_link("pages/compare.py", label="Compare runs", icon=":material/leaderboard:")
    st.page_link("pages/predict.py", label="Ask the models about your photos", icon=":material/image_search:")

if all_runs:
    st.subheader("Latest runs")
    columns = ["run", "model", "state", "reference", "epochs", "image_size", "test_acc", "test_balanced_acc", "test_roc_auc"]
    table, formats = readable_table(pd.DataFrame([r.summary() for r in (own[:10] or all_runs[:10])], columns=columns))
    st.dataframe(table, hide_index=True, width="stretch",
                 column_config={title: st.column_config.NumberColumn(format=fmt) for title, fmt in formats.items()})

with st.expander("The same from a terminal or a notebook"):
    st.code(
        "python -m fvr_core demo-data                      # a small SYNTHETIC set, no download\n"
        "python -m fvr_core train --data DIR --model cnn --epochs 5 --image-size 64\n"
        "python -m fvr_core runs",
        language="bash",
    )
