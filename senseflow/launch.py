"""The console scripts ``senseflow`` and ``senseflow-eval``: warm start if a server runs, else cold.

A dvc stage calls ``senseflow pipeline ...``; with ``make run`` a warm server
(:mod:`senseflow.warm`) has already imported torch and diffusers, and the stage forks from it
instead of paying those imports again. Without one (``SENSEFLOW_WARM_SOCKET`` unset, the
server gone, or its code stale) the command runs here, exactly as before. This module stays
free of heavy imports so that asking costs a few milliseconds.
"""

from __future__ import annotations

import importlib
import os
import sys


def _launch(entry: str) -> None:
    if os.environ.get("SENSEFLOW_WARM_SOCKET"):
        from senseflow.warm import forward

        code = forward(entry)
        if code is not None:
            sys.exit(code)
    module, _, func = entry.partition(":")
    getattr(importlib.import_module(module), func)()


def senseflow() -> None:
    """``senseflow``: the suite's CLI (:mod:`senseflow.cli`)."""
    _launch("senseflow.cli:main")


def senseflow_eval() -> None:
    """``senseflow-eval``: the evaluation CLI (:mod:`eval.cli`)."""
    _launch("eval.cli:main")
