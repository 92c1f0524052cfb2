"""Errors caused by the user's input (files, keys, values), printed by the CLI as one line.

Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: the message names the file, key or value and what would fix it."""


class MissingArtefactError(UserError, FileNotFoundError):
    """A file or folder a stage needs is not there; the message names the command that makes it."""


USER_ERRORS: tuple[type[BaseException], ...] = (UserError,)


def run_app(app) -> None:
    """Run a typer app; a :class:`UserError` becomes ``error: <message>`` on stderr and exit code 2."""
    import logging
    import os
    import sys

    logging.basicConfig(
        level=os.environ.get("SENSEFLOW_LOG", "WARNING"), format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        app()
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
