"""``clip_score_embedded``: CLIP score of embedded-world samples under the world's tiny CLIP.

Per image, the raw cosine between the image embedding and its prompt's embedding (scale 1,
no prompt prefix: the field's CLIP-score protocol) under the open_clip model that
``senseflow world train-clip`` trained on the world's scenes and captions. The scoring is
:class:`eval.metrics.clip_score.OpenClipScorer`'s, the same code as the real ``clip_score``.
The protocol card names the model config's hash (the backbone) and the weights' sha256.
"""

from __future__ import annotations

from eval.metrics.clip_score import OpenClipScorer
from eval.registry import EvalContext, MetricError, MetricResult, embedded_only, protocol_card, register

VERSION = "clip-score-embedded/1"


def embedded_clip_scorer(clip, batch_size: int = 256) -> OpenClipScorer:
    """An :class:`OpenClipScorer` (raw cosine, no prefix) around a loaded :class:`WorldClip`."""
    from senseflow.world.clip import config_sha256

    scorer = OpenClipScorer(
        clip.model, clip.tokenize, clip.preprocess, scale=1.0, prefix="", batch_size=batch_size,
        info={"backbone": "embedded tiny open_clip CLIP", "config_sha256": config_sha256(clip.config)},
    )  # fmt: skip
    scorer.weights_file = clip.weights_file
    return scorer


def clip_score_embedded_metric(ctx: EvalContext) -> MetricResult:
    """Per-image cosine between each sample and its prompt under the embedded CLIP."""
    from senseflow.world.clip import config_sha256

    clip = ctx.clip
    h, w = ctx.samples.images.shape[1:3]
    if (h, w) != (clip.resolution, clip.resolution):
        raise MetricError(
            f"{ctx.samples.path} holds {w}x{h} images; the embedded CLIP {clip.weights_file} takes "
            f"{clip.resolution}x{clip.resolution} scenes: train it at the profile's resolution"
        )
    scorer = embedded_clip_scorer(clip)
    prompts = [r["prompt"] for r in ctx.samples.records]
    per_image = ctx.map_rows(lambda idx: scorer(ctx.samples.images[idx], [prompts[i] for i in idx]).numpy())
    card = protocol_card(
        ctx, metric="CLIP score (embedded tiny CLIP, raw cosine)", version=VERSION,
        backbone=f"embedded tiny open_clip CLIP, config sha256 {config_sha256(clip.config)}",
        weights_sha256=ctx.clip_sha256, image_count=len(per_image),
    )  # fmt: skip
    card |= {"score": "cosine", "scale": 1.0, "prefix": None, "config_sha256": config_sha256(clip.config)}
    return MetricResult(card, higher_is_better=True, per_image=per_image.astype(float))


register("clip_score_embedded", lambda: clip_score_embedded_metric, embedded_only)
