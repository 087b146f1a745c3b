"""fvr dashboard entry point: `streamlit run streamlit_app.py`. Pages live in pages/, one file each."""

from pathlib import Path

import streamlit as st

from fvr_core.settings import bound_thread_memory

# a local icon (beside the server settings): a Material one is fetched from a font server, which fails offline
st.set_page_config(page_title="fvr: fake vs real faces", page_icon=Path(__file__).parent / ".streamlit" / "favicon.png", layout="wide")

bound_thread_memory()  # sessions run in threads: a few malloc arenas for all, not one per thread (idempotent)

# torch is imported by the pages that need it (Train, Predict), so the first page is quick; they
# set this process's threads (FVR_PAGE_THREADS) before using it

pages = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/data.py", title="Data", icon=":material/photo_library:"),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("pages/search.py", title="Search", icon=":material/travel_explore:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/leaderboard:"),
    st.Page("pages/predict.py", title="Predict", icon=":material/image_search:"),
]
# .streamlit/config.toml hides the sidebar's page list, so that the first run of a fresh server does not flash
# the files of pages/ (Streamlit's old multipage mode); shown again here, for the five pages below
st.set_option("client.showSidebarNavigation", True)
st.navigation(pages, position="sidebar").run()
