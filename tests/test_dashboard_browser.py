"""The dashboard in a real browser: ``streamlit run`` on a free localhost port, driven by headless Chromium.

Every page is loaded with ``--dump-dom`` and ``--screenshot`` in one Chromium call; a page
counts as rendered once its DOM holds the expected heading, table cells or images and the
script is no longer running (Streamlit's status widget shows a running icon until then). A
headless load right after start can catch an unfinished page, so one throwaway load comes
first and each page gets a few tries. Screenshots are kept under the test's temp dir.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.dashboard_fixtures import CANDIDATES, PROMPTS, build_tree
from tests.helpers.ports import free_port

pytestmark = pytest.mark.slow  # a browser and a DVC repository: minutes

APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    # virtual time runs the page's timers fast; it ends the load once the page goes quiet
    "--virtual-time-budget=60000", "--window-size=1600,1600", "--hide-scrollbars",
]  # fmt: skip
RUNNING = "stStatusWidgetRunningIcon"


def chromium_or_skip() -> str:
    """The Chromium binary, else the test is skipped (`make setup` installs it; a test never does)."""
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    pytest.skip("chromium is missing: `make setup` installs it where it can (root and apt-get)")


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                if resp.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"streamlit did not answer {url}/_stcore/health in {timeout} s")


@contextmanager
def serve(repo: Path, app_args: list[str] = ()):
    """``streamlit run dashboard/app.py [-- app_args]`` on a free 127.0.0.1 port; yields the URL."""
    env = {k: v for k, v in os.environ.items() if k not in ("SENSEFLOW_RESULTS", "SENSEFLOW_BUILD")}
    env.update(SENSEFLOW_REPO=str(repo), DVC_NO_ANALYTICS="1")
    port = free_port()
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true",
        "--server.address", "127.0.0.1", "--server.port", str(port),
        "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
    ]  # fmt: skip
    if app_args:
        cmd += ["--", *app_args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    chromium = chromium_or_skip()
    tree = build_tree(tmp_path_factory.mktemp("dashbrowser") / "repo", with_dvc=True)
    with serve(tree) as url:
        yield chromium, url, tmp_path_factory.mktemp("profile")


def load(chromium: str, url: str, profile: Path, shot: Path) -> str:
    """One Chromium load: the DOM as text, the screenshot written to ``shot``."""
    proc = subprocess.run(
        [chromium, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}", "--dump-dom", url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return proc.stdout


def rendered(chromium: str, url: str, profile: Path, shot: Path, markers: list[str], tries: int = 8) -> str:
    """Load until every regex in ``markers`` is in the DOM and the script has finished; the last DOM."""
    dom = ""
    for _ in range(tries):
        dom = load(chromium, url, profile, shot)
        if RUNNING not in dom and all(re.search(m, dom) for m in markers):
            return dom
    missing = [m for m in markers if not re.search(m, dom)]
    raise AssertionError(f"{url} never rendered {missing} (running: {RUNNING in dom}); screenshot {shot}")


def cell(text: str) -> str:
    """A data-grid cell holding exactly ``text`` (glide-data-grid's accessible table)."""
    return rf'role="gridcell"[^>]*>{re.escape(text)}<'


def heading(text: str) -> str:
    return rf"<h2[^>]*>(<[^>]*>)*{re.escape(text)}<"


SAMPLE_IMG = r"<img[^>]*src=\"[^\"]*/media/[0-9a-f]+\.png"
PAGES = {
    "Leaderboard": [
        heading("Leaderboard"), cell("senseflow_4"), cell("13.38"), cell("adherence, fid_t_probe"),
        r"needs real captions",
    ],
    "Samples": [heading("Samples"), SAMPLE_IMG, r"at the top left a red 3"],
    "Steps": [heading("Steps"), r"vega-embed", cell("teacher_4")],
    "Training": [heading("Training"), r"vega-embed", cell("train/dmd")],
    "Experiments": [
        heading("Experiments"), cell("exp-lr"), cell("params.yaml:lr"), cell("clip_score_embedded"),
    ],
    "Gate": [heading("Gate"), r"Gate FAILED: 2 of 6 checks violated", cell("FAIL"), cell("no_ida_4")],
}  # fmt: skip


def test_every_page_renders_in_chromium(server, tmp_path):
    chromium, url, profile = server
    shots = tmp_path / "screenshots"
    shots.mkdir()
    load(chromium, url, profile, shots / "throwaway.png")  # the first render after start can be incomplete
    doms = {}
    for page, markers in PAGES.items():
        doms[page] = rendered(chromium, f"{url}/?page={page}", profile, shots / f"{page}.png", markers)
    # every sample image of the grid is an <img> served by streamlit's media endpoint
    imgs = re.findall(SAMPLE_IMG, doms["Samples"])
    assert len(imgs) == len(CANDIDATES) * len(PROMPTS)
    # and they were painted: the screenshot holds a block of each candidate's colour
    pixels = np.asarray(Image.open(shots / "Samples.png").convert("RGB")).reshape(-1, 3)
    for name, (*_, colour) in CANDIDATES.items():
        share = np.all(np.abs(pixels.astype(int) - colour) <= 3, axis=1).mean()
        assert share > 0.002, f"{name}'s images ({colour}) are not visible in the Samples screenshot"
    # the leaderboard's best cells are highlighted green (#d4f4dd) in the picture, not only in the DOM
    lb = np.asarray(Image.open(shots / "Leaderboard.png").convert("RGB")).reshape(-1, 3)
    assert np.all(np.abs(lb.astype(int) - (212, 244, 221)) <= 4, axis=1).any()
    for page in PAGES:
        assert (shots / f"{page}.png").stat().st_size > 10_000
    print(f"screenshots: {shots}")


def test_empty_tree_in_chromium(tmp_path):
    chromium = chromium_or_skip()
    # the roots given as the app's own arguments, after `--`
    results, build = tmp_path / "results", tmp_path / "build"
    with serve(tmp_path, ["--results-root", str(results), "--build-root", str(build)]) as url:
        profile = tmp_path / "profile"
        load(chromium, url, profile, tmp_path / "throwaway.png")
        for page in ("Leaderboard", "Samples", "Gate"):
            markers = [
                heading(page),
                r"Nothing yet: .*run <code[^>]*>make run</code>",
                re.escape(str(build)),
            ]
            rendered(chromium, f"{url}/?page={page}", profile, tmp_path / f"empty-{page}.png", markers)
