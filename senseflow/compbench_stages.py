"""The T2I-CompBench evaluate stage of a real profile (``pipeline.compbench``).

``compbench-evaluate-<source>`` scores each category folder written by
:mod:`senseflow.compbench_generate` with its metric (``t2i_compbench_<category>``) into
``build/compbench/eval/<candidate>/<category>/``; ``report`` puts the values beside the paper's rows
(``results/tables/<profile>/compbench.md``). Generation lives in its own module so that this stage's
import closure (its DVC code deps) does not reach the samplers.
"""

from __future__ import annotations

from senseflow import pipeline as pl
from senseflow.config import ProfileConfig
from senseflow.errors import UserError


def require_candidates(cfg: ProfileConfig, source: str) -> list[str]:
    """The 4-step T2I-CompBench candidates of ``source``; a clear error when there are none."""
    names = pl.compbench_candidates(cfg, source)
    if not names:
        raise UserError(
            f"profile {cfg.name!r} samples no 4-step T2I-CompBench candidate from {source!r} "
            "(pipeline.compbench unset, or no 4-step model of that source)"
        )
    return names


def evaluate(cfg: ProfileConfig, source: str) -> list[dict]:
    """Score each category folder of ``source``'s candidates with ``t2i_compbench_<category>``."""
    from eval.evaluate import evaluate as run_evaluate

    p, out = cfg.pipeline, []
    for name in require_candidates(cfg, source):
        for category in p.compbench.categories:
            out.append(
                run_evaluate(
                    pl.compbench_samples_dir(name) / category,
                    [f"t2i_compbench_{category}"],
                    pl.compbench_eval_dir(name) / category,
                    seed=p.eval_seed,
                    n_boot=p.n_boot,
                )  # fmt: skip
            )
    return out
