"""One source of defaults: a training loop's keyword defaults are its config model's (senseflow/config.py).

The pipeline always passes every knob from the profile, so a loop default that drifted from the
config only shows up for direct callers (notebooks, tests, benchmarks), who then silently train
another recipe. Each loop is checked through the same mapping the pipeline uses.
"""

from __future__ import annotations

import inspect

import pytest

from senseflow.config import DistillConfig, HyperSDConfig, LCMConfig, ProbeConfig, TeacherTrainConfig
from senseflow.consistency import consistency_distill
from senseflow.consistency_run import consistency_kwargs
from senseflow.distill_run import distill_kwargs
from senseflow.train import distill


def _drift(fn, config_kwargs: dict, skip: tuple[str, ...] = ()) -> dict:
    """Keywords whose loop default differs from the config's value (tuples and lists compare equal)."""
    params = inspect.signature(fn).parameters
    out = {}
    for key, value in config_kwargs.items():
        if key in skip:
            continue
        assert key in params, f"{fn.__name__} has no keyword {key!r} that the config feeds"
        default = params[key].default
        if default is inspect.Parameter.empty:
            continue  # a required keyword cannot drift
        norm = lambda v: list(v) if isinstance(v, tuple) else v
        if norm(default) != norm(value):
            out[key] = (default, value)
    return out


def test_the_distillation_loop_defaults_are_the_config_defaults():
    # anchors and iterations are required by the config (no default to agree with); the time
    # densities default to None in the loop, which resolves them to the config's densities
    kw = distill_kwargs(DistillConfig(anchors=[1.0, 0.75, 0.5, 0.25], iterations=7))
    assert _drift(distill, kw, skip=("anchors", "iterations", "dmd_t", "fake_t")) == {}
    cfg = DistillConfig(anchors=[1.0, 0.75, 0.5, 0.25], iterations=7)
    assert cfg.dmd_t.density == "uniform" and list(cfg.dmd_t.range) == [0.02, 0.98]
    assert cfg.fake_t.density == "logit_normal" and cfg.fake_t.shifted


@pytest.mark.parametrize("method,config", [("lcm", LCMConfig), ("hyper_sd", HyperSDConfig)])
def test_the_consistency_loop_defaults_are_the_config_defaults(method, config):
    kw = consistency_kwargs(method, config(iterations=7))
    # method and the LCM-only switches are set per method by consistency_kwargs, not defaults
    assert _drift(consistency_distill, kw, skip=("method", "iterations", "guidance_embedding")) == {}


def test_the_teacher_loop_defaults_are_the_config_defaults():
    from senseflow.teacher import train_teacher

    assert _drift(train_teacher, TeacherTrainConfig().model_dump()) == {}


def test_the_probe_loop_defaults_are_the_config_defaults():
    from senseflow.world.probes import train_probe

    assert _drift(train_probe, ProbeConfig().model_dump()) == {}


def test_the_bootstrap_counts_of_every_caller_are_the_pipeline_config_defaults():
    # the profile's replicate counts (PipelineConfig) are what a hand-run `senseflow-eval`, the
    # dashboard's comparison and the study use when nobody passes one
    from dashboard.pages.experiments import paired_comparison
    from eval import stats
    from eval.cli import compare_cmd, evaluate_cmd
    from eval.evaluate import compare, evaluate
    from eval.registry import EvalContext
    from senseflow.config import PipelineConfig

    fields = PipelineConfig.model_fields
    assert (fields["n_boot"].default, fields["n_boot_set"].default) == (stats.N_BOOT, stats.N_BOOT_SET)
    want = {"n_boot": stats.N_BOOT, "n_boot_set": stats.N_BOOT_SET, "n_sub": stats.N_BOOT_SET}
    fns = [stats.bootstrap_mean_ci, stats.paired_difference, stats.subsample_set_ci, evaluate, compare,
           evaluate_cmd, compare_cmd, paired_comparison, EvalContext]  # fmt: skip
    seen = set()
    for fn in fns:
        for key, param in inspect.signature(fn).parameters.items():
            if key in want:
                seen.add(key)
                assert param.default == want[key], f"{fn.__qualname__}({key}={param.default})"
    assert seen == set(want)
