"""Two full distillation iterations per real family (SDXL, SD 3.5, FLUX.1 dev) on tiny pipelines.

Each tiny pipeline is saved to disk and loaded through ``load_backbone`` exactly as real
weights would be; the loop then runs generator and fake steps with IDA, ISG and the VFM
discriminator (a tiny random DINOv2) on CPU.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import Dinov2Config, Dinov2Model

from senseflow.backbones.loading import load_backbone
from senseflow.config import GANConfig, PretrainedConfig
from senseflow.data import WorldData
from senseflow.discriminator.model import build_discriminator
from senseflow.train import distill
from tests.tiny_pipelines import RESOLUTION, T5_LENGTH, save_tiny_pipeline

FAMILIES = ("sdxl", "sd3", "flux")
ANCHORS = {"sdxl": (999 / 999, 749 / 999, 499 / 999, 249 / 999), "sd3": (1.0, 0.9, 0.75, 0.5),
           "flux": (1.0, 0.904, 0.759, 0.512)}  # fmt: skip


def tiny_dinov2() -> Dinov2Model:
    """A random DINOv2 of tiny config (the real one is ViT-L/14)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        cfg = Dinov2Config(
            hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
            patch_size=8, image_size=RESOLUTION,
        )  # fmt: skip
        return Dinov2Model(cfg).eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_two_iterations_every_term(family, tmp_path):
    folder = save_tiny_pipeline(family, tmp_path / "teacher")
    cfg = PretrainedConfig(
        model_id=str(folder), licence="test", dtype="float32", resolution=RESOLUTION,
        max_sequence_length=T5_LENGTH,
    )  # fmt: skip
    teacher = load_backbone(family, cfg)
    before = {k: v.clone() for k, v in teacher.network.state_dict().items()}
    gan_cfg = GANConfig(backbone="dinov2_tiny", blocks=[0, 2], text_projection_dim=8)
    pooled = teacher.text.encode(["a red cat"]).pooled.shape[1]
    torch.manual_seed(0)
    disc = build_discriminator(gan_cfg, tiny_dinov2(), pooled, image_size=RESOLUTION, width=8)
    out = tmp_path / "run"
    result = distill(
        out, teacher=teacher, data=WorldData(resolution=RESOLUTION, digit_counts={1: 1.0}),
        discriminator=disc, anchors=ANCHORS[family], iterations=2, global_batch=2, ttur=1,
        generator_lr=1e-3, fake_lr=1e-3, gan_lr=1e-3, gan_weight=1.0, gan_curve="constant",
        isg_margin=0.05, log_every=1, checkpoint_every=1, progress=False,
    )  # fmt: skip
    # the teacher is untouched; the generator moved away from it
    for k, v in teacher.network.state_dict().items():
        assert torch.equal(v, before[k]), f"teacher weight {k} changed"
    moved = [k for k, v in result.generator_state.items() if not torch.equal(v, before.get(k, v))]
    assert moved, "no generator weight changed after two generator steps"
    if family == "flux":  # the student has no guidance embedding
        assert not any("guidance_embedder" in k for k in result.generator_state)
    # every term was computed and finite, and logged
    metrics = json.loads((out / "dvclive" / "metrics.json").read_text())["train"]
    for term in ("dmd", "isg", "gan_g", "gan_d", "fake"):
        assert term in metrics and torch.isfinite(torch.tensor(metrics[term])), term
    assert json.loads((out / "state.json").read_text())["iteration"] == 2


@pytest.mark.parametrize("family", FAMILIES)
def test_exported_real_family_student_generates_at_its_anchors(family, tmp_path):
    from diffusers import LCMScheduler

    from senseflow.export import export_student
    from senseflow.student import load_student

    folder = save_tiny_pipeline(family, tmp_path / "teacher")
    base = dict(model_id=str(folder), licence="test", dtype="float32", resolution=RESOLUTION,
                max_sequence_length=T5_LENGTH)  # fmt: skip
    teacher = load_backbone(family, PretrainedConfig(**base))
    state = teacher.trainable_copy().state_dict()
    anchors = list(ANCHORS[family])
    out = export_student(tmp_path / "student", state, teacher,
                         {"anchors": anchors, "sampler": "euler", "resolution": RESOLUTION, "family": family},
                         base=base)  # fmt: skip
    student = load_student(out)
    images = student.generate(["a red cat", "a blue dog"], [1, 2])
    assert images.shape == (2, 3, RESOLUTION, RESOLUTION) and torch.isfinite(images).all()
    assert student.last_times == anchors
    recipe = json.loads((out / "recipe.json").read_text())
    # a complete diffusers pipeline: the teacher's text encoders and VAE linked in (test_real_diffusers)
    assert recipe["base"]["model_id"] == str(folder) and (out / "text_encoder").is_dir()
    assert recipe["diffusers_pipeline"] and (out / "model_index.json").is_file()
    if family == "flux":
        assert not student.backbone.network.config.guidance_embeds
    if family == "sdxl":  # the paper's SDXL sampler: LCM at explicit timesteps, unchanged
        sched = LCMScheduler.from_pretrained(out / "scheduler")
        sched.set_timesteps(timesteps=[999, 749, 499, 249])
        assert sched.timesteps.tolist() == [999, 749, 499, 249]


@pytest.mark.parametrize("family", FAMILIES)
def test_dmd2_head_on_each_family(family, tmp_path):
    folder = save_tiny_pipeline(family, tmp_path / "teacher")
    cfg = PretrainedConfig(model_id=str(folder), licence="test", dtype="float32", resolution=RESOLUTION,
                           max_sequence_length=T5_LENGTH)  # fmt: skip
    out = tmp_path / "run"
    distill(
        out, teacher=load_backbone(family, cfg), data=WorldData(resolution=RESOLUTION, digit_counts={1: 1.0}),
        anchors=ANCHORS[family], iterations=2, global_batch=2, ttur=1, gan_head="fake_features",
        gan_loss="logistic", ida=False, isg=False, log_every=1, progress=False,
    )  # fmt: skip
    metrics = json.loads((out / "dvclive" / "metrics.json").read_text())["train"]
    assert "gan_g" in metrics and "gan_d" in metrics and "isg" not in metrics
