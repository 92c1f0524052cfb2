import resource

import pytest
from typer.testing import CliRunner

from senseflow.cli import app
from senseflow.config import load_profile
from senseflow.discriminator.head import DiscriminatorHead
from senseflow.errors import UserError
from senseflow.planner import (
    ActivationSegment,
    NetworkCount,
    PlanReport,
    activation_bytes,
    architectures_dir,
    build_on_meta,
    count_network,
    denoiser_segments,
    load_architecture_config,
    memory_rows,
    plan_profile,
    profile_networks,
)

from .conftest import ROOT

runner = CliRunner()
PROFILES = ROOT / "experiments"
REAL_PROFILES = ["flux_dev", "sd35_large", "sd35_medium", "sdxl"]


def _component(profile: str, folder: str) -> NetworkCount:
    model = build_on_meta(load_architecture_config(architectures_dir(profile, PROFILES) / folder))
    return count_network(folder, model, trainable=False)


# Public figures. SD 3.5's checkpoints also store the positional table (a buffer in diffusers):
# 2.24 B parameters + 0.23 B table are the published "2.5 B" of SD 3.5 Medium.
@pytest.mark.parametrize(
    "profile, folder, public",
    [
        ("flux_dev", "transformer", 11.9e9),
        ("sd35_large", "transformer", 8.1e9),
        ("sd35_medium", "transformer", 2.5e9),
        ("sdxl", "unet", 2.57e9),
        ("flux_dev", "text_encoder_2", 4.76e9),  # T5-XXL encoder
        ("sdxl", "text_encoder", 123e6),  # CLIP-L text
        ("sdxl", "text_encoder_2", 695e6),  # OpenCLIP bigG text (with projection)
        ("flux_dev", "dinov2_vitl14", 304e6),
    ],
)
def test_parameter_counts_match_public_figures(profile, folder, public):
    count = _component(profile, folder)
    assert abs(count.stored - public) / public < 0.03, (profile, folder, count)


@pytest.mark.parametrize(
    "profile, encoders",
    [
        ("sdxl", ["CLIPTextModel", "CLIPTextModelWithProjection"]),
        ("sd35_large", ["CLIPTextModelWithProjection", "CLIPTextModelWithProjection", "T5EncoderModel"]),
        ("sd35_medium", ["CLIPTextModelWithProjection", "CLIPTextModelWithProjection", "T5EncoderModel"]),
        ("flux_dev", ["CLIPTextModel", "T5EncoderModel"]),
    ],
)
def test_each_family_has_its_text_encoders(profile, encoders):
    folders = sorted(p.name for p in architectures_dir(profile, PROFILES).glob("text_encoder*"))
    counts = [_component(profile, f) for f in folders]
    assert [c.model for c in counts] == encoders
    # CLIP-L (123 M), bigG (695 M), T5-XXL (4.76 B): widths tell them apart
    sizes = {
        "CLIPTextModel": [123e6],
        "CLIPTextModelWithProjection": [123.6e6, 694.7e6],
        "T5EncoderModel": [4.76e9],
    }
    for c in counts:
        assert any(abs(c.parameters - s) / s < 0.01 for s in sizes[c.model]), c


@pytest.fixture(scope="module")
def flux_networks():
    return {
        n.role: n for n in profile_networks(load_profile("flux_dev"), architectures_dir("flux_dev", PROFILES))
    }


def test_flux_student_loses_exactly_the_guidance_embedder(flux_networks):
    teacher = build_on_meta(load_architecture_config(architectures_dir("flux_dev", PROFILES) / "transformer"))
    guidance = sum(p.numel() for p in teacher.time_text_embed.guidance_embedder.parameters())
    assert guidance > 0
    nets = flux_networks
    assert nets["teacher"].parameters - nets["generator"].parameters == guidance
    assert nets["fake score"] == NetworkCount(**{**nets["generator"].__dict__, "role": "fake score"})
    assert nets["teacher"].trainable == 0 and nets["generator"].trainable == nets["generator"].parameters


def test_flux_networks_roles_and_discriminator_heads(flux_networks):
    nets = flux_networks
    assert list(nets) == [
        "teacher",
        "generator",
        "fake score",
        "VFM dinov2_vitl14",
        "discriminator heads",
        "text_encoder",
        "text_encoder_2",
        "vae",
    ]
    frozen = ["teacher", "VFM dinov2_vitl14", "text_encoder", "text_encoder_2", "vae"]
    assert all(nets[r].trainable == 0 for r in frozen)
    # patch embedding + 7 tapped blocks, DINOv2-L width 1024 on a 73x73 grid (1024 px), CLIP-L 768 -> 64
    # in each head, and each head's per-location reference map (released refmapper)
    head = DiscriminatorHead(1024, 768, in_size=73, cmap_dim=64, reference="per_location")
    expected = 8 * sum(p.numel() for p in head.parameters())
    assert nets["discriminator heads"].parameters == nets["discriminator heads"].trainable == expected


def test_meta_build_allocates_no_memory():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = build_on_meta(load_architecture_config(architectures_dir("flux_dev", PROFILES) / "transformer"))
    count = count_network("transformer", model, trainable=True)  # counting must not materialise either
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert count.parameters > 11e9
    tensors = [*model.parameters(), *model.buffers()]
    assert tensors and all(t.device.type == "meta" for t in tensors)
    assert grown_mib < 512  # 11.9 B real parameters would be 44 GiB in fp32


def test_memory_bill_by_hand():
    nets = [
        NetworkCount("teacher", "Toy", parameters=1000, buffers=10, largest_block=100),
        NetworkCount("generator", "Toy", parameters=600, trainable=600, largest_block=60),
    ]
    common = dict(gpus=4, precision="bf16", reserve_bytes=0)

    def bill(**kw):
        return {r.item: r.bytes for r in memory_rows(nets, **{**common, **kw})}

    assert bill(sharding="ddp", optimizer="adamw") == {
        "weights": 1600 * 2 + 10 * 2,
        "gradients": 600 * 2,
        "optimiser states (adamw)": 600 * 8,
    }
    assert bill(sharding="fsdp", optimizer="adamw") == {
        "weights": 1600 * 2 // 4 + 10 * 2,  # buffers are not sharded
        "gradients": 600 * 2 // 4,
        "optimiser states (adamw)": 600 * 8 // 4,
        "FSDP all-gather buffers": 2 * 100 * 2,
    }
    assert bill(sharding="ddp", optimizer="adamw8bit")["optimiser states (adamw8bit)"] == 600 * 2
    assert bill(sharding="fsdp", optimizer="adamw8bit")["optimiser states (adamw8bit)"] == 600 * 2 // 4
    mixed = bill(sharding="fsdp", optimizer="adamw", master_weights=True)
    assert mixed["master weights (fp32)"] == 600 * 4 // 4 and mixed["gradients"] == 600 * 4 // 4
    fp32 = bill(sharding="ddp", optimizer="adamw", precision="fp32", master_weights=True)
    assert "master weights (fp32)" not in fp32 and fp32["weights"] == 1610 * 4
    with_extras = memory_rows(
        nets, sharding="ddp", optimizer="adamw", gpus=1, precision="bf16", activations=[("g", 7, "")]
    )
    assert [r.bytes for r in with_extras[-2:]] == [7, 2 * 2**30]


def test_report_verdict_and_headroom():
    rows = memory_rows(
        [NetworkCount("g", "Toy", parameters=2**29, trainable=2**29)],
        gpus=1,
        sharding="ddp",
        precision="bf16",
        optimizer="adamw8bit",
        reserve_bytes=0,
    )  # 1 GiB weights + 1 GiB gradients + 1 GiB states
    settings = dict(
        profile="toy",
        gpus=1,
        sharding="ddp",
        precision="bf16",
        optimizer="adamw8bit",
        batch_per_gpu=1,
        grad_checkpointing=True,
        cache_text=False,
        master_weights=False,
        resolution=64,
        networks=(),
        memory=tuple(rows),
    )
    assert PlanReport(gpu_mem_gib=3, **settings).fits
    short = PlanReport(gpu_mem_gib=2.5, **settings)
    assert not short.fits and short.headroom_bytes == -(2**29)


def test_activation_estimate_by_hand():
    seg = [ActivationSegment("x", tokens=10, width=4, blocks=3, bytes_per_element=34)]
    assert activation_bytes(seg, batch=2, checkpointing=False, precision="bf16") == 34 * 10 * 4 * 3 * 2
    # checkpointed: every block keeps its 16-bit input, one block is recomputed in full
    assert (
        activation_bytes(seg, batch=2, checkpointing=True, precision="bf16") == (2 * 10 * 4 * 3 + 34 * 40) * 2
    )
    assert activation_bytes(seg, batch=1, checkpointing=False, precision="fp32") == 2 * 34 * 10 * 4 * 3
    flux = load_architecture_config(architectures_dir("flux_dev", PROFILES) / "transformer")
    (blocks,) = denoiser_segments(flux, latent_side=128, max_sequence_length=512)
    assert (blocks.tokens, blocks.width, blocks.blocks) == (64 * 64 + 512, 3072, 19 + 38)


def test_plan_defaults_from_profile_and_cached_text():
    cfg = load_profile("sdxl")
    report = plan_profile(cfg, architectures_dir("sdxl", PROFILES), gpus=8, gpu_mem_gib=80, cache_text=True)
    assert (report.optimizer, report.precision, report.batch_per_gpu) == ("adamw", "bf16", 1)
    assert not any(n.role.startswith("text_encoder") for n in report.networks)
    more = plan_profile(
        cfg, architectures_dir("sdxl", PROFILES), gpus=8, gpu_mem_gib=80, grad_checkpointing=False
    )
    assert more.total_bytes > report.total_bytes


def _verdict(output: str) -> str:
    return output.strip().splitlines()[-1]


def test_cli_plan_flux_fits_on_8x80_not_on_1x24():
    r = runner.invoke(app, ["plan", "--profile", "flux_dev", "--gpus", "8", "--gpu-mem-gb", "80"])
    assert r.exit_code == 0, r.output
    assert _verdict(r.output).startswith("fits:")
    for word in ("teacher", "generator", "fake score", "discriminator heads", "T5EncoderModel", "11.90 B"):
        assert word in r.output
    assert "gradients" in r.output and "optimiser states (adamw8bit)" in r.output
    r = runner.invoke(app, ["plan", "--profile", "flux_dev", "--gpus", "1", "--gpu-mem-gb", "24"])
    assert r.exit_code == 1, r.output
    assert _verdict(r.output).startswith("does not fit:")


def test_cli_plan_embedded_profile_errors_clearly():
    r = runner.invoke(app, ["plan", "--profile", "embedded"])
    assert isinstance(r.exception, UserError)
    message = str(r.exception)
    assert "\n" not in message
    assert "experiments/architectures/embedded" in message and "flux_dev" in message and "sdxl" in message
