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
PAGES = [  # (file, permission key, title, icon, URL: the title's words, so the address reads like the menu)
    ("pages/home.py", "home", "Home", ":material/home:", None),
    ("pages/train.py", "train", "Train", ":material/model_training:", "train"),
    ("pages/results.py", "results", "Results", ":material/table_chart:", "results"),
    ("pages/confusion.py", "confusion", "Confusions", ":material/grid_on:", "confusions"),
    ("pages/embedding_map.py", "feature_map", "Feature map", ":material/scatter_plot:", "feature-map"),
    ("pages/classify.py", "classify", "Classify", ":material/biotech:", "classify"),
    ("pages/external.py", "external", "External validation", ":material/public:", "external-validation"),
    ("pages/review.py", "review", "Review", ":material/rate_review:", "review"),
]
OLD_URLS = {"confusion": "confusions", "external": "external-validation"}  # addresses of earlier versions


def _moved(page: st.Page):
    """A hidden page at an old address that sends its visitor (and their bookmark's query) to the new one."""
    def go() -> None:
        st.switch_page(page, query_params=dict(st.query_params))
    return go


pages = [st.Page(path, title=title, icon=icon, default=url is None, **({"url_path": url} if url else {}))
         for path, key, title, icon, url in PAGES if user.can(PAGE_PERMISSIONS[key])]
by_url = {page.url_path: page for page in pages}
moved = [st.Page(_moved(by_url[new]), title=f"{by_url[new].title} (moved)", url_path=old, visibility="hidden")
         for old, new in OLD_URLS.items() if new in by_url]
st.navigation(pages + moved).run()
