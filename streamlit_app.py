"""fvr dashboard entry point: `streamlit run streamlit_app.py`. Pages live in pages/, one file each."""

import streamlit as st

st.set_page_config(page_title="fvr: fake vs real faces", page_icon=":material/face:", layout="wide")


@st.cache_resource
def _set_page_threads() -> int:
    # once per server process: inference here must not fight a training process for the cores
    import torch

    from fvr_core.settings import page_threads

    torch.set_num_threads(page_threads())
    return torch.get_num_threads()


_set_page_threads()

pages = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/data.py", title="Data", icon=":material/photo_library:"),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/leaderboard:"),
    st.Page("pages/predict.py", title="Predict", icon=":material/image_search:"),
]
st.navigation(pages).run()
