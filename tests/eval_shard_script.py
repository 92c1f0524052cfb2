"""``senseflow-eval evaluate`` as a script, for the two-process (torchrun) evaluation test.

Adds a test metric, ``scoring_rank``, whose per-image score is the rank that scored the
image: it shows how the rows were sharded, and goes through the same gather as the others.

    python -m tests.eval_shard_script SAMPLES REFERENCE PROBE CLIP OUT
"""

from __future__ import annotations

import sys

import numpy as np

from eval.evaluate import evaluate
from eval.registry import MetricResult, protocol_card, register
from senseflow.distributed import close_distributed, init_distributed

METRICS = ["adherence", "fid_t_probe", "clip_score_embedded", "scoring_rank"]


def scoring_rank(ctx) -> MetricResult:
    per_image = ctx.map_rows(lambda idx: np.full(len(idx), float(ctx.shard.rank)))
    card = protocol_card(ctx, metric="scoring rank", version="test/1", backbone="none", weights_sha256="",
                         image_count=len(per_image))  # fmt: skip
    return MetricResult(card, higher_is_better=True, per_image=per_image)


def main(samples, reference, probe, clip, out) -> None:
    register("scoring_rank", lambda: scoring_rank)
    init_distributed("cpu")
    evaluate(samples, METRICS, out, reference=reference, probe=probe, clip=clip, n_boot=200, n_boot_set=50)
    close_distributed()


if __name__ == "__main__":
    main(*sys.argv[1:6])
