from typing import get_args

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from transformers import Dinov2Config, Dinov2Model

from senseflow.config import GANConfig
from senseflow.discriminator import (
    DIFFAUG_POLICIES,
    Dinov2Taps,
    DiscriminatorHead,
    FeatureTaps,
    ProbeTaps,
    VFMDiscriminator,
    build_discriminator,
    build_taps,
    diffaugment,
    dinov2_hidden_state_indices,
    downsamplings,
)
from senseflow.errors import UserError
from senseflow.losses import d_hinge_loss, g_hinge_loss
from senseflow.world.probes import AttributeProbe

TEXT_DIM = 12


def _images(b: int = 2, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g) * 2 - 1


def _text(b: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, TEXT_DIM, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def probe() -> AttributeProbe:
    torch.manual_seed(0)
    return AttributeProbe(width=4, feature_dim=8)


@pytest.fixture(scope="module")
def dinov2() -> Dinov2Model:
    torch.manual_seed(0)
    cfg = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        patch_size=4,
        image_size=32,
    )
    return Dinov2Model(cfg)


def _disc(probe, size: int = 16, **kw) -> VFMDiscriminator:
    torch.manual_seed(0)
    return VFMDiscriminator(ProbeTaps(probe, [1, 3, 5]), TEXT_DIM, image_size=size, width=8, **kw)


# ----------------------------------------------------------------------------- taps
def test_probe_taps_shapes_and_frozen(probe):
    taps = ProbeTaps(probe, [5, 1])
    assert isinstance(taps, FeatureTaps)
    maps = taps(_images(size=16))
    assert [tuple(m.shape) for m in maps] == [(2, 8, 8, 8), (2, 4, 16, 16)]  # in the order asked
    assert not any(p.requires_grad for p in probe.parameters())
    taps.train()
    assert not taps.training and not probe.training


@pytest.mark.parametrize("blocks", [[], [12], [1, 1]])
def test_probe_taps_reject_bad_blocks(probe, blocks):
    with pytest.raises(ValueError):
        ProbeTaps(probe, blocks)


def test_dinov2_taps_shapes_resize_and_cls(dinov2):
    taps = Dinov2Taps(dinov2, [0, 2, 4], image_size=34)  # rounded down to 32 = 8 patches of 4
    x = _images(size=20)  # any input size: resized to 32
    maps = taps(x)
    assert [tuple(m.shape) for m in maps] == [(2, 32, 8, 8)] * 3
    # by hand: resize, ImageNet normalisation, CLS added to the patch tokens, row-major grid
    y = nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    tokens = dinov2(pixel_values=((y + 1) / 2 - mean) / std, output_hidden_states=True).hidden_states[2]
    expected = tokens[:, 1 + 8 * 3 + 5] + tokens[:, 0]  # patch at row 3, column 5
    torch.testing.assert_close(maps[1][:, :, 3, 5], expected)
    with pytest.raises(ValueError):
        Dinov2Taps(dinov2, [5], image_size=32)  # 4 layers: hidden states 0..4


def test_dinov2_paper_block_convention():
    # the paper's 0-based blocks of ViT-L plus the patch embedding, as output_hidden_states indices
    assert dinov2_hidden_state_indices([2, 5, 23]) == [0, 3, 6, 24]


# ----------------------------------------------------------------------------- heads
@pytest.mark.parametrize(("size", "n"), [(1, 0), (10, 0), (11, 1), (16, 1), (64, 3), (1024, 7)])
def test_downsamplings_reach_at_most_ten(size, n):
    assert downsamplings(size) == n


def test_head_logit_map_sizes_and_spectral_norm():
    for size in (1, 8, 37):
        head = DiscriminatorHead(6, 5, width=8, in_size=size)
        out = head(torch.randn(2, 6, size, size), torch.randn(2, 5))
        assert out.shape[:2] == (2, 1) and 1 <= out.shape[-1] <= 10 and out.shape[-2] == out.shape[-1]
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
    # stem, 2 downsamplings, 3x3 block, logit conv; the same trunk + 1x1 conv for the reference
    assert len(convs) == 10
    assert all(parametrize.is_parametrized(m, "weight") for m in convs)
    assert all(type(m.parametrizations.weight[0]).__name__ == "_SpectralNorm" for m in convs)
    # the text map is the released cmapper: a plain linear layer
    assert isinstance(head.text_map, nn.Linear) and not parametrize.is_parametrized(head.text_map)


# ----------------------------------------------------------------------------- discriminator
def test_logit_maps_at_most_ten_and_concatenated(probe):
    d = _disc(probe, size=32)  # probe maps 32x32, 32x32, 16x16
    x = _images(size=32)
    maps = d.logit_maps(x, _text(), x)
    assert [tuple(m.shape) for m in maps] == [(2, 1, 8, 8), (2, 1, 8, 8), (2, 1, 8, 8)]
    assert d(x, _text(), x, torch.Generator().manual_seed(0)).shape == (2, 3 * 64)


def test_dinov2_discriminator_logits(dinov2):
    d = VFMDiscriminator(Dinov2Taps(dinov2, [0, 4], image_size=32), TEXT_DIM, image_size=64, width=8)
    x = _images(size=64)
    assert [tuple(m.shape) for m in d.logit_maps(x, _text(), x)] == [(2, 1, 8, 8)] * 2


def test_gradient_reaches_image_not_backbone(probe):
    d = _disc(probe)
    x = _images().requires_grad_(True)
    g_hinge_loss(d(x, _text(), _images(seed=3), torch.Generator().manual_seed(0))).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in probe.parameters())


def test_trainable_parameters_are_the_heads(probe):
    d = _disc(probe)
    ids = {id(p) for p in d.trainable_parameters()}
    expected = {id(p) for p in d.heads.parameters()}
    assert ids == expected
    assert ids == {id(p) for p in d.parameters() if p.requires_grad}
    d.train()
    assert d.heads.training and not d.taps.training


def test_one_step_moves_heads_only(probe):
    d = _disc(probe)
    backbone = {k: v.clone() for k, v in probe.state_dict().items()}
    heads = [p.detach().clone() for p in d.trainable_parameters()]
    opt = torch.optim.Adam(d.trainable_parameters(), lr=1e-2)
    real, fake, text = _images(seed=4), _images(seed=5), _text()
    gen = torch.Generator().manual_seed(0)
    loss = d_hinge_loss(d(real, text, real, gen), d(fake, text, real, gen))
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(heads, d.trainable_parameters(), strict=True))
    for k, v in probe.state_dict().items():
        assert torch.equal(v, backbone[k]), k


def test_projection_conditioning_changes_logits(probe):
    d = _disc(probe).eval()  # eval: no augmentation, fixed BN statistics
    x, ref = _images(seed=6), _images(seed=7)
    base = d(x, _text(seed=1), ref)
    assert not torch.allclose(base, d(x, _text(seed=2), ref))
    assert not torch.allclose(base, d(x, _text(seed=1), _images(seed=8)))
    assert not torch.allclose(base, d(x, _text(seed=1), None))
    torch.testing.assert_close(base, d(x, _text(seed=1), ref))  # eval is deterministic


def test_reference_maps_keep_space_and_carry_no_gradient(probe):
    d = _disc(probe)
    ref = _images().requires_grad_(True)
    feats = d.reference_maps(ref)
    assert [tuple(f.shape) for f in feats] == [(2, 4, 16, 16), (2, 4, 16, 16), (2, 8, 8, 8)]
    assert not any(f.requires_grad for f in feats)


def test_bad_text_embedding_shape(probe):
    with pytest.raises(ValueError, match="text_embedding"):
        _disc(probe)(_images(), torch.zeros(2, TEXT_DIM + 1))


# ----------------------------------------------------------------------------- DiffAugment
def test_diffaugment_deterministic_not_identity_differentiable():
    x = _images(b=4, size=16).requires_grad_(True)
    a = diffaugment(x, DIFFAUG_POLICIES, torch.Generator().manual_seed(0))
    b = diffaugment(x, DIFFAUG_POLICIES, torch.Generator().manual_seed(0))
    c = diffaugment(x, DIFFAUG_POLICIES, torch.Generator().manual_seed(1))
    assert a.shape == x.shape
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.allclose(a, x)
    a.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("op", DIFFAUG_POLICIES)
def test_each_diffaugment_op_changes_the_image(op):
    x = _images(b=8, size=16)
    assert not torch.equal(diffaugment(x, [op], torch.Generator().manual_seed(0)), x)


def test_translation_shifts_with_zero_padding():
    x = _images(b=16, size=16)
    y = diffaugment(x, ["translation"], torch.Generator().manual_seed(0))
    for xi, yi in zip(x, y, strict=True):  # each output is its input shifted by at most 2 pixels
        found = False
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                shifted = torch.zeros_like(xi)
                src = xi[:, max(0, -dy) : 16 - max(0, dy), max(0, -dx) : 16 - max(0, dx)]
                shifted[:, max(0, dy) : 16 - max(0, -dy), max(0, dx) : 16 - max(0, -dx)] = src
                found = found or torch.equal(shifted, yi)
        assert found


def test_cutout_erases_at_most_a_square_of_the_released_ratio():
    x = torch.ones(16, 3, 20, 20)
    y = diffaugment(x, ["cutout"], torch.Generator().manual_seed(0))
    erased = (y == 0).all(1).float().mean(dim=(1, 2))
    full = (0.2 * 20) ** 2 / 20**2  # a 4x4 square: cutout ratio 0.2 (released SenseFlow)
    assert (erased > 0).all() and (erased <= full).all() and (erased == full).any()


def test_diffaugment_empty_policy_and_unknown_op():
    x = _images()
    assert diffaugment(x, []) is x
    with pytest.raises(ValueError, match="unknown DiffAugment"):
        diffaugment(x, ["flip"])


def test_diffaug_names_match_config():
    assert set(get_args(GANConfig.model_fields["diffaug"].annotation.__args__[0])) == set(DIFFAUG_POLICIES)


# ----------------------------------------------------------------------------- builder
def test_build_discriminator_reads_gan_config(probe):
    cfg = GANConfig(backbone="embedded_probe", blocks=[1, 5], text_projection_dim=6, diffaug=["cutout"])
    d = build_discriminator(cfg, probe, TEXT_DIM, image_size=16, width=8)
    assert d.taps.blocks == [1, 5] and d.diffaug == ["cutout"]
    heads = [(h.text_map.in_features, h.cmap_dim, h.reference) for h in d.heads]
    assert heads == [(TEXT_DIM, 6, "per_location")] * 2
    pooled = build_discriminator(cfg.model_copy(update={"reference_condition": "pooled"}), probe, TEXT_DIM,
                                 image_size=16, width=8)  # fmt: skip
    assert [h.ref_map.in_features for h in pooled.heads] == [4, 8]


def test_build_taps_dinov2_and_mismatches(probe, dinov2):
    taps = build_taps(GANConfig(backbone="dinov2_tiny", blocks=[1, 3]), dinov2, image_size=32)
    assert isinstance(taps, Dinov2Taps) and taps.blocks == [0, 2, 4]
    with pytest.raises(UserError, match="gan.backbone"):
        build_taps(GANConfig(backbone="dinov2_vitl14"), probe, image_size=16)
    with pytest.raises(UserError, match="gan.blocks"):
        build_taps(GANConfig(backbone="dinov2_vitl14"), dinov2, image_size=32)  # block 23 of 4
