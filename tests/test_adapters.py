"""Backbone adapters of the real teachers (SDXL, SD 3.5, FLUX.1 dev) on tiny random pipelines.

Each pipeline is built in-process (tests/tiny_pipelines.py), saved with ``save_pretrained``
and loaded back through ``load_backbone`` as a real checkpoint would be.
"""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

from senseflow.backbones import conversions as C
from senseflow.backbones.base import Backbone, LatentCodec, PromptEncoder
from senseflow.backbones.flux import GUIDANCE_PREFIX, image_ids, pack_latents, unpack_latents
from senseflow.backbones.loading import backbone_from_pipeline, load_backbone, load_pipeline
from senseflow.backbones.shift import resolution_mu, scheduler_shift
from senseflow.config import PretrainedConfig
from senseflow.errors import MissingArtefactError, UserError
from senseflow.schedules import shift_sigma
from tests.tiny_pipelines import PIPELINES, RESOLUTION, T5_LENGTH, save_tiny_pipeline

FAMILIES = ("sdxl", "sd3", "flux")
PROMPTS = ["a red cat", "a photo of a blue dog"]


def config(folder, **overrides) -> PretrainedConfig:
    """The teacher.pretrained section of a profile pointing at ``folder``."""
    values = dict(
        model_id=str(folder),
        licence="test",
        dtype="float32",
        resolution=RESOLUTION,
        max_sequence_length=T5_LENGTH,
    )
    return PretrainedConfig(**(values | overrides))


@pytest.fixture(scope="session")
def folders(tmp_path_factory):
    """Each family's tiny pipeline, saved once as a diffusers folder."""
    root = tmp_path_factory.mktemp("teachers")
    return {family: save_tiny_pipeline(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="module")
def backbones(folders):
    """Each family's backbone, loaded from its folder in float32."""
    return {family: load_backbone(family, config(folders[family])) for family in FAMILIES}


def times(backbone, batch: int = 2) -> torch.Tensor:
    """Per-sample times inside (0, 1); for SDXL exactly on DDPM indices."""
    t = torch.tensor([0.3, 0.8, 0.55, 0.1][:batch])
    return backbone.index_to_t(backbone.timestep_index(t)) if backbone.prediction == "epsilon" else t


def noisy(backbone, batch: int = 2, seed: int = 0):
    """(x0, eps, t, x_t) in the backbone's latent space."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, *backbone.latent_shape(RESOLUTION))
    x0, eps = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    t = times(backbone, batch)
    return x0, eps, t, backbone.add_noise(x0, eps, t)


# ----------------------------------------------------------------------------- every family
@pytest.mark.parametrize("family", FAMILIES)
def test_loaded_backbone_implements_the_protocol(backbones, family):
    backbone = backbones[family]
    assert isinstance(backbone, Backbone)
    assert isinstance(backbone.text, PromptEncoder) and isinstance(backbone.codec, LatentCodec)
    assert not any(p.requires_grad for p in backbone.network.parameters())  # the teacher is frozen
    images = torch.rand(2, 3, RESOLUTION, RESOLUTION) * 2 - 1
    latents = backbone.codec.encode(images)
    assert latents.shape == (2, *backbone.latent_shape(RESOLUTION))
    decoded = backbone.codec.decode(latents)
    assert decoded.shape == images.shape and decoded.dtype == torch.float32
    uncond = backbone.text.encode([""])
    cond = backbone.text.encode(PROMPTS)
    assert len(uncond) == 1 and len(cond) == 2 and cond.hidden.dtype == torch.float32
    assert uncond.hidden.shape[1:] == cond.hidden.shape[1:]


@pytest.mark.parametrize("family", FAMILIES)
def test_add_noise_predict_x0_agree_with_the_conversions(backbones, family):
    backbone = backbones[family]
    x0, eps, t, x_t = noisy(backbone)
    if backbone.prediction == "flow":
        target = C.flow_velocity(x0, eps)
        assert torch.allclose(x_t, C.flow_add_noise(x0, eps, t))
    else:
        target = eps
        assert torch.allclose(
            x_t, C.eps_add_noise(x0, eps, backbone.alphas_cumprod[backbone.timestep_index(t)])
        )
    # the exact native target takes a noised sample back to its clean image
    assert torch.allclose(backbone.x0(x_t, target, t), x0, atol=1e-4)
    pred = backbone.predict(x_t, t, backbone.text.encode(PROMPTS))
    assert pred.shape == x_t.shape and pred.dtype == torch.float32 and torch.isfinite(pred).all()
    # x0 of the network's prediction is the conversion formula of the family
    if backbone.prediction == "flow":
        expected = x_t - t[:, None, None, None] * pred
    else:
        ab = backbone.alphas_cumprod[backbone.timestep_index(t)].float()[:, None, None, None]
        expected = (x_t - (1 - ab).sqrt() * pred) / ab.sqrt()
    assert torch.allclose(backbone.x0(x_t, pred, t), expected, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_reaches_a_trainable_copy_through_predict_and_decode(backbones, family):
    teacher = backbones[family]
    copy = teacher.trainable_copy()
    student = teacher.with_network(copy)
    assert student.network is copy and student.text is teacher.text and student.codec is teacher.codec
    _, _, t, x_t = noisy(teacher)
    x0 = student.x0(x_t, student.predict(x_t, t, teacher.text.encode(PROMPTS)), t)
    images = student.codec.decode(x0)  # the GAN's path: decoded generator images, with gradient
    images.square().mean().backward()
    grads = [p.grad for p in copy.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in teacher.network.parameters())
    assert all(p.grad is None for p in teacher.codec.vae.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_half_precision_teacher_returns_float32_with_a_float32_vae(folders, family):
    backbone = load_backbone(family, config(folders[family], dtype="bfloat16"))
    assert backbone.dtype == torch.bfloat16
    assert next(backbone.codec.vae.parameters()).dtype == torch.float32
    _, _, t, x_t = noisy(backbone)
    pred = backbone.predict(x_t, t, backbone.text.encode(PROMPTS))
    assert pred.dtype == torch.float32 and torch.isfinite(pred).all()


@pytest.mark.parametrize("family", ["sdxl", "sd3"])
def test_batched_cfg_equals_two_separate_calls(backbones, family):
    backbone = backbones[family]
    _, _, t, x_t = noisy(backbone)
    cond, uncond = backbone.text.encode(PROMPTS), backbone.text.encode([""]).index([0, 0])
    guided = backbone.guided_predict(x_t, t, cond, uncond, 4.0)
    pred_c, pred_u = backbone.predict(x_t, t, cond), backbone.predict(x_t, t, uncond)
    assert torch.allclose(guided, pred_u + 4.0 * (pred_c - pred_u), atol=1e-5)
    assert torch.allclose(backbone.guided_predict(x_t, t, cond, uncond, 1.0), pred_c)


@pytest.mark.parametrize("family", FAMILIES)
def test_network_inputs_match_the_pipelines_own_call(folders, family):
    """The adapter feeds the denoiser what the diffusers pipeline feeds it (first step, CFG 3.5)."""
    cfg = config(folders[family])
    pipeline = load_pipeline(family, cfg)
    backbone = backbone_from_pipeline(family, pipeline, cfg)
    calls = []
    hook = backbone.network.register_forward_pre_hook(
        lambda _, args, kwargs: calls.append(kwargs), with_kwargs=True
    )
    extra = {} if family == "sdxl" else {"max_sequence_length": T5_LENGTH}
    try:
        pipeline(
            PROMPTS[0], num_inference_steps=1, guidance_scale=3.5, height=RESOLUTION, width=RESOLUTION,
            output_type="latent", **extra,
        )  # fmt: skip
        x_t = torch.randn(1, *backbone.latent_shape(RESOLUTION))
        uncond = None if backbone.guidance == "embedded" else backbone.text.encode([""])
        backbone.guided_predict(x_t, torch.ones(1), backbone.text.encode(PROMPTS[:1]), uncond, 3.5)
    finally:
        hook.remove()
    theirs, ours = calls[0], calls[-1]
    keys = {
        "sdxl": ["encoder_hidden_states", "added_cond_kwargs"],
        "sd3": ["encoder_hidden_states", "pooled_projections", "timestep"],
        "flux": ["encoder_hidden_states", "pooled_projections", "timestep", "guidance", "txt_ids", "img_ids"],
    }[family]
    for key in keys:
        mine, pipes = ours[key], theirs[key]
        if family != "flux":  # two-pass CFG: the pipeline stacks [uncond; cond], the adapter [cond; uncond]
            swap = lambda v: torch.cat(v.chunk(2)[::-1])
            mine = {k: swap(v) for k, v in mine.items()} if isinstance(mine, dict) else swap(mine)
        if isinstance(pipes, dict):
            for k in pipes:
                assert torch.allclose(mine[k].float(), pipes[k].float(), atol=1e-6), (key, k)
        else:
            assert torch.allclose(mine.float(), pipes.float(), atol=1e-6), key


def test_in_memory_pipeline_gives_the_backbone_of_its_saved_folder(backbones):
    memory = load_backbone("sd3", config("unused"), pipeline=PIPELINES["sd3"]())
    _, _, t, x_t = noisy(memory)
    args = (x_t, t, memory.text.encode(PROMPTS))
    assert torch.allclose(memory.predict(*args), backbones["sd3"].predict(*args), atol=1e-6)


# ----------------------------------------------------------------------------- SDXL
def test_sdxl_anchors_map_to_t_and_back_exactly(backbones):
    backbone = backbones["sdxl"]
    anchors = torch.tensor([999, 749, 499, 249])
    t = backbone.index_to_t(anchors)
    assert t.dtype == torch.float32 and t[0] == 1.0
    assert torch.equal(backbone.timestep_index(t), anchors)
    every = torch.arange(1000)
    assert torch.equal(backbone.timestep_index(backbone.index_to_t(every)), every)
    with pytest.raises(ValueError):
        backbone.timestep_index(torch.tensor([1.01]))


def test_sdxl_schedule_is_the_ddpm_scaled_linear_one(backbones):
    acp = backbones["sdxl"].alphas_cumprod
    reference = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    assert acp.dtype == torch.float64 and acp.shape == (1000,)
    assert torch.allclose(acp, reference.alphas_cumprod.double())
    assert acp[0].item() == pytest.approx(1 - 0.00085, rel=1e-6)
    assert acp[-1].item() == pytest.approx(0.004660, rel=1e-3)  # sqrt = 0.0683 at t = 999


def test_sdxl_unet_gets_integer_timesteps_and_size_ids(backbones):
    backbone = backbones["sdxl"]
    seen = {}
    hook = backbone.unet.register_forward_pre_hook(
        lambda _, args, kwargs: seen.update(timestep=args[1], ids=kwargs["added_cond_kwargs"]["time_ids"]),
        with_kwargs=True,
    )
    try:
        _, _, t, x_t = noisy(backbone)
        backbone.predict(x_t, t, backbone.text.encode(PROMPTS))
    finally:
        hook.remove()
    assert seen["timestep"].dtype == torch.long
    assert torch.equal(seen["timestep"], backbone.timestep_index(t))
    size = RESOLUTION  # original size, crop (0, 0), target size, in pixels
    assert seen["ids"].tolist() == [[size, size, 0, 0, size, size]] * 2


def test_sdxl_text_concatenates_both_clips_and_zeros_the_empty_prompt(backbones):
    embeds = backbones["sdxl"].text.encode([PROMPTS[0], ""])
    assert embeds.hidden.shape == (2, 16, 16 + 24) and embeds.pooled.shape == (2, 20)
    assert embeds.hidden[0].abs().sum() > 0 and embeds.pooled[0].abs().sum() > 0
    assert not embeds.hidden[1].any() and not embeds.pooled[1].any()


def test_sdxl_refuses_a_flow_shift(folders):
    with pytest.raises(UserError, match="shift"):
        load_backbone("sdxl", config(folders["sdxl"], shift=3.0))


# ----------------------------------------------------------------------------- SD 3.5
def test_sd3_text_stacks_padded_clip_tokens_before_t5_tokens(backbones):
    embeds = backbones["sd3"].text.encode(["", PROMPTS[0]])
    clip_tokens, clip_width, t5_width = 16, 16 + 24, 48
    assert embeds.hidden.shape == (2, clip_tokens + T5_LENGTH, t5_width)
    assert embeds.pooled.shape == (2, 12 + 20)  # both CLIP projections
    assert not embeds.hidden[:, :clip_tokens, clip_width:].any()  # zero-padded to T5's width
    assert embeds.hidden[:, clip_tokens:, clip_width:].abs().sum() > 0
    assert embeds.hidden[0].abs().sum() > 0  # "" is encoded, not zeroed


def test_sd3_shift_from_the_scheduler_or_the_config(backbones, folders):
    assert backbones["sd3"].shift == 3.0
    assert load_backbone("sd3", config(folders["sd3"], shift=2.0)).shift == 2.0


# ----------------------------------------------------------------------------- FLUX
def test_flux_pack_unpack_is_the_identity():
    x = torch.randn(2, 4, 8, 6)
    tokens = pack_latents(x)
    assert tokens.shape == (2, 4 * 3, 16)
    assert torch.equal(unpack_latents(tokens, 8, 6), x)
    ids = image_ids(8, 6, "cpu", torch.float32)
    assert ids.shape == (12, 3) and ids[:, 1].max() == 3 and ids[:, 2].max() == 2
    with pytest.raises(ValueError, match="even"):
        pack_latents(torch.randn(1, 4, 7, 6))


def test_flux_guidance_goes_through_the_embedding_in_one_call(backbones):
    backbone = backbones["flux"]
    _, _, t, x_t = noisy(backbone)
    cond, uncond = backbone.text.encode(PROMPTS), backbone.text.encode([""]).index([0, 0])
    calls = []
    hook = backbone.transformer.register_forward_pre_hook(
        lambda _, args, kwargs: calls.append(kwargs), with_kwargs=True
    )
    try:
        guided = backbone.guided_predict(x_t, t, cond, uncond, 3.5)
    finally:
        hook.remove()
    assert len(calls) == 1  # no second (unconditional) pass
    assert torch.equal(calls[0]["timestep"], t)  # FluxPipeline passes timestep / 1000 = sigma
    assert torch.equal(calls[0]["guidance"], torch.full((2,), 3.5))
    assert torch.equal(guided, backbone.guided_predict(x_t, t, cond, None, 3.5))  # uncond ignored
    per_sample = backbone.guided_predict(x_t, t, cond, None, torch.tensor([1.0, 3.5]))
    assert torch.allclose(per_sample[1], guided[1], atol=1e-5)
    assert torch.allclose(per_sample[0], backbone.predict(x_t, t, cond)[0], atol=1e-5)
    assert not torch.allclose(guided, backbone.predict(x_t, t, cond))


def test_flux_trainable_copy_drops_exactly_the_guidance_embedder(backbones, tmp_path):
    teacher = backbones["flux"]
    copy = teacher.trainable_copy()
    assert isinstance(copy, FluxTransformer2DModel) and not copy.config.guidance_embeds
    assert teacher.transformer.config.guidance_embeds
    before, after = teacher.transformer.state_dict(), copy.state_dict()
    dropped = set(before) - set(after)
    assert dropped and all(k.startswith(GUIDANCE_PREFIX) for k in dropped) and set(after) <= set(before)
    for key, value in after.items():
        assert torch.equal(value, before[key]) and value.data_ptr() != before[key].data_ptr()
    student = teacher.with_network(copy)
    _, _, t, x_t = noisy(teacher)
    cond = teacher.text.encode(PROMPTS)
    assert student.predict(x_t, t, cond).shape == x_t.shape
    assert torch.equal(student.guided_predict(x_t, t, cond, None, 1.0), student.predict(x_t, t, cond))
    with pytest.raises(ValueError, match="guidance"):
        student.guided_predict(x_t, t, cond, None, 3.5)
    copy.save_pretrained(tmp_path)  # the exported student reloads as an unguided FLUX
    reloaded = FluxTransformer2DModel.from_pretrained(tmp_path)
    assert not reloaded.config.guidance_embeds and set(reloaded.state_dict()) == set(after)


def test_flux_resolution_shift_is_the_pipelines():
    flux_dev = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True).config  # shift defaults as FLUX dev
    mu = resolution_mu(flux_dev, 4096)  # 1024 px: (1024 / 8 / 2) ** 2 tokens
    assert mu == pytest.approx(1.15)
    shift = scheduler_shift(flux_dev, 4096)
    assert shift == pytest.approx(math.exp(1.15))
    # FluxPipeline's default 4-step schedule at 1024 px is method.md's FLUX anchors
    uniform = torch.tensor([1.0, 0.75, 0.5, 0.25])
    assert shift_sigma(uniform, shift).tolist() == pytest.approx([1.0, 0.904, 0.759, 0.512], abs=1e-3)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(flux_dev)
    scheduler.set_timesteps(sigmas=uniform.tolist(), mu=mu)
    assert torch.allclose(scheduler.sigmas[:4], shift_sigma(uniform, shift), atol=1e-6)


def test_flux_backbone_shift_follows_its_resolution(backbones):
    backbone = backbones["flux"]
    assert backbone.shift == pytest.approx(backbone.shift_at(RESOLUTION))
    tokens = (RESOLUTION // backbone.codec.scale_factor // 2) ** 2
    assert backbone.mu(RESOLUTION) == pytest.approx(resolution_mu(backbone.scheduler_config, tokens))
    assert backbone.shift_at(4 * RESOLUTION) > backbone.shift  # more tokens, more shift


# ----------------------------------------------------------------------------- loading
def test_a_missing_component_is_named_with_its_path_and_the_fix(folders, tmp_path):
    folder = tmp_path / "sdxl"
    shutil.copytree(folders["sdxl"], folder)
    shutil.rmtree(folder / "vae")
    with pytest.raises(MissingArtefactError, match="'vae'") as err:
        load_backbone("sdxl", config(folder))
    assert str(folder / "vae") in str(err.value) and "model_id" in str(err.value)
    shutil.copytree(folders["sdxl"] / "vae", folder / "vae")
    for weights in (folder / "unet").glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(MissingArtefactError, match="'unet'.*weights"):
        load_backbone("sdxl", config(folder))


def test_an_uncached_repository_is_never_downloaded(tmp_path):
    with pytest.raises(MissingArtefactError, match="hf download nobody/no-such-teacher --revision main"):
        load_backbone("flux", config("nobody/no-such-teacher"))
    with pytest.raises(MissingArtefactError, match="does not exist"):
        load_backbone("flux", config(tmp_path / "absent"))


def test_a_folder_of_another_family_is_refused(folders):
    with pytest.raises(UserError, match="StableDiffusionXLPipeline"):
        load_backbone("flux", config(folders["sdxl"]))
    with pytest.raises(UserError, match="known"):
        load_backbone("embedded", config(folders["sdxl"]))
