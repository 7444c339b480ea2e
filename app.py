"""CellScope dashboard: `streamlit run app.py`. Pages join the navigation once they work."""

import streamlit as st

st.set_page_config(page_title="CellScope — blood cell classification", layout="wide")
st.navigation([
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:", url_path="train"),
    st.Page("pages/results.py", title="Results", icon=":material/table_chart:", url_path="results"),
    st.Page("pages/confusion.py", title="Confusions", icon=":material/grid_on:", url_path="confusion"),
    st.Page("pages/classify.py", title="Classify", icon=":material/biotech:", url_path="classify"),
    st.Page("pages/external.py", title="External validation", icon=":material/public:", url_path="external"),
    st.Page("pages/review.py", title="Review", icon=":material/rate_review:", url_path="review"),
]).run()
