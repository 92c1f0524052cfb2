"""Tiny, randomly initialised SDXL / SD 3.5 / FLUX.1 pipelines built offline, for tests.

Every component is the real diffusers / transformers class of the family at a tiny config,
so a pipeline saved with ``save_pretrained`` has the layout of the real checkpoints and
loads back through :func:`senseflow.backbones.loading.load_backbone` exactly as they would.
No tokenizer files ship with the installed packages: the CLIP tokenizer is the real OpenAI
byte-level BPE rebuilt from open_clip's bundled merges (only the first merges, to keep the
embedding table small), the T5 tokenizer a hand-made unigram vocabulary (letters, digits,
punctuation and a few words); both encode any ASCII prompt.

The shapes follow the real models' wiring, shrunk: SDXL's UNet reads the concatenation of
both CLIP hidden states and CLIP-G's projection plus six size ids; SD3's transformer reads
T5-width tokens and both CLIP projections; FLUX's reads T5 tokens and CLIP-L's pooled output
and packs 2x2 latent patches. Images are ``RESOLUTION`` px and the VAE downsamples by 2.
"""

from __future__ import annotations

import gzip
import string
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from open_clip.tokenizer import bytes_to_unicode, default_bpe
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from senseflow.backbones.flow import tiny_sd3_transformer

RESOLUTION = 32  # pixels; the tiny VAE halves it
CLIP_LENGTH = 16  # tokens (77 for the real CLIP encoders)
T5_LENGTH = 12  # the adapters' max_sequence_length in tests (256 / 512 for real)
CLIP_MERGES = 300  # first BPE merges kept: every byte still encodes, the vocabulary stays small
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
WORDS = ("a", "the", "photo", "of", "cat", "dog", "red", "blue", "on", "and", "with")


@contextmanager
def seeded(seed: int):
    """Initialise under a private generator state, so weights depend on ``seed`` alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def clip_tokenizer(max_length: int = CLIP_LENGTH) -> CLIPTokenizer:
    """OpenAI CLIP's byte-level BPE rebuilt offline from open_clip's merges (first ``CLIP_MERGES``)."""
    with gzip.open(default_bpe(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    # line 0 is a version header; each further line is one merge "left right", in training order
    merges = [tuple(line.split()) for line in lines[1 : CLIP_MERGES + 1]]
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def t5_tokenizer(max_length: int = T5_LENGTH) -> T5Tokenizer:
    """A T5-style unigram tokenizer: characters and a few whole words, specials as in T5."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    chars = string.ascii_letters + string.digits + string.punctuation
    # whole words first: a character piece must not repeat a word piece ("\u2581a")
    pieces += [("\u2581" + w, -3.0) for w in WORDS]
    pieces += [(c, -5.0) for c in chars] + [("\u2581" + c, -6.0) for c in chars if c not in WORDS]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=max_length)


def clip_text_encoder(
    tokenizer: CLIPTokenizer, *, width: int, projection: int | None, seed: int
) -> CLIPTextModel | CLIPTextModelWithProjection:
    """A 2-layer CLIP text transformer; with ``projection`` the ``WithProjection`` variant (CLIP-G)."""
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=projection or width,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with seeded(seed):
        model = CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)
    return model.eval()


def t5_text_encoder(tokenizer: T5Tokenizer, *, width: int, seed: int) -> T5EncoderModel:
    """A 2-layer T5 encoder of width ``width``."""
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=width,
        d_kv=8,
        d_ff=2 * width,
        num_layers=2,
        num_heads=2,
        relative_attention_num_buckets=8,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    with seeded(seed):
        return T5EncoderModel(config).eval()


def tiny_vae(latent_channels: int, *, scaling_factor: float, shift_factor: float | None, seed: int):
    """An ``AutoencoderKL`` with two blocks (downsampling 2x), ``latent_channels`` channels."""
    with seeded(seed):
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(8, 16),
            layers_per_block=1,
            latent_channels=latent_channels,
            norm_num_groups=4,
            sample_size=RESOLUTION,
            scaling_factor=scaling_factor,
            shift_factor=shift_factor,
            force_upcast=True,
        )
    return vae.eval()


def sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """SDXL's wiring: epsilon UNet with text_time conditioning, two CLIP encoders, DDPM schedule."""
    tok = clip_tokenizer()
    te1 = clip_text_encoder(tok, width=16, projection=None, seed=seed + 1)
    te2 = clip_text_encoder(tok, width=24, projection=20, seed=seed + 2)
    time_dim = 4
    with seeded(seed + 3):
        unet = UNet2DConditionModel(
            sample_size=RESOLUTION // 2,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(16, 32),
            layers_per_block=1,
            norm_num_groups=8,
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            cross_attention_dim=16 + 24,  # both penultimate CLIP states, concatenated
            addition_embed_type="text_time",
            addition_time_embed_dim=time_dim,
            projection_class_embeddings_input_dim=6 * time_dim + 20,  # six size ids + CLIP-G projection
        ).eval()
    # the real SDXL scheduler config (EulerDiscrete over the DDPM betas)
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        timestep_spacing="leading",
        steps_offset=1,
    )
    return StableDiffusionXLPipeline(
        vae=tiny_vae(4, scaling_factor=0.13025, shift_factor=None, seed=seed + 4),
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=tok,
        tokenizer_2=clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def sd3_pipeline(seed: int = 0) -> StableDiffusion3Pipeline:
    """SD 3.5's wiring: MMDiT over T5-width tokens, CLIP-L + CLIP-G (projections) + T5, shift 3."""
    tok = clip_tokenizer()
    t5_tok = t5_tokenizer()
    te1 = clip_text_encoder(tok, width=16, projection=12, seed=seed + 1)
    te2 = clip_text_encoder(tok, width=24, projection=20, seed=seed + 2)
    t5_width = 48  # wider than both CLIP states together (40): the pipeline zero-pads them to it
    transformer = tiny_sd3_transformer(
        resolution=RESOLUTION // 2,
        in_channels=16,
        patch_size=2,
        num_layers=1,
        num_attention_heads=2,
        attention_head_dim=8,
        text_dim=t5_width,
        pooled_dim=12 + 20,
        seed=seed + 3,
    ).eval()
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=tiny_vae(16, scaling_factor=1.5305, shift_factor=0.0609, seed=seed + 4),
        text_encoder=te1,
        tokenizer=tok,
        text_encoder_2=te2,
        tokenizer_2=clip_tokenizer(),
        text_encoder_3=t5_text_encoder(t5_tok, width=t5_width, seed=seed + 5),
        tokenizer_3=t5_tok,
    )


def flux_pipeline(seed: int = 0) -> FluxPipeline:
    """FLUX.1 dev's wiring: guidance-embedded transformer on packed 2x2 patches, CLIP-L pooled + T5."""
    tok = clip_tokenizer()
    t5_tok = t5_tokenizer()
    t5_width = 32
    with seeded(seed + 3):
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=4 * 4,  # 4 latent channels x a 2x2 patch
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=t5_width,
            pooled_projection_dim=16,
            guidance_embeds=True,
            axes_dims_rope=(4, 6, 6),
        ).eval()
    # the real FLUX.1 dev scheduler config: resolution-dependent (dynamic) exponential shift
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=tiny_vae(4, scaling_factor=0.3611, shift_factor=0.1159, seed=seed + 4),
        text_encoder=clip_text_encoder(tok, width=16, projection=None, seed=seed + 1),
        tokenizer=tok,
        text_encoder_2=t5_text_encoder(t5_tok, width=t5_width, seed=seed + 5),
        tokenizer_2=t5_tok,
        transformer=transformer,
    )


PIPELINES = {"sdxl": sdxl_pipeline, "sd3": sd3_pipeline, "flux": flux_pipeline}


def save_tiny_pipeline(family: str, folder: str | Path, seed: int = 0) -> Path:
    """Build the tiny pipeline of ``family`` and ``save_pretrained`` it (safetensors) to ``folder``."""
    folder = Path(folder)
    PIPELINES[family](seed).save_pretrained(folder)
    return folder
