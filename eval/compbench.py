"""T2I-CompBench (Huang et al., NeurIPS 2023): prompt sets and the scoring rules, as pure functions.

The paper's second table reports T2I-CompBench colour, shape, texture, spatial, non-spatial
and complex (3-in-1) for every 4-step model. The rules below are transcribed from the
benchmark's scripts (Karine-Huang/T2I-CompBench, HEAD 1b70949; see
shared/design/t2i-compbench.md) so that the models that feed them (BLIP-VQA, a detector,
CLIP ViT-B/32) can be swapped without touching the arithmetic:

- prompts: ``examples/dataset/{category}_val.txt`` (300 each), read from the user's local
  checkout with each file's sha256 (colour_val changed on 2025-09-03: the hash says which);
- images: 10 per prompt at seeds 42-51 (``GORS_finetune/inference_eval.py``), prompt ``i``
  owning images ``10 i .. 10 i + 9``;
- B-VQA (colour, shape, texture): per question ``p(yes) / (p(yes) + p(no))`` at the first
  answer token, rounded to 4 decimals; the image score is the product over its noun-phrase
  questions (:func:`vqa_answer_probability`, :func:`blip_vqa_image_score`);
- spatial: the UniDet geometry rule of ``2D_spatial_eval.py`` (:func:`spatial_image_score`);
- non-spatial: raw cosine of CLIP ViT-B/32 image and prompt embeddings;
- complex: the 3-in-1 mix of ``3_in_1.py`` (:func:`three_in_one`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from senseflow.errors import MissingArtefactError, UserError

CATEGORIES = ("color", "shape", "texture", "spatial", "non_spatial", "complex")
SEEDS = tuple(range(42, 52))  # image k of every prompt uses seed 42 + k
YES_ID, NO_ID = 2748, 2053  # bert-base-uncased ids of "yes" and "no"
RELATIONS = (
    "on side of", "next to", "near", "on the left of", "on the right of", "on the bottom of",
    "on the top of", "on top of",
)  # fmt: skip  # the benchmark's search order: the first substring found wins
PERSON_WORDS = {"girl", "boy", "man", "woman"}  # mapped to the detector label "person"


class CompBenchError(UserError, ValueError):
    """A T2I-CompBench file is missing or malformed; the message names it and the fix."""


@dataclass(frozen=True)
class CompBenchPrompts:
    """One category's validation prompts, their source file and its sha256."""

    category: str
    prompts: tuple[str, ...]
    source: Path
    sha256: str

    def image_plan(self) -> list[tuple[str, str, int]]:
        """``(id, prompt, seed)`` per image, in the benchmark's order (prompt i owns 10 i .. 10 i + 9)."""
        return [
            (f"{self.category}-{i:03d}-{k}", p, seed)
            for i, p in enumerate(self.prompts)
            for k, seed in enumerate(SEEDS)
        ]


def load_compbench_prompts(dataset_dir: str | Path, category: str) -> CompBenchPrompts:
    """``{category}_val.txt`` of a local T2I-CompBench checkout (``examples/dataset/``), hashed."""
    if category not in CATEGORIES:
        raise CompBenchError(f"unknown T2I-CompBench category {category!r} (known: {', '.join(CATEGORIES)})")
    path = Path(dataset_dir) / f"{category}_val.txt"
    if not path.is_file():
        raise MissingArtefactError(
            f"{path} is missing: clone https://github.com/Karine-Huang/T2I-CompBench and pass its "
            "examples/dataset folder (the benchmark's prompt files are read locally, never downloaded)"
        )
    data = path.read_bytes()
    prompts = tuple(line.strip() for line in data.decode("utf-8").splitlines() if line.strip())
    if not prompts:
        raise CompBenchError(f"{path} holds no prompt")
    return CompBenchPrompts(category, prompts, path, hashlib.sha256(data).hexdigest())


def vqa_answer_probability(p_yes: float, p_no: float) -> float:
    """``p(yes) / (p(yes) + p(no))`` at the first answer token, rounded to 4 decimals (BLIP_vqa.py)."""
    total = p_yes + p_no
    if total <= 0:
        raise ValueError("p(yes) + p(no) must be positive")
    return round(p_yes / total, 4)


def blip_vqa_image_score(question_scores: list[float]) -> float:
    """An image's B-VQA score: the product of its noun-phrase question scores (a missing one is 1)."""
    out = 1.0
    for s in question_scores:
        out *= s
    return out


def vqa_question(chunk: str) -> str:
    """The benchmark's question of one noun chunk: lowercased, ``.!"()*#:;~`` stripped, ``?`` appended."""
    text = chunk.lower()
    for ch in '.!"()*#:;~':
        text = text.replace(ch, "")
    return text.strip() + "?"


def find_relation(prompt: str) -> str | None:
    """The prompt's spatial relation: the first of :data:`RELATIONS` found as a substring."""
    return next((r for r in RELATIONS if r in prompt), None)


def detector_label(noun: str) -> str:
    """The detector label a noun must equal: girl / boy / man / woman become person."""
    return "person" if noun in PERSON_WORDS else noun


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def relation_probability(relation: str, box1, box2) -> float:
    """P of the relation between two boxes ``(x0, y0, x1, y1)`` (pixels at ~480 px, y down).

    Left needs dx > 0, right dx < 0, each with |dx| > |dy|; top dy > 0 and bottom dy < 0, each
    with |dy| > |dx|; when the test holds P = 1 if IoU < 0.1 else 0.1 / IoU, otherwise 0.
    next to / near / on side of: 1 if |dx| < 150 or |dy| < 150, else 150 / max(|dx|, |dy|).
    'on top of' has no branch in the benchmark, so it scores 0 (kept: the rule is the rule).
    """
    cx1, cy1 = (box1[0] + box1[2]) / 2, (box1[1] + box1[3]) / 2
    cx2, cy2 = (box2[0] + box2[2]) / 2, (box2[1] + box2[3]) / 2
    dx, dy = cx2 - cx1, cy2 - cy1
    if relation in ("next to", "near", "on side of"):
        if abs(dx) < 150 or abs(dy) < 150:
            return 1.0
        return 150 / max(abs(dx), abs(dy))
    tests = {
        "on the left of": dx > 0 and abs(dx) > abs(dy),
        "on the right of": dx < 0 and abs(dx) > abs(dy),
        "on the top of": dy > 0 and abs(dy) > abs(dx),
        "on the bottom of": dy < 0 and abs(dy) > abs(dx),
    }
    if not tests.get(relation, False):
        return 0.0
    iou = _iou(box1, box2)
    return 1.0 if iou < 0.1 else 0.1 / iou


def spatial_image_score(
    obj1: str, obj2: str, relation: str | None, detections: dict[str, tuple[float, tuple]]
) -> float:
    """One image's spatial score from its detections ``{label: (confidence, box)}``.

    ``detections`` holds the first (highest-scoring) detection per label at confidence >= 0.5.
    Both objects found: 0.25 c1 + 0.25 c2 + 0.5 P; one: 0.25 c; none: 0. Any value < 0.5 is
    set to 0 (2D_spatial_eval.py), so a score is 0 or in [0.5, 1].
    """
    d1, d2 = detections.get(detector_label(obj1)), detections.get(detector_label(obj2))
    if d1 and d2:
        p = relation_probability(relation, d1[1], d2[1]) if relation else 0.0
        score = 0.25 * d1[0] + 0.25 * d2[0] + 0.5 * p
    elif d1 or d2:
        score = 0.25 * (d1 or d2)[0]
    else:
        score = 0.0
    return score if score >= 0.5 else 0.0


def three_in_one(attribute: float, spatial: float, clip: float, kind: str) -> float:
    """The complex 3-in-1 score of one image (3_in_1.py).

    ``kind``: ``spatial`` (prompt in complex_val_spatial): (A + S) / 2; ``action`` (in
    complex_val_action): (A + C) / 2; otherwise (A + S + C) / 3.
    """
    if kind == "spatial":
        return (attribute + spatial) / 2
    if kind == "action":
        return (attribute + clip) / 2
    return (attribute + spatial + clip) / 3
