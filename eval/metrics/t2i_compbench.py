"""T2I-CompBench's six categories as registry metrics (``t2i_compbench_<category>``), real images only.

Each metric scores one category's sample folder (made by ``senseflow pipeline compbench-generate``:
300 validation prompts x 10 images at seeds 42-51, with ``compbench.json`` naming the category
and the prompt files' hashes) and reports the mean over its images, as the benchmark does:

- ``t2i_compbench_color`` / ``_shape`` / ``_texture``: B-VQA, the product of BLIP-VQA's
  ``P(yes)`` over the prompt's noun-phrase questions (:mod:`eval.metrics.blip_vqa`);
- ``t2i_compbench_spatial``: the benchmark's geometry rule over detections of the prompt's
  first and last noun (OWLv2 for UniDet, :mod:`eval.metrics.compbench_judges`);
- ``t2i_compbench_non_spatial``: raw cosine of CLIP ViT-B/32;
- ``t2i_compbench_complex``: 3-in-1, per image (A + S) / 2, (A + C) / 2 or (A + S + C) / 3 by
  the prompt's sub-list, C on the prompt without adjectives (:func:`eval.compbench.three_in_one`).

The rules are :mod:`eval.compbench`'s; questions and objects come from spaCy's parse
(:func:`eval.compbench.load_parser`), whose version each card records with the judges'
deviations from the original checkpoints.
"""

from __future__ import annotations

import functools

import numpy as np

from eval import compbench as cb
from eval.registry import EvalContext, MetricResult, protocol_card, register
from eval.streaming import map_batches

VERSION = "t2i-compbench/1"
METRICS = {f"t2i_compbench_{c}": c for c in cb.CATEGORIES}
BVQA = ("color", "shape", "texture")


@functools.lru_cache(maxsize=1)
def parser():
    """The prompt parser (spaCy en_core_web_sm from the weights directory), loaded once."""
    return cb.load_parser()


def applies(category: str):
    """A metric applies to a real folder of its own category (its ``compbench.json`` says which)."""

    def check(ctx: EvalContext) -> str | None:
        if ctx.samples.embedded:
            return "embedded world: its T2I-CompBench table is compbench_colour/shape/... (the probe)"
        path = ctx.samples.path / cb.CARD_FILE
        if not path.is_file():
            return f"not a T2I-CompBench folder (no {cb.CARD_FILE}: `senseflow pipeline compbench-generate`)"
        got = cb.read_card(ctx.samples.path).get("category")
        return (
            None if got == category else f"the folder holds T2I-CompBench category {got!r}, not {category!r}"
        )

    return check


class Judges:
    """The per-image scores of each judge, given the models (loaded lazily, once per metric run)."""

    def __init__(self, parse, *, vqa=None, detector=None, clip=None):
        self.parse, self.vqa, self.detector, self.clip = parse, vqa, detector, clip

    def attribute(self, images, prompts: list[str]) -> np.ndarray:
        """B-VQA: the product of each image's question scores."""
        questions = [cb.vqa_questions(self.parse(p)) for p in prompts]
        return np.array([cb.blip_vqa_image_score(s) for s in self.vqa.question_scores(images, questions)])

    def spatial(self, images, prompts: list[str]) -> np.ndarray:
        """The geometry rule over the detections of each prompt's first and last noun."""
        objects = [cb.spatial_objects(self.parse(p)) for p in prompts]
        found = [i for i, (a, _) in enumerate(objects) if a is not None]
        out = np.zeros(len(prompts))
        if found:
            queries = [[cb.detector_label(objects[i][0]), cb.detector_label(objects[i][1])] for i in found]
            dets = self.detector.detect([images[i] for i in found], queries)
            for i, d in zip(found, dets, strict=True):
                a, b = objects[i]
                out[i] = cb.spatial_image_score(a, b, cb.find_relation(prompts[i]), d)
        return out

    def non_spatial(self, images, prompts: list[str], *, complex_text: bool = False) -> np.ndarray:
        """CLIP cosine (3-in-1's C uses the prompt without adjectives: ``--complex True``)."""
        texts = [cb.without_adjectives(self.parse(p)) for p in prompts] if complex_text else prompts
        return self.clip(images, texts).numpy().astype(float)

    def complex(self, images, prompts: list[str], kinds: dict[str, str]) -> np.ndarray:
        """3-in-1 of each image from its A, S and C."""
        a, s = self.attribute(images, prompts), self.spatial(images, prompts)
        c = self.non_spatial(images, prompts, complex_text=True)
        return np.array(
            [cb.three_in_one(a[i], s[i], c[i], cb.complex_kind(p, kinds)) for i, p in enumerate(prompts)]
        )

    def score(self, category: str, images, prompts: list[str], kinds: dict[str, str]) -> np.ndarray:
        """Per-image scores of ``category``."""
        if category in BVQA:
            return self.attribute(images, prompts)
        if category == "spatial":
            return self.spatial(images, prompts)
        if category == "non_spatial":
            return self.non_spatial(images, prompts)
        return self.complex(images, prompts, kinds)

    def protocols(self) -> dict:
        """Each loaded judge's protocol and weights hash."""
        out = {}
        for name in ("vqa", "detector", "clip"):
            judge = getattr(self, name)
            if judge is not None:
                out[name] = judge.protocol()
                if judge.weights_file is not None:
                    from eval.metrics._preference import file_sha256

                    out[name]["weights_sha256"] = file_sha256(judge.weights_file)
        return out


def judges_for(category: str, parse) -> Judges:
    """The judges ``category`` needs, loaded from the weights directory (manifest artefacts)."""
    from eval.metrics.blip_vqa import load_blip_vqa
    from eval.metrics.compbench_judges import load_clip_b32, load_detector

    need_vqa = category in BVQA or category == "complex"
    need_det = category in ("spatial", "complex")
    need_clip = category in ("non_spatial", "complex")
    return Judges(
        parse,
        vqa=load_blip_vqa() if need_vqa else None,
        detector=load_detector() if need_det else None,
        clip=load_clip_b32() if need_clip else None,
    )


def _metric(name: str, category: str):
    def metric(ctx: EvalContext) -> MetricResult:
        card_in = cb.read_card(ctx.samples.path)
        parse = parser()
        judges = judges_for(category, parse)
        prompts = [r["prompt"] for r in ctx.samples.records]
        paths = ctx.samples.images.paths
        kinds = card_in.get("complex_kinds", {})

        def block(idx):
            def fn(batch, rows):
                return judges.score(category, list(batch.numpy()), [prompts[idx[i]] for i in rows], kinds)

            return map_batches([paths[i] for i in idx], fn, batch_size=16)

        per_image = ctx.map_rows(block).astype(float)
        seeds = sorted({int(r["seed"]) for r in ctx.samples.records})
        card = protocol_card(
            ctx, metric=name, version=VERSION, backbone=str(judges.protocols()),
            weights_sha256=";".join(p.get("weights_sha256", "") for p in judges.protocols().values()),
            image_count=len(per_image), resize="each judge's own (see backbone)",
            category=category, prompt_files=card_in.get("files", {}), seeds=seeds,
            images_per_prompt=len(per_image) / max(1, len({r["prompt"] for r in ctx.samples.records})),
            parser=cb.parser_version(parse), rules="Karine-Huang/T2I-CompBench 1b70949 (eval/compbench.py)",
        )  # fmt: skip
        return MetricResult(card, higher_is_better=True, per_image=per_image)

    return metric


for _name, _category in METRICS.items():
    register(_name, lambda n=_name, c=_category: _metric(n, c), applies(_category))
