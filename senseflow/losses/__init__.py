"""SenseFlow's losses as pure functions over tensors (docs/architecture.md, "Losses")."""

from senseflow.losses.adversarial import (
    GAN_WEIGHT_CURVES,
    d_hinge_loss,
    d_logistic_loss,
    g_hinge_loss,
    g_logistic_loss,
    gan_losses,
    gan_weight,
)
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
    "GAN_WEIGHT_CURVES",
    "IDAMismatchError",
    "ISG_DISTANCES",
    "PREDICTIONS",
    "d_hinge_loss",
    "d_logistic_loss",
    "dmd_gradient",
    "dmd_loss",
    "epsilon_fake_score_loss",
    "fake_score_loss",
    "flow_fake_score_loss",
    "g_hinge_loss",
    "g_logistic_loss",
    "gan_losses",
    "gan_weight",
    "ida_update",
    "isg_distance",
    "isg_loss",
    "isg_loss_ddim",
    "sample_fake_score_sigmas",
    "sample_isg_mid",
]
