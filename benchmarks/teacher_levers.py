"""Teacher levers the profile's loop does not expose: the backbone (SD3 transformer vs UNet) and the
text conditioning (the world's encoder vs the text tower of the world's trained CLIP).

Trains one teacher by rectified flow on the world's scenes (the loop of ``senseflow.teacher``,
CFG dropout 0.1, EMA, cosine LR), then judges its samples of the first ``--n`` test prompts with
the attribute probe at the given Euler step counts (CFG ``--cfg``). Prints the curve, saves the
EMA weights (``NAME.pt``) and a grid of real (top) vs generated (bottom) scenes (``NAME.png``),
and appends one JSON row to ``--out``. Run it in a folder holding ``build/world``,
``build/probes`` and (for ``--text clip``) ``build/clip``:

    OMP_NUM_THREADS=1 python benchmarks/teacher_levers.py --name sd3_clip --backbone sd3 --text clip \
        --steps 1400 --eval-steps 4 32

``--text world`` reads ``build/world``'s encoder (random and frozen, or pre-trained when the world
was built with ``world.text.pretrain.steps > 0``); ``--text clip`` reads the token states and the
projected EOS state of ``build/clip``'s text tower (the measurement that motivated the world's
text pre-training; docs/embedded-lab.md has the table).
"""

import argparse
import json
import os
import re
import time

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel

from senseflow.backbones.conversions import flow_add_noise, flow_velocity
from senseflow.backbones.flow import SD3FlowBackbone, tiny_sd3_transformer
from senseflow.backbones.guidance import per_sample
from senseflow.conditioning import PromptEmbeds
from senseflow.optim import adamw
from senseflow.schedules import sample_train_sigmas
from senseflow.world.adherence import adherence_curve
from senseflow.world.probes import EMPTY, load_probe
from senseflow.world.prompts import load_prompt_file
from senseflow.world.scenes import (
    BACKGROUND_NAMES,
    COLOUR_NAMES,
    POSITIONS,
    caption,
    sample_batch,
    to_tensor_range,
)
from senseflow.world.text import WorldTextEncoder


class ClipText:
    def __init__(self, clip):
        self.clip = clip
        self.m = clip.model
        self._cache = {}

    @property
    def hidden_size(self):
        return self.m.token_embedding.weight.shape[1]

    @property
    def pooled_size(self):
        return self.m.text_projection.shape[1]

    @torch.no_grad()
    def encode(self, captions):
        missing = sorted({c for c in captions if c not in self._cache})
        if missing:
            ids = self.clip.tokenize(missing)
            m = self.m
            x = m.token_embedding(ids) + m.positional_embedding
            x = m.transformer(x, attn_mask=m.attn_mask)
            x = m.ln_final(x)
            pooled = x[torch.arange(len(ids)), ids.argmax(-1)] @ m.text_projection
            for i, t in enumerate(missing):
                self._cache[t] = (x[i], pooled[i])
        return PromptEmbeds(
            torch.stack([self._cache[c][0] for c in captions]),
            torch.stack([self._cache[c][1] for c in captions]),
        )


class OracleText:
    """The scene itself as conditioning, no language: one token per grid cell (one-hot digit or
    empty, one-hot colour, one-hot cell) plus a background token; pooled = all of them flattened.

    A diagnostic upper bound on the text path: with it, what the teacher still gets wrong is the
    image model's (capacity, samples, sampler), not the encoder's.
    """

    hidden_size = 64
    pooled_size = 4 * 21 + 3

    _phrase = re.compile(r"at the (top left|top right|bottom left|bottom right) a (\w+) (\d)")

    def encode(self, captions):
        hidden = torch.zeros(len(captions), 5, self.hidden_size)
        for i, text in enumerate(captions):
            if not text:
                continue  # the unconditional branch: all zeros
            cells = {p: (c, int(d)) for p, c, d in self._phrase.findall(text)}
            for k, pos in enumerate(POSITIONS):
                colour, digit = cells.get(pos, (None, EMPTY))
                hidden[i, k, digit] = 1.0
                hidden[i, k, 11 + (COLOUR_NAMES.index(colour) if colour else 5)] = 1.0
                hidden[i, k, 17 + k] = 1.0
            hidden[i, 4, BACKGROUND_NAMES.index(text.rsplit(" on a ", 1)[1].split()[0])] = 1.0
        pooled = torch.cat([hidden[:, :4, :21].flatten(1), hidden[:, 4, :3]], 1)
        return PromptEmbeds(hidden, pooled)


class UNetFlow(SD3FlowBackbone):
    def predict(self, x_t, sigma, cond):
        sigma = per_sample(sigma, x_t)
        return self.transformer(
            x_t, sigma * 1000, encoder_hidden_states=cond.hidden, class_labels=cond.pooled, return_dict=False
        )[0].float()


def tiny_unet(text_dim, pooled_dim, channels, attn_dim, layers):
    torch.manual_seed(0)
    c1, c2 = channels
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        block_out_channels=(c1, c2),
        layers_per_block=layers,
        cross_attention_dim=text_dim,
        attention_head_dim=attn_dim,
        norm_num_groups=16,
        class_embed_type="projection",
        projection_class_embeddings_input_dim=pooled_dim,
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True)
    ap.add_argument("--backbone", default="sd3", choices=["sd3", "unet"])
    ap.add_argument("--text", default="world", choices=["world", "clip", "oracle"])
    ap.add_argument("--steps", type=int, default=1400)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--patch", type=int, default=4)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--channels", type=int, nargs=2, default=[32, 64])
    ap.add_argument("--ulayers", type=int, default=1)
    ap.add_argument("--counts", default='{"1": 0.5, "2": 0.5}')
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--eval-steps", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--cfg", type=float, default=4.0)
    ap.add_argument("--logit-mean", type=float, default=0.0)
    ap.add_argument("--time-budget", type=float, default=0, help="stop training after this many seconds")
    ap.add_argument("--out", default="teacher_levers.jsonl", help="JSON lines, one row per run (appended)")
    a = ap.parse_args()
    counts = {int(k): v for k, v in json.loads(a.counts).items()}
    if a.text == "world":
        text = WorldTextEncoder.load("build/world")
    elif a.text == "oracle":
        text = OracleText()
    else:
        from senseflow.world.clip import load_clip

        text = ClipText(load_clip("build/clip"))
    if a.backbone == "sd3":
        model = tiny_sd3_transformer(
            resolution=16,
            in_channels=3,
            patch_size=a.patch,
            num_layers=a.layers,
            num_attention_heads=a.heads,
            attention_head_dim=32,
            text_dim=text.hidden_size,
            pooled_dim=text.pooled_size,
        )
        bb = SD3FlowBackbone(model, text)
    else:
        model = tiny_unet(text.hidden_size, text.pooled_size, a.channels, 8, a.ulayers)
        bb = UNetFlow(model, text)
    nparam = sum(p.numel() for p in model.parameters())
    opt = adamw(model.parameters(), lr=a.lr, betas=(0.9, 0.99), weight_decay=0.0)
    sched = get_cosine_schedule_with_warmup(opt, a.warmup, a.steps)
    ema = EMAModel(model.parameters(), decay=a.ema, use_ema_warmup=True, power=2 / 3, foreach=True)
    null = text.encode([""])
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    losses = []
    for step in range(a.steps):
        rng = np.random.default_rng([0, step])
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        images, scenes = sample_batch(
            rng, a.batch, resolution=16, digit_counts=counts, instances="train", split="train"
        )
        cond = text.encode([caption(s) for s in scenes])
        drop = torch.rand(a.batch, generator=gen) < 0.1
        hidden, pooled = cond.hidden.clone(), cond.pooled.clone()
        hidden[drop] = null.hidden
        pooled[drop] = null.pooled
        cond = PromptEmbeds(hidden, pooled)
        x0 = to_tensor_range(images)
        eps = torch.randn(x0.shape, generator=gen)
        sigma = sample_train_sigmas(
            a.batch, density="logit_normal", logit_mean=a.logit_mean, logit_std=1.0, shift=1.0, generator=gen
        )
        model.train()
        v = bb.predict(flow_add_noise(x0, eps, sigma), sigma, cond)
        loss = F.mse_loss(v, flow_velocity(x0, eps))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.step(model.parameters())
        losses.append(loss.item())
        if (step + 1) % 100 == 0:
            el = time.perf_counter() - t0
            print(
                f"{a.name} step {step + 1} loss {np.mean(losses[-100:]):.4f} {el:.0f}s "
                f"load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
        if a.time_budget and time.perf_counter() - t0 > a.time_budget:
            break
    secs = time.perf_counter() - t0
    ema.copy_to(model.parameters())
    model.eval()
    probe = load_probe("build/probes/probe.safetensors")
    recs = load_prompt_file("build/world/prompts/test.jsonl")[: a.n]
    curve = adherence_curve(bb, recs, probe, shape=(3, 16, 16), steps_list=a.eval_steps, cfg=a.cfg, seed=0)
    torch.save(model.state_dict(), f"{a.name}.pt")
    from PIL import Image

    from senseflow.samplers import prompt_seed, sample_prompts

    imgs, _ = sample_prompts(
        bb,
        [r.prompt for r in recs[:48]],
        [prompt_seed(0, r.id) for r in recs[:48]],
        steps=32,
        cfg=a.cfg,
        shape=(3, 16, 16),
    )
    from senseflow.world.scenes import render, to_uint8

    real = np.stack([render(r.scene, 16) for r in recs[:48]])
    gen = to_uint8(imgs)
    rows = []
    for k in range(0, 48, 8):
        rows.append(
            np.concatenate(
                [np.concatenate(list(real[k : k + 8]), 1), np.concatenate(list(gen[k : k + 8]), 1)], 0
            )
        )
    grid = np.concatenate(rows, 0)
    Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST).save(f"{a.name}.png")
    with open(f"{a.name}.prompts.txt", "w") as f:
        f.write("\n".join(r.prompt for r in recs[:48]))
    row = {
        "name": a.name,
        "args": vars(a),
        "params": nparam,
        "train_s": round(secs, 1),
        "steps_done": step + 1,
        "load": [load0, os.getloadavg()[0]],
        "curve": curve,
    }
    for r in curve:
        print(
            f"{a.name} steps={r['steps']} all={r['all']:.3f} digit={r['digit']:.3f} colour={r['colour']:.3f} "
            f"pos={r['position']:.3f} bg={r['background']:.3f} all1={r.get('all_1_digit', 0):.3f} "
            f"all2={r.get('all_2_digit', 0):.3f}",
            flush=True,
        )
    print(f"{a.name} params={nparam} train_s={secs:.0f} s/step={secs / (step + 1):.3f}")
    with open(a.out, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
