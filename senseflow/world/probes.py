"""Attribute probe of the embedded world: the judge of prompt adherence and the FID feature space.

A small CNN trained once on real scenes predicts, for every cell of the 2x2 grid,
whether it holds a digit and which one, the digit's colour, and the background.
Its penultimate activations replace Inception features for FID / FID-T in the
embedded profile (a feature space that knows what a digit is), and comparing its
predictions with a caption's scene gives prompt adherence per attribute.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from tqdm.auto import tqdm

from senseflow.errors import MissingArtefactError, UserError
from senseflow.io import atomic_save_safetensors, atomic_write_text
from senseflow.optim import adamw
from senseflow.world.scenes import (
    BACKGROUND_NAMES,
    COLOUR_NAMES,
    POSITIONS,
    Scene,
    sample_batch,
    to_tensor_range,
)

EMPTY = 10  # digit-head class meaning "no digit in this cell"
IGNORE = -100  # colour label of an empty cell


@dataclass
class ProbeOutput:
    """Everything the probe says about a batch of images."""

    features: torch.Tensor  # (B, F) penultimate features (FID space)
    background: torch.Tensor  # (B, n_backgrounds) logits
    digit: torch.Tensor  # (B, cells, 11) logits, class 10 = empty
    colour: torch.Tensor  # (B, cells, n_colours) logits


class AttributeProbe(nn.Module):
    """CNN over the whole image with per-cell heads; ``feature_dim`` wide penultimate layer."""

    def __init__(self, width: int = 32, feature_dim: int = 256):
        super().__init__()
        w = width
        self.trunk = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.SiLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.SiLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.SiLU(),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(4),
        )  # fmt: skip
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * 16, feature_dim), nn.ReLU())
        cells = len(POSITIONS)
        self.cells = cells
        self.background_head = nn.Linear(feature_dim, len(BACKGROUND_NAMES))
        self.digit_head = nn.Linear(feature_dim, cells * (EMPTY + 1))
        self.colour_head = nn.Linear(feature_dim, cells * len(COLOUR_NAMES))

    def forward(self, images: torch.Tensor) -> ProbeOutput:
        """``images``: (B, 3, H, W) in [-1, 1]."""
        feats = self.embed(self.trunk(images))
        b = images.shape[0]
        return ProbeOutput(
            features=feats,
            background=self.background_head(feats),
            digit=self.digit_head(feats).view(b, self.cells, EMPTY + 1),
            colour=self.colour_head(feats).view(b, self.cells, len(COLOUR_NAMES)),
        )


def scene_labels(scenes: list[Scene]) -> dict[str, torch.Tensor]:
    """Targets of the probe's heads for a list of scenes."""
    n, cells = len(scenes), len(POSITIONS)
    digit = torch.full((n, cells), EMPTY, dtype=torch.long)
    colour = torch.full((n, cells), IGNORE, dtype=torch.long)
    background = torch.empty(n, dtype=torch.long)
    for i, s in enumerate(scenes):
        background[i] = BACKGROUND_NAMES.index(s.background)
        for o in s.objects:
            c = POSITIONS.index(o.position)
            digit[i, c] = o.digit
            colour[i, c] = COLOUR_NAMES.index(o.colour)
    return {"background": background, "digit": digit, "colour": colour}


def probe_loss(out: ProbeOutput, labels: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of the heads' cross-entropies (colour ignored on empty cells)."""
    return (
        F.cross_entropy(out.background, labels["background"])
        + F.cross_entropy(out.digit.flatten(0, 1), labels["digit"].flatten())
        + F.cross_entropy(out.colour.flatten(0, 1), labels["colour"].flatten(), ignore_index=IGNORE)
    )


def judge(out: ProbeOutput, scenes: list[Scene]) -> dict[str, np.ndarray]:
    """Per-scene verdicts of prompt adherence.

    Returns boolean arrays: ``background`` (per scene), ``digit`` / ``colour`` /
    ``position`` (per object, concatenated over scenes), ``count`` (the right number
    of digits, per scene) and ``all`` (every attribute of the scene right, no extra digit).
    """
    labels = scene_labels(scenes)
    digit_pred = out.digit.argmax(-1)
    colour_pred = out.colour.argmax(-1)
    bg_ok = (out.background.argmax(-1) == labels["background"]).numpy()
    occupied_true = labels["digit"] != EMPTY
    occupied_pred = digit_pred != EMPTY
    count_ok = (occupied_pred.sum(1) == occupied_true.sum(1)).numpy()
    digit_ok, colour_ok, position_ok, all_ok = [], [], [], []
    for i, s in enumerate(scenes):
        ok = bool(bg_ok[i]) and bool((occupied_pred[i] == occupied_true[i]).all())
        for o in s.objects:
            c = POSITIONS.index(o.position)
            d = bool(digit_pred[i, c] == o.digit)
            col = bool(colour_pred[i, c] == COLOUR_NAMES.index(o.colour))
            pos = bool(occupied_pred[i, c])
            digit_ok.append(d)
            colour_ok.append(col)
            position_ok.append(pos)
            ok = ok and d and col and pos
        all_ok.append(ok)
    return {
        "background": bg_ok.astype(bool),
        "digit": np.array(digit_ok),
        "colour": np.array(colour_ok),
        "position": np.array(position_ok),
        "count": count_ok.astype(bool),
        "all": np.array(all_ok),
    }


def summarise(verdicts: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean of every verdict array (the accuracies)."""
    return {k: float(v.mean()) for k, v in verdicts.items()}


@torch.no_grad()
def run_probe(probe: AttributeProbe, images: torch.Tensor, batch_size: int = 512) -> ProbeOutput:
    """Probe a large batch in chunks, in eval mode; outputs on CPU whatever device the probe is on.

    The probe may sit on an accelerator (the VFM discriminator of a CUDA distillation run wraps
    this very module), while images and verdicts (numpy) live on CPU.
    """
    probe.eval()
    device = next(probe.parameters()).device
    outs = [probe(images[i : i + batch_size].to(device)) for i in range(0, len(images), batch_size)]
    return ProbeOutput(
        *(torch.cat([getattr(o, f).cpu() for o in outs]) for f in ProbeOutput.__dataclass_fields__)
    )


def _augment(x: torch.Tensor, gen: torch.Generator, noise: float) -> torch.Tensor:
    """Gaussian pixel noise and random blur: generated images are noisier and softer than real ones."""
    b = x.shape[0]
    amp = torch.rand(b, 1, 1, 1, generator=gen) * noise
    x = x + amp * torch.randn(x.shape, generator=gen)
    blur = torch.rand(b, generator=gen) < 0.3
    if blur.any():
        k = torch.tensor([1.0, 2.0, 1.0])
        k = (k[:, None] * k[None, :] / 16).expand(3, 1, 3, 3)
        x[blur] = F.conv2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), k, groups=3)
    return x


def train_probe(
    out_dir: str | Path,
    *,
    resolution: int,
    digit_counts: dict[int, float],
    steps: int = 2500,
    batch_size: int = 128,
    lr: float = 2e-3,
    width: int = 32,
    feature_dim: int = 256,
    noise: float = 0.15,
    eval_scenes: int = 2000,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """Train the probe on real scenes (training handwriting), evaluate on held-out handwriting.

    Writes ``probe.safetensors`` (weights + config in the metadata) and ``probe_report.json``
    (per-attribute accuracy on ``eval_scenes`` held-out scenes, training time) to ``out_dir``.
    Returns the report.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    probe = AttributeProbe(width, feature_dim)
    opt = adamw(probe.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc="probe", disable=not progress, mininterval=2.0)
    for step in bar:
        rng = np.random.default_rng([seed, step])
        images, scenes = sample_batch(
            rng, batch_size, resolution=resolution, digit_counts=digit_counts, instances="train"
        )
        x = _augment(to_tensor_range(images), gen, noise)
        probe.train()
        loss = probe_loss(probe(x), scene_labels(scenes))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    train_seconds = time.perf_counter() - t0
    report = evaluate_probe(
        probe, resolution=resolution, digit_counts=digit_counts, n=eval_scenes, seed=seed + 1
    )
    report["train_seconds"] = round(train_seconds, 1)
    report["steps"] = steps
    meta = {"width": str(width), "feature_dim": str(feature_dim), "resolution": str(resolution)}
    atomic_save_safetensors(probe.state_dict(), out_dir / "probe.safetensors", metadata=meta)
    atomic_write_text(out_dir / "probe_report.json", json.dumps(report, indent=2) + "\n")
    return report


def train_probe_for_profile(cfg, out_dir: str | Path, progress: bool = True) -> dict[str, float]:
    """:func:`train_probe` with the ``world.scenes`` and ``probe`` sections of a profile config."""
    p = cfg.probe
    return train_probe(
        out_dir,
        resolution=cfg.world.scenes.resolution,
        digit_counts=dict(cfg.world.scenes.digit_counts),
        steps=p.steps,
        batch_size=p.batch_size,
        lr=p.lr,
        width=p.width,
        feature_dim=p.feature_dim,
        noise=p.noise,
        eval_scenes=p.eval_scenes,
        seed=p.seed,
        progress=progress,
    )


@torch.no_grad()
def evaluate_probe(
    probe: AttributeProbe, *, resolution: int, digit_counts: dict[int, float], n: int, seed: int
) -> dict[str, float]:
    """Per-attribute accuracy on ``n`` fresh real scenes of held-out handwriting."""
    rng = np.random.default_rng([seed, 10**6])
    images, scenes = sample_batch(
        rng, n, resolution=resolution, digit_counts=digit_counts, instances="heldout"
    )
    return summarise(judge(run_probe(probe, to_tensor_range(images)), scenes))


def load_probe(path: str | Path) -> AttributeProbe:
    """Load ``probe.safetensors`` written by :func:`train_probe`; clear error when unusable."""
    path = Path(path)
    if not path.is_file():
        raise MissingArtefactError(
            f"{path} is missing: train the probe with `senseflow world train-probe` (dvc stage `probes`)"
        )
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
        probe = AttributeProbe(int(meta["width"]), int(meta["feature_dim"]))
        probe.load_state_dict(state)
    except Exception as exc:  # corrupt or foreign file: say which and how to fix
        raise UserError(
            f"{path} is not a valid probe checkpoint ({exc}); delete it and rerun the `probes` stage"
        ) from exc
    return probe.eval().requires_grad_(False)
