"""Embedded world / teacher settings that cannot train fail when the profile is read (issue 13)."""

from __future__ import annotations

import pytest

from senseflow.config import ConfigError, load_profile


@pytest.mark.parametrize("profile", ["embedded", "smoke"])
def test_patch_size_must_divide_the_resolution(profile):
    with pytest.raises(
        ConfigError, match=r"teacher.model.patch_size 3 does not divide world.scenes.resolution"
    ):
        load_profile(profile, ["teacher.model.patch_size=3"])


def test_the_shipped_profiles_fit():
    for profile in ("embedded", "smoke"):
        cfg = load_profile(profile)
        assert cfg.world.scenes.resolution % cfg.teacher.model.patch_size == 0
