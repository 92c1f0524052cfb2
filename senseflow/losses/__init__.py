"""SenseFlow's losses as pure functions over tensors (docs/architecture.md, "Losses")."""

from senseflow.losses.dmd import dmd_gradient, dmd_loss
from senseflow.losses.fake_score import (
    PREDICTIONS,
    epsilon_fake_score_loss,
    fake_score_loss,
    flow_fake_score_loss,
    sample_fake_score_sigmas,
)
from senseflow.losses.ida import IDAMismatchError, ida_update

__all__ = [
    "IDAMismatchError",
    "PREDICTIONS",
    "dmd_gradient",
    "dmd_loss",
    "epsilon_fake_score_loss",
    "fake_score_loss",
    "flow_fake_score_loss",
    "ida_update",
    "sample_fake_score_sigmas",
]
