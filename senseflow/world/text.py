"""Text side of the embedded world: an offline word-level tokenizer and a frozen tiny CLIP text encoder.

The tokenizer's vocabulary is exactly the caption grammar's words (plus the
CLIP special tokens), built with the ``tokenizers`` library and wrapped as a
``transformers`` fast tokenizer, so nothing is downloaded. The text encoder is
a ``transformers.CLIPTextModel`` of tiny config, randomly initialised from a
fixed seed and never trained: like the frozen encoders of real text-to-image
models it only has to keep captions apart, the teacher learns to read it.
Both are saved with ``save_pretrained`` so every later stage loads the same
bytes instead of rebuilding them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

from senseflow.conditioning import PromptEmbeds  # noqa: F401  (moved there; re-exported)
from senseflow.errors import UserError
from senseflow.io import atomic_write_text
from senseflow.world.vocab import BOS, EOS, PAD, TOKENIZER_DIR, load_tokenizer, vocabulary, world_part


def build_text_encoder(
    *, hidden_size: int, num_layers: int, num_heads: int, max_length: int, seed: int
) -> CLIPTextModel:
    """A frozen CLIP text transformer of tiny config, initialised from ``seed``."""
    vocab = vocabulary()
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        max_position_embeddings=max_length,
        projection_dim=hidden_size,
        pad_token_id=vocab.index(PAD),
        bos_token_id=vocab.index(BOS),
        eos_token_id=vocab.index(EOS),
    )
    # Initialise under a private generator state so the weights depend on the seed alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPTextModel(config)
    return model.eval().requires_grad_(False)


POOLINGS = ("eos", "tokens")
POOLING_FILE = "text_pooling.json"


class WorldTextEncoder:
    """Tokenizer + frozen encoder with a per-caption cache (captions repeat a lot).

    ``pooling`` decides the pooled (global) embedding that conditions the backbone's
    adaptive norms: ``eos`` is CLIP's EOS state; ``tokens`` concatenates every token state.
    A *trained* CLIP summarises the caption in its EOS state, a random frozen one does not:
    there the EOS state changes by a few percent between captions that differ in one word,
    and the teacher's global conditioning nearly ignores the digit. Concatenation keeps
    every word's state (like DiT's class embedding, it names the content outright).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerFast, model: CLIPTextModel, pooling: str = "eos"):
        if pooling not in POOLINGS:
            raise UserError(f"text pooling must be one of {POOLINGS}, got {pooling!r}")
        self.tokenizer = tokenizer
        self.model = model.eval().requires_grad_(False)
        self.pooling = pooling
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def hidden_size(self) -> int:
        """Width of the per-token embedding."""
        return self.model.config.hidden_size

    @property
    def pooled_size(self) -> int:
        """Width of the pooled embedding."""
        if self.pooling == "tokens":
            return self.hidden_size * self.tokenizer.model_max_length
        return self.hidden_size

    @classmethod
    def load(cls, folder: str | Path) -> WorldTextEncoder:
        """Load what :meth:`save` wrote (``tokenizer/`` and ``text_encoder/``)."""
        folder = Path(folder)
        tok = load_tokenizer(folder)
        model = CLIPTextModel.from_pretrained(world_part(folder, "text_encoder"))
        pooling_file = folder / POOLING_FILE
        pooling = json.loads(pooling_file.read_text())["pooling"] if pooling_file.is_file() else "eos"
        return cls(tok, model, pooling)

    def save(self, folder: str | Path) -> None:
        """Write ``tokenizer/`` and ``text_encoder/`` (safetensors) under ``folder``."""
        folder = Path(folder)
        self.tokenizer.save_pretrained(folder / TOKENIZER_DIR)
        self.model.save_pretrained(folder / "text_encoder")
        atomic_write_text(folder / POOLING_FILE, json.dumps({"pooling": self.pooling}) + "\n")

    def check(self, captions: list[str]) -> None:
        """Raise ``ValueError`` naming the first caption that the grammar cannot encode."""
        unk = self.tokenizer.unk_token_id
        for text in captions:
            ids = self.tokenizer(text)["input_ids"]
            if unk in ids:
                bad = [w for w in text.split() if self.tokenizer.convert_tokens_to_ids(w) == unk]
                raise UserError(f"caption {text!r} has words outside the world's vocabulary: {bad}")
            if len(ids) > self.tokenizer.model_max_length:
                raise UserError(
                    f"caption {text!r} is {len(ids)} tokens, longer than the encoder's "
                    f"{self.tokenizer.model_max_length}"
                )

    @torch.no_grad()
    def encode(self, captions: list[str]) -> PromptEmbeds:
        """Embed captions; the empty caption is the unconditional prompt for CFG."""
        missing = sorted({c for c in captions if c not in self._cache})
        if missing:
            batch = self.tokenizer(
                missing,
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            )
            out = self.model(input_ids=batch["input_ids"], attention_mask=None)
            pooled = out.last_hidden_state.flatten(1) if self.pooling == "tokens" else out.pooler_output
            for i, text in enumerate(missing):
                self._cache[text] = (out.last_hidden_state[i], pooled[i])
        hidden = torch.stack([self._cache[c][0] for c in captions])
        pooled = torch.stack([self._cache[c][1] for c in captions])
        return PromptEmbeds(hidden, pooled)
