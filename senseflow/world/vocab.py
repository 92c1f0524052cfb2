"""The embedded world's vocabulary and word-level tokenizer (no text model).

Split from :mod:`senseflow.world.text` because what needs only the tokenizer -- the world's
CLIP, the ``clip_score_embedded`` metric of every evaluate stage -- should not import
``transformers``' modelling stack for ``CLIPTextModel`` (about 2.4 s per process on 2 cores,
measured): the tokenizer wrapper alone costs about 0.6 s.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from tokenizers.processors import TemplateProcessing
from transformers import PreTrainedTokenizerFast

from senseflow.errors import MissingArtefactError
from senseflow.world.scenes import BACKGROUND_NAMES, COLOUR_NAMES, DIGIT_NAMES, POSITIONS

TOKENIZER_DIR = "tokenizer"  # the world folder's tokenizer (WorldTextEncoder.save writes it)

BOS, EOS, PAD, UNK = "<|startoftext|>", "<|endoftext|>", "<|pad|>", "<|unk|>"
GRAMMAR_WORDS = ("a", "at", "the", "and", "on", "background")


def vocabulary() -> list[str]:
    """Every token the tokenizer knows (ids are list positions), specials last as in CLIP.

    EOS must hold the highest id: ``CLIPTextModel`` pools the hidden state at
    ``input_ids.argmax()`` when its ``eos_token_id`` is 2 (the legacy OpenAI vocabulary
    convention). With EOS anywhere else the "pooled" embedding silently becomes the state
    of whichever word has the largest id, which drops everything said after it.
    """
    words = set(GRAMMAR_WORDS) | set(DIGIT_NAMES) | set(COLOUR_NAMES) | set(BACKGROUND_NAMES)
    words |= {w for p in POSITIONS for w in p.split()}
    return [*sorted(words), UNK, PAD, BOS, EOS]


def build_tokenizer(max_length: int) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the caption grammar, CLIP-style ``BOS ... EOS`` framing."""
    vocab = {tok: i for i, tok in enumerate(vocabulary())}
    core = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = WhitespaceSplit()
    core.post_processor = TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=max_length,
    )


def world_part(world_dir: str | Path, sub: str) -> Path:
    """``<world_dir>/<sub>``, or an error naming the stage that writes it."""
    folder = Path(world_dir) / sub
    if not folder.is_dir():
        raise MissingArtefactError(
            f"{folder} is missing: build the world first with "
            "`senseflow world build --out <dir>` (dvc stage `world`)"
        )
    return folder


def load_tokenizer(world_dir: str | Path) -> PreTrainedTokenizerFast:
    """The tokenizer of a world folder (``<world_dir>/tokenizer``), without the text encoder."""
    return PreTrainedTokenizerFast.from_pretrained(world_part(world_dir, TOKENIZER_DIR))
