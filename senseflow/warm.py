"""Warm start for the pipeline's stage commands: one process pays the imports, each stage forks.

Every `dvc repro` stage is its own ``senseflow ...`` process, and on 2 CPU cores most of a
short stage is start-up: importing torch, diffusers' transformer and transformers' CLIP costs
5-10 s, the work itself often less. ``python -m senseflow.warm run -- dvc repro`` (what
``make run`` does) starts a server that imports those modules once and then waits on a UNIX
socket; the ``senseflow`` and ``senseflow-eval`` console scripts (:mod:`senseflow.launch`)
find it through ``SENSEFLOW_WARM_SOCKET`` and ask it to fork a worker that runs their command
with the caller's argv, working directory, environment and stdin/stdout/stderr (passed as
file descriptors). The caller waits, forwards the signals it gets (Ctrl-C, dvc's SIGTERM) to
the worker, and exits with the worker's exit code, so to dvc the stage is an ordinary process.

Why not a long-lived Python that runs stages in-process: a stage's state (RNGs, torch
threads, caches, logging) must not leak into the next one. A fork is a fresh process whose
imports are already done, like Android's zygote, and the worker's results match a cold start
bit for bit (``tests/test_warm.py``).

Safety rules:

* The server runs nothing but imports: no torch op, so no OpenMP team exists to break in the
  children (libgomp is not fork-safe once used), and no Python thread, whose locks a child
  could inherit held. If an import started a Python thread, the server refuses to serve and
  every caller runs cold. The native threads numpy's and scipy's OpenBLAS start at import
  are fork-safe: OpenBLAS shuts its pool down around fork (pthread_atfork) and the child
  starts a fresh one, which torch's fork-based DataLoader relies on as well.
* Code that changed after the server imported it must not run: each request first re-reads
  the size and modification time of every project source file the server had imported. On
  any change the caller is told to run cold, and the server exits.
* A caller whose interpreter or ``PYTHONPATH`` differs from the server's runs cold (its
  imports would resolve to other files), as does one with another ``PYTHONHASHSEED``.
* No server, a dead one, or a refused request: the caller runs the command cold, as before.
  Warm start is an optimisation only; ``SENSEFLOW_WARM=0`` turns it off.

This module imports only the standard library: the console scripts load it before deciding
whether to import the heavy CLI at all.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path

SOCKET_ENV = "SENSEFLOW_WARM_SOCKET"  # where the console scripts look for a server
DISABLE_ENV = "SENSEFLOW_WARM"  # "0": never use a server (run cold)
WORKER_ENV = "SENSEFLOW_WARM_WORKER"  # set in a worker: the server's pid

# What the pipeline's stages import: the CLIs and, through them, torch, diffusers' SD3
# transformer, transformers' CLIP text model, the samplers, and the embedded profile's metrics
# (torchmetrics, open_clip, pandas/pyarrow for scores.parquet). Modules that fail to import (an
# optional dependency missing) are skipped; the worker then imports what it needs itself. The
# real profiles' learned metrics (HPSv2, ImageReward, PickScore) are left out: their stages run
# on GPUs for minutes, where a few seconds of imports do not matter.
DEFAULT_PRELOAD = (
    "typer",
    "pydantic",
    "PIL.Image",
    "senseflow.cli",
    "eval.cli",
    "senseflow.stages",
    "senseflow.generate",
    "senseflow.samples",
    "senseflow.candidates",
    "senseflow.student",
    "senseflow.teacher",
    "senseflow.distill_run",
    "senseflow.consistency_run",
    "senseflow.world.clip",
    "eval.evaluate",
    "eval.registry",
    "eval.metrics.fid_t_probe",
    "eval.metrics.adherence",
    "eval.metrics.clip_score_embedded",
    "pyarrow.parquet",
    "pandas",
    "open_clip",
    "torchvision",
    "ftfy",
)
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_HEADER = struct.Struct("!I")  # length prefix of every JSON message


# ------------------------------------------------------------------ wire format


def _send(sock: socket.socket, message: dict, fds: Sequence[int] = ()) -> None:
    """Send one length-prefixed JSON message, with file descriptors attached if given."""
    body = json.dumps(message).encode()
    data = _HEADER.pack(len(body)) + body
    if fds:
        sent = socket.send_fds(sock, [data], list(fds))
        sock.sendall(data[sent:])
    else:
        sock.sendall(data)


def _recv_exact(sock: socket.socket, n: int, head: bytes = b"") -> bytes:
    buf = bytearray(head)
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed mid-message")
        buf += chunk
    return bytes(buf)


def _recv(sock: socket.socket, *, with_fds: bool = False) -> tuple[dict, list[int]]:
    """Receive one message (and the file descriptors sent with it).

    Reads exactly the header, then exactly the body: a message that follows at once (a fast
    worker's exit code right behind its pid) stays in the socket for the next call.
    """
    fds: list[int] = []
    if with_fds:
        head, fds, _flags, _addr = socket.recv_fds(sock, _HEADER.size, 3)
    else:
        head = sock.recv(_HEADER.size)
    if not head:
        raise ConnectionError("connection closed")
    (size,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size, head))
    return json.loads(_recv_exact(sock, size)), fds


# ------------------------------------------------------------------ server


def _source_stats(roots: Sequence[Path]) -> dict[str, tuple[int, int]]:
    """(mtime_ns, size) of every imported module whose file lies under one of ``roots``."""
    stats: dict[str, tuple[int, int]] = {}
    resolved = [r.resolve() for r in roots]
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not path:
            continue
        p = Path(path).resolve()
        if any(p.is_relative_to(r) for r in resolved) and p.is_file():  # some modules' __file__ is virtual
            st = p.stat()
            stats[str(p)] = (st.st_mtime_ns, st.st_size)
    return stats


def _changed_sources(stats: dict[str, tuple[int, int]]) -> list[str]:
    changed = []
    for path, (mtime, size) in stats.items():
        try:
            st = os.stat(path)
        except OSError:
            changed.append(path)
            continue
        if (st.st_mtime_ns, st.st_size) != (mtime, size):
            changed.append(path)
    return changed


def _identity() -> dict:
    """What a caller must share with the server for its imports to resolve to the same files."""
    return {
        "executable": os.path.realpath(sys.executable),
        "pythonpath": os.environ.get("PYTHONPATH", ""),
        # str hashing is fixed at interpreter start: a caller that pinned it must get its own
        "pythonhashseed": os.environ.get("PYTHONHASHSEED", ""),
    }


def _run_worker(request: dict, fds: list[int], closing: Sequence[socket.socket]) -> None:
    """In the forked child: become the caller's process, run its entry point, never return."""
    code = 1
    try:
        for s in closing:
            s.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)  # sys.stdin/stdout/stderr keep their objects, now on the caller's files
        for fd in fds:
            if fd > 2:
                os.close(fd)
        for sig in (*FORWARDED_SIGNALS, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ[WORKER_ENV] = str(os.getppid())  # says "forked by this server" (logs, tests)
        sys.argv = list(request["argv"])
        sys.path[:] = request["sys_path"]  # later imports resolve as the caller's would
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(AttributeError, ValueError):
                stream.reconfigure(line_buffering=True)
        _fresh_process_state()
        atexit._clear()  # the server's exit handlers are not this process's
        module_name, _, func_name = request["entry"].partition(":")
        func = getattr(importlib.import_module(module_name), func_name)
        try:
            func()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if exc.code is not None and not isinstance(exc.code, int):
                print(exc.code, file=sys.stderr)
        except KeyboardInterrupt:
            code = 130
        atexit._run_exitfuncs()
    except BaseException:  # noqa: BLE001 - the caller must see every failure, and we must _exit
        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _fresh_process_state() -> None:
    """What a cold start would have set up differently from the server's inherited state."""
    import random

    random.seed()  # a cold process seeds from OS entropy; forks would all share the server's state
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.seed()  # likewise torch's default generator (code that needs fixed seeds sets them)
    threads = os.environ.get("OMP_NUM_THREADS")
    if torch is not None and threads and threads.isdigit() and int(threads) > 0:
        # libgomp read OMP_NUM_THREADS when the server loaded it; the caller's value wins
        torch.set_num_threads(int(threads))


class WarmServer:
    """Preloads modules, then forks one worker per request (see the module docstring)."""

    def __init__(
        self,
        socket_path: str | Path,
        *,
        preload: Sequence[str] = DEFAULT_PRELOAD,
        watch: Sequence[str | Path] = (),
        idle_timeout: float = 900.0,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.preload = list(preload)
        here = Path(__file__).resolve().parent  # the project's packages: senseflow/ and eval/
        self.watch = [Path(w) for w in watch] or [here, here.parent / "eval"]
        self.idle_timeout = idle_timeout
        self.workers: dict[int, socket.socket] = {}  # worker pid -> caller connection
        self.parent = os.getppid()

    def log(self, message: str) -> None:
        """One line on stderr (the server's only output)."""
        print(f"[senseflow warm] {message}", file=sys.stderr, flush=True)

    def prepare(self) -> bool:
        """Import the preload list; False if the result is not safe to fork from."""
        t0 = time.perf_counter()
        skipped = []
        for name in self.preload:
            try:
                importlib.import_module(name)
            except Exception as exc:  # noqa: BLE001 - a module we cannot preload is imported cold later
                skipped.append(f"{name} ({type(exc).__name__}: {exc})")
        self.stats = _source_stats(self.watch)
        self.identity = _identity()
        if skipped:
            self.log("not preloaded: " + "; ".join(skipped))
        others = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
        if others:
            self.log(f"the preloaded modules started Python threads {others}: forking is unsafe, not serving")
            return False
        self.log(f"preloaded {len(self.preload)} modules in {time.perf_counter() - t0:.1f} s")
        return True

    def serve(self) -> None:
        """Accept requests until idle for ``idle_timeout`` s, the launching process exits, or SIGTERM."""
        if not self.prepare():
            return
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        tmp = self.socket_path.with_name(f".{os.getpid()}.tmp")
        try:
            listener.bind(str(tmp))
        except OSError as exc:  # e.g. a path over the ~107-byte AF_UNIX limit
            self.log(f"cannot listen on {tmp} ({exc}): stage commands run cold")
            listener.close()
            return
        listener.listen(16)
        os.replace(tmp, self.socket_path)  # callers see the socket only once it accepts
        inode = self.socket_path.stat().st_ino  # unlinked at exit only if still ours
        stop = False

        def _stop(*_):
            nonlocal stop
            stop = True

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)  # Ctrl-C reaches the workers directly (same process group)
        last = time.monotonic()
        try:
            while not stop:
                conns = list(self.workers.values())
                try:
                    ready, _, _ = select.select([listener, *conns], [], [], 0.2)
                except InterruptedError:
                    continue
                for s in ready:
                    if s is listener:
                        conn, _ = listener.accept()
                        if not self._handle(conn, listener):
                            stop = True
                    else:
                        self._caller_message(s)
                self._reap()
                if self.workers:
                    last = time.monotonic()
                elif time.monotonic() - last > self.idle_timeout or os.getppid() != self.parent:
                    stop = True
        finally:
            with contextlib.suppress(OSError):
                if self.socket_path.stat().st_ino == inode:
                    self.socket_path.unlink()
            listener.close()
            for pid in list(self.workers):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while self.workers and time.monotonic() < deadline:
                self._reap()
                time.sleep(0.05)

    def _handle(self, conn: socket.socket, listener: socket.socket) -> bool:
        """Answer one request; False when the server must stop (its code went stale)."""
        fds: list[int] = []
        try:
            conn.settimeout(10)
            request, fds = _recv(conn, with_fds=True)
            conn.settimeout(None)
            if request.get("stop"):
                _send(conn, {"stopping": True})
                conn.close()
                return False
            changed = _changed_sources(self.stats)
            if changed:
                _send(conn, {"cold": f"source changed since the server started: {changed[0]}"})
                self.log(f"{changed[0]} changed since start-up: stopping (callers run cold)")
                conn.close()
                return False
            if request.get("identity") != self.identity:
                _send(conn, {"cold": "caller's interpreter or PYTHONPATH differs from the server's"})
                conn.close()
                return True
            if len(fds) != 3:
                _send(conn, {"cold": "stdin, stdout and stderr were not passed"})
                conn.close()
                return True
            pid = os.fork()
            if pid == 0:
                _run_worker(request, fds, [listener, conn, *self.workers.values()])
            _send(conn, {"pid": pid})
            self.workers[pid] = conn
            return True
        except (OSError, ConnectionError, ValueError, KeyError) as exc:
            self.log(f"bad request ignored: {exc}")
            conn.close()
            return True
        finally:
            for fd in fds:
                os.close(fd)

    def _caller_message(self, conn: socket.socket) -> None:
        """A signal to forward, or the caller went away (then its worker must stop too)."""
        pid = next(p for p, c in self.workers.items() if c is conn)
        try:
            message, _ = _recv(conn)
            sig = int(message["signal"])
        except (OSError, ConnectionError, ValueError, KeyError):
            sig = signal.SIGTERM  # the caller died (dvc killed it): do not leave its work running
            self.workers.pop(pid)
            conn.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.workers.pop(pid, None)
            if conn is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            with contextlib.suppress(OSError):
                _send(conn, {"exit": 128 - code if code < 0 else code})  # killed by signal N: 128 + N
            conn.close()


# ------------------------------------------------------------------ caller


def forward(entry: str, argv: Sequence[str] | None = None) -> int | None:
    """Run ``entry`` (``module:function``) in a warm worker; None when the caller must run cold.

    Used by the console scripts (:mod:`senseflow.launch`). Returns the worker's exit code.
    """
    path = os.environ.get(SOCKET_ENV)
    if not path or os.environ.get(DISABLE_ENV) == "0":
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    pending: list[int] = []  # signals that came before the worker existed
    started = False

    def _forward_signal(sig, _frame):
        if not started:
            pending.append(int(sig))
            return
        with contextlib.suppress(OSError):
            _send(sock, {"signal": int(sig)})

    # handlers first: a signal between the fork and its acknowledgement must not be lost
    previous = {sig: signal.signal(sig, _forward_signal) for sig in FORWARDED_SIGNALS}
    try:
        sock.connect(path)
        request = {
            "entry": entry,
            "argv": list(sys.argv if argv is None else argv),
            "cwd": os.getcwd(),
            "env": dict(os.environ),
            "identity": _identity(),
            "sys_path": list(sys.path),
        }
        for fd in (0, 1, 2):
            os.fstat(fd)  # a closed stdio descriptor cannot be passed: run cold
        _send(sock, request, fds=[0, 1, 2])
        reply, _ = _recv(sock)
    except (OSError, ConnectionError, ValueError):
        reply = {}
    if "pid" not in reply:  # run cold: as if the handlers had never been installed
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in pending:
            os.kill(os.getpid(), sig)
        return None
    started = True
    for sig in pending:
        _forward_signal(sig, None)
    while True:
        try:
            message, _ = _recv(sock)
        except (OSError, ConnectionError, ValueError):
            print("senseflow warm: lost the worker (server stopped?)", file=sys.stderr)
            return 1
        if "exit" in message:
            sock.close()
            return int(message["exit"])


# ------------------------------------------------------------------ orchestration


def stop_server(path: str | Path) -> bool:
    """Ask the server on ``path`` to stop; False if none answered."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
        _send(sock, {"stop": True})
        _recv(sock)
        return True
    except (OSError, ConnectionError, ValueError):
        return False
    finally:
        sock.close()


@contextlib.contextmanager
def background_server(
    *, preload: Sequence[str] = DEFAULT_PRELOAD, idle_timeout: float = 900.0
) -> Iterator[Path]:
    """Start a server in the background; yield its socket path; stop it and remove the folder.

    The socket appears once the server's imports are done: callers before that run cold.
    """
    base = tempfile.gettempdir()
    if len(base) > 64 and os.path.isdir("/tmp"):
        base = "/tmp"  # AF_UNIX socket paths are limited to ~107 bytes
    folder = Path(tempfile.mkdtemp(prefix="senseflow-warm-", dir=base))
    path = folder / "server.sock"
    server = subprocess.Popen(
        # -P (3.11+): the working directory is not put on sys.path (a console script's is not either)
        [sys.executable, *(["-P"] if sys.version_info >= (3, 11) else []), "-m", "senseflow.warm", "serve",
         "--socket", str(path),
         "--idle-timeout", str(idle_timeout), *(f"--preload={m}" for m in preload)],
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C reaches each worker once: through its caller, not the terminal
    )  # fmt: skip
    try:
        yield path
    finally:
        if not stop_server(path):
            server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        with contextlib.suppress(OSError):
            for p in folder.iterdir():
                p.unlink()
            folder.rmdir()


def run(
    command: Sequence[str], *, preload: Sequence[str] = DEFAULT_PRELOAD, idle_timeout: float = 900.0
) -> int:
    """Run ``command`` (e.g. ``dvc repro``) with a warm server for its ``senseflow`` stages.

    The server starts in the background (its imports overlap the first stages, which run cold
    until it is ready) and stops when the command ends. Returns the command's exit code.
    """
    if os.environ.get(DISABLE_ENV) == "0":
        return subprocess.call(list(command))
    with background_server(preload=preload, idle_timeout=idle_timeout) as path:
        env = {**os.environ, SOCKET_ENV: str(path)}
        return _wait_for_command(subprocess.Popen(list(command), env=env))


def _wait_for_command(proc: subprocess.Popen) -> int:
    """Wait for ``proc``, letting it wind down on Ctrl-C and passing SIGTERM on to it.

    Not ``subprocess.call``: on Ctrl-C that kills the child at once, and dvc must get the
    chance to stop its stage and release its lock (it received the same SIGINT from the
    terminal).
    """
    previous = signal.signal(signal.SIGTERM, lambda sig, _frame: proc.send_signal(sig))
    try:
        while True:
            try:
                code = proc.wait()
            except KeyboardInterrupt:
                continue
            return code if code >= 0 else 128 - code  # killed by signal N: the shell's 128 + N
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m senseflow.warm run -- CMD...`` or ``... serve --socket PATH`` (see module doc)."""
    parser = argparse.ArgumentParser(
        prog="python -m senseflow.warm",
        description="Warm start for senseflow stage commands: one process imports torch and "
        "diffusers once, each stage forks from it. `run -- dvc repro` is what `make run` does.",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run", help="run a command (e.g. dvc repro) with a warm server")
    p_run.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    p_serve = sub.add_parser("serve", help="serve on a socket (run starts this for you)")
    p_serve.add_argument("--socket", required=True, help="UNIX socket path to listen on")
    for p in (p_run, p_serve):
        p.add_argument("--preload", action="append", help="module to import up front (repeatable)")
        p.add_argument("--idle-timeout", type=float, default=900.0, help="stop after this many idle seconds")
    p_serve.add_argument("--watch", action="append", default=[], help="source root to watch for changes")
    args = parser.parse_args(argv)
    preload = args.preload or list(DEFAULT_PRELOAD)
    if args.cmd == "serve":
        WarmServer(args.socket, preload=preload, watch=args.watch, idle_timeout=args.idle_timeout).serve()
        return 0
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("run needs a command after --, e.g. python -m senseflow.warm run -- dvc repro")
    return run(command, preload=preload, idle_timeout=args.idle_timeout)


if __name__ == "__main__":
    sys.exit(main())
