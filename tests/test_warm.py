"""Warm start (senseflow/warm.py): forked workers behave like cold processes, or the caller runs cold.

A throwaway module in tmp_path is the entry point; the caller prints WARM/COLD-marker exit
code 97 when ``forward`` declines, so each test knows which path ran.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

TARGET = textwrap.dedent(
    """
    import os, signal, sys, time
    IMPORTED_IN = os.getpid()

    def echo():
        print("argv", sys.argv[1:])
        print("cwd", os.getcwd())
        print("color", os.environ.get("WARM_TEST_COLOR"))
        print("preloaded", IMPORTED_IN != os.getpid())
        print("worker", os.environ.get("SENSEFLOW_WARM_WORKER"))
        print("to stderr", file=sys.stderr)
        sys.exit(int(os.environ.get("WARM_TEST_CODE", "0")))

    def crash():
        raise RuntimeError("boom in the worker")

    def sleeper():
        out = os.environ["WARM_TEST_OUT"]
        def on_term(sig, frame):
            open(out + ".tmp", "w").write(str(sig))
            os.replace(out + ".tmp", out + ".term")  # the test polls for the file: whole or absent
            sys.exit(143)
        signal.signal(signal.SIGTERM, on_term)
        open(out + ".pid", "w").write(str(os.getpid()))
        time.sleep(60)
    """
)
CALLER = (
    "import sys; from senseflow.warm import forward; "
    "c = forward(sys.argv[1], sys.argv[1:]); sys.exit(97 if c is None else c)"
)
COLD = 97


def _env(tmp_path: Path, sock: Path | None, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENSEFLOW_WARM")}
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{ROOT}"
    if sock is not None:
        env["SENSEFLOW_WARM_SOCKET"] = str(sock)
    env.update(extra)
    return env


def _wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


@pytest.fixture
def server(tmp_path):
    """A warm server preloading the target module, watching tmp_path for source changes."""
    (tmp_path / "warm_target.py").write_text(TARGET)
    sock = tmp_path / "s.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "senseflow.warm", "serve", "--socket", str(sock),
         "--preload", "warm_target", "--watch", str(tmp_path), "--idle-timeout", "120"],
        env=_env(tmp_path, None), stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _wait_for(lambda: sock.exists() or proc.poll() is not None)
    assert sock.exists(), proc.stderr.read()
    yield sock, proc
    proc.terminate()
    proc.wait(timeout=20)


def _call(tmp_path, sock, entry, *args, cwd=None, **env):
    return subprocess.run(
        [sys.executable, "-c", CALLER, entry, *args],
        env=_env(tmp_path, sock, **env), cwd=cwd or tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_messages_sent_back_to_back_are_read_one_at_a_time():
    """A fast worker's exit code can arrive in the same read as its pid: neither may be lost
    (a lost pid made the caller run the command a second time, cold)."""
    import socket

    from senseflow.warm import _recv, _send

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        r, w = os.pipe()
        _send(a, {"pid": 12}, fds=[r])
        _send(a, {"exit": 3})
        _send(a, {"big": "x" * 50_000})
        first, fds = _recv(b, with_fds=True)
        assert first == {"pid": 12} and len(fds) == 1
        assert _recv(b) == ({"exit": 3}, [])
        assert _recv(b)[0]["big"] == "x" * 50_000
        for fd in (r, w, *fds):
            os.close(fd)


def test_without_a_server_the_caller_runs_cold(tmp_path):
    (tmp_path / "warm_target.py").write_text(TARGET)
    assert _call(tmp_path, None, "warm_target:echo").returncode == COLD
    assert _call(tmp_path, tmp_path / "no.sock", "warm_target:echo").returncode == COLD
    # the console-script shim then runs the command itself
    env = _env(tmp_path, tmp_path / "no.sock")
    r = subprocess.run(
        [sys.executable, "-c", "from senseflow.launch import _launch; _launch('warm_target:echo')", "a"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0 and "preloaded False" in r.stdout and "worker None" in r.stdout


def test_worker_gets_the_callers_argv_cwd_env_stdio_and_exit_code(tmp_path, server):
    sock, proc = server
    sub = tmp_path / "here"
    sub.mkdir()
    r = _call(
        tmp_path,
        sock,
        "warm_target:echo",
        "--flag",
        "x y",
        cwd=sub,
        WARM_TEST_COLOR="teal",
        WARM_TEST_CODE="5",
    )
    assert r.returncode == 5, r.stderr
    assert "argv ['--flag', 'x y']" in r.stdout
    assert f"cwd {sub}" in r.stdout
    assert "color teal" in r.stdout
    assert "preloaded True" in r.stdout  # imported by the server, not by the worker
    assert f"worker {proc.pid}" in r.stdout
    assert "to stderr" in r.stderr
    # the next request is another fresh fork with its own environment
    r2 = _call(tmp_path, sock, "warm_target:echo", cwd=sub)
    assert r2.returncode == 0 and "color None" in r2.stdout


def test_a_crash_in_the_worker_reaches_the_caller(tmp_path, server):
    sock, _ = server
    r = _call(tmp_path, sock, "warm_target:crash")
    assert r.returncode == 1
    assert "RuntimeError: boom in the worker" in r.stderr


def test_signals_are_forwarded_and_a_killed_caller_stops_its_worker(tmp_path, server):
    sock, _ = server
    for how, out in ((signal.SIGTERM, tmp_path / "a"), (signal.SIGKILL, tmp_path / "b")):
        caller = subprocess.Popen(
            [sys.executable, "-c", CALLER, "warm_target:sleeper"],
            env=_env(tmp_path, sock, WARM_TEST_OUT=str(out)), cwd=tmp_path,
        )  # fmt: skip
        _wait_for(lambda out=out: Path(str(out) + ".pid").exists())
        worker = int(Path(str(out) + ".pid").read_text())
        assert worker != caller.pid
        caller.send_signal(how)
        code = caller.wait(timeout=30)
        # SIGTERM: forwarded, the worker's handler ran and its exit code came back;
        # SIGKILL: the caller is gone, the server saw its socket close and stopped the worker
        _wait_for(lambda out=out: Path(str(out) + ".term").exists(), timeout=30)
        assert Path(str(out) + ".term").read_text() == str(int(signal.SIGTERM))
        assert code == (143 if how == signal.SIGTERM else -signal.SIGKILL)
        _wait_for(lambda w=worker: not Path(f"/proc/{w}").exists() or "Z" in _state(w), timeout=30)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    except OSError:
        return "Z"


def test_changed_source_sends_callers_cold_and_stops_the_server(tmp_path, server):
    sock, proc = server
    assert _call(tmp_path, sock, "warm_target:echo").returncode == 0
    target = tmp_path / "warm_target.py"
    target.write_text(TARGET + "\n# edited after the server imported it\n")
    r = _call(tmp_path, sock, "warm_target:echo")
    assert r.returncode == COLD  # the shim would now import the edited file itself
    assert proc.wait(timeout=30) == 0
    assert "changed since start-up" in proc.stderr.read()
    assert not sock.exists()


def test_a_caller_with_another_pythonpath_or_hash_seed_runs_cold(tmp_path, server):
    sock, proc = server
    env = _env(tmp_path, sock)
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{tmp_path}"  # same dirs, other order: other resolution
    r = subprocess.run([sys.executable, "-c", CALLER, "warm_target:echo"], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == COLD
    assert _call(tmp_path, sock, "warm_target:echo", PYTHONHASHSEED="123").returncode == COLD
    assert proc.poll() is None  # still serving the others
    assert _call(tmp_path, sock, "warm_target:echo").returncode == 0


def test_server_refuses_to_fork_after_imports_that_started_threads(tmp_path):
    (tmp_path / "threaded.py").write_text(
        "import threading, time\nthreading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
    )
    sock = tmp_path / "s.sock"
    r = subprocess.run(
        [sys.executable, "-m", "senseflow.warm", "serve", "--socket", str(sock), "--preload", "threaded"],
        env=_env(tmp_path, None), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0 and "forking is unsafe, not serving" in r.stderr
    assert not sock.exists()


def test_run_wraps_a_command_and_cleans_up(tmp_path):
    (tmp_path / "warm_target.py").write_text(TARGET)
    temp = Path(tempfile.mkdtemp(dir="/tmp"))  # short: AF_UNIX paths have a ~107-byte limit
    # the server binds its socket after its imports; the command waits for it, then calls warm
    inner = (
        "import os, sys, time\n"
        "end = time.time() + 60  # bounded: a failed server start must not leave this behind\n"
        "sock = os.environ['SENSEFLOW_WARM_SOCKET']\n"
        "while not os.path.exists(sock) and time.time() < end: time.sleep(0.05)\n" + CALLER
    )
    r = subprocess.run(
        [sys.executable, "-m", "senseflow.warm", "run", "--preload", "warm_target", "--",
         sys.executable, "-c", inner, "warm_target:echo", "inner"],
        env=_env(tmp_path, None, WARM_TEST_CODE="4", TMPDIR=str(temp)), cwd=tmp_path,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 4, r.stderr  # the command's own exit code
    assert "preloaded True" in r.stdout and "argv ['inner']" in r.stdout
    assert list(temp.iterdir()) == []  # socket and its folder removed, the server stopped
    temp.rmdir()


def test_run_passes_sigterm_to_the_command_and_stops_the_server(tmp_path):
    (tmp_path / "warm_target.py").write_text(TARGET)
    temp = Path(tempfile.mkdtemp(dir="/tmp"))
    out = tmp_path / "cmd"
    inner = (
        "import os, signal, sys, time\n"
        "def on_term(*a): open(sys.argv[1] + '.term', 'w').close(); sys.exit(143)\n"
        "signal.signal(signal.SIGTERM, on_term)\n"
        "open(sys.argv[1] + '.pid', 'w').close()\n"
        "time.sleep(60)\n"
    )
    wrapper = subprocess.Popen(
        [sys.executable, "-m", "senseflow.warm", "run", "--preload", "warm_target", "--",
         sys.executable, "-c", inner, str(out)],
        env=_env(tmp_path, None, TMPDIR=str(temp)), cwd=tmp_path,
    )  # fmt: skip
    _wait_for(lambda: Path(str(out) + ".pid").exists() and any(temp.glob("*/s*")))
    wrapper.send_signal(signal.SIGTERM)
    assert wrapper.wait(timeout=60) == 143  # the command's exit code, after its handler ran
    assert Path(str(out) + ".term").exists()
    assert list(temp.iterdir()) == []  # the server stopped and its socket folder is gone
    temp.rmdir()


@pytest.mark.slow
def test_torch_work_in_a_worker_matches_a_cold_process_bit_for_bit(tmp_path):
    """The real preload (torch, diffusers' SD3 transformer, numpy/scipy with their OpenBLAS thread
    pools started at import): same torch threads, same numbers."""
    (tmp_path / "torch_target.py").write_text(
        textwrap.dedent(
            """
            import os, sys, numpy as np, scipy.linalg, torch
            from senseflow.backbones.flow import tiny_sd3_transformer

            def main():
                model = tiny_sd3_transformer(resolution=16, in_channels=3, patch_size=4, num_layers=2,
                    num_attention_heads=2, attention_head_dim=16, text_dim=32, pooled_dim=32, seed=0)
                g = torch.Generator().manual_seed(1)
                x = torch.randn(4, 3, 16, 16, generator=g)
                out = model(hidden_states=x, encoder_hidden_states=torch.randn(4, 5, 32, generator=g),
                            pooled_projections=torch.randn(4, 32, generator=g),
                            timestep=torch.full((4,), 500.0)).sample
                a = np.random.default_rng(0).standard_normal((300, 300))
                torch.save({"out": out, "threads": torch.get_num_threads(), "seed": torch.initial_seed(),
                            "blas": torch.from_numpy(a @ a.T), "sqrtm": torch.from_numpy(
                                scipy.linalg.sqrtm(a @ a.T + 300 * np.eye(300)).real)}, sys.argv[1])
            """
        )
    )
    sock = tmp_path / "s.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "senseflow.warm", "serve", "--socket", str(sock), "--watch", str(tmp_path),
         "--preload", "senseflow.backbones.flow", "--preload", "torch_target"],
        env=_env(tmp_path, None), stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_for(lambda: sock.exists() or proc.poll() is not None, timeout=120)
        assert sock.exists(), proc.stderr.read()
        warm = _call(tmp_path, sock, "torch_target:main", str(tmp_path / "warm.pt"))
        warm2 = _call(tmp_path, sock, "torch_target:main", str(tmp_path / "warm2.pt"))
        cold = _call(tmp_path, None, "torch_target:main", str(tmp_path / "cold.pt"))
        assert cold.returncode == COLD
        # and the entry run by a plain interpreter, the way the shim runs it cold
        script = "import sys, torch_target; torch_target.main()"
        subprocess.run([sys.executable, "-c", script, str(tmp_path / "cold.pt")],
                       env=_env(tmp_path, None), cwd=tmp_path, check=True, timeout=120)  # fmt: skip
        assert warm.returncode == 0 and warm2.returncode == 0, warm.stderr + warm2.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    import torch

    a, b = torch.load(tmp_path / "warm.pt"), torch.load(tmp_path / "cold.pt")
    assert a["threads"] == b["threads"]
    # unseeded torch draws differ between workers, as between cold processes (not one shared state)
    assert a["seed"] != torch.load(tmp_path / "warm2.pt")["seed"]
    assert torch.equal(a["out"], b["out"])
    assert torch.equal(a["blas"], b["blas"]) and torch.equal(a["sqrtm"], b["sqrtm"])  # OpenBLAS after fork
