"""Real-profile training fidelity (issue 14): tiny SDXL / SD 3.5 / FLUX families in their real dtype.

Each tiny pipeline is saved and loaded through ``load_backbone`` in the dtype its profile
loads the real weights in (SDXL float16, SD 3.5 and FLUX bfloat16), so the defects that only
show outside float32 (rounded-away updates, dtype mismatches) show here.
"""

from __future__ import annotations

import pytest
import torch

from senseflow.backbones.loading import load_backbone
from senseflow.config import PretrainedConfig
from senseflow.data import WorldData
from tests.tiny_pipelines import RESOLUTION, T5_LENGTH, save_tiny_pipeline

LOAD_DTYPE = {"sdxl": "bfloat16", "sd3": "bfloat16", "flux": "bfloat16"}  # the profiles' teacher dtypes
ANCHORS = {"sdxl": (999 / 999, 749 / 999, 499 / 999, 249 / 999), "sd3": (1.0, 0.9, 0.75, 0.5),
           "flux": (1.0, 0.904, 0.759, 0.512)}  # fmt: skip


def tiny_family(family: str, root, dtype: str | None = None):
    """A tiny teacher of ``family`` loaded from disk in ``dtype`` (default: its profile's)."""
    folder = save_tiny_pipeline(family, root / f"teacher_{family}")
    cfg = PretrainedConfig(
        model_id=str(folder), licence="test", dtype=dtype or LOAD_DTYPE[family], resolution=RESOLUTION,
        max_sequence_length=T5_LENGTH,
    )  # fmt: skip
    return load_backbone(family, cfg)


def world_data() -> WorldData:
    """Rendered scenes at the tiny pipelines' resolution (stand-in for real images)."""
    return WorldData(resolution=RESOLUTION, digit_counts={1: 1.0})


# ----------------------------------------------------------------------------- defect 3
def test_lora_run_keeps_the_fake_models_base_weights_frozen(tmp_path, monkeypatch):
    """The trainable count of the fake model stays constant over iterations (IDA counts them)."""
    from senseflow import train

    counts: list[int] = []
    real_ida = train.ida_update

    def spy(fake, generator, lam):
        counts.append(sum(p.numel() for p in fake.parameters() if p.requires_grad))
        return real_ida(fake, generator, lam)

    monkeypatch.setattr(train, "ida_update", spy)
    teacher = tiny_family("sd3", tmp_path, "float32")
    train.distill(
        tmp_path / "run", teacher=teacher, data=world_data(), anchors=ANCHORS["sd3"], iterations=3,
        global_batch=2, ttur=1, gan=False, isg=False, lora_rank=2, progress=False, checkpoint_every=10,
    )  # fmt: skip
    assert len(counts) == 3
    assert counts[0] == counts[-1], f"fake model's trainable weights grew over iterations: {counts}"
    assert counts[0] < sum(p.numel() for p in teacher.network.parameters()) / 10  # LoRA only


# ----------------------------------------------------------------------------- defect 2
# the released SD 3.5 code: t_mid's index in [idx_prev + 50, idx_tau - 50] of the unshifted
# 1000-step grid, read through the shift-3 sigmas (its last segment ends at index 0)
RELEASED_SD35_MID = [(0.923, 0.983), (0.786, 0.875), (0.563, 0.711), (0.139, 0.429)]


def test_isg_mid_point_is_drawn_in_unshifted_time_like_the_released_sd35_code():
    from senseflow.losses import sample_isg_mid

    anchors = [1.0, 0.9, 0.75, 0.5, 0.0]
    gen = torch.Generator().manual_seed(0)
    for k, (lo, hi) in enumerate(RELEASED_SD35_MID):
        tau = torch.full((20000,), anchors[k])
        mid = sample_isg_mid(tau, anchors[k + 1], 0.05, generator=gen, shift=3.0)
        assert abs(float(mid.min()) - lo) < 0.005 and abs(float(mid.max()) - hi) < 0.005, (
            f"segment {k}: mid in [{float(mid.min()):.3f}, {float(mid.max()):.3f}], released [{lo}, {hi}]"
        )
    # shift 1 (FLUX's margin in sigma): the plain interval
    mid = sample_isg_mid(torch.full((5000,), 0.904), 0.759, 0.02, generator=gen)
    assert 0.779 <= float(mid.min()) < 0.781 and 0.883 < float(mid.max()) <= 0.884


def test_profiles_check_isg_segments_in_the_units_they_draw_in():
    from senseflow.config import ConfigError, load_profile

    cfg = load_profile("sd35_large")
    assert cfg.distill.isg.margin_units == "unshifted" and cfg.teacher_shift() == 3.0
    assert load_profile("flux_dev").distill.isg.margin_units == "sigma"
    # in unshifted time the last SD 3.5 segment (0, 0.5] is (0, 0.25]: a 0.15 margin leaves no room
    with pytest.raises(ConfigError, match="unshifted time"):
        load_profile("sd35_large", ["distill.isg.margin=0.15"])


# ----------------------------------------------------------------------------- defect 1
def moved_share(after: dict[str, torch.Tensor], before: dict[str, torch.Tensor], names) -> float:
    """Share of the elements of parameters ``names`` that differ between ``after`` and ``before``."""
    changed = sum(int((after[k].float() != before[k].float()).sum()) for k in names)
    return changed / sum(after[k].numel() for k in names)


@pytest.mark.parametrize("family", ["sd3", "flux", "sdxl"])
def test_one_step_at_lr_1e6_moves_every_weight_of_a_16_bit_family(family, tmp_path, monkeypatch):
    """Float32 master weights: one AdamW step at LR 1e-6 moves the generator, IDA moves the fake."""
    from senseflow import train

    ida_moved: list[float] = []
    real_ida = train.ida_update

    def spy(fake, generator, lam):
        before = {k: v.detach().clone() for k, v in fake.state_dict().items()}
        differs = {k: v.detach() != before[k] for k, v in generator.state_dict().items()}
        n = real_ida(fake, generator, lam)
        after = fake.state_dict()
        moved = sum(int(((after[k] != before[k]) & d).sum()) for k, d in differs.items())
        ida_moved.append(moved / max(1, sum(int(d.sum()) for d in differs.values())))
        return n

    monkeypatch.setattr(train, "ida_update", spy)
    teacher = tiny_family(family, tmp_path)
    before = {k: v.clone() for k, v in teacher.network.state_dict().items()}
    result = train.distill(
        tmp_path / "run", teacher=teacher, data=world_data(), anchors=ANCHORS[family], iterations=1,
        global_batch=2, ttur=1, gan=False, generator_lr=1e-6, fake_lr=1e-6, precision="bf16",
        progress=False, checkpoint_every=10, isg_margin_units="sigma",
    )  # fmt: skip
    names = [k for k, _ in teacher.trainable_copy().named_parameters()]
    share = moved_share(result.generator_state, before, names)
    # not 100%: a tiny model has a few parameters without gradient (SD3's last context query)
    assert share > 0.9, f"{family}: one step at LR 1e-6 moved {share:.1%} of the generator's weights"
    assert all(v.dtype == torch.float32 for v in result.generator_state.values())
    assert ida_moved and ida_moved[0] > 0.95, f"{family}: IDA moved {ida_moved[0]:.1%} of the fake model"
    # the frozen teacher keeps its 16-bit load dtype
    assert next(teacher.network.parameters()).dtype == getattr(torch, LOAD_DTYPE[family])


# ----------------------------------------------------------------------------- defect 4
def tiny_discriminator(text_dim: int, diffaug=("color", "translation", "cutout")):
    """The VFM discriminator on a tiny random DINOv2, heads of width 8."""
    from senseflow.config import GANConfig
    from senseflow.discriminator.model import build_discriminator
    from tests.test_distill_families import tiny_dinov2

    gan_cfg = GANConfig(backbone="dinov2_tiny", blocks=[0, 2], text_projection_dim=8, diffaug=list(diffaug))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_discriminator(gan_cfg, tiny_dinov2(), text_dim, image_size=RESOLUTION, width=8)


def test_discriminator_never_scores_real_and_fake_images_in_one_batch(tmp_path):
    """Every forward of D in the loop sees one kind of image: its BatchNorm statistics are never mixed."""
    from senseflow.train import distill

    teacher = tiny_family("sd3", tmp_path, "float32")
    disc = tiny_discriminator(teacher.text.encode([""]).pooled.shape[1])
    batches: list[int] = []
    disc.register_forward_hook(lambda module, args, out: batches.append(args[0].shape[0]))
    distill(
        tmp_path / "run", teacher=teacher, data=world_data(), discriminator=disc, anchors=ANCHORS["sd3"],
        iterations=1, global_batch=2, ttur=1, isg=False, progress=False, checkpoint_every=10,
    )  # fmt: skip
    assert batches and set(batches) == {2}, f"D forward batch sizes {batches}: real and fake were mixed"


def test_a_fakes_logit_in_the_discriminator_step_equals_the_generator_steps():
    from senseflow.distill import vfm_discriminator_step

    disc = tiny_discriminator(6, diffaug=()).train()
    g = torch.Generator().manual_seed(0)
    fake = torch.rand(3, 3, RESOLUTION, RESOLUTION, generator=g) * 2 - 1
    real = torch.rand(3, 3, RESOLUTION, RESOLUTION, generator=g) * 2 - 1
    text = torch.randn(3, 6, generator=g)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    disc.register_forward_hook(lambda m, args, out: seen.append((args[0].detach(), out.detach())))
    vfm_discriminator_step(disc, fake, real, text, loss="hinge", gen=torch.Generator().manual_seed(1))
    with torch.no_grad():
        in_g_step = disc(fake, text, real, None)  # the generator's step scores fakes alone
    d_step = [out for x, out in seen[:-1] if torch.equal(x, fake)]
    # equal up to spectral norm's power-iteration update between the calls (mixing: ~0.25 apart)
    assert len(d_step) == 1 and torch.allclose(d_step[0], in_g_step, atol=2e-3)


# ----------------------------------------------------------------------------- defect 5
class TimeRecorder:
    """A flow backbone stand-in that records the times it is noised at (predictions: zeros)."""

    prediction = "flow"

    def __init__(self, shift: float):
        self.shift = shift
        self.times: list[torch.Tensor] = []

    def add_noise(self, x0, eps, t):
        self.times.append(t)
        return x0

    def predict(self, x, t, cond):
        return torch.zeros_like(x)

    def guided_predict(self, x, t, cond, uncond, scale):
        return torch.zeros_like(x)

    def x0(self, x, v, t):
        return x - t.view(-1, 1) * v


def term_times(profile: str, term: str, backbone_shift: float, n: int = 4000) -> torch.Tensor:
    """The times the loop's ``term`` ("dmd" or "fake") draws under ``profile``'s settings."""
    from senseflow import distill as terms
    from senseflow.config import load_profile
    from senseflow.distill_run import distill_kwargs
    from senseflow.schedules import TimeDensity

    kw = distill_kwargs(load_profile(profile).distill)
    rec, x0, gen = TimeRecorder(backbone_shift), torch.randn(n, 1), torch.Generator().manual_seed(0)
    if term == "dmd":
        density = TimeDensity.from_dict(kw["dmd_t"])
        terms.dmd_term(rec, rec, x0, None, None, t_density=density, cfg=torch.ones(n), gen=gen)
    else:
        terms.fake_term(rec, x0, None, gen=gen, t_density=TimeDensity.from_dict(kw["fake_t"]))
    return rec.times[0]


def test_dmd_and_fake_times_follow_the_released_densities():
    # SD 3.5: DMD's t is shift-3 of U(0.02, 0.98): bounds shift(0.02) = 0.058, shift(0.98) = 0.993
    t = term_times("sd35_large", "dmd", 3.0)
    assert 0.057 < float(t.min()) < 0.07 and 0.985 < float(t.max()) < 0.9935
    assert abs(float((t < 0.75).float().mean()) - 0.5) < 0.03  # shift(0.5) = 0.75 is the median
    # SD 3.5's fake model: shifted logit-normal (median shift(0.5) = 0.75)
    assert abs(float(term_times("sd35_large", "fake", 3.0).median()) - 0.75) < 0.03
    # FLUX: both logit-normal and unshifted although the backbone's shift is exp(mu) = 3.16
    for term in ("dmd", "fake"):
        t = term_times("flux_dev", term, 3.16)
        assert abs(float(t.median()) - 0.5) < 0.03, f"FLUX {term} t median {float(t.median()):.3f}"
        assert float(t.min()) < 0.1 and float(t.max()) > 0.9


# ----------------------------------------------------------------------------- defect 6
def test_warm_up_ramps_all_three_learning_rates_per_iteration(tmp_path):
    """Released FLUX: G, fake and D go 5e-6 -> 1e-5 over the warm-up, counted in iterations.

    The generator's schedule advances before its first step (ttur 5 > 4 iterations), by design:
    torch's scheduler-before-optimiser warning must not reach the run's log.
    """
    import warnings

    from senseflow.train import distill

    teacher = tiny_family("sd3", tmp_path, "float32")
    disc = tiny_discriminator(teacher.text.encode([""]).pooled.shape[1])
    out = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        distill(
            out, teacher=teacher, data=world_data(), discriminator=disc, anchors=ANCHORS["sd3"], iterations=4,
            global_batch=2, ttur=5, isg=False, generator_lr=5e-6, fake_lr=5e-6, gan_lr=5e-6, lr_warmup=4,
            lr_after_warmup=1e-5, log_every=1, progress=False, checkpoint_every=10,
        )  # fmt: skip
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]
    plots = out / "dvclive" / "plots" / "metrics" / "train"
    expected = [5e-6 * (1 + n / 4) for n in range(1, 5)]  # the LR of the next iteration, logged after n
    for name in ("generator_lr", "fake_lr", "discriminator_lr"):
        rows = (plots / f"{name}.tsv").read_text().splitlines()[1:]
        assert [float(r.split("\t")[-1]) for r in rows] == pytest.approx(expected), name


def test_resumed_schedules_set_the_learning_rates_of_their_iteration_without_warnings():
    """A resume sets each optimiser's LR to its schedule at that iteration, as stepping there would."""
    import warnings

    from senseflow.train import _Schedules

    def schedules():
        opts = [torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr) for lr in (1e-3, 5e-6)]
        ramp = lambda i: min(1.0, (i + 1) / 4)  # noqa: E731
        return _Schedules([torch.optim.lr_scheduler.LambdaLR(o, ramp) for o in opts])

    stepped, resumed = schedules(), schedules()
    for _ in range(2):
        stepped.step()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed.last_epoch = 2
    assert not caught
    for a, b in zip(stepped.schedulers, resumed.schedulers, strict=True):
        assert b.optimizer.param_groups[0]["lr"] == pytest.approx(a.optimizer.param_groups[0]["lr"])
        assert b.last_epoch == a.last_epoch == 2


# ----------------------------------------------------------------------------- defect 7
def test_isg_has_its_own_guidance_and_the_released_distance(tmp_path, monkeypatch):
    from senseflow import distill as terms
    from senseflow.config import load_profile
    from senseflow.train import distill

    released = {"sd35_large": (5.0, 5.0), "sd35_medium": (2.0, 4.0), "sdxl": (3.0, 15.0),
                "flux_dev": (1.0, 8.0)}  # fmt: skip
    for name, cfg in released.items():
        isg = load_profile(name).distill.isg
        assert (isg.distance, tuple(isg.cfg)) == ("charbonnier", cfg), name
    scales: list[torch.Tensor] = []
    real_isg = terms.isg_term

    def spy(*args, cfg, **kwargs):
        scales.append(cfg)
        return real_isg(*args, cfg=cfg, **kwargs)

    monkeypatch.setattr(terms, "isg_term", spy)
    distill(
        tmp_path / "run", teacher=tiny_family("sd3", tmp_path, "float32"), data=world_data(),
        anchors=ANCHORS["sd3"], iterations=1, global_batch=2, ttur=1, gan=False, teacher_cfg=(3.0, 10.0),
        isg_cfg=(5.0, 5.0), progress=False, checkpoint_every=10,
    )  # fmt: skip
    assert scales and torch.equal(scales[0].cpu(), torch.full((2,), 5.0))


# ----------------------------------------------------------------------------- defect 8
def test_released_sd35_gan_curve_and_cutout():
    from senseflow.config import load_profile
    from senseflow.discriminator.diffaug import diffaugment
    from senseflow.losses import gan_weight

    # released SD 3.5: sigma_desc[idx]^2 at indices 999 / 749 / 499 / 249 (0.003^2 ~ 0 at the first)
    w = gan_weight(torch.tensor([1.0, 0.9, 0.75, 0.5]), "mirrored_sigma_sq", shift=3.0)
    assert w.tolist() == pytest.approx([0.0, 0.25, 0.5625, 0.81], abs=1e-4)
    assert load_profile("sd35_large").distill.gan.weight_curve == "mirrored_sigma_sq"
    # DiffAugment's cutout erases a square of 0.2 of the side (released), not 1/2
    x = torch.ones(64, 3, 40, 40)
    erased = (diffaugment(x, ["cutout"], torch.Generator().manual_seed(0)) == 0).all(1).sum((1, 2))
    assert int(erased.max()) == 8 * 8


def test_discriminator_loss_is_time_weighted_and_its_adamw_has_no_weight_decay(tmp_path, monkeypatch):
    from senseflow import distill as terms
    from senseflow import train

    decays, weights = [], []
    real_adamw, real_step = train.adamw, terms.vfm_discriminator_step

    def adamw_spy(params, **kw):
        decays.append(kw.get("weight_decay", "torch default 0.01"))
        return real_adamw(params, **kw)

    def step_spy(*args, **kw):
        weights.append(kw.get("weight"))
        return real_step(*args, **kw)

    monkeypatch.setattr(train, "adamw", adamw_spy)
    monkeypatch.setattr(terms, "vfm_discriminator_step", step_spy)
    teacher = tiny_family("sd3", tmp_path, "float32")
    train.distill(
        tmp_path / "run", teacher=teacher, data=world_data(), anchors=ANCHORS["sd3"], iterations=1,
        discriminator=tiny_discriminator(teacher.text.encode([""]).pooled.shape[1]), global_batch=4,
        ttur=1, isg=False, gan_curve="mirrored_sigma_sq", progress=False, checkpoint_every=10,
    )  # fmt: skip
    assert decays and all(d == 0.0 for d in decays), f"AdamW weight decays {decays}"
    assert weights and weights[0] is not None and ((weights[0] >= 0) & (weights[0] <= 1)).all()


# ----------------------------------------------------------------------------- defect 12
def test_no_ablation_duplicates_the_main_run():
    from senseflow.config import ConfigError, load_profile

    for name in ("sdxl", "sd35_large", "sd35_medium", "flux_dev", "embedded", "smoke"):
        cfg = load_profile(name)
        for ablation in cfg.pipeline.ablations:
            assert cfg.variant(ablation) != cfg.distill, f"{name}: {ablation} is the main recipe"
    with pytest.raises(ConfigError, match="copy of the main run"):
        load_profile("sdxl", ["variants.no_ida=[ida.enabled=false]", "pipeline.ablations=[no_ida]"])


def test_generator_steps_after_the_fake_model_has_trained(tmp_path, monkeypatch):
    """Released: the generator steps at iterations ttur, 2 ttur, ... (1-based), never at the first."""
    from senseflow import distill as terms
    from senseflow.train import distill

    steps: list[int] = []
    real_dmd = terms.dmd_term
    monkeypatch.setattr(terms, "dmd_term", lambda *a, **k: steps.append(len(steps)) or real_dmd(*a, **k))
    fake_calls: list[int] = []
    real_fake = terms.fake_term
    monkeypatch.setattr(
        terms, "fake_term", lambda *a, **k: fake_calls.append(len(steps)) or real_fake(*a, **k)
    )
    distill(
        tmp_path / "run", teacher=tiny_family("sd3", tmp_path, "float32"), data=world_data(),
        anchors=ANCHORS["sd3"], iterations=4, global_batch=2, ttur=2, gan=False, isg=False,
        progress=False, checkpoint_every=10,
    )  # fmt: skip
    # generator steps before the fake steps of iterations 2 and 4 only
    assert fake_calls == [0, 1, 1, 2], fake_calls


# ----------------------------------------------------------------------------- defect 10
@pytest.mark.parametrize("name", ["sdxl", "sd35_large", "sd35_medium", "flux_dev"])
def test_the_planner_reads_the_settings_the_loop_uses(name):
    from senseflow.config import load_profile
    from senseflow.distill_run import distill_kwargs
    from senseflow.planner import architectures_dir, plan_profile, run_settings

    cfg = load_profile(name)
    # the real profiles run what the planner plans for: FSDP2 with gradient checkpointing
    assert cfg.runtime.parallel == "fsdp" and distill_kwargs(cfg.distill)["grad_checkpointing"]
    for sets in ([], ["runtime.parallel=ddp", "distill.grad_checkpointing=false"]):
        c = load_profile(name, sets)
        report = plan_profile(c, architectures_dir(name), gpus=8, gpu_mem_gib=80)
        loop_mode = "fsdp" if c.runtime.parallel == "fsdp" else "ddp"  # resolve_parallel with 8 processes
        assert report.sharding == loop_mode
        assert report.grad_checkpointing == distill_kwargs(c.distill)["grad_checkpointing"]
        assert report.master_weights  # the loop's float32 master weights
        weights = next(r for r in report.memory if r.item == "weights")
        # the loop shards the frozen teacher under FSDP2 (distributed.shard_frozen), not under DDP;
        # the VFM, text encoders and VAE stay replicated
        assert run_settings(c)["shard_frozen"] == (loop_mode == "fsdp")
        teacher_part = "frozen teacher x 2 B " + ("/ 8 GPUs" if loop_mode == "fsdp" else "(replicated)")
        assert teacher_part in weights.detail and "other frozen" in weights.detail


# ----------------------------------------------------------------------------- defect 11 (part)
def test_export_records_the_true_dtype_and_sdxl_samples_x0(tmp_path):
    import json

    from senseflow.export import export_student
    from senseflow.real_run import student_sampler
    from senseflow.train import trainable_network

    teacher = tiny_family("sd3", tmp_path)  # bfloat16, the profile's dtype
    state = trainable_network(teacher).state_dict()  # training's float32 masters
    folder = export_student(tmp_path / "student", state, teacher,
                            {"anchors": list(ANCHORS["sd3"]), "sampler": "euler", "resolution": RESOLUTION},
                            base={"model_id": "tiny"})  # fmt: skip
    assert json.loads((folder / "recipe.json").read_text())["dtype"] == "bfloat16"
    assert student_sampler("sdxl") == "x0" and student_sampler("sd3") == student_sampler("flux") == "euler"
