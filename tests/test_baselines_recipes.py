"""Every recipe family of the baseline registry, run on tiny random pipelines saved to disk.

The tiny pipelines and LoRA / UNet files are laid out in a weights directory under the real
repository ids (``<weights dir>/<repo>/<file>``), and the registry's own rows are generated
through :func:`senseflow.generate.generate` exactly as with real weights; only the
resolution and T5 length are overridden (32 px, 12 tokens). Each test asserts the schedule
the scheduler actually ran against the recipe's.
"""

import functools
import json

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from senseflow.baselines import get_recipe, load_registry
from senseflow.errors import UserError
from senseflow.generate import generate

from .tiny_pipelines import RESOLUTION, T5_LENGTH, flux_pipeline, save_tiny_pipeline, seeded

PROMPTS = ["a red cat", "a blue dog on the cat", "the photo of a dog"]
TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
SDXL = "stabilityai/stable-diffusion-xl-base-1.0"


@pytest.fixture(scope="module")
def registry():
    return load_registry()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A weights directory holding the tiny bases under their real repository ids."""
    root = tmp_path_factory.mktemp("weights")
    save_tiny_pipeline("sdxl", root / SDXL)
    save_tiny_pipeline("sd3", root / "stabilityai/stable-diffusion-3-medium-diffusers")
    save_tiny_pipeline("flux", root / "black-forest-labs/FLUX.1-dev")
    return root


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "p.txt"
    path.write_text("".join(p + "\n" for p in PROMPTS))
    return path


def tiny_lora(network: nn.Module, prefix: str, path, *, rank: int = 2, seed: int = 0) -> dict:
    """A LoRA on every attention projection of ``network``, in the peft / diffusers key format."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in network.named_modules():
        if isinstance(module, nn.Linear) and name.endswith(TARGETS):
            state[f"{prefix}.{name}.lora_A.weight"] = 0.5 * torch.randn(rank, module.in_features, generator=g)
            state[f"{prefix}.{name}.lora_B.weight"] = 0.5 * torch.randn(
                module.out_features, rank, generator=g
            )
    assert state, "no attention projection found"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return state


def assert_fused(pipe_net: nn.Module, base_net: nn.Module, state: dict, prefix: str, scale: float) -> None:
    """Every targeted weight equals base + scale * B @ A (alpha = rank); all others are unchanged."""
    base = dict(base_net.named_modules())
    fused = dict(pipe_net.named_modules())
    lora_modules = {k[len(prefix) + 1 : -len(".lora_A.weight")] for k in state if k.endswith("lora_A.weight")}
    for name in lora_modules:
        a, b = state[f"{prefix}.{name}.lora_A.weight"], state[f"{prefix}.{name}.lora_B.weight"]
        expected = base[name].weight + scale * b @ a
        torch.testing.assert_close(fused[name].weight, expected, rtol=1e-5, atol=1e-5)
    for name, p in base_net.named_parameters():
        if name.rsplit(".", 1)[0] not in lora_modules:
            assert torch.equal(dict(pipe_net.named_parameters())[name], p), name


def run(name, weights, prompts, out, registry, **kw):
    """Generate candidate ``name`` of the registry on the tiny weights; return (summary, candidate)."""
    captured = {}
    recipe = get_recipe(name, registry)
    overrides = {"resolution": RESOLUTION}
    if recipe.max_sequence_length is not None:
        overrides["max_sequence_length"] = T5_LENGTH
    import senseflow.candidates as cands

    real = cands.load_candidate

    def spy(*a, **k):
        captured["cand"] = real(*a, **k)
        return captured["cand"]

    cands.load_candidate = spy
    try:
        kw = {"batch_size": 2, **kw}
        summary = generate(
            name,
            str(prompts),
            out,
            profile="smoke",
            weights_dir=weights,
            device="cpu",
            progress=False,
            registry=registry,
            recipe_overrides=overrides,
            **kw,
        )
    finally:
        cands.load_candidate = real
    return summary, captured["cand"]


def _check_folder(out, n=len(PROMPTS)):
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == n and all((out / r["file"]).is_file() for r in manifest)
    speed = json.loads((out / "speed.json").read_text())
    assert speed["seconds_per_image"] > 0 and speed["resolution"] == RESOLUTION
    return manifest, speed


# ----------------------------------------------------------------------------- SDXL
def test_sdxl_lcm_explicit_timesteps_with_replaced_unet(weights, prompts, tmp_path, registry):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(weights / SDXL / "unet")
    with seeded(5):
        state = {k: v + 0.01 * torch.randn_like(v) for k, v in unet.state_dict().items()}
    for f in ("dmd2_sdxl_4step_unet_fp16.bin", "dmd2_sdxl_1step_unet_fp16.bin"):
        (weights / "tianweiy/DMD2").mkdir(parents=True, exist_ok=True)
        torch.save(state, weights / "tianweiy/DMD2" / f)
    summary, cand = run("dmd2_sdxl_4", weights, prompts, tmp_path / "dmd2", registry)
    assert cand.last_schedule["scheduler"] == "LCMScheduler"
    assert cand.last_schedule["timesteps"] == [999, 749, 499, 249]
    for k, v in cand.pipe.unet.state_dict().items():
        assert torch.equal(v, state[k]), f"UNet weight {k} is not the recipe's"
    manifest, speed = _check_folder(tmp_path / "dmd2")
    assert manifest[0]["nfe"] == 4 and speed["nfe"] == 4 and manifest[0]["guidance"] == 0.0  # no CFG pass
    _, one = run("dmd2_sdxl_1", weights, prompts, tmp_path / "dmd2_1", registry)
    assert one.last_schedule["timesteps"] == [399]


def test_sdxl_ddim_trailing_with_fused_lora(weights, prompts, tmp_path, registry):
    from diffusers import UNet2DConditionModel

    base = UNet2DConditionModel.from_pretrained(weights / SDXL / "unet")
    state = tiny_lora(base, "unet", weights / "ByteDance/Hyper-SD/Hyper-SDXL-4steps-lora.safetensors")
    summary, cand = run("hyper_sdxl_4", weights, prompts, tmp_path / "hyper", registry)
    assert cand.last_schedule["scheduler"] == "DDIMScheduler"
    assert cand.pipe.scheduler.config.timestep_spacing == "trailing"
    assert cand.last_schedule["timesteps"] == [999, 749, 499, 249]
    assert_fused(cand.pipe.unet, base, state, "unet", 1.0)
    assert not any("lora" in n for n, _ in cand.pipe.unet.named_modules()), "adapter layers left after fusing"
    manifest, _ = _check_folder(tmp_path / "hyper")
    assert manifest[0]["nfe"] == 4
    # same candidate, prompts and seed: byte-identical PNGs (a fresh load of everything)
    run("hyper_sdxl_4", weights, prompts, tmp_path / "again", registry)
    for rec in manifest:
        f = rec["file"]
        assert (tmp_path / "again" / f).read_bytes() == (tmp_path / "hyper" / f).read_bytes()
    # another batch split: each prompt keeps its own noise; only float rounding of batched kernels differs
    run("hyper_sdxl_4", weights, prompts, tmp_path / "split", registry, batch_size=3)
    for rec in manifest:
        a, b = (np.asarray(Image.open(tmp_path / d / rec["file"])).astype(int) for d in ("hyper", "split"))
        assert np.abs(a - b).max() <= 2


def test_sdxl_tcd_runs_with_the_recipe_eta(weights, prompts, tmp_path, registry, monkeypatch):
    from diffusers import TCDScheduler, UNet2DConditionModel

    base = UNet2DConditionModel.from_pretrained(weights / SDXL / "unet")
    tiny_lora(base, "unet", weights / "ByteDance/Hyper-SD/Hyper-SDXL-1step-lora.safetensors", seed=1)
    etas = []
    real_step = TCDScheduler.step

    @functools.wraps(real_step)  # the pipeline passes eta only to a step whose signature has it
    def step(self, *a, **k):
        etas.append(k.get("eta"))
        return real_step(self, *a, **k)

    monkeypatch.setattr(TCDScheduler, "step", step)
    _, cand = run("hyper_sdxl_unified_1", weights, prompts, tmp_path / "tcd", registry)
    assert cand.last_schedule["scheduler"] == "TCDScheduler"
    assert cand.last_schedule["timesteps"] == [999]
    assert etas and all(e == 1.0 for e in etas)  # eta (TCD's gamma) reached every step
    _check_folder(tmp_path / "tcd")


def test_sdxl_lightning_euler_trailing_unet_safetensors(weights, prompts, tmp_path, registry):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(weights / SDXL / "unet")
    with seeded(6):
        state = {k: v + 0.01 * torch.randn_like(v) for k, v in unet.state_dict().items()}
    (weights / "ByteDance/SDXL-Lightning").mkdir(parents=True, exist_ok=True)
    save_file(state, str(weights / "ByteDance/SDXL-Lightning/sdxl_lightning_4step_unet.safetensors"))
    _, cand = run("sdxl_lightning_4", weights, prompts, tmp_path / "lightning", registry)
    assert cand.last_schedule["scheduler"] == "EulerDiscreteScheduler"
    assert cand.pipe.scheduler.config.timestep_spacing == "trailing"
    assert cand.last_schedule["timesteps"] == [999.0, 749.0, 499.0, 249.0]
    torch.testing.assert_close(cand.pipe.unet.conv_in.weight, state["conv_in.weight"])
    _check_folder(tmp_path / "lightning")


def test_sdxl_teacher_counts_two_evaluations_per_step_under_cfg(weights, prompts, tmp_path, registry):
    recipe = get_recipe("sdxl_teacher_25", registry)
    assert recipe.guidance > 1
    _, cand = run("sdxl_teacher_25", weights, prompts, tmp_path / "teacher", registry)
    manifest, speed = _check_folder(tmp_path / "teacher")
    assert manifest[0]["nfe"] == 50 and speed["nfe"] == 50 and len(cand.last_schedule["timesteps"]) == 25


# ----------------------------------------------------------------------------- SD3
def test_sd3_lora_fused_at_one_eighth(weights, prompts, tmp_path, registry):
    from diffusers import SD3Transformer2DModel

    base_dir = weights / "stabilityai/stable-diffusion-3-medium-diffusers"
    base = SD3Transformer2DModel.from_pretrained(base_dir / "transformer")
    state = tiny_lora(
        base, "transformer", weights / "ByteDance/Hyper-SD/Hyper-SD3-4steps-CFG-lora.safetensors"
    )
    recipe = get_recipe("hyper_sd3_4", registry)
    assert recipe.lora.scale == 0.125
    _, cand = run("hyper_sd3_4", weights, prompts, tmp_path / "sd3", registry)
    assert_fused(cand.pipe.transformer, base, state, "transformer", 0.125)
    # the recipe keeps the base's scheduler: FlowMatchEuler, shift 3, 4 steps from sigma 1
    fresh = FlowMatchEulerDiscreteScheduler.from_pretrained(base_dir / "scheduler")
    assert fresh.config.shift == 3.0
    fresh.set_timesteps(4)
    assert cand.last_schedule["timesteps"] == fresh.timesteps.tolist()
    assert cand.last_schedule["sigmas"][0] == 1.0 and len(cand.last_schedule["timesteps"]) == 4
    manifest, _ = _check_folder(tmp_path / "sd3")
    assert manifest[0]["nfe"] == 8  # CFG 3.0: conditional and unconditional pass per step


# ----------------------------------------------------------------------------- FLUX
def _flux_mu(scheduler, seq_len: int) -> float:
    c = scheduler.config
    m = (c.max_shift - c.base_shift) / (c.max_image_seq_len - c.base_image_seq_len)
    return seq_len * m + c.base_shift - m * c.base_image_seq_len


def test_flux_lora_with_dynamic_shift_sigmas(weights, prompts, tmp_path, registry):
    base_dir = weights / "black-forest-labs/FLUX.1-dev"
    base = FluxTransformer2DModel.from_pretrained(base_dir / "transformer")
    state = tiny_lora(
        base, "transformer", weights / "ByteDance/Hyper-SD/Hyper-FLUX.1-dev-8steps-lora.safetensors"
    )
    _, cand = run("hyper_flux_8", weights, prompts, tmp_path / "flux", registry)
    assert_fused(cand.pipe.transformer, base, state, "transformer", 0.125)
    # FluxPipeline's schedule: linspace(1, 1/8, 8) shifted by mu of the image's token count
    seq = (RESOLUTION // 2 // 2) ** 2  # VAE /2, then 2x2 packing
    mu = _flux_mu(cand.pipe.scheduler, seq)
    s = np.linspace(1.0, 1 / 8, 8)
    expected = np.exp(mu) / (np.exp(mu) + (1 / s - 1))
    np.testing.assert_allclose(cand.last_schedule["sigmas"][:-1], expected, rtol=1e-5)
    manifest, _ = _check_folder(tmp_path / "flux")
    assert manifest[0]["nfe"] == 8  # guidance is embedded: one pass per step


def test_flux_schnell_style_runs_without_guidance(weights, prompts, tmp_path, registry):
    pipe = flux_pipeline(seed=3)
    cfg = dict(pipe.transformer.config)
    cfg["guidance_embeds"] = False
    with seeded(7):
        pipe.transformer = FluxTransformer2DModel.from_config(cfg).eval()
    # schnell's published scheduler: shift 1, no resolution-dependent shift
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False
    )
    pipe.save_pretrained(weights / "black-forest-labs/FLUX.1-schnell")
    seen = []
    _, cand = None, None
    import senseflow.candidates as cands

    real = cands.PipelineCandidate.__init__

    def init(self, pipe, recipe, device):
        real(self, pipe, recipe, device)
        pipe.transformer.register_forward_pre_hook(
            lambda m, a, k: seen.append(k.get("guidance")), with_kwargs=True
        )

    cands.PipelineCandidate.__init__ = init
    try:
        _, cand = run("flux_schnell_4", weights, prompts, tmp_path / "schnell", registry)
    finally:
        cands.PipelineCandidate.__init__ = real
    assert seen and all(g is None for g in seen), (
        "a guidance value reached a network without guidance embedding"
    )
    np.testing.assert_allclose(cand.last_schedule["sigmas"][:-1], np.linspace(1.0, 0.25, 4), rtol=1e-6)
    manifest, _ = _check_folder(tmp_path / "schnell")
    assert manifest[0]["nfe"] == 4


def test_authors_senseflow_flux_replaced_transformer_at_its_anchors(weights, prompts, tmp_path, registry):
    base_dir = weights / "black-forest-labs/FLUX.1-dev"
    net = FluxTransformer2DModel.from_pretrained(base_dir / "transformer")
    with torch.no_grad():
        net.proj_out.weight.add_(0.01)
    net.save_pretrained(weights / "domiso/SenseFlow/SenseFlow-FLUX")
    recipe = get_recipe("senseflow_flux_4", registry)
    for name in ("senseflow_flux_4", "senseflow_flux_euler_4"):
        _, cand = run(name, weights, prompts, tmp_path / name, registry)
        assert cand.last_schedule["sigmas"] == recipe.sigmas  # the anchors, unshifted
        torch.testing.assert_close(cand.student.backbone.network.proj_out.weight, net.proj_out.weight)
        manifest, _ = _check_folder(tmp_path / name)
        assert manifest[0]["nfe"] == 4 and manifest[0]["sampler"] == get_recipe(name, registry).sampler
    a = (tmp_path / "senseflow_flux_4" / "line-00001.png").read_bytes()
    assert a != (tmp_path / "senseflow_flux_euler_4" / "line-00001.png").read_bytes()  # x0 re-noise differs


# ----------------------------------------------------------------------------- bad input
def test_lora_for_another_model_is_refused_before_anything_is_written(weights, prompts, tmp_path, registry):
    from diffusers import SD3Transformer2DModel

    other = SD3Transformer2DModel.from_pretrained(
        weights / "stabilityai/stable-diffusion-3-medium-diffusers/transformer"
    )
    path = weights / "ByteDance/Hyper-SD/Hyper-SDXL-2steps-lora.safetensors"
    tiny_lora(other, "unet", path)  # SD3 module names under the UNet prefix
    with pytest.raises(UserError, match="has no layer .*made for another model"):
        run("hyper_sdxl_2", weights, prompts, tmp_path / "bad", registry)
    tiny_lora(other, "transformer", path)  # a component SDXL does not have
    with pytest.raises(UserError, match="not a LoRA weight of a component of StableDiffusionXLPipeline"):
        run("hyper_sdxl_2", weights, prompts, tmp_path / "bad", registry)
    assert not (tmp_path / "bad" / "manifest.jsonl").exists()


def test_missing_weights_name_the_file_and_the_download(prompts, tmp_path, registry):
    from senseflow.errors import MissingArtefactError

    with pytest.raises(
        MissingArtefactError, match=r"LoRA is missing.*hf download ByteDance/Hyper-SD Hyper-SDXL-4steps-lora"
    ):
        empty = tmp_path / "empty"
        (empty / SDXL).mkdir(parents=True)
        save_tiny_pipeline("sdxl", empty / SDXL)
        run("hyper_sdxl_4", empty, prompts, tmp_path / "o", registry)
    with pytest.raises(
        MissingArtefactError, match="base model is missing.*senseflow weights fetch --artefact sdxl_base"
    ):
        run("sdxl_teacher_25", tmp_path / "nothing", prompts, tmp_path / "o", registry)


def test_registry_rejects_unknown_classes_and_bad_schedules(tmp_path):
    from senseflow.baselines import RegistryError

    good = (load_registry.__globals__["REGISTRY"]).read_text()
    cases = [
        ("class: LCMScheduler", "class: LCMSchedular", "scheduler class 'LCMSchedular' does not exist"),
        ("pipeline: FluxPipeline", "pipeline: FluxPipelin", "pipeline class 'FluxPipelin' does not exist"),
        (
            "kwargs: {timestep_spacing: trailing}",
            "kwargs: {spacing: trailing}",
            "takes no argument 'spacing'",
        ),
        ("timesteps: [399]", "timesteps: [399, 199]", "steps is 1 but the explicit schedule has 2"),
        (
            "scheduler: {class: TCDScheduler, kwargs: {}}",
            "scheduler: {class: EulerDiscreteScheduler, kwargs: {}}",
            "EulerDiscreteScheduler.step takes no eta",
        ),
        (
            "class: LCMScheduler, kwargs: {}}\n    steps: 4\n    timesteps",
            "class: DDIMScheduler, kwargs: {}}\n    steps: 4\n    timesteps",
            "DDIMScheduler cannot run explicit timesteps",
        ),
    ]
    for old, new, message in cases:
        assert old in good, old
        bad = tmp_path / "b.yaml"
        bad.write_text(good.replace(old, new, 1))
        with pytest.raises(RegistryError, match=message):
            load_registry(bad)
    with pytest.raises(UserError, match="unknown candidate 'nope'; known: teacher, sdxl_teacher_40"):
        get_recipe("nope")
    from senseflow.candidates import load_candidate

    with pytest.raises(UserError, match="'hyper_sdxl_4' samples at 4 steps \\(its recipe\\), not 2"):
        load_candidate("hyper_sdxl_4", steps=2, weights_dir=tmp_path)


def test_registry_covers_the_papers_rows(registry):
    import csv

    from tests.conftest import ROOT

    table = ROOT / "experiments/paper/coco5k_4step.csv"
    if not table.is_file():
        pytest.skip(f"{table} is not in this checkout (the paper's reported numbers)")
    rows = {r["method"] for r in csv.DictReader(open(table))}
    covered = {r.paper_row for r in registry.values() if r.paper_row}
    assert covered <= rows, covered - rows
    # rows with public weights (PCM, Flash, FLUX-Turbo-Alpha and the SDXL / SD3.5 SenseFlow are not
    # in the list; SenseFlow-SD3.5 comes from our own distillation)
    for row in (
        "SDXL (teacher)",
        "LCM-SDXL",
        "SDXL-Lightning",
        "Hyper-SDXL",
        "DMD2-SDXL",
        "SD 3.5 Large (teacher)",
        "SD 3.5 Large Turbo",
        "FLUX.1 dev (teacher)",
        "FLUX.1 dev 25 steps",
        "FLUX.1-schnell",
        "Hyper-FLUX",
        "SenseFlow-FLUX",
        "SenseFlow-FLUX (Euler)",
    ):
        assert row in covered, row
