"""fvr dashboard entry point: `streamlit run streamlit_app.py`. Pages live in pages/."""

import streamlit as st

st.set_page_config(page_title="fvr: fake vs real faces", page_icon=":material/face:", layout="wide")

pages = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
]
st.navigation(pages).run()
