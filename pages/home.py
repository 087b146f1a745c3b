"""Home: what fvr does, the state of the data and of the runs, and where to go next."""

import streamlit as st

from fvr_core.dataset import DataError, scan_dataset
from fvr_core.runs import ACTIVE_STATES
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
            root, records, report = scan_dataset(data)
            fake = sum(r.label == 0 for r in records)
            st.write(f"`{root}`: {len(records)} images ({fake} fake, {len(records) - fake} real), {report.layout} layout.")
        except DataError as exc:
            st.warning(f"The chosen data set cannot be read: {exc}")
    st.page_link("pages/data.py", label="Choose or inspect the data", icon=":material/photo_library:")

with right:
    st.subheader("Runs")
    all_runs = runs()
    states = [r.state for r in all_runs]
    if not all_runs:
        st.info("No runs yet: start one on the Train page (the \"Quick look\" preset takes about a minute).")
    else:
        active = sum(s in ACTIVE_STATES for s in states)
        counts = ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states)))
        st.write(f"{len(all_runs)} runs: {counts}.")
        if active:
            st.write(f":material/autorenew: {active} training or queued now: follow them live on the Train page.")
    st.page_link("pages/train.py", label="Train a model", icon=":material/model_training:")
    st.page_link("pages/compare.py", label="Compare runs", icon=":material/leaderboard:")
    st.page_link("pages/predict.py", label="Ask the models about your photos", icon=":material/image_search:")

if all_runs:
    st.subheader("Latest runs")
    rows = [r.summary() for r in all_runs[:10]]
    columns = ["run", "model", "state", "epochs", "image_size", "test_acc", "test_balanced_acc", "test_roc_auc"]
    st.dataframe([{k: row[k] for k in columns} for row in rows], hide_index=True, width="stretch",
                 column_config={k: st.column_config.NumberColumn(format="percent") for k in ("test_acc", "test_balanced_acc")})

with st.expander("The same from a terminal or a notebook"):
    st.code(
        "python -m fvr_core demo-data                      # a small SYNTHETIC set, no download\n"
        "python -m fvr_core train --data DIR --model cnn --epochs 5 --image-size 64\n"
        "python -m fvr_core runs",
        language="bash",
    )
