"""SenseFlow's VFM discriminator: DiffAugment, frozen taps, heads (docs/architecture/distillation.md)."""

from senseflow.discriminator.diffaug import DIFFAUG_POLICIES, diffaugment
from senseflow.discriminator.head import MAX_LOGIT_SIZE, DiscriminatorHead, downsamplings
from senseflow.discriminator.model import VFMDiscriminator, build_discriminator, build_taps
from senseflow.discriminator.taps import (
    Dinov2Taps,
    FeatureTaps,
    ProbeTaps,
    dinov2_hidden_state_indices,
)

__all__ = [
    "DIFFAUG_POLICIES",
    "MAX_LOGIT_SIZE",
    "Dinov2Taps",
    "DiscriminatorHead",
    "FeatureTaps",
    "ProbeTaps",
    "VFMDiscriminator",
    "build_discriminator",
    "build_taps",
    "diffaugment",
    "dinov2_hidden_state_indices",
    "downsamplings",
]
