"""Pure chart builders (Altair, which Streamlit ships with): frames from ``dashboard.data`` in, charts out."""

from __future__ import annotations

import altair as alt
import pandas as pd


def steps_chart(steps: pd.DataFrame, metric: str) -> alt.LayerChart:
    """Quality against NFE for one metric: one line per method (the teacher's steps sweep included), CI bars.

    ``steps`` is :func:`dashboard.data.steps_frame`. The NFE axis is logarithmic: the sweep
    spans 1 to 64 evaluations, and what distillation buys is the left end.
    """
    frame = steps[steps["metric"] == metric]
    x = alt.X("nfe:Q", title="NFE (network evaluations per image)", scale=alt.Scale(type="log"))
    colour = alt.Color("line:N", title="method")
    tooltip = ["candidate", "nfe", alt.Tooltip("value:Q", format=".4g"), "ci_low", "ci_high"]
    lines = (
        alt.Chart(frame)
        .mark_line(point=alt.OverlayMarkDef(size=60))
        .encode(
            x=x, y=alt.Y("value:Q", title=metric, scale=alt.Scale(zero=False)), color=colour, tooltip=tooltip
        )
    )
    bars = (
        alt.Chart(frame.dropna(subset=["ci_low", "ci_high"]))
        .mark_errorbar()
        .encode(x=x, y=alt.Y("ci_low:Q", title=metric), y2="ci_high:Q", color=colour)
    )
    return (bars + lines).properties(title=f"{metric} against NFE", height=320)


def training_chart(frame: pd.DataFrame, metric: str, x: str = "step") -> alt.Chart:
    """One metric over iterations, one line per method overlaid (``frame``: method, ``x``, metric, value)."""
    data = frame[frame["metric"] == metric]
    return (
        alt.Chart(data)
        .mark_line(point=len(data) <= 60)
        .encode(
            x=alt.X(f"{x}:Q", title="iteration"),
            y=alt.Y("value:Q", title=metric, scale=alt.Scale(zero=False)),
            color=alt.Color("method:N", title="method"),
            tooltip=["method", x, alt.Tooltip("value:Q", format=".4g")],
        )
        .properties(title=metric, height=300)
    )
