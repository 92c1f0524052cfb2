"""``adherence``: prompt adherence of embedded-world samples, judged by the attribute probe.

Per image: 1 when every attribute of the scene is right (digit, colour, position per object,
background, no extra digit), else 0; the value is the all-correct rate. The per-attribute
breakdown of :func:`senseflow.world.adherence.adherence` goes to ``details``.
"""

from __future__ import annotations

from eval.registry import EvalContext, MetricResult, embedded_only, protocol_card, register
from senseflow.samples import scenes_of
from senseflow.world.adherence import adherence_report
from senseflow.world.probes import judge, run_probe
from senseflow.world.scenes import to_tensor_range

VERSION = "probe-adherence/1"


def probe_protocol_card(ctx: EvalContext, *, metric: str, version: str, backbone: str, **extra) -> dict:
    """Protocol card of a metric judged by the embedded probe (its file hash is the weights hash)."""
    return protocol_card(
        ctx, metric=metric, version=version, backbone=f"embedded attribute probe{backbone}",
        weights_sha256=ctx.probe_sha256, **extra,
    )  # fmt: skip


def adherence_metric(ctx: EvalContext) -> MetricResult:
    """All-correct verdict per image, with the per-attribute accuracies as details."""
    scenes = scenes_of(ctx.samples.records)
    # each rank probes its block of images; the probe outputs of every rank are gathered
    out = ctx.map_rows(
        lambda idx: run_probe(ctx.probe, to_tensor_range(ctx.samples.images[idx]).clamp(-1, 1))
    )
    verdicts = judge(out, scenes)
    per_image = verdicts["all"].astype(float)
    details = adherence_report(verdicts, scenes)
    card = probe_protocol_card(
        ctx,
        metric="adherence (all attributes right)",
        version=VERSION,
        backbone="",
        image_count=len(per_image),
    )
    return MetricResult(card, higher_is_better=True, per_image=per_image, details=details)


register("adherence", lambda: adherence_metric, embedded_only)
