"""SenseFlow dashboard: ``streamlit run dashboard/app.py [-- --results-root R --build-root B --repo P]``.

Roots: these arguments, else ``SENSEFLOW_RESULTS`` / ``SENSEFLOW_BUILD`` / ``SENSEFLOW_REPO``,
else ``results/`` and ``build/`` of the current directory. ``?page=<name>`` in the URL
opens a page directly (the sidebar keeps it in sync).
"""

from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run` puts dashboard/ on sys.path, not the repository: make `dashboard` importable
_REPO = str(Path(__file__).resolve().parent.parent)
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

import streamlit as st  # noqa: E402

from dashboard.data import roots_from_argv  # noqa: E402
from dashboard.views import PAGES  # noqa: E402
from senseflow.errors import UserError  # noqa: E402


def main() -> None:
    """Sidebar page choice (synced with ``?page=``), then the page."""
    st.set_page_config(page_title="SenseFlow dashboard", layout="wide")
    roots = roots_from_argv(sys.argv[1:])
    names = list(PAGES)
    wanted = st.query_params.get("page", names[0])
    if "page" not in st.session_state:
        st.session_state["page"] = wanted if wanted in PAGES else names[0]
    st.sidebar.title("SenseFlow")
    page = st.sidebar.radio("Page", names, key="page")
    st.query_params["page"] = page
    st.sidebar.caption(f"results: `{roots.results}`  \nbuild: `{roots.build}`")
    try:
        PAGES[page](roots)
    except UserError as exc:  # a malformed results file: say which and how to fix it, keep the app up
        st.error(str(exc))


main()
