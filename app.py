"""CellScope dashboard: `streamlit run app.py`.

Login first (ui.login: off for one user on localhost, else a password or the institution's OpenID Connect),
then the navigation lists only the pages the user's roles open (ui.session.PAGE_PERMISSIONS); each page
checks its permission again, so a page opened by its URL without the role shows one message.
"""

import streamlit as st

from ui.login import sign_in
from ui.session import PAGE_PERMISSIONS

st.set_page_config(page_title="CellScope — blood cell classification", layout="wide")
user = sign_in()
PAGES = [  # (file, permission key, title, icon, URL)
    ("pages/home.py", "home", "Home", ":material/home:", None),
    ("pages/train.py", "train", "Train", ":material/model_training:", "train"),
    ("pages/results.py", "results", "Results", ":material/table_chart:", "results"),
    ("pages/confusion.py", "confusion", "Confusions", ":material/grid_on:", "confusion"),
    ("pages/classify.py", "classify", "Classify", ":material/biotech:", "classify"),
    ("pages/external.py", "external", "External validation", ":material/public:", "external"),
    ("pages/review.py", "review", "Review", ":material/rate_review:", "review"),
]
st.navigation([
    st.Page(path, title=title, icon=icon, default=url is None, **({"url_path": url} if url else {}))
    for path, key, title, icon, url in PAGES if user.can(PAGE_PERMISSIONS[key])
]).run()
