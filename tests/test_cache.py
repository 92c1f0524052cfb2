import json
import shutil
import types

import pytest
import torch
from typer.testing import CliRunner

from senseflow.backbones import loading
from senseflow.backbones.base import PromptEncoder
from senseflow.cache import (
    MANIFEST,
    CachedPromptEncoder,
    ShardStore,
    build_prompt_cache,
    cache_profile,
    encoder_fingerprint,
    prompt_key,
)
from senseflow.cli import app
from senseflow.config import load_profile
from senseflow.errors import MissingArtefactError, UserError
from senseflow.world.prompts import load_prompt_file
from senseflow.world.text import PromptEmbeds, WorldTextEncoder

from .conftest import ROOT

runner = CliRunner()
SMOKE = str(ROOT / "experiments" / "smoke.yaml")


class Counting:
    """A PromptEncoder that records every prompt it is asked to encode."""

    def __init__(self, inner):
        self.inner = inner
        self.seen: list[str] = []
        self.calls = 0

    def encode(self, prompts):
        self.calls += 1
        self.seen += prompts
        return self.inner.encode(prompts)


@pytest.fixture(scope="module")
def encoder(world_dir):
    return WorldTextEncoder.load(world_dir)


@pytest.fixture(scope="module")
def prompts(world_dir):
    return [r.prompt for r in load_prompt_file(world_dir / "prompts" / "train.jsonl")]


def files(folder):
    """Every file with its modification time (ns): a rewrite changes it."""
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def manifest(folder):
    return json.loads((folder / MANIFEST).read_text())


def test_cached_rows_equal_the_encoder_output_in_request_order(tmp_path, encoder, prompts):
    stats = build_prompt_cache(
        encoder, prompts, tmp_path, encoder_id="w", shard_size=5, batch_size=3, progress=False
    )
    assert stats.encoded == len(prompts) + 1 and stats.reused == 0  # + the empty prompt
    assert len(stats.shards) == -(-(len(prompts) + 1) // 5)  # shard_size rows a shard, the rest in the last
    cached = CachedPromptEncoder(tmp_path)
    assert isinstance(cached, PromptEncoder)
    assert (cached.hidden_size, cached.pooled_size) == (encoder.hidden_size, encoder.pooled_size)
    assert "" in cached
    request = [prompts[7], "", prompts[0], prompts[7], prompts[12], ""]
    got, want = cached.encode(request), encoder.encode(request)
    assert got.hidden.dtype == want.hidden.dtype == torch.float32
    assert torch.equal(got.hidden, want.hidden) and torch.equal(got.pooled, want.pooled)
    assert not torch.equal(got.pooled[0], got.pooled[2])  # rows differ, so the order above is checked
    assert len(cached.encode([])) == 0


def test_keeps_dtype_and_fresh_encoder_agrees(tmp_path, world_dir, encoder, prompts):
    class Half:
        def encode(self, texts):
            e = encoder.encode(texts)
            return PromptEmbeds(e.hidden.to(torch.bfloat16), e.pooled.to(torch.bfloat16))

    build_prompt_cache(Half(), prompts[:4], tmp_path, encoder_id="h", progress=False)
    got = CachedPromptEncoder(tmp_path).encode(prompts[:4])
    assert got.hidden.dtype == got.pooled.dtype == torch.bfloat16
    assert manifest(tmp_path)["tensors"]["hidden"] == {"shape": [24, 64], "dtype": "bfloat16"}
    fresh = WorldTextEncoder.load(world_dir).encode(prompts[:4])
    torch.testing.assert_close(got.hidden.float(), fresh.hidden, atol=1e-2, rtol=1e-2)


def test_rerun_encodes_nothing_and_rewrites_no_file(tmp_path, encoder, prompts):
    build_prompt_cache(encoder, prompts, tmp_path, encoder_id="w", shard_size=6, progress=False)
    before = files(tmp_path)
    counting = Counting(encoder)
    again = list(reversed(prompts)) + prompts[:3] + [""]  # other order, duplicates: same set of prompts
    stats = build_prompt_cache(counting, again, tmp_path, encoder_id="w", shard_size=6, progress=False)
    assert counting.calls == 0 and stats.encoded == 0 and stats.shards == []
    assert stats.reused == stats.unique == len(prompts) + 1
    assert files(tmp_path) == before


def test_new_prompts_are_encoded_alone_into_a_new_shard(tmp_path, encoder, prompts):
    build_prompt_cache(encoder, prompts[:10], tmp_path, encoder_id="w", progress=False)
    before = files(tmp_path)
    counting = Counting(encoder)
    stats = build_prompt_cache(counting, prompts, tmp_path, encoder_id="w", progress=False)
    assert sorted(counting.seen) == sorted(prompts[10:])
    assert stats.encoded == len(prompts) - 10 and len(stats.shards) == 1
    after = files(tmp_path)
    assert set(after) - set(before) == {stats.shards[0]}
    assert all(after[name] == t for name, t in before.items() if name != MANIFEST)  # old shards untouched
    got = CachedPromptEncoder(tmp_path).encode(prompts)
    assert torch.equal(got.hidden, encoder.encode(prompts).hidden)


def test_a_kill_between_shard_and_manifest_resumes_by_adopting_the_shard(
    tmp_path, encoder, prompts, monkeypatch
):
    real_write = ShardStore.write_manifest
    writes = []

    def dying_write(self):
        writes.append(1)
        if len(writes) == 2:  # the second shard is on disk, its manifest update is "killed"
            raise KeyboardInterrupt
        real_write(self)

    monkeypatch.setattr(ShardStore, "write_manifest", dying_write)
    with pytest.raises(KeyboardInterrupt):
        build_prompt_cache(
            encoder, prompts, tmp_path, encoder_id="w", shard_size=4, batch_size=4, progress=False
        )
    monkeypatch.setattr(ShardStore, "write_manifest", real_write)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no half-written file behind
    shards = sorted(p.name for p in tmp_path.glob("prompts-*.safetensors"))
    assert len(shards) == 2 and len(manifest(tmp_path)["shards"]) == 1  # one orphan
    texts = ["", *prompts]
    # readers only trust the manifest: the orphan's prompts are not served yet
    with pytest.raises(MissingArtefactError):
        CachedPromptEncoder(tmp_path).encode(texts[4:8])
    (tmp_path / "prompts-0000000000000000.safetensors").write_bytes(b"not a shard")  # foreign: ignored
    counting = Counting(encoder)
    stats = build_prompt_cache(
        counting, prompts, tmp_path, encoder_id="w", shard_size=4, batch_size=4, progress=False
    )
    assert stats.adopted == 4 and stats.reused == 8
    assert sorted(counting.seen) == sorted(texts[8:])  # the orphan's rows were not encoded again
    got = CachedPromptEncoder(tmp_path).encode(texts)
    assert torch.equal(got.hidden, encoder.encode(texts).hidden)
    assert torch.equal(got.pooled, encoder.encode(texts).pooled)


def test_a_kill_while_writing_a_shard_leaves_a_readable_cache(tmp_path, encoder, prompts, monkeypatch):
    import senseflow.cache as cache

    real_save, saves = cache.atomic_save_safetensors, []

    def dying_save(tensors, path, metadata=None):
        saves.append(path)
        if len(saves) == 2:
            raise KeyboardInterrupt
        real_save(tensors, path, metadata)

    monkeypatch.setattr(cache, "atomic_save_safetensors", dying_save)
    with pytest.raises(KeyboardInterrupt):
        build_prompt_cache(encoder, prompts, tmp_path, encoder_id="w", shard_size=4, progress=False)
    monkeypatch.undo()
    named = manifest(tmp_path)["shards"]
    assert len(named) == 1 and all((tmp_path / name).is_file() for name in named)
    texts = ["", *prompts]
    assert torch.equal(
        CachedPromptEncoder(tmp_path).encode(texts[:4]).hidden, encoder.encode(texts[:4]).hidden
    )
    counting = Counting(encoder)
    build_prompt_cache(counting, prompts, tmp_path, encoder_id="w", shard_size=4, progress=False)
    assert sorted(counting.seen) == sorted(texts[4:])
    assert torch.equal(CachedPromptEncoder(tmp_path).encode(texts).pooled, encoder.encode(texts).pooled)


def test_missing_prompt_and_mismatched_encoder_are_clear_errors(tmp_path, encoder, prompts):
    with pytest.raises(MissingArtefactError, match=r"holds no prompts cache.*senseflow cache --profile"):
        CachedPromptEncoder(tmp_path / "nothing")
    build_prompt_cache(encoder, prompts[:3], tmp_path, encoder_id="encoder-A", progress=False)
    long_prompt = prompts[5] + " and much more text that goes on"
    with pytest.raises(MissingArtefactError) as err:
        CachedPromptEncoder(tmp_path).encode([prompts[0], long_prompt])
    msg = str(err.value)
    assert repr(long_prompt[:57] + "...") in msg and str(tmp_path) in msg
    assert "senseflow cache --profile P --out" in msg and "1 of 2" in msg
    with pytest.raises(UserError, match=r"'encoder-A', not by 'encoder-B'"):
        build_prompt_cache(encoder, prompts, tmp_path, encoder_id="encoder-B", progress=False)
    with pytest.raises(UserError, match=r"'encoder-A', not by 'encoder-B'"):
        CachedPromptEncoder(tmp_path, encoder_id="encoder-B")
    # an orphan shard of another encoder in the folder is refused too, naming both
    other = tmp_path / "other"
    build_prompt_cache(encoder, prompts[:1], other, encoder_id="encoder-B", progress=False)
    shard = next(other.glob("prompts-*.safetensors"))
    shutil.copy(shard, tmp_path / shard.name)
    with pytest.raises(
        UserError, match=rf"{shard.name} was written by prompts encoder 'encoder-B', not by 'encoder-A'"
    ):
        build_prompt_cache(encoder, prompts[:3], tmp_path, encoder_id="encoder-A", progress=False)


def test_keys_and_fingerprint_follow_the_encoder(tmp_path, world_dir):
    assert prompt_key("a red 3", "x") != prompt_key("a red 3", "y") != prompt_key("a red 4", "y")
    fp = encoder_fingerprint(world_dir)
    assert fp == encoder_fingerprint(world_dir) and len(fp) == 64
    copy = tmp_path / "world"
    shutil.copytree(world_dir, copy, ignore=shutil.ignore_patterns("prompts"))
    assert encoder_fingerprint(copy) == fp  # content, not location
    (copy / "text_pooling.json").write_text('{"pooling": "eos"}\n')
    assert encoder_fingerprint(copy) != fp
    with pytest.raises(MissingArtefactError, match="senseflow world build"):
        encoder_fingerprint(tmp_path / "nowhere")


def test_cli_caches_the_smoke_world_and_reruns_as_a_no_op(tmp_path, world_dir, encoder):
    out = tmp_path / "cache"
    args = ["cache", "--profile", SMOKE, "--world", str(world_dir), "--out", str(out), "-q"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    texts = [
        r.prompt
        for s in ("train", "val", "test")
        for r in load_prompt_file(world_dir / "prompts" / f"{s}.jsonl")
    ]
    assert f"{len(texts) + 1} encoded" in first.output and "latents: none needed" in first.output
    cached = CachedPromptEncoder(out)  # the --out folder itself: its prompts/ is found
    assert cached.encoder_id == encoder_fingerprint(world_dir)
    got = cached.encode(["", *texts])
    assert torch.equal(got.pooled, encoder.encode(["", *texts]).pooled)
    assert manifest(out / "prompts")["command"].startswith("senseflow cache --profile smoke --out")
    before = files(out / "prompts")
    second = runner.invoke(app, args)
    assert (
        second.exit_code == 0 and "0 encoded" in second.output and f"{len(texts) + 1} reused" in second.output
    )
    assert files(out / "prompts") == before
    # a prompt outside the world's vocabulary is refused by name
    (tmp_path / "extra.txt").write_text("at the top left a purple 3 on a black background\n")
    bad = runner.invoke(app, [*args, "--prompts", str(tmp_path / "extra.txt")])
    assert bad.exit_code == 1 and "purple" in str(bad.exception)


def test_real_profile_loads_its_encoder_only_for_uncached_prompts(tmp_path, monkeypatch, encoder, prompts):
    model = tmp_path / "model"
    (model / "text_encoder").mkdir(parents=True)
    (model / "text_encoder" / "model.safetensors").write_bytes(b"weights v1")
    (model / "unet").mkdir()
    (model / "unet" / "model.safetensors").write_bytes(b"not part of the identity")
    # without a `data:` section the prompts come from --prompts alone (test_real_stages covers data)
    cfg = load_profile("sdxl", [f"teacher.pretrained.model_id={model}", "data=null"])
    (tmp_path / "p.txt").write_text("\n".join(prompts[:5]) + "\n")
    with pytest.raises(UserError, match="pass --prompts FILE"):
        cache_profile(cfg, tmp_path / "c", progress=False)
    loads = []
    monkeypatch.setattr(loading, "load_backbone", lambda family, pretrained: (
        loads.append((family, pretrained.model_id)) or types.SimpleNamespace(text=encoder)
    ))  # fmt: skip
    report = cache_profile(cfg, tmp_path / "c", prompts_file=tmp_path / "p.txt", progress=False)
    assert loads == [("sdxl", str(model))] and report.prompts.encoded == 6
    again = cache_profile(cfg, tmp_path / "c", prompts_file=tmp_path / "p.txt", progress=False)
    assert len(loads) == 1 and again.prompts.encoded == 0  # nothing to encode: no model loaded
    (model / "unet" / "model.safetensors").write_bytes(b"changed unet")
    assert (
        cache_profile(cfg, tmp_path / "c", prompts_file=tmp_path / "p.txt", progress=False).prompts.reused
        == 6
    )
    (model / "text_encoder" / "model.safetensors").write_bytes(b"weights v2")  # another encoder: refused
    with pytest.raises(UserError, match="one cache folder holds one encoder's outputs"):
        cache_profile(cfg, tmp_path / "c", prompts_file=tmp_path / "p.txt", progress=False)
