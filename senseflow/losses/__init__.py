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
from senseflow.losses.isg import (
    CHARBONNIER_C,
    ISG_DISTANCES,
    isg_distance,
    isg_loss,
    isg_loss_ddim,
    sample_isg_mid,
)

__all__ = [
    "CHARBONNIER_C",
    "IDAMismatchError",
    "ISG_DISTANCES",
    "PREDICTIONS",
    "dmd_gradient",
    "dmd_loss",
    "epsilon_fake_score_loss",
    "fake_score_loss",
    "flow_fake_score_loss",
    "ida_update",
    "isg_distance",
    "isg_loss",
    "isg_loss_ddim",
    "sample_fake_score_sigmas",
    "sample_isg_mid",
]
