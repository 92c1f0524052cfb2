import pytest
import torch

from senseflow.errors import UserError
from senseflow.world.text import WorldTextEncoder, build_text_encoder
from senseflow.world.vocab import build_tokenizer, vocabulary

KW = dict(hidden_size=32, num_layers=1, num_heads=2, max_length=24)


def test_tokenizer_is_word_level_with_clip_framing():
    tok = build_tokenizer(24)
    ids = tok("at the top left a red 3 on a black background")["input_ids"]
    vocab = vocabulary()
    assert [vocab[i] for i in ids] == [
        "<|startoftext|>",
        *"at the top left a red 3 on a black background".split(),
        "<|endoftext|>",
    ]
    assert tok.unk_token_id not in ids


def test_encoder_is_a_function_of_its_seed():
    a, b, c = (build_text_encoder(seed=s, **KW) for s in (0, 0, 1))
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    assert not torch.equal(a.embeddings.token_embedding.weight, c.embeddings.token_embedding.weight)
    assert not any(p.requires_grad for p in a.parameters())


def test_encode_save_load_and_cache(tmp_path):
    enc = WorldTextEncoder(build_tokenizer(24), build_text_encoder(seed=0, **KW))
    caps = [
        "at the top left a red 3 on a black background",
        "",
        "at the top right a blue 7 on a white background",
    ]
    e = enc.encode(caps)
    assert e.hidden.shape == (3, 24, 32) and e.pooled.shape == (3, 32)
    assert not torch.allclose(e.pooled[0], e.pooled[2])
    enc.save(tmp_path)
    loaded = WorldTextEncoder.load(tmp_path).encode(caps)
    torch.testing.assert_close(loaded.hidden, e.hidden)
    torch.testing.assert_close(loaded.pooled, e.pooled)
    again = enc.encode(caps[::-1])
    torch.testing.assert_close(again.pooled, e.pooled.flip(0))


def test_pooled_embedding_sees_the_whole_caption():
    # the pooled vector is the EOS state, so every word changes it (a CLIP pooling trap)
    enc = WorldTextEncoder(build_tokenizer(24), build_text_encoder(seed=0, **KW))
    digits = enc.encode([f"at the top left a red {d} on a black background" for d in range(10)]).pooled
    assert torch.cdist(digits, digits).fill_diagonal_(1.0).min() > 1e-3
    vocab = vocabulary()
    assert vocab.index("<|endoftext|>") == len(vocab) - 1 and enc.model.config.eos_token_id != 2


def test_check_rejects_unknown_words_and_missing_folder(tmp_path):
    enc = WorldTextEncoder(build_tokenizer(24), build_text_encoder(seed=0, **KW))
    with pytest.raises(UserError, match="purple"):
        enc.check(["at the top left a purple 3 on a black background"])
    with pytest.raises(FileNotFoundError, match="senseflow world build"):
        WorldTextEncoder.load(tmp_path / "nowhere")


def test_token_pooling_keeps_every_word_and_survives_save(tmp_path):
    enc = WorldTextEncoder(build_tokenizer(24), build_text_encoder(seed=0, **KW), pooling="tokens")
    assert enc.pooled_size == 24 * 32
    a, b = enc.encode(
        ["at the top left a red 3 on a black background", "at the top left a red 7 on a black background"]
    ).pooled
    assert a.shape == (24 * 32,)
    # the word that differs moves the pooled vector by its whole token state, not a diluted share
    assert (a - b).norm() > 0.1 * a.norm() / 24**0.5
    enc.save(tmp_path)
    loaded = WorldTextEncoder.load(tmp_path)
    assert loaded.pooling == "tokens"
    torch.testing.assert_close(loaded.encode(["at the top left a red 3 on a black background"]).pooled[0], a)
    with pytest.raises(UserError, match="pooling"):
        WorldTextEncoder(enc.tokenizer, enc.model, pooling="mean")
