"""The dashboard's pages: thin Streamlit layouts over ``dashboard.data`` loaders and ``dashboard.charts``.

Each page takes the :class:`~dashboard.data.Roots` and says what to run when its inputs do
not exist yet, instead of failing.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import charts, data
from dashboard.data import RUN_HINT, Roots
from dashboard.pages import compbench as compbench_data
from dashboard.pages import experiments as experiments_data
from dashboard.pages import gate as gate_data
from dashboard.pages import leaderboard as leaderboard_data
from dashboard.pages import samples as samples_data
from dashboard.pages import steps as steps_data
from dashboard.pages import training as training_data

TEACHER_HINT = "the teacher is the first column"


def _nothing(what: str, roots: Roots) -> None:
    st.info(
        f"Nothing yet: {what}. To produce it, {RUN_HINT} "
        f"(reading from `{roots.results}` and `{roots.build}`)."
    )


def _fmt(value, digits: int = 4) -> str:
    return "–" if value is None or pd.isna(value) else f"{value:.{digits}g}"


def _profile_summary(roots: Roots) -> tuple[str | None, dict]:
    files = data.summary_files(roots)
    if not files:
        return None, {}
    names = list(files)
    profile = st.selectbox("Profile", names, key="profile") if len(names) > 1 else names[0]
    return profile, data.load_summary(files[profile])


# --------------------------------------------------------------------------- Leaderboard


def leaderboard(roots: Roots) -> None:
    """Every candidate and metric with 95% CIs beside the paper's value, best marked, NFE, speedup."""
    st.header("Leaderboard")
    profile, summary = _profile_summary(roots)
    if not summary:
        _nothing(f"no `{data.SUMMARY}` under the results root", roots)
        return
    long = leaderboard_data.leaderboard_frame(summary)
    st.caption(
        f"Profile **{profile}** · reference `{summary.get('reference', '?')}` · "
        f"created {summary.get('created', '?')}"
    )
    if long.empty:
        _nothing("the summary lists no evaluated candidates", roots)
        return
    metrics = sorted(long["metric"].unique())
    left, right = st.columns([3, 1])
    sort_by = left.selectbox("Sort by", ["(pipeline order)", *metrics, "NFE", "speedup"], key="lb_sort")
    reverse = right.checkbox("Reverse order", key="lb_reverse")
    table = leaderboard_data.leaderboard_table(long, None if sort_by == "(pipeline order)" else sort_by)
    if reverse:
        table = table.iloc[::-1]
    best = leaderboard_data.best_candidates(long)

    def mark_best(column: pd.Series) -> list[str]:
        winners = best.get(column.name, set())
        return ["font-weight: bold; background-color: #d4f4dd" if c in winners else "" for c in column.index]

    styled = table.style.apply(mark_best, subset=[m for m in metrics if m in table.columns])
    numbers = {
        c: st.column_config.NumberColumn(format="%.4g")
        for c in table.columns
        if pd.api.types.is_float_dtype(table[c])
    }
    st.dataframe(styled, width="stretch", key="lb_table", column_config=numbers)
    st.caption(
        "Best per metric in green (and listed under *best*); *paper* is the paper's reported value for the "
        "same method and steps and *diff* the measured minus the paper's. Click a header to sort."
    )
    notes = leaderboard_data.not_applicable_notes(long)
    if not notes.empty:
        st.subheader("Metrics that do not apply")
        for row in notes.itertuples():
            st.markdown(f"- **{row.metric}** ({row.candidates}): {row.reason}")
    study = leaderboard_data.study_frames(roots)
    if study is not None:
        per_method, tests = study
        st.subheader("Seed study (`make run-study`)")
        st.caption("Mean over seeds with its Student-t 95% interval (4 steps, against teacher_full).")
        st.dataframe(per_method, width="stretch", key="lb_study")
        st.caption("SenseFlow minus each method: paired over seeds (and over images for adherence).")
        st.dataframe(tests, width="stretch", key="lb_study_tests")
    tables = leaderboard_data.paper_tables(roots.repo)
    if tables:
        with st.expander("The paper's reported tables"):
            for name, frame in tables.items():
                st.markdown(f"`experiments/paper/{name}.csv`")
                st.dataframe(frame, width="stretch")


# --------------------------------------------------------------------------- Samples


def samples(roots: Roots) -> None:
    """Prompts (search, attribute filters) by candidates, one seed per row, scores under each image."""
    st.header("Samples")
    _profile, summary = _profile_summary(roots)
    folders = samples_data.sample_folders(roots, summary)
    if not folders:
        _nothing("no sample folder with a `manifest.jsonl` under the samples root", roots)
        return
    names = list(folders)
    default = samples_data.default_sample_candidates(names, summary.get("candidates"))
    chosen = st.multiselect("Candidates", names, default=default, key="s_candidates")
    if not chosen:
        st.warning("Choose at least one candidate.")
        return
    chosen = [n for n in names if n in chosen]  # the pipeline order: teacher first
    manifests = {c: samples_data.load_manifest(folders[c], roots.allowed) for c in chosen}
    scores = {c: data.load_scores(data.eval_folder(roots, c, summary)) for c in chosen}
    grid = samples_data.samples_grid(manifests, scores)
    metric_cols = samples_data.score_columns(scores)
    refused = grid[grid["refused"].astype(bool)] if not grid.empty else grid
    if not refused.empty:
        st.warning(
            f"{len(refused)} manifest entries not shown: " + "; ".join(sorted(set(refused["refused"]))[:3])
        )
    grid = grid[~grid["refused"].astype(bool)] if not grid.empty else grid
    if grid.empty:
        _nothing("the chosen sample folders list no readable images", roots)
        return
    per_prompt = samples_data.seeds_per_prompt(grid)
    if per_prompt > 1:  # several images per prompt: show one seed index at a time, the same for every column
        k = st.selectbox("Seed (n-th of each prompt)", list(range(per_prompt)), key="s_seed")
        grid = samples_data.nth_seed(grid, k)
    text = st.text_input("Search prompts", key="s_search", placeholder="e.g. red 3")
    attrs: dict[str, list[str]] = {}
    options = samples_data.attribute_options(grid)
    if options:
        cols = st.columns(len(options))
        for col, (attr, values) in zip(cols, options.items(), strict=True):
            attrs[attr] = col.multiselect(attr.capitalize(), values, key=f"s_attr_{attr}")
    ids = samples_data.filter_prompts(grid, text, attrs)
    st.caption(
        f"{len(ids)} prompts match; {TEACHER_HINT} when it is chosen; the images of a row share one seed, "
        "except the full-step reference teacher's, drawn from other seeds "
        "(independent noise for FID-T/KID-T)."
    )
    if not ids:
        st.info("No prompt matches the search and filters.")
        return
    limit = int(st.number_input("Prompts shown", 1, max(len(ids), 1), min(6, len(ids)), key="s_limit"))
    shown = ids[:limit]
    big = st.selectbox("Enlarge a prompt", ["(none)", *shown], key="s_enlarge")
    if big != "(none)":
        _grid_row(grid, big, chosen, metric_cols, roots, display_px=384)
        st.divider()
    header = st.columns(len(chosen))
    for col, cand in zip(header, chosen, strict=True):
        col.markdown(f"**{cand}**")
    for pid in shown:
        _grid_row(grid, pid, chosen, metric_cols, roots, display_px=128)


def _grid_row(
    grid: pd.DataFrame, pid, chosen: list[str], metric_cols: list[str], roots: Roots, display_px: int
) -> None:
    rows = grid[grid["id"] == pid]
    st.markdown(f"`{pid}` · {rows['prompt'].iloc[0]}")
    cols = st.columns(len(chosen))
    for col, cand in zip(cols, chosen, strict=True):
        cell = rows[rows["candidate"] == cand]
        if cell.empty:
            col.caption(f"{cand}: no image")
            continue
        rec = cell.iloc[0]
        scores = " · ".join(
            f"{m} {_fmt(rec[m], 3)}"
            for m in metric_cols
            if pd.api.types.is_number(rec[m]) and not pd.isna(rec[m])
        )
        try:
            image = samples_data.read_image(rec["path"], roots.allowed, display_px)
        except (OSError, data.UnsafePathError) as exc:  # a truncated PNG, a file removed meanwhile
            col.warning(f"{cand}: unreadable image ({exc})")
            continue
        col.image(
            image,
            caption=scores or cand,
            output_format="PNG",
        )


# --------------------------------------------------------------------------- Steps


def steps(roots: Roots) -> None:
    """Quality against NFE for the teacher and every student: what distillation buys."""
    st.header("Steps")
    _profile, summary = _profile_summary(roots)
    frame = steps_data.steps_frame(leaderboard_data.leaderboard_frame(summary)) if summary else pd.DataFrame()
    if frame.empty:
        _nothing("no evaluated candidates with an NFE in the summary", roots)
        return
    metrics = sorted(frame["metric"].unique())
    metric = st.selectbox("Metric", metrics, key="st_metric")
    st.altair_chart(charts.steps_chart(frame, metric), width="stretch")
    table = frame[frame["metric"] == metric][["line", "candidate", "nfe", "value", "ci_low", "ci_high"]]
    st.dataframe(table, width="stretch", hide_index=True, key="st_table")


# --------------------------------------------------------------------------- Training


def training(roots: Roots) -> None:
    """Loss terms, gradient norms and FID-T over iterations per method, overlaid."""
    st.header("Training")
    dirs = training_data.training_dirs(roots)
    if not dirs:
        _nothing("no distillation logs under `build/distill/<method>/dvclive`", roots)
        return
    methods = st.multiselect("Methods", list(dirs), default=list(dirs), key="t_methods")
    chosen = {m: dirs[m] for m in dirs if m in methods}
    if not chosen:
        st.warning("Choose at least one method.")
        return
    logs = training_data.training_frame(chosen)
    curves = training_data.eval_curves(chosen)
    if not curves.empty:
        st.subheader("Evaluation during training")
        names = sorted(curves["metric"].unique())
        # FID-T first when logged: the paper's stability story is told in FID-T over iterations
        first = next((i for i, n in enumerate(names) if "fid" in n), 0)
        metric = st.selectbox("Curve", names, index=first, key="t_curve")
        st.altair_chart(charts.training_chart(curves, metric, x="iteration"), width="stretch")
    if logs.empty:
        st.info("No dvclive metrics logged yet for the chosen methods.")
        return
    groups = training_data.metric_groups(logs["metric"])
    group = st.radio("Logged values", list(groups), horizontal=True, key="t_group")
    picked = st.multiselect("Series", groups[group], default=groups[group][:4], key=f"t_series_{group}")
    for metric in picked:
        st.altair_chart(charts.training_chart(logs, metric), width="stretch")
    last = logs[logs["metric"].isin(picked)].sort_values("step").groupby(["metric", "method"]).tail(1)
    st.caption("Last logged value per method")
    st.dataframe(last.pivot(index="metric", columns="method", values="value"), width="stretch", key="t_last")


# --------------------------------------------------------------------------- Experiments


def experiments(roots: Roots) -> None:
    """DVC experiments with params and metrics; two picked: param diff, metric deltas; paired comparison."""
    st.header("Experiments")
    exps = experiments_data.load_experiments(roots.repo)
    if exps.frame.empty:
        _nothing(f"no DVC experiments ({exps.message or 'dvc exp show lists none'})", roots)
    else:
        frame = exps.frame
        shown = frame.assign(rev=frame["rev"].str[:10]).set_index("experiment")
        st.dataframe(shown, width="stretch", key="e_table")
        names = list(frame["experiment"])
        ia, ib = experiments_data.default_pair(frame)
        left, right = st.columns(2)
        a = left.selectbox("Experiment A", names, index=ia, key="e_a")
        b = right.selectbox("Experiment B", names, index=ib, key="e_b")
        if a == b:
            st.info("Pick two different experiments to compare them.")
        else:
            st.subheader(f"Params that differ ({a} → {b})")
            _table_or_none(experiments_data.param_diff(frame, a, b), "e_params")
            st.subheader("Metric deltas (B − A)")
            _table_or_none(experiments_data.metric_deltas(frame, a, b), "e_metrics")
    _paired(roots)


def _table_or_none(frame: pd.DataFrame, key: str) -> None:
    if frame.empty:
        st.caption("none")
    else:
        st.dataframe(frame, width="stretch", hide_index=True, key=key)


def _paired(roots: Roots) -> None:
    st.subheader("Paired comparison of two candidates")
    _profile, summary = _profile_summary(roots)
    names = list((summary.get("candidates") or {}).keys())
    if not names and roots.build.joinpath("eval").is_dir():
        names = [p.name for p in sorted((roots.build / "eval").iterdir()) if p.is_dir()]
    with_scores = [n for n in data.candidate_order(names, summary.get("candidates")) if
                   not data.load_scores(data.eval_folder(roots, n, summary)).empty]  # fmt: skip
    if len(with_scores) < 2:
        st.caption(f"Needs two evaluated candidates with per-image scores; {RUN_HINT}.")
        return
    left, right = st.columns(2)
    ia, ib = experiments_data.default_paired(
        {n: data.load_scores(data.eval_folder(roots, n, summary)) for n in with_scores}
    )
    a = left.selectbox("Candidate A", with_scores, index=ia, key="p_a")
    b = right.selectbox("Candidate B", with_scores, index=ib, key="p_b")
    table = experiments_data.paired_comparison(
        data.load_scores(data.eval_folder(roots, a, summary)),
        data.load_scores(data.eval_folder(roots, b, summary)),
    )
    st.caption(f"Mean of B − A over images sharing prompt id and seed, 95% bootstrap interval ({b} − {a}).")
    st.dataframe(table, width="stretch", hide_index=True, key="p_table")


# --------------------------------------------------------------------------- Gate


def gate(roots: Roots) -> None:
    """The quality gate's thresholds and current verdict, violations first."""
    st.header("Gate")
    view = gate_data.load_gate(roots)
    if view is None:
        _nothing(f"no `{data.GATE}` under the results root", roots)
        return
    failed = int((view.rows["status"] == "FAIL").sum())
    if view.passed:
        st.success(f"Gate passed: {len(view.rows)} checks, none violated.")
    else:
        st.error(f"Gate FAILED: {failed} of {len(view.rows)} checks violated.")

    def red_failures(row: pd.Series) -> list[str]:
        return ["background-color: #fde2e2" if row["status"] == "FAIL" else ""] * len(row)

    st.dataframe(
        view.rows.style.apply(red_failures, axis=1),
        width="stretch",
        hide_index=True,
        key="g_rows",
        column_config={
            "problems": st.column_config.TextColumn(width="large"),
            "value": st.column_config.NumberColumn(format="%.4g"),
            "baseline": st.column_config.NumberColumn(format="%.4g"),
        },
    )
    st.subheader("Thresholds")
    st.caption(f"from `{view.thresholds_path or '?'}`")
    if view.thresholds.empty:
        st.caption("The thresholds file is not readable from here.")
    else:
        st.dataframe(view.thresholds, width="stretch", hide_index=True, key="g_thresholds")


def compbench(roots: Roots) -> None:
    """The paper's second table: every 4-step model's categories, measured and reported."""
    st.header("T2I-CompBench")
    files = data.summary_files(roots)
    if not files:
        st.info(
            f"Nothing yet: no T2I-CompBench numbers under `{roots.results}`. To produce them, {RUN_HINT}."
        )
        return
    names = list(files)
    profile = st.selectbox("Profile", names, key="cb_profile") if len(names) > 1 else names[0]
    long = compbench_data.compbench_frame(data.load_summary(files[profile]))
    if long.empty:
        st.info(
            f"Nothing yet: profile {profile} has no T2I-CompBench rows (embedded: compbench_* metrics; real "
            f"profiles: pipeline.compbench). To produce them, {RUN_HINT}."
        )
        return
    sources = st.multiselect("Rows", ["measured", "paper"], default=["measured", "paper"], key="cb_sources")
    shown = long[long.source.isin(sources)]
    wide = compbench_data.compbench_wide(shown)
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
    cards = compbench_data.compbench_cards(long)
    if not cards.empty:
        st.subheader("Protocol")
        st.dataframe(cards, width="stretch", hide_index=True, key="cb_cards")


PAGES = {
    "Leaderboard": leaderboard,
    "Samples": samples,
    "Steps": steps,
    "Training": training,
    "Experiments": experiments,
    "Gate": gate,
    "T2I-CompBench": compbench,
}
