"""T2I-CompBench (Huang et al., NeurIPS 2023): prompt sets and the scoring rules, as pure functions.

The paper's second table reports T2I-CompBench colour, shape, texture, spatial, non-spatial
and complex (3-in-1) for every 4-step model. The rules below are transcribed from the
benchmark's scripts (Karine-Huang/T2I-CompBench, HEAD 1b70949; see
shared/design/t2i-compbench.md) so that the models that feed them (BLIP-VQA, a detector,
CLIP ViT-B/32) can be swapped without touching the arithmetic:

- prompts: ``examples/dataset/{category}_val.txt`` (300 each), read from the user's local
  checkout with each file's sha256 (colour_val changed on 2025-09-03: the hash says which) by
  :func:`eval.prompts.t2i_compbench_prompts` (the one reader of prompt files);
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

import json
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from eval.prompts import COMPBENCH_CATEGORIES, COMPBENCH_COMPLEX_FILES, compbench_prompt_key
from senseflow.errors import MissingArtefactError

CATEGORIES = COMPBENCH_CATEGORIES  # color, shape, texture, spatial, non_spatial, complex
SEEDS = tuple(range(42, 52))  # image k of every prompt uses seed 42 + k
YES_ID, NO_ID = 2748, 2053  # bert-base-uncased ids of "yes" and "no"
RELATIONS = (
    "on side of", "next to", "near", "on the left of", "on the right of", "on the bottom of",
    "on the top of", "on top of",
)  # fmt: skip  # the benchmark's search order: the first substring found wins
PERSON_WORDS = {"girl", "boy", "man", "woman"}  # mapped to the detector label "person"


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


# ----------------------------------------------------------------------------- text: what is asked
NP_NUM = 8  # BLIP_vqa.py asks at most this many noun-phrase questions (2 before 2023-12-02)
SKIPPED_CHUNKS = {"top", "the side", "the left", "the right"}  # dropped noun chunks (since 2024-01-28)
DETECTION_THRESHOLD = 0.5  # experts/obj_detection/utils.py: detections below are discarded
SHORT_SIDE, MAX_SIDE = 479, 480  # UniDet's input resize: the pixel thresholds assume this frame
CARD_FILE = "compbench.json"  # written beside a category's images by the generation stage
COMPLEX_FILES = COMPBENCH_COMPLEX_FILES  # complex_val_spatial.txt, complex_val_action.txt
prompt_key = compbench_prompt_key  # 3_in_1.py's key of a prompt: lowercased, before the first '.'


class Parsed(Protocol):
    """What the rules read of a spaCy ``Doc``: noun chunks and (text, part of speech) tokens."""

    noun_chunks: Sequence[str]
    tokens: Sequence[tuple[str, str]]


class SpacyParsed:
    """A spaCy ``Doc`` reduced to :class:`Parsed` (chunk texts, token texts with ``pos_``)."""

    def __init__(self, doc):
        self.noun_chunks = [c.text for c in doc.noun_chunks]
        self.tokens = [(t.text, t.pos_) for t in doc]


def vqa_questions(parsed: Parsed) -> list[str]:
    """BLIP_vqa.py's questions of one prompt: its first :data:`NP_NUM` noun chunks, as questions.

    Chunks exactly 'top', 'the side', 'the left' or 'the right' are dropped first; a prompt
    with fewer chunks asks fewer questions (a missing one scores 1 in the product).
    """
    chunks = [c for c in parsed.noun_chunks if c not in SKIPPED_CHUNKS]
    return [vqa_question(c) for c in chunks[:NP_NUM]]


def spatial_objects(parsed: Parsed) -> tuple[str | None, str | None]:
    """2D_spatial_eval.py's objects: the first and the last NOUN token (None when there is none)."""
    nouns = [text for text, pos in parsed.tokens if pos == "NOUN"]
    return (nouns[0], nouns[-1]) if nouns else (None, None)


def without_adjectives(parsed: Parsed) -> str:
    """CLIP_similarity.py's ``--complex`` text: the prompt's tokens without ADJ ones, space-joined."""
    return " ".join(text for text, pos in parsed.tokens if pos != "ADJ")


def complex_kind(prompt: str, kinds: dict[str, str]) -> str:
    """``spatial``, ``action`` or ``spatialaction`` (neither list) of a complex prompt (3_in_1.py)."""
    return kinds.get(prompt_key(prompt), "spatialaction")


def benchmark_scale(height: int, width: int) -> float:
    """Factor from an image's pixels to UniDet's frame (short side 479, long side at most 480).

    The spatial rule's 150-pixel thresholds are in that frame, so boxes are scaled into it
    whatever the generator's resolution.
    """
    scale = SHORT_SIDE / min(height, width)
    if max(height, width) * scale > MAX_SIDE:
        scale = MAX_SIDE / max(height, width)
    return scale


def first_detections(
    scores, boxes, labels: Sequence[str], threshold: float = DETECTION_THRESHOLD
) -> dict[str, tuple[float, tuple[float, float, float, float]]]:
    """``{label: (confidence, box)}``: the highest-scoring detection of each label at >= threshold.

    ``scores`` is (boxes, labels): each box takes its best label (a detector outputs one class
    per box, as UniDet does) and the first detection of a label in descending confidence is
    the one the rule uses (2D_spatial_eval.py).
    """
    out: dict[str, tuple[float, tuple]] = {}
    best = [(max(range(len(labels)), key=lambda q: row[q]), row) for row in scores]
    ranked = sorted(
        (
            (float(row[q]), labels[q], tuple(float(v) for v in box))
            for (q, row), box in zip(best, boxes, strict=True)
        ),
        key=lambda t: -t[0],
    )
    for conf, label, box in ranked:
        if conf >= threshold and label not in out:
            out[label] = (conf, box)
    return out


# ----------------------------------------------------------------------------- the parser
SPACY_ARTEFACT = "spacy_en_core_web_sm"


def load_parser(root: str | Path | None = None):
    """SpaCy ``en_core_web_sm`` from the weights directory (its wheel, unpacked once beside it).

    Returns ``text -> Parsed``. The parse decides the questions and objects, so its version is
    in every card (:func:`parser_version`). spaCy itself must be installed (``pip install spacy``);
    the model is the manifest artefact :data:`SPACY_ARTEFACT`, never downloaded here.
    """
    from eval.weights import require

    try:
        import spacy
    except ImportError as exc:
        raise MissingArtefactError(
            "T2I-CompBench's questions and objects come from spaCy's parse: install it with "
            "`pip install 'senseflow-suite[compbench]'` "
            "(the benchmark pins 3.5.3; the version is recorded in each card)"
        ) from exc
    wheel = require(SPACY_ARTEFACT, root)
    folder = wheel.with_name("unpacked")
    if not any(folder.glob("**/config.cfg")):
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(folder)
    model = next(
        (p.parent for p in sorted(folder.glob("**/config.cfg")) if (p.parent / "meta.json").is_file()), None
    )
    if model is None:
        raise MissingArtefactError(f"{wheel} holds no spaCy model (config.cfg + meta.json); fetch it again")
    nlp = spacy.load(model)

    def parse(text: str) -> Parsed:
        return SpacyParsed(nlp(text))

    parse.version = f"spacy {spacy.__version__}, {nlp.meta.get('name')} {nlp.meta.get('version')}"
    return parse


def parser_version(parse) -> str:
    """What parsed the prompts (spaCy and model versions, or the name of an injected parser)."""
    return getattr(parse, "version", getattr(parse, "__name__", type(parse).__name__))


# ----------------------------------------------------------------------------- the folder's card
def write_card(folder: str | Path, card: dict) -> Path:
    """``compbench.json`` beside a category's images: category, prompt files and hashes, complex kinds."""
    from senseflow.io import atomic_write_text

    path = Path(folder) / CARD_FILE
    atomic_write_text(path, json.dumps(card, indent=2, sort_keys=True) + "\n")
    return path


def read_card(folder: str | Path) -> dict:
    """The ``compbench.json`` of a sample folder; its absence is an error naming the stage that writes it."""
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        raise MissingArtefactError(
            f"{path} is missing: T2I-CompBench metrics score folders made by "
            "`senseflow pipeline compbench-generate` (it records the category and the prompt files)"
        )
    return json.loads(path.read_text())
