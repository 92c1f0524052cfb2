"""The embedded world's tiny CLIP: an open_clip ``CLIP`` trained contrastively on rendered scenes.

The world's frozen text encoder (``world/text.py``) is random on purpose; a CLIP-score
analogue needs a model that has *learned* which caption goes with which image. This stage
builds an ``open_clip.model.CLIP`` of tiny config -- a ViT over the 16x16 scenes (4x4
patches) and a causal text transformer over the world's word-level tokenizer -- and trains
it with the symmetric InfoNCE loss of CLIP (Radford et al. 2021, Fig. 3) on fresh real
scenes and their captions every step (a pure function of the seed and the step, like the
probe). Training uses train-split captions drawn with training handwriting; the report's
retrieval accuracy uses test-split captions drawn with held-out handwriting.

Output folder (written atomically, one rename)::

    clip.safetensors    weights (metadata: config sha256)
    clip_config.json    open_clip model config (embed_dim, vision_cfg, text_cfg) + resolution
    tokenizer/          the world's tokenizer (the folder is self-contained)
    clip_report.json    final loss, image->text / text->image retrieval accuracy, chance, time
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from senseflow.errors import MissingArtefactError, UserError
from senseflow.io import atomic_folder
from senseflow.optim import adamw
from senseflow.world.scenes import caption, sample_batch, to_tensor_range
from senseflow.world.vocab import EOS, PAD, load_tokenizer, vocabulary

CLIP_FILE = "clip.safetensors"
CONFIG_FILE = "clip_config.json"
REPORT_FILE = "clip_report.json"
TOKENIZER_DIR = "tokenizer"


def clip_config(
    *,
    resolution: int,
    context_length: int,
    embed_dim: int = 64,
    vision_width: int = 64,
    vision_layers: int = 2,
    patch_size: int = 4,
    text_width: int = 64,
    text_layers: int = 2,
    heads: int = 2,
) -> dict:
    """The open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``) of the tiny CLIP.

    Text pooling is open_clip's ``argmax`` (the state at the highest token id): the world's
    vocabulary puts EOS last, so that is the EOS state, as in OpenAI CLIP.
    """
    vocab = vocabulary()
    if vocab.index(EOS) != len(vocab) - 1:
        raise ValueError("argmax pooling needs EOS to hold the highest token id")
    if resolution % patch_size:
        raise UserError(f"clip.patch_size {patch_size} does not divide the scene resolution {resolution}")
    if vision_width % heads or text_width % heads:
        raise UserError(f"clip.heads {heads} must divide vision_width and text_width")
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {
            "image_size": resolution,
            "patch_size": patch_size,
            "width": vision_width,
            "layers": vision_layers,
            "head_width": vision_width // heads,
        },
        "text_cfg": {
            "context_length": context_length,
            "vocab_size": len(vocab),
            "width": text_width,
            "heads": heads,
            "layers": text_layers,
            "pad_id": vocab.index(PAD),
            "eos_id": vocab.index(EOS),
            "pool_type": "argmax",
        },
    }


def config_sha256(config: dict) -> str:
    """Hash of a model config (canonical JSON): the "backbone" of a protocol card."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def build_clip(config: dict, seed: int = 0):
    """An ``open_clip.model.CLIP`` of ``config``, initialised from ``seed`` alone."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIP(
            config["embed_dim"], CLIPVisionCfg(**config["vision_cfg"]), CLIPTextCfg(**config["text_cfg"])
        )


@dataclass
class WorldClip:
    """A tiny CLIP with its tokenizer and preprocessing (what a CLIP-score needs)."""

    model: torch.nn.Module
    tokenizer: object  # transformers PreTrainedTokenizerFast of the world
    config: dict
    weights_file: Path | None = None

    @property
    def resolution(self) -> int:
        """Side of the square images the vision tower takes."""
        return int(self.config["vision_cfg"]["image_size"])

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        """(B, context_length) token ids, BOS ... EOS then PAD; an unknown word is an error."""
        ctx = self.config["text_cfg"]["context_length"]
        ids = self.tokenizer(list(captions), padding="max_length", max_length=ctx, truncation=True)[
            "input_ids"
        ]
        unk = self.tokenizer.unk_token_id
        for text, row in zip(captions, ids, strict=True):
            if unk in row:
                raise UserError(f"prompt {text!r} has words outside the embedded world's vocabulary")
        return torch.tensor(ids, dtype=torch.long)

    def preprocess(self, image) -> torch.Tensor:
        """One PIL image (or HWC uint8 array) -> (3, S, S) float tensor in [-1, 1]."""
        arr = np.array(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.uint8)
        if arr.shape[:2] != (self.resolution, self.resolution):
            raise UserError(
                f"image is {arr.shape[1]}x{arr.shape[0]}; the embedded CLIP takes "
                f"{self.resolution}x{self.resolution} scenes"
            )
        return to_tensor_range(arr[None])[0]

    @torch.no_grad()
    def embed(self, images: np.ndarray, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised image embeddings of uint8 NHWC ``images`` and text embeddings of ``captions``."""
        was = self.model.training
        self.model.eval()
        try:
            img = self.model.encode_image(to_tensor_range(images), normalize=True)
            txt = self.model.encode_text(self.tokenize(captions), normalize=True)
        finally:
            self.model.train(was)
        return img, txt


def contrastive_loss(
    img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor, captions
) -> torch.Tensor:
    """Symmetric InfoNCE of CLIP (Radford et al. 2021) with repeated captions as shared positives.

    Fresh random scenes repeat captions within a batch (a one-digit world has 600 captions);
    treating a repeat as a negative would push apart an image and its own caption, so the
    target of each row is uniform over the columns with the same caption.
    """
    keys = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    label = torch.tensor([keys[c] for c in captions])
    same = (label[:, None] == label[None, :]).float()
    target = same / same.sum(1, keepdim=True)
    logits = logit_scale * img @ txt.T
    i2t = -(target * F.log_softmax(logits, dim=1)).sum(1).mean()
    t2i = -(target * F.log_softmax(logits.T, dim=1)).sum(1).mean()
    return 0.5 * (i2t + t2i)


def retrieval_accuracy(clip: WorldClip, images: np.ndarray, captions: list[str]) -> dict[str, float]:
    """Top-1 retrieval among the given pairs: image->text and text->image.

    A retrieved caption counts as right when its text equals the query's caption (repeats
    are indistinguishable); ``chance`` is the expected accuracy of a random ranking.
    """
    img, txt = clip.embed(images, captions)
    sim = img @ txt.T
    caps = np.array(captions, dtype=object)
    i2t = float(np.mean(caps[sim.argmax(1).numpy()] == caps))
    t2i = float(np.mean(caps[sim.argmax(0).numpy()] == caps))
    _, counts = np.unique(caps, return_counts=True)
    chance = float(np.sum(counts**2) / len(caps) ** 2)
    return {"image_to_text": i2t, "text_to_image": t2i, "chance": chance, "n": len(caps)}


def warmup_cosine(steps: int, warmup_steps: int):
    """LR factor of step ``s``: linear warm-up times cosine decay to 0 over ``steps`` (CLIP's schedule)."""
    return lambda s: (
        min(1.0, (s + 1) / max(1, warmup_steps)) * 0.5 * (1 + np.cos(np.pi * min(1.0, s / max(1, steps))))
    )


def optimise(
    params,
    step_loss,
    *,
    steps: int,
    lr: float,
    weight_decay: float,
    warmup_steps: int,
    desc: str,
    progress: bool,
    after_step=None,
) -> tuple[float, float]:
    """AdamW under :func:`warmup_cosine` on ``step_loss(step)``, ``after_step()`` after each update.

    The loop of the world's small pre-trainings (this module's CLIP, the text encoder's objectives).
    Returns (mean loss of the last tenth of the steps, seconds).
    """
    opt = adamw(list(params), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, warmup_steps))
    losses, t0 = [], time.perf_counter()
    bar = tqdm(range(steps), desc=desc, disable=not progress, mininterval=2.0)
    for step in bar:
        loss = step_loss(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if after_step is not None:
            after_step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return float(np.mean(losses[-max(1, steps // 10) :])), time.perf_counter() - t0


def temperature_clamp(logit_scale: torch.nn.Parameter):
    """An ``after_step`` for :func:`optimise`: CLIP clamps its learned temperature at 100."""

    @torch.no_grad()
    def clamp() -> None:
        logit_scale.clamp_(0, np.log(100))

    return clamp


def scene_batch(seed, n: int, *, resolution: int, digit_counts: dict, instances: str, split: str):
    """``n`` rendered scenes (uint8 NHWC) of ``split`` and their captions, a pure function of ``seed``."""
    images, scenes = sample_batch(
        np.random.default_rng(seed), n, resolution=resolution, digit_counts=digit_counts,
        instances=instances, split=split,
    )  # fmt: skip
    return images, [caption(s) for s in scenes]


def train_clip(
    out_dir: str | Path,
    world_dir: str | Path,
    *,
    resolution: int,
    digit_counts: dict[int, float],
    steps: int = 800,
    batch_size: int = 128,
    lr: float = 2e-3,
    weight_decay: float = 0.1,
    warmup_steps: int = 50,
    embed_dim: int = 64,
    vision_width: int = 64,
    vision_layers: int = 2,
    patch_size: int = 4,
    text_width: int = 64,
    text_layers: int = 2,
    heads: int = 2,
    eval_scenes: int = 256,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Train the tiny CLIP on fresh real scenes; write the folder described in the module doc.

    Returns the report: ``final_loss`` (mean of the last 10% of steps), retrieval accuracy
    on ``eval_scenes`` held-out scenes (test captions, held-out handwriting) before and after
    training, chance, ``train_seconds``.
    """
    tokenizer = load_tokenizer(world_dir)
    config = clip_config(
        resolution=resolution, context_length=tokenizer.model_max_length, embed_dim=embed_dim,
        vision_width=vision_width, vision_layers=vision_layers, patch_size=patch_size,
        text_width=text_width, text_layers=text_layers, heads=heads,
    )  # fmt: skip
    clip = WorldClip(build_clip(config, seed), tokenizer, config)
    held_images, held_captions = scene_batch(
        [seed, 10**6], eval_scenes, resolution=resolution, digit_counts=digit_counts,
        instances="heldout", split="test",
    )  # fmt: skip
    before = retrieval_accuracy(clip, held_images, held_captions)
    model = clip.model.train()

    def step_loss(step: int) -> torch.Tensor:
        images, captions = scene_batch(
            [seed, step], batch_size, resolution=resolution, digit_counts=digit_counts,
            instances="train", split="train",
        )  # fmt: skip
        img, txt, logit_scale = model(to_tensor_range(images), clip.tokenize(captions))
        return contrastive_loss(img, txt, logit_scale, captions)

    # linear warm-up then cosine decay: the usual CLIP schedule
    final_loss, train_seconds = optimise(
        model.parameters(), step_loss, steps=steps, lr=lr, weight_decay=weight_decay,
        warmup_steps=warmup_steps, desc="clip", progress=progress,
        after_step=temperature_clamp(model.logit_scale),
    )  # fmt: skip
    after = retrieval_accuracy(clip, held_images, held_captions)
    report = {
        "final_loss": final_loss,
        "retrieval": after,
        "retrieval_untrained": before,
        "steps": steps,
        "batch_size": batch_size,
        "train_seconds": round(train_seconds, 1),
        "config_sha256": config_sha256(config),
    }
    save_clip(clip, out_dir, report)
    return report


def save_clip(clip: WorldClip, out_dir: str | Path, report: dict | None = None) -> Path:
    """Write weights, config, tokenizer (and report) to ``out_dir`` in one atomic rename."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    state = {k: v.detach().contiguous() for k, v in clip.model.state_dict().items()}
    with atomic_folder(out_dir) as tmp:
        tmp.chmod(0o755)  # mkdtemp makes it private; the folder is a shared artefact
        save_file(state, str(tmp / CLIP_FILE), metadata={"config_sha256": config_sha256(clip.config)})
        (tmp / CONFIG_FILE).write_text(json.dumps(clip.config, indent=2) + "\n")
        clip.tokenizer.save_pretrained(tmp / TOKENIZER_DIR)
        if report is not None:
            (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return out_dir / CLIP_FILE


def train_clip_for_profile(cfg, world_dir: str | Path, out_dir: str | Path, progress: bool = True) -> dict:
    """:func:`train_clip` with the ``world.scenes`` and ``clip`` sections of a profile config."""
    from senseflow.config import ClipConfig

    c = cfg.clip or ClipConfig()
    return train_clip(
        out_dir, world_dir, resolution=cfg.world.scenes.resolution,
        digit_counts=dict(cfg.world.scenes.digit_counts), progress=progress, **c.model_dump(),
    )  # fmt: skip


def load_clip(path: str | Path) -> WorldClip:
    """Load the folder written by :func:`train_clip` (or its ``clip.safetensors``)."""
    from safetensors.torch import load_file
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    folder = path.parent if path.suffix == ".safetensors" else path
    weights = folder / CLIP_FILE
    if not weights.is_file():
        raise MissingArtefactError(
            f"{weights} is missing: train the embedded CLIP with "
            "`senseflow world train-clip --world build/world --out build/clip` (dvc stage `clip`)"
        )
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
        tokenizer = PreTrainedTokenizerFast.from_pretrained(folder / TOKENIZER_DIR)
        model = build_clip(config)
        model.load_state_dict(load_file(str(weights)))
    except Exception as exc:  # missing config, foreign or corrupt file: name it and the fix
        raise UserError(
            f"{folder} is not a usable embedded CLIP ({type(exc).__name__}: {exc}); delete it and rerun "
            "`senseflow world train-clip`"
        ) from exc
    return WorldClip(model.eval().requires_grad_(False), tokenizer, config, weights_file=weights)
