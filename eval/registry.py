"""Metric registry: name -> factory + applicability check, so metrics can live in their own modules.

A metric module calls :func:`register` at import time. ``senseflow-eval evaluate`` looks a
name up with :func:`get`, which imports the module named in ``MODULES`` on first use (so a
metric whose heavy dependencies are absent costs nothing until asked for). Before computing,
:func:`not_applicable` says why a metric does not apply to a folder (e.g. a preference model
on the embedded world's 16x16 digit scenes); such metrics are reported with the reason,
never as numbers.

A metric is a callable ``(EvalContext) -> MetricResult``; its factory builds it (loading
models lazily), and its result carries per-image scores (bootstrapped over images) or a
set-level value with its own interval, plus the protocol card.
"""

from __future__ import annotations

import importlib
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from eval.sharding import Shard, map_rows
from eval.stats import N_BOOT, N_BOOT_SET
from senseflow.errors import UserError

if TYPE_CHECKING:
    from eval.sample_folder import SampleFolder

# where each known metric is implemented (importing the module registers it)
MODULES = {
    "adherence": "eval.metrics.adherence",
    "fid_t_probe": "eval.metrics.fid_t_probe",
    "kid_t_probe": "eval.metrics.kid",
    "fid": "eval.metrics.fid",
    "fid_t": "eval.metrics.fid_t",
    "patch_fid_t": "eval.metrics.fid_t",
    "patch_fid_t_grid": "eval.metrics.fid_t",
    "clip_score": "eval.metrics.clip_score",
    "hpsv2": "eval.metrics.hpsv2",
    "pickscore": "eval.metrics.pickscore",
    "imagereward": "eval.metrics.imagereward",
    "clip_score_embedded": "eval.metrics.clip_score_embedded",
    "compbench_colour": "eval.metrics.compbench_embedded",
    "compbench_shape": "eval.metrics.compbench_embedded",
    "compbench_spatial": "eval.metrics.compbench_embedded",
    "compbench_complex": "eval.metrics.compbench_embedded",
    "t2i_compbench_color": "eval.metrics.t2i_compbench",
    "t2i_compbench_shape": "eval.metrics.t2i_compbench",
    "t2i_compbench_texture": "eval.metrics.t2i_compbench",
    "t2i_compbench_spatial": "eval.metrics.t2i_compbench",
    "t2i_compbench_non_spatial": "eval.metrics.t2i_compbench",
    "t2i_compbench_complex": "eval.metrics.t2i_compbench",
}

# metrics built on models of real photographs and art: meaningless on the embedded world's
# 16x16 digit scenes, whose own judges are the probe (adherence) and its features (fid_t_probe)
REAL_IMAGES_ONLY = {
    "fid": "Inception features of 16x16 digit scenes measure nothing; use fid_t_probe",
    "fid_t": "Inception features of 16x16 digit scenes measure nothing; use fid_t_probe",
    "patch_fid_t": "Inception features of 16x16 digit scenes measure nothing; use fid_t_probe",
    "patch_fid_t_grid": "Inception features of 16x16 digit scenes measure nothing; use fid_t_probe",
    "clip_score": "CLIP never saw 16x16 digit scenes; use clip_score_embedded (the world's tiny CLIP)",
    "hpsv2": "a human-preference model of real images, not of 16x16 digit scenes; use adherence",
    "pickscore": "a human-preference model of real images, not of 16x16 digit scenes; use adherence",
    "imagereward": "a human-preference model of real images, not of 16x16 digit scenes; use adherence",
}

LIBRARIES = ("senseflow-suite", "torch", "numpy", "pillow", "transformers", "open_clip_torch")


class MetricError(UserError, ValueError):
    """A metric is unknown, unavailable or lacks an input it needs; the message names the fix."""


@dataclass
class EvalContext:
    """What a metric sees: the checked sample folder, optional reference folder, probe and CLIP, seeds.

    ``shard`` is this process's place among the evaluating ranks: metrics run their models
    through :meth:`map_rows`, which scores this rank's rows and gathers everyone's.
    """

    samples: SampleFolder
    reference: SampleFolder | None = None
    probe_path: Path | None = None
    clip_path: Path | None = None
    seed: int = 0
    n_boot: int = N_BOOT
    n_boot_set: int = N_BOOT_SET
    prompt_set_sha256: str = ""
    # image protocol of FID and CLIP score (eval.image_protocols): dmd2 is the paper's
    protocol: str = "dmd2"
    # FID-T pairs must share the seed too; False for a set sampled with other seeds by design
    paired_seeds: bool = True
    shard: Shard = field(default_factory=Shard)
    cache: dict = field(default_factory=dict)

    def map_rows(self, fn, n: int | None = None):
        """``fn(indices)`` over all ``n`` rows (default: the samples), sharded across ranks, gathered."""
        return map_rows(fn, len(self.samples.records) if n is None else n, self.shard)

    @cached_property
    def clip(self):
        """The embedded world's tiny CLIP given with ``--clip`` (loaded once)."""
        from senseflow.world.clip import load_clip

        if self.clip_path is None:
            raise MetricError(
                "this metric needs --clip DIR (the folder written by `senseflow world train-clip`, "
                "e.g. build/clip)"
            )
        return load_clip(self.clip_path)

    @cached_property
    def clip_sha256(self) -> str:
        """sha256 of the embedded CLIP's weights file."""
        from eval.weights import sha256_file

        return sha256_file(self.clip.weights_file)

    @cached_property
    def probe(self):
        """The attribute probe given with ``--probe`` (loaded once)."""
        from senseflow.world.probes import load_probe

        if self.probe_path is None:
            raise MetricError(
                "this metric needs --probe FILE (probe.safetensors of `senseflow world train-probe`)"
            )
        return load_probe(self.probe_path)

    @cached_property
    def probe_sha256(self) -> str:
        """sha256 of the probe file (the weights hash of probe-based metrics)."""
        from eval.weights import sha256_file

        self.probe  # noqa: B018 - fails first with the clear message when no probe was given
        return sha256_file(Path(self.probe_path))


@dataclass
class MetricResult:
    """A metric's output: per-image scores (aligned with the folder's records) or a set value."""

    protocol: dict
    higher_is_better: bool
    per_image: np.ndarray | None = None
    value: float | None = None
    ci95: tuple[float, float] | None = None
    n: int | None = None
    details: dict = field(default_factory=dict)


Metric = Callable[[EvalContext], MetricResult]


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric: how to build it and when it applies (None: applies; else the reason)."""

    name: str
    factory: Callable[[], Metric]
    applies: Callable[[EvalContext], str | None]


_REGISTRY: dict[str, MetricSpec] = {}


def always(ctx: EvalContext) -> str | None:
    """Applicability check of a metric that applies everywhere."""
    return None


def register(name: str, factory: Callable[[], Metric], applies: Callable[[EvalContext], str | None] = always):
    """Register (or replace) metric ``name``."""
    _REGISTRY[name] = MetricSpec(name, factory, applies)


def known() -> list[str]:
    """Every metric name that can be asked for."""
    return sorted(set(MODULES) | set(_REGISTRY))


def get(name: str) -> MetricSpec:
    """The spec of ``name``, importing its module on first use."""
    if name not in _REGISTRY and name in MODULES:
        try:
            importlib.import_module(MODULES[name])
        except ModuleNotFoundError as exc:
            if exc.name != MODULES[name]:
                raise MetricError(f"metric {name!r} needs the package {exc.name!r}: install it") from exc
    if name not in _REGISTRY:
        if name in MODULES:
            raise MetricError(
                f"metric {name!r} is not available yet: {MODULES[name]} is missing or does not call "
                f"eval.registry.register({name!r}, ...)"
            )
        raise MetricError(f"unknown metric {name!r} (known: {', '.join(known())})")
    return _REGISTRY[name]


def not_applicable(name: str, ctx: EvalContext) -> str | None:
    """Why ``name`` does not apply to this evaluation, or None when it does."""
    if name in REAL_IMAGES_ONLY and ctx.samples.embedded:
        # decided before the import: an embedded evaluation never loads a preference model
        return f"embedded world: {REAL_IMAGES_ONLY[name]}"
    return get(name).applies(ctx)


def embedded_only(ctx: EvalContext) -> str | None:
    """Applicability check of the embedded world's metrics (records must carry scenes)."""
    if ctx.samples.embedded:
        return None
    return "needs embedded-world prompts (manifest records with a scene); real profiles use other metrics"


def library_versions() -> dict[str, str]:
    """Versions of the libraries a number depends on (absent ones are left out)."""
    out = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            out[lib] = version(lib)
        except PackageNotFoundError:
            pass
    return out


def protocol_card(
    ctx: EvalContext,
    *,
    metric: str,
    version: str,
    backbone: str,
    weights_sha256: str,
    image_count: int,
    resize: str = "none (native resolution)",
    reference_stats_sha256: str | None = None,
    n_boot: int | None = None,
    **extra,
) -> dict:
    """The protocol of one number: what was measured, how, on what, with which software.

    Every card names the evaluation ``protocol`` (``dmd2``, ``clean``, ``torchmetrics``);
    ``extra`` adds metric-specific keys (``precision``, ``prefix``, ...).
    """
    h, w = ctx.samples.images.shape[1:3]
    return {
        "metric": metric,
        "version": version,
        "backbone": backbone,
        "weights_sha256": weights_sha256,
        "resize": resize,
        "resolution": f"{w}x{h}",
        "image_count": image_count,
        "prompt_set_sha256": ctx.prompt_set_sha256,
        "reference_stats_sha256": reference_stats_sha256,
        "library_versions": library_versions(),
        "seed": ctx.seed,
        "n_boot": n_boot or ctx.n_boot,
        "protocol": ctx.protocol,
        **extra,
    }
