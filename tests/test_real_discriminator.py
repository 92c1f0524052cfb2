"""The VFM discriminator's released conditioning and SDXL's GAN curve (issue 14, items 9 and 8/SDXL).

Text: the prompt's CLIP ViT-L/14 text features from the teacher's own CLIP-L ``text_encoder``,
not the teacher's pooled embedding. Paired real image: its feature map mapped per location
(the released ``refmapper``), not pooled over space. Tiny teachers in float32, a tiny DINOv2.
"""

from __future__ import annotations

import pytest
import torch

from senseflow.config import GANConfig
from senseflow.discriminator.model import build_discriminator
from senseflow.discriminator.text import ClipTextFeatures
from tests.test_distill_families import tiny_dinov2
from tests.test_real_fidelity import ANCHORS, tiny_family, world_data
from tests.tiny_pipelines import RESOLUTION

PROMPTS = ["a red cat", "two blue dogs"]


def clip_discriminator(teacher, reference: str = "per_location", diffaug=()):
    """A tiny-DINOv2 discriminator conditioned like the released one, on ``teacher``'s CLIP-L tower."""
    clip = ClipTextFeatures.from_pipeline(teacher.text.pipeline)
    cfg = GANConfig(backbone="dinov2_tiny", blocks=[0, 2], text_projection_dim=8, diffaug=list(diffaug),
                    reference_condition=reference)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_discriminator(cfg, tiny_dinov2(), image_size=RESOLUTION, width=8, text_features=clip)


def images(seed: int, b: int = 2) -> torch.Tensor:
    return torch.rand(b, 3, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ----------------------------------------------------------------------------- text condition
@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_text_condition_is_the_clip_l_feature_not_the_pooled_embedding(family, tmp_path):
    teacher = tiny_family(family, tmp_path, "float32")
    disc = clip_discriminator(teacher).eval()
    encoder = teacher.text.pipeline.text_encoder  # the family's CLIP ViT-L/14 slot
    cond = teacher.text.encode(PROMPTS)
    text = disc.text_condition(PROMPTS, cond)
    # the released feature: projected text embedding where the encoder has the projection
    # (SD 3.5), the pooled end-of-text state where it was saved without it (SDXL, FLUX)
    tok = teacher.text.pipeline.tokenizer
    ids = tok(PROMPTS, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids  # fmt: skip
    out = encoder(ids)
    raw = out.text_embeds if family == "sd3" else out.pooler_output
    torch.testing.assert_close(text, torch.nn.functional.normalize(raw.float(), dim=-1))
    assert text.shape[1] != cond.pooled.shape[1] or family == "flux"  # FLUX pools CLIP-L too

    x, ref = images(1), images(2)
    with torch.no_grad():
        base = disc(x, text, ref)
        # the teacher's pooled embedding changes: the discriminator's input does not
        other = type(cond)(cond.hidden, torch.randn_like(cond.pooled))
        torch.testing.assert_close(disc(x, disc.text_condition(PROMPTS, other), ref), base)
        # the CLIP-L encoder's output changes: so do the logits
        last_norm = next(m for n, m in encoder.named_modules() if n.endswith("final_layer_norm"))
        last_norm.bias.add_(torch.randn_like(last_norm.bias))
        moved = disc(x, disc.text_condition(PROMPTS, cond), ref)
    assert not torch.allclose(moved, base, atol=1e-4)


def test_the_loop_feeds_the_discriminator_clip_l_features(tmp_path):
    """Every D forward of a training iteration (G step and D step) gets the CLIP-L features of its prompts."""
    from senseflow.train import distill

    teacher = tiny_family("sd3", tmp_path, "float32")
    disc = clip_discriminator(teacher)
    clip = disc.text_features
    produced: list[torch.Tensor] = []

    class Recorder:
        dim = clip.dim

        def __call__(self, prompts):
            produced.append(clip(prompts))
            return produced[-1]

    disc.text_features = Recorder()
    seen: list[torch.Tensor] = []
    disc.register_forward_hook(lambda module, args, out: seen.append(args[1].detach()))
    distill(
        tmp_path / "run", teacher=teacher, data=world_data(), discriminator=disc, anchors=ANCHORS["sd3"],
        iterations=1, global_batch=2, ttur=1, isg=False, progress=False, checkpoint_every=10,
    )  # fmt: skip
    assert len(produced) == 1 and len(seen) == 3  # G step, D real, D fake
    pooled_width = teacher.text.encode([""]).pooled.shape[1]
    assert produced[0].shape == (2, clip.dim) and clip.dim != pooled_width
    for text in seen:
        torch.testing.assert_close(text, produced[0])


def test_real_profiles_take_the_teachers_clip_l_and_the_knob_restores_pooled(tmp_path):
    from senseflow.config import load_profile
    from senseflow.real_run import discriminator_text_features

    teacher = tiny_family("sd3", tmp_path, "float32")
    for name in ("sdxl", "sd35_large", "sd35_medium", "flux_dev"):
        cfg = load_profile(name)
        assert cfg.distill.gan.text_condition == "clip_l"
        assert cfg.distill.gan.reference_condition == "per_location"
    cfg = load_profile("sd35_large")
    clip = discriminator_text_features(cfg, cfg.distill, teacher)
    assert clip.encoder is teacher.text.pipeline.text_encoder
    old = load_profile("sd35_large", ["distill.gan.text_condition=pooled"])
    assert discriminator_text_features(old, old.distill, teacher) is None


# ----------------------------------------------------------------------------- reference condition
def spatially_shuffled(maps: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each map with its locations permuted (the same values, other places): pooling cannot tell."""
    out = []
    for m in maps:
        b, c, h, w = m.shape
        perm = torch.randperm(h * w, generator=torch.Generator().manual_seed(0))
        out.append(m.flatten(2)[:, :, perm].reshape(b, c, h, w))
    return out


@pytest.mark.parametrize("reference", ["per_location", "pooled"])
def test_refmapper_keeps_where_things_are_in_the_real_image(reference, tmp_path, monkeypatch):
    teacher = tiny_family("flux", tmp_path, "float32")
    disc = clip_discriminator(teacher, reference).eval()
    x, ref = images(3), images(4)
    text = disc.text_condition(PROMPTS, teacher.text.encode(PROMPTS))
    maps = disc.reference_maps(ref)
    with torch.no_grad():
        base = disc(x, text, ref)
        monkeypatch.setattr(disc, "reference_maps", lambda r: spatially_shuffled(maps))
        shuffled = disc(x, text, ref)
    if reference == "per_location":
        assert not torch.allclose(shuffled, base, atol=1e-4)  # the place of each feature matters
    else:
        torch.testing.assert_close(shuffled, base)  # pooled over space: permutation-blind


@pytest.mark.parametrize("reference", ["per_location", "pooled"])
def test_a_local_change_of_the_reference_changes_the_logits_near_it(reference):
    from senseflow.discriminator.head import DiscriminatorHead

    torch.manual_seed(0)
    head = DiscriminatorHead(6, 5, width=8, in_size=8, cmap_dim=4, reference=reference).eval()
    features, text = torch.randn(2, 6, 8, 8), torch.randn(2, 5)
    ref = torch.randn(2, 6, 8, 8)
    changed = ref.clone()
    changed[:, :, 0, 0] += 5.0  # one location, the top-left corner
    with torch.no_grad():
        delta = (head(features, text, changed) - head(features, text, ref)).abs()[:, 0]
    assert delta.shape == (2, 8, 8) and (delta[:, 0, 0] > 1e-4).all()
    if reference == "per_location":
        # the trunk's receptive field is 3x3 (1x1 stem, one 3x3 block): far logits do not move
        assert torch.equal(delta[:, 2:, :], torch.zeros_like(delta[:, 2:, :]))
        assert torch.equal(delta[:, :, 2:], torch.zeros_like(delta[:, :, 2:]))
    else:
        assert (delta[:, 7, 7] > 1e-4).all()  # pooled: the whole map moves


# ----------------------------------------------------------------------------- SDXL GAN curve
def test_released_sdxl_gan_curve_is_sqrt_alpha_bar_of_the_anchor(tmp_path):
    from senseflow.config import ConfigError, load_profile
    from senseflow.losses import gan_weight

    teacher = tiny_family("sdxl", tmp_path, "float32")
    anchors = torch.tensor(ANCHORS["sdxl"])
    w = gan_weight(anchors, "sqrt_alpha_bar", alpha_bar=teacher.alpha_bar)
    expected = teacher.alphas_cumprod[[999, 749, 499, 249]].sqrt().float()
    torch.testing.assert_close(w, expected)
    # SDXL's scaled-linear schedule: the released weights at its anchors
    assert w.tolist() == pytest.approx([0.0683, 0.2380, 0.5269, 0.8218], abs=1e-3)
    assert load_profile("sdxl").distill.gan.weight_curve == "sqrt_alpha_bar"
    with pytest.raises(ValueError, match="DDPM"):
        gan_weight(anchors, "sqrt_alpha_bar")  # a flow backbone has no alpha_bar
    with pytest.raises(ConfigError, match="sqrt_alpha_bar"):
        load_profile("flux_dev", ["distill.gan.weight_curve=sqrt_alpha_bar"])


def test_sdxl_loop_weights_both_gan_terms_by_sqrt_alpha_bar(tmp_path, monkeypatch):
    from senseflow import distill as terms
    from senseflow.train import distill

    teacher = tiny_family("sdxl", tmp_path, "float32")
    released = set(teacher.alphas_cumprod[[999, 749, 499, 249]].sqrt().float().tolist())
    d_weights, g_curves = [], []
    real_step, real_gan = terms.vfm_discriminator_step, terms.vfm_generator_gan

    def step_spy(*args, **kw):
        d_weights.append(kw["weight"])
        return real_step(*args, **kw)

    def gan_spy(*args, **kw):
        g_curves.append(kw["curve"])
        return real_gan(*args, **kw)

    monkeypatch.setattr(terms, "vfm_discriminator_step", step_spy)
    monkeypatch.setattr(terms, "vfm_generator_gan", gan_spy)
    distill(
        tmp_path / "run", teacher=teacher, data=world_data(), discriminator=clip_discriminator(teacher),
        anchors=ANCHORS["sdxl"], iterations=1, global_batch=2, ttur=1, isg=False,
        gan_curve="sqrt_alpha_bar", progress=False, checkpoint_every=10,
    )  # fmt: skip
    assert g_curves == ["sqrt_alpha_bar"]
    assert d_weights and all(min(abs(v - r) for r in released) < 1e-6 for v in d_weights[0].tolist())
