"""SenseFlow suite: few-step text-to-image distillation (DMD + IDA + ISG + VFM discriminator).

``senseflow.load_student(path)`` loads an exported student; everything else lives in the
submodules (see docs/architecture.md). Imports are lazy so ``import senseflow`` stays cheap.
"""

from __future__ import annotations

__all__ = ["load_student"]


def __getattr__(name: str):
    if name == "load_student":
        from senseflow.student import load_student

        return load_student
    raise AttributeError(f"module 'senseflow' has no attribute {name!r}")
