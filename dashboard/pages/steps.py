"""The Steps page's data: each method's metrics against its step count (from the leaderboard's long table).

Pure loaders, no Streamlit import (see :mod:`dashboard.data` for the shared readers and path safety).
"""

from __future__ import annotations

import pandas as pd


def steps_frame(long: pd.DataFrame) -> pd.DataFrame:
    """Quality against NFE: ok metric rows with ``nfe``, one ``line`` per method."""
    frame = long[(long["status"] == "ok") & long["nfe"].notna() & long["value"].notna()].copy()
    if frame.empty:
        return frame.assign(line=pd.Series(dtype=str))
    frame["nfe"] = pd.to_numeric(frame["nfe"])
    frame["line"] = [
        "teacher" if k == "teacher" else (m or c.rsplit("_", 1)[0])
        for k, m, c in zip(frame["kind"], frame["method"], frame["candidate"], strict=True)
    ]
    return frame.sort_values(["metric", "line", "nfe"]).reset_index(drop=True)
