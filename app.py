"""CellScope dashboard: `streamlit run app.py`. Pages join the navigation once they work."""

import streamlit as st

st.set_page_config(page_title="CellScope — blood cell classification", layout="wide")
st.navigation([
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:", url_path="train"),
    st.Page("pages/results.py", title="Results", icon=":material/table_chart:", url_path="results"),
    st.Page("pages/confusion.py", title="Confusions", icon=":material/grid_on:", url_path="confusion"),
]).run()
