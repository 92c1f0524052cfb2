"""The dashboard's T2I-CompBench page: measured categories beside the paper's rows (``compbench_data``)."""

from __future__ import annotations

import streamlit as st

from dashboard import compbench_data as cd
from dashboard.data import RUN_HINT, Roots, load_summary, summary_files


def compbench(roots: Roots) -> None:
    """The paper's second table: every 4-step model's categories, measured and reported."""
    st.header("T2I-CompBench")
    files = summary_files(roots)
    if not files:
        st.info(
            f"Nothing yet: no T2I-CompBench numbers under `{roots.results}`. To produce them, {RUN_HINT}."
        )
        return
    names = list(files)
    profile = st.selectbox("Profile", names, key="cb_profile") if len(names) > 1 else names[0]
    long = cd.compbench_frame(load_summary(files[profile]))
    if long.empty:
        st.info(
            f"Nothing yet: profile {profile} has no T2I-CompBench rows (embedded: compbench_* metrics; real "
            f"profiles: pipeline.compbench). To produce them, {RUN_HINT}."
        )
        return
    sources = st.multiselect("Rows", ["measured", "paper"], default=["measured", "paper"], key="cb_sources")
    shown = long[long.source.isin(sources)]
    wide = cd.compbench_wide(shown)
    st.dataframe(wide, width="stretch", key="cb_table", column_config={
        c: st.column_config.NumberColumn(format="%.4f") for c in wide.columns})  # fmt: skip
    st.caption(
        "Fractions in [0, 1], higher is better; measured values are means over 10 images per prompt at seeds "
        "42-51 (real profiles) or over the test prompts (embedded: the probe's analogue, compare rankings "
        "only)."
    )
    category = st.selectbox("Category", list(wide.columns), key="cb_category") if len(wide.columns) else None
    if category:
        bars = shown[shown.category == category].assign(row=lambda d: d.source + ": " + d.method)
        st.bar_chart(bars.set_index("row")["value"], horizontal=True)
    cards = cd.compbench_cards(long)
    if not cards.empty:
        st.subheader("Protocol")
        st.dataframe(cards, width="stretch", hide_index=True, key="cb_cards")
