"""Links to the app's pages (st.page_link), for the pages the user may open.

A page run on its own (Streamlit's AppTest on one page file, no st.navigation) has no other pages to link to:
the link is then the page's name in bold, so the sentence around it still reads.
"""

from __future__ import annotations

import streamlit as st
from streamlit.errors import StreamlitAPIException

from ui.session import PAGE_PERMISSIONS, current_user

PAGE_FILES = {"home": "pages/home.py", "train": "pages/train.py", "results": "pages/results.py",
              "confusion": "pages/confusion.py", "classify": "pages/classify.py", "external": "pages/external.py",
              "review": "pages/review.py", "feature_map": "pages/embedding_map.py"}


def page_link(page: str, label: str, icon: str | None = None, query: dict[str, str] | None = None) -> bool:
    """A link to `page` (a key of PAGE_PERMISSIONS) when the session's user may open it; returns whether one
    was drawn (False: no permission, or no navigation to link into)."""
    if not current_user().can(PAGE_PERMISSIONS[page]):
        return False
    try:
        st.page_link(PAGE_FILES[page], label=label, icon=icon, query_params=query)
    except StreamlitAPIException:
        st.markdown(f"**{label}**")
        return False
    return True
