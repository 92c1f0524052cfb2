"""T2I-CompBench's registry metrics on tiny random judges saved as if fetched, loaded through the manifest.

Each judge is built in-process at toy size (BLIP-VQA, CLIP, OWLv2; real tokenizers rebuilt
offline), saved to ``<root>/<artefact>/`` as ``senseflow weights fetch`` would, and loaded by
its default path (``eval.weights.require``). The maths is checked against independent
computations: B-VQA against a transcription of the benchmark's ``vqa_prob`` (one image, one
question at a time), CLIP against the model's own embeddings, the spatial rule on synthetic
boxes through the detector adapter.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eval import compbench as cb
from eval import weights as W

WORDS = [
    "a",
    "green",
    "bench",
    "red",
    "car",
    "cat",
    "dog",
    "on",
    "the",
    "left",
    "of",
    "yes",
    "no",
    "blue",
    "bowl",
]
PROMPTS = ["a green bench and a red car", "a cat on the left of a dog", "a blue bowl"]


class FakeParsed:
    """A parse by hand: noun chunks are 'a <adj> <noun>' runs, nouns and adjectives from fixed lists."""

    NOUNS, ADJS = {"bench", "car", "cat", "dog", "bowl"}, {"green", "red", "blue"}

    def __init__(self, text: str):
        words = text.split()
        self.tokens = [(w, "NOUN" if w in self.NOUNS else "ADJ" if w in self.ADJS else "X") for w in words]
        self.noun_chunks, chunk = [], []
        for w in words:
            if w == "a":
                chunk = ["a"]
            elif chunk:
                chunk.append(w)
                if w in self.NOUNS:
                    self.noun_chunks.append(" ".join(chunk))
                    chunk = []


def fake_parser(text: str) -> FakeParsed:
    return FakeParsed(text)


def bert_tokenizer(folder: Path):
    from transformers import BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "?", *WORDS, "[DEC]", "[ENC]"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]")


def save_blip(folder: Path, seed: int = 0) -> Path:
    from transformers import BlipConfig, BlipForQuestionAnswering, BlipImageProcessor, BlipProcessor

    tok = bert_tokenizer(folder / "_vocab")
    torch.manual_seed(seed)
    layers = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2)
    cfg = BlipConfig(
        text_config={**layers, "vocab_size": len(tok), "bos_token_id": tok.convert_tokens_to_ids("[DEC]"),
                     "encoder_hidden_size": 32, "max_position_embeddings": 40},
        vision_config={**layers, "image_size": 32, "patch_size": 16},
    )  # fmt: skip
    BlipForQuestionAnswering(cfg).eval().save_pretrained(folder)
    image_processor = BlipImageProcessor(size={"height": 48, "width": 48})
    BlipProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(folder)
    return folder


def save_clip(folder: Path, seed: int = 1) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from tests.tiny_pipelines import clip_tokenizer

    torch.manual_seed(seed)
    layers = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2)
    tok = clip_tokenizer(77)
    cfg = CLIPConfig(
        text_config={**layers, "vocab_size": len(tok), "max_position_embeddings": 77,
                     "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id},
        vision_config={**layers, "image_size": 32, "patch_size": 16}, projection_dim=16,
    )  # fmt: skip
    CLIPModel(cfg).eval().save_pretrained(folder)
    ip = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=ip, tokenizer=tok).save_pretrained(folder)
    return folder


def save_owl(folder: Path, seed: int = 2) -> Path:
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    from tests.tiny_pipelines import clip_tokenizer

    torch.manual_seed(seed)
    layers = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2)
    tok = clip_tokenizer(16)
    cfg = Owlv2Config(
        text_config={**layers, "vocab_size": len(tok), "max_position_embeddings": 16,
                     "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id},
        vision_config={**layers, "image_size": 32, "patch_size": 16}, projection_dim=32,
    )  # fmt: skip
    Owlv2ForObjectDetection(cfg).eval().save_pretrained(folder)
    Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok
                   ).save_pretrained(folder)  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A weights root with the judges where `senseflow weights fetch --metrics compbench` puts them."""
    root = tmp_path_factory.mktemp("weights")
    save_blip(root / "blip_vqa_capfilt_large")
    save_clip(root / "clip_vitb32")
    save_owl(root / "owlv2_base")
    return root


def images(n: int, size: int = 40, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def test_compbench_metric_set_fetches_exactly_the_judges():
    m = W.load_manifest()
    assert {a.name for a in m.for_metrics("compbench")} == {
        "blip_vqa_capfilt_large", "clip_vitb32", "owlv2_base", "spacy_en_core_web_sm"
    }  # fmt: skip
    assert {a.name for a in m.for_metrics("t2i_compbench_non_spatial")} == {"clip_vitb32"}
    # an evaluation-only profile fetches them (its pipeline.compbench categories); the COCO set does not
    from senseflow.baselines import profile_artefacts
    from senseflow.config import load_profile

    assert "owlv2_base" in profile_artefacts(load_profile("tables_sdxl"))
    assert "owlv2_base" not in {a.name for a in m.for_metrics("coco")}


def _vqa_prob_transcribed(model, tok, image: Image.Image, question: str, enc_id: int) -> float:
    """models/blip_vqa.py ``vqa_prob`` for one image and one question, written out step by step."""
    from eval.metrics.blip_vqa import benchmark_pixels

    pix = benchmark_pixels([image])
    with torch.no_grad():
        img = model.vision_model(pixel_values=pix, interpolate_pos_encoding=True).last_hidden_state
        q = tok([question], return_tensors="pt")
        ids = q["input_ids"].clone()
        ids[0, 0] = enc_id  # the question encoder's first token is [ENC]
        mask = q["attention_mask"]
        states = model.text_encoder(
            input_ids=ids, attention_mask=mask, encoder_hidden_states=img, return_dict=True
        ).last_hidden_state
        start = torch.tensor([[model.config.text_config.bos_token_id]])  # [DEC]
        logits = model.text_decoder(
            input_ids=start, encoder_hidden_states=states, encoder_attention_mask=mask, return_dict=True
        ).logits
    p = logits[0, 0].softmax(-1)
    y, n = p[tok.convert_tokens_to_ids("yes")].item(), p[tok.convert_tokens_to_ids("no")].item()
    return round(y / (y + n), 4)


def test_bvqa_is_the_product_of_p_yes_and_matches_the_transcription(root, monkeypatch):
    from eval.metrics.blip_vqa import load_blip_vqa
    from eval.metrics.t2i_compbench import Judges

    monkeypatch.setenv(W.ENV_VAR, str(root))
    vqa = load_blip_vqa(device="cpu")  # default path: <root>/blip_vqa_capfilt_large
    assert vqa.weights_file.parent == root / "blip_vqa_capfilt_large"
    ims = images(3)
    questions = [cb.vqa_questions(fake_parser(p)) for p in PROMPTS]
    assert questions[0] == ["a green bench?", "a red car?"]
    got = vqa.question_scores(ims, questions)
    tok = vqa.processor.tokenizer
    want = [
        [_vqa_prob_transcribed(vqa.model, tok, im, q, vqa.enc_id) for q in qs]
        for im, qs in zip(ims, questions, strict=True)
    ]
    np.testing.assert_allclose(np.concatenate(got), np.concatenate(want), atol=2e-4)  # 4-decimal rounding
    per_image = Judges(fake_parser, vqa=vqa).attribute(ims, PROMPTS)
    np.testing.assert_allclose(per_image, [np.prod(s) for s in got])
    card = vqa.protocol()
    assert (
        card["mode"] == "benchmark" and card["resolution"] == 480 and card["first_question_token"] == "[ENC]"
    )
    assert "384" in card["deviation"] and "[CLS]" in card["deviation"]


def test_hub_mode_deviation_is_measured(root, monkeypatch):
    """The Hub port as published (processor resolution, [CLS]) against the benchmark's transcription."""
    from eval.metrics.blip_vqa import load_blip_vqa

    monkeypatch.setenv(W.ENV_VAR, str(root))
    bench = load_blip_vqa(device="cpu")
    hub = load_blip_vqa(device="cpu", mode="hub")
    ims = images(4, seed=3)
    qs = [cb.vqa_questions(fake_parser(p)) for p in [*PROMPTS, PROMPTS[0]]]
    a, b = np.concatenate(bench.question_scores(ims, qs)), np.concatenate(hub.question_scores(ims, qs))
    diff = np.abs(a - b)
    print(f"B-VQA hub vs benchmark on tiny random weights: mean |dP| {diff.mean():.4f}, max {diff.max():.4f}")
    assert diff.max() > 0  # the two protocols are not the same function
    assert hub.protocol()["resolution"] == 48 and hub.protocol()["first_question_token"] == "[CLS]"


def test_clip_b32_is_the_raw_cosine(root, monkeypatch):
    from eval.metrics.compbench_judges import load_clip_b32

    monkeypatch.setenv(W.ENV_VAR, str(root))
    clip = load_clip_b32(device="cpu")
    ims = images(2, size=48)
    got = clip(ims, PROMPTS[:2])
    pix = clip.processor(images=ims, return_tensors="pt")["pixel_values"]
    txt = clip.processor(text=PROMPTS[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        i = clip.model.get_image_features(pixel_values=pix)
        t = clip.model.get_text_features(**txt)
    i, t = (getattr(x, "pooler_output", x) for x in (i, t))
    want = torch.nn.functional.cosine_similarity(i, t, dim=-1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert clip.protocol()["score"] == "raw cosine" and clip.protocol()["precision"] == "fp16"


def test_detector_boxes_land_in_unidet_frame_and_the_rule_scores_them(root, monkeypatch):
    from eval.metrics import compbench_judges as J
    from eval.metrics.t2i_compbench import Judges

    assert cb.benchmark_scale(1024, 1024) == pytest.approx(479 / 1024)
    assert cb.benchmark_scale(512, 1024) == pytest.approx(480 / 1024)  # the long side caps at 480
    frame = J._to_frame(torch.tensor([[0.25, 0.5, 0.5, 1.0]]), 1024, 1024)
    np.testing.assert_allclose(frame[0], np.array([0, 0, 0.5, 1.0]) * 479, atol=1e-4)
    scores = [[0.9, 0.1], [0.2, 0.7], [0.6, 0.3], [0.4, 0.45]]  # box 2: a weaker 'cat'; box 3 under the cut
    boxes = [(0, 0, 100, 100), (200, 10, 300, 110), (300, 300, 310, 310), (1, 1, 2, 2)]
    dets = cb.first_detections(scores, boxes, ["cat", "dog"])
    assert dets == {"cat": (0.9, (0, 0, 100, 100)), "dog": (0.7, (200, 10, 300, 110))}

    class Fake:  # a detector returning the synthetic detections above
        def detect(self, ims, labels):
            assert labels == [["cat", "dog"]]
            return [dets]

    s = Judges(fake_parser, detector=Fake()).spatial(images(1), ["a cat on the left of a dog"])
    assert s[0] == pytest.approx(0.25 * 0.9 + 0.25 * 0.7 + 0.5 * 1.0)
    monkeypatch.setenv(W.ENV_VAR, str(root))
    det = J.load_detector(device="cpu")
    got = det.detect(images(2, size=40), [["cat", "dog"], ["bowl", "bowl"]])
    assert len(got) == 2 and all(set(d) <= {"cat", "dog", "bowl"} for d in got)
    assert "UniDet" in det.protocol()["deviation"]


def _folder(path: Path, category: str, prompts: list[str], extra: dict | None = None) -> Path:
    from senseflow.samples import per_seed_records, read_manifest, write_manifest
    from senseflow.world.prompts import PromptRecord
    from tests.test_eval_cli import make_folder

    recs, seeds = per_seed_records(
        [PromptRecord(f"{category}-{i:03d}", p) for i, p in enumerate(prompts)], (42, 43)
    )
    make_folder(path, recs, [np.asarray(im) for im in images(len(recs), size=40, seed=5)])
    write_manifest(path, [r | {"seed": seeds[r["id"]]} for r in read_manifest(path)])  # the benchmark's seeds
    cb.write_card(path, {"category": category, "files": {f"{category}_val.txt": "ab" * 32}, **(extra or {})})
    return path


def test_complex_3in1_runs_through_evaluate_with_every_judge(root, tmp_path, monkeypatch):
    from eval.evaluate import evaluate
    from eval.metrics import t2i_compbench as T

    monkeypatch.setenv(W.ENV_VAR, str(root))
    monkeypatch.setattr(T, "parser", lambda: fake_parser)
    kinds = {cb.prompt_key(PROMPTS[1]): "spatial", cb.prompt_key(PROMPTS[0]): "action"}
    folder = _folder(tmp_path / "s", "complex", PROMPTS, {"complex_kinds": kinds})
    names = ["t2i_compbench_complex", "t2i_compbench_color", "t2i_compbench_non_spatial"]
    summary = evaluate(folder, names, tmp_path / "o", n_boot=20)
    m = summary["metrics"]
    assert (
        m["t2i_compbench_color"]["status"] == "not_applicable"
        and "'complex'" in m["t2i_compbench_color"]["reason"]
    )
    c = m["t2i_compbench_complex"]
    assert c["status"] == "ok" and c["n"] == 6 and 0 <= c["value"] <= 1
    card = c["protocol"]
    assert card["category"] == "complex" and card["seeds"] == [42, 43] and card["images_per_prompt"] == 2
    assert card["prompt_files"] == {"complex_val.txt": "ab" * 32} and card["parser"] == "fake_parser"
    assert "UniDet" in card["backbone"] and "[ENC]" in card["backbone"]
    # the per-image values are the 3-in-1 mix of the judges' own scores
    from eval.evaluate import read_scores

    judges = T.judges_for("complex", fake_parser)
    ims = [Image.open(folder / f) for f in read_scores(tmp_path / "o")["file"]]
    prompts = list(read_scores(tmp_path / "o")["prompt"])
    a, s = judges.attribute(ims, prompts), judges.spatial(ims, prompts)
    cl = judges.non_spatial(ims, prompts, complex_text=True)
    want = [(a[i] + cl[i]) / 2 if p == PROMPTS[0] else (a[i] + s[i]) / 2 if p == PROMPTS[1]
            else (a[i] + s[i] + cl[i]) / 3 for i, p in enumerate(prompts)]  # fmt: skip
    np.testing.assert_allclose(read_scores(tmp_path / "o")["t2i_compbench_complex"], want, atol=1e-6)


def test_a_folder_without_its_card_is_not_applicable_and_embedded_is_refused(tmp_path, monkeypatch):
    from eval.metrics.t2i_compbench import applies
    from eval.registry import EvalContext
    from eval.sample_folder import load_sample_folder

    folder = _folder(tmp_path / "s", "color", PROMPTS[:1])
    (folder / cb.CARD_FILE).unlink()
    ctx = EvalContext(samples=load_sample_folder(folder))
    assert "compbench-generate" in applies("color")(ctx)
    cb.write_card(folder, {"category": "color"})
    assert applies("color")(ctx) is None
    with pytest.raises(cb.MissingArtefactError, match="compbench-generate"):
        cb.read_card(tmp_path)
    assert json.loads((folder / cb.CARD_FILE).read_text())["category"] == "color"
