"""Home: what fvr is and the state of the runs. The Data, Train, Compare and Predict pages come next."""

import streamlit as st

from fvr_core.runs import RunStore

st.title("fvr: fake vs real faces")
st.write(
    "fvr trains and compares detectors that tell GAN-generated face photos from real ones. "
    "Point it at a folder of faces, pick a model and settings, and watch it train. "
    "Then compare the models side by side and ask them about your own photos."
)

store = RunStore()
rows = store.summaries()
st.subheader("Runs")
if rows:
    st.dataframe(rows, hide_index=True, use_container_width=True)
else:
    st.info(f"No runs yet in `{store.root}`. Until the Train page arrives, train from a terminal:")
st.code(
    "python -m fvr_core demo-data                      # a small SYNTHETIC set, no download\n"
    "python -m fvr_core train --data DIR --model cnn --epochs 5 --image-size 64\n"
    "python -m fvr_core runs",
    language="bash",
)
