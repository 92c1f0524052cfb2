"""SenseFlow dashboard: ``streamlit run dashboard/app.py [-- --results-root R --build-root B --repo P]``.

Roots: these arguments, else ``SENSEFLOW_RESULTS`` / ``SENSEFLOW_BUILD`` / ``SENSEFLOW_REPO``,
else ``results/`` and ``build/`` of the current directory. ``?page=<name>`` in the URL
opens a page directly (the sidebar keeps it in sync).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# `streamlit run` puts dashboard/ on sys.path, not the repository: make `dashboard` importable
_REPO = str(Path(__file__).resolve().parent.parent)
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

import streamlit as st  # noqa: E402

from dashboard.data import Roots  # noqa: E402
from dashboard.views import PAGES  # noqa: E402


def _roots(argv: list[str]) -> Roots:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--results-root")
    parser.add_argument("--build-root")
    parser.add_argument("--repo")
    # unknown arguments are ignored: under pytest's AppTest, sys.argv is pytest's
    args, _ = parser.parse_known_args(argv)
    return Roots.from_settings(args.results_root, args.build_root, args.repo)


def main() -> None:
    """Sidebar page choice (synced with ``?page=``), then the page."""
    st.set_page_config(page_title="SenseFlow dashboard", layout="wide")
    roots = _roots(sys.argv[1:])
    names = list(PAGES)
    wanted = st.query_params.get("page", names[0])
    if "page" not in st.session_state:
        st.session_state["page"] = wanted if wanted in PAGES else names[0]
    st.sidebar.title("SenseFlow")
    page = st.sidebar.radio("Page", names, key="page")
    st.query_params["page"] = page
    st.sidebar.caption(f"results: `{roots.results}`  \nbuild: `{roots.build}`")
    PAGES[page](roots)


main()
