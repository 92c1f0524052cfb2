"""Teacher target caching: prompt embeddings encoded once, read while training.

Distillation only ever needs the *outputs* of the teacher's text encoders for a fixed
prompt set, yet the encoders are the largest frozen models in memory (T5-XXL alone is
about 9 GB in bf16). ``senseflow cache`` encodes every prompt once; the training loop
then reads rows from the cache through :class:`CachedPromptEncoder`, a
:class:`~senseflow.backbones.base.PromptEncoder` that loads no model.

A cache folder (``DIR/prompts``)::

    manifest.json                    kind, identity, per-row tensor shapes and dtypes, key -> [shard, row]
    prompts-<16 hex>.safetensors     rows of ``hidden`` (N, L, D) and ``pooled`` (N, P), encoder dtype kept

Everything is content-addressed. A row's key is the sha256 of the encoder's identity (a
fingerprint of its files) and the prompt, so a changed encoder can never serve stale rows;
a shard's name is a hash of its keys. Shards are written atomically *before* the
manifest names them, and each shard's metadata repeats the identity and its keys: a run
killed between the two leaves an orphan shard that the next run adopts instead of
encoding it again. Rerunning with the same inputs encodes nothing and writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from tqdm.auto import tqdm

from senseflow.conditioning import PromptEmbeds
from senseflow.errors import MissingArtefactError, UserError
from senseflow.io import atomic_save_safetensors, atomic_write_text, ensure_writable_dir, sha256_file
from senseflow.world.prompts import load_prompt_file
from senseflow.world.text import POOLING_FILE, WorldTextEncoder

log = logging.getLogger(__name__)

FORMAT = "senseflow-cache/1"
MANIFEST = "manifest.json"
PROMPTS = "prompts"
FILL_COMMAND = "senseflow cache --profile P --out {folder}"


def _sha(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        # a separator after each part, so ("ab", "c") and ("a", "bc") hash differently
        h.update(part.encode("utf-8") + b"\0")
    return h.hexdigest()


def prompt_key(text: str, encoder_id: str) -> str:
    """Cache key of ``text`` under the encoder ``encoder_id`` (sha256 hex of both)."""
    return _sha(PROMPTS, encoder_id, text)


# ----------------------------------------------------------------------------- fingerprints
_HF_BLOB = re.compile(r"^[0-9a-f]{40}$|^[0-9a-f]{64}$")


def _file_digest(path: Path) -> str:
    target = path.resolve()
    # A Hugging Face cache snapshot links every file to blobs/<its git or LFS hash>: the name
    # already is a content hash, which spares reading gigabytes of T5 weights on every run.
    if path.is_symlink() and target.parent.name == "blobs" and _HF_BLOB.match(target.name):
        return target.name
    return sha256_file(target)


def files_fingerprint(parts: Iterable[str | Path]) -> str:
    """sha256 over (name, content digest) of every file in ``parts`` (files or folders), sorted.

    A file is named by its path from its part's parent folder, so a copy elsewhere keeps the
    fingerprint. Hidden files and ``__pycache__`` are left out (byte-code appears and changes
    without its source changing).
    """
    named: list[tuple[str, Path]] = []
    for part in map(Path, parts):
        if part.is_dir():
            files = [f for f in part.rglob("*") if f.is_file() and not f.name.startswith(".")
                     and "__pycache__" not in f.parts]  # fmt: skip
        else:
            files = [part] if part.is_file() else []
        named += [(f.relative_to(part.parent).as_posix(), f) for f in files]
    return _sha("files", *(f"{name}={_file_digest(f)}" for name, f in sorted(named)))


def encoder_fingerprint(folder: str | Path) -> str:
    """Identity of the embedded world's text encoder: a hash of the files that define it.

    Covers ``tokenizer/``, ``text_encoder/`` and the pooling file written by
    :meth:`WorldTextEncoder.save <senseflow.world.text.WorldTextEncoder.save>`, so a rebuilt
    or reconfigured encoder gets a new identity and its old cache entries stop matching.
    """
    folder = Path(folder)
    for sub in ("tokenizer", "text_encoder"):
        if not (folder / sub).is_dir():
            raise MissingArtefactError(
                f"{folder / sub} is missing: build the world first with "
                f"`senseflow world build --out {folder}` (dvc stage `world`)"
            )
    parts = [folder / "tokenizer", folder / "text_encoder", folder / POOLING_FILE]
    return files_fingerprint(parts)


# ----------------------------------------------------------------------------- the store
def _spec(tensor: torch.Tensor) -> dict:
    return {"shape": list(tensor.shape[1:]), "dtype": str(tensor.dtype).removeprefix("torch.")}


class ShardStore:
    """A folder of safetensors shards plus ``manifest.json`` mapping a key to (shard file, row).

    The one piece of machinery behind both caches: a kind (``prompts`` or ``latents``), an
    identity (the encoder's or codec's fingerprint; one per folder), named tensors with a
    fixed per-row shape and dtype, and rows addressed by content keys.
    """

    def __init__(self, folder: str | Path, kind: str):
        self.folder = Path(folder)
        self.kind = kind
        self._handles: dict[str, Any] = {}
        self.manifest: dict | None = self._read_manifest()

    # -- reading
    def _read_manifest(self) -> dict | None:
        path = self.folder / MANIFEST
        if not path.is_file():
            return None
        try:
            manifest = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(
                f"{path}: corrupt cache manifest ({exc}); delete {self.folder} and refill it"
            ) from exc
        if (
            not isinstance(manifest, dict)
            or manifest.get("format") != FORMAT
            or manifest.get("kind") != self.kind
        ):
            got = manifest.get("kind") if isinstance(manifest, dict) else None
            raise UserError(f"{path} is not a {self.kind} cache (kind {got!r}); choose another folder")
        return manifest

    @property
    def identity(self) -> str | None:
        """Fingerprint of the encoder (or codec) that wrote every row, None for a new folder."""
        return self.manifest["identity"] if self.manifest else None

    @property
    def specs(self) -> dict[str, dict]:
        """Tensor name -> ``{"shape": per-row shape, "dtype": name}``."""
        return self.manifest["tensors"] if self.manifest else {}

    @property
    def entries(self) -> dict[str, list]:
        """Key -> ``[shard file, row]``."""
        return self.manifest["entries"] if self.manifest else {}

    @property
    def fill_command(self) -> str:
        """The command that fills this cache (recorded by the run that wrote it)."""
        recorded = self.manifest.get("command") if self.manifest else None
        return recorded or FILL_COMMAND.format(
            folder=self.folder.parent if self.folder.name == self.kind else self.folder
        )

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def _handle(self, shard: str):
        if shard not in self._handles:
            try:
                self._handles[shard] = safe_open(str(self.folder / shard), framework="pt")
            except (OSError, SafetensorError) as exc:
                raise MissingArtefactError(
                    f"cache shard {self.folder / shard} is missing or unreadable ({exc}); "
                    f"refill the cache with `{self.fill_command}`"
                ) from exc
        return self._handles[shard]

    def rows(self, keys: list[str]) -> dict[str, torch.Tensor]:
        """Every tensor's rows for ``keys``, in that order (a repeated key repeats its row).

        Rows are sliced out of memory-mapped shards, so only what is asked for is read.
        Every key must be present (check with ``in`` first).
        """
        unique = list(dict.fromkeys(keys))
        position = {k: i for i, k in enumerate(unique)}
        order = torch.tensor([position[k] for k in keys], dtype=torch.long)
        out = {}
        for name, spec in self.specs.items():
            if not unique:
                out[name] = torch.empty((0, *spec["shape"]), dtype=getattr(torch, spec["dtype"]))
                continue
            parts = [
                self._handle(shard).get_slice(name)[row : row + 1]
                for shard, row in map(self.entries.get, unique)
            ]
            out[name] = torch.cat(parts)[order]
        return out

    # -- writing
    def open_for_writing(self, identity: str, command: str | None = None) -> int:
        """Bind the folder to ``identity`` and adopt orphan shards; return the rows adopted.

        One folder holds one encoder's outputs: another identity is an error naming both.
        """
        ensure_writable_dir(self.folder)
        if self.manifest is None:
            self.manifest = {"format": FORMAT, "kind": self.kind, "identity": identity, "tensors": {}}
            self.manifest |= {"shards": {}, "entries": {}}
        self.check_identity(identity, self.identity, self.folder / MANIFEST)
        if command:
            self.manifest["command"] = command
        return self._adopt_orphans(identity)

    def check_identity(self, wanted: str, found: str | None, where: Path) -> None:
        """Raise :class:`UserError` naming both identities unless ``found`` (read at ``where``) matches."""
        if found != wanted:
            raise UserError(
                f"{where} was written by {self.kind} encoder {found!r}, not by {wanted!r}: one cache folder "
                "holds one encoder's outputs; choose another --out or delete the folder"
            )

    def _check_specs(self, specs: dict[str, dict], where: str) -> None:
        if not self.specs:
            self.manifest["tensors"] = specs
        elif specs != self.specs:
            raise UserError(
                f"{where} holds rows {specs}, but the cache {self.folder} holds {self.specs}; "
                "choose another --out or delete the folder"
            )

    def _adopt_orphans(self, identity: str) -> int:
        adopted = 0
        for path in sorted(self.folder.glob(f"{self.kind}-*.safetensors")):
            if path.name in self.manifest["shards"]:
                continue
            try:
                with safe_open(str(path), framework="pt") as f:
                    meta = f.metadata() or {}
                    keys = json.loads(meta["keys"])
                    specs = {}
                    for name in f.keys():
                        sl = f.get_slice(name)
                        if sl.get_shape()[0] != len(keys):
                            raise ValueError(f"{name!r} has {sl.get_shape()[0]} rows for {len(keys)} keys")
                        specs[name] = {
                            "shape": sl.get_shape()[1:],
                            "dtype": str(sl[:1].dtype).removeprefix("torch."),
                        }
            except (OSError, SafetensorError, KeyError, ValueError) as exc:
                # shards are written atomically, so an unreadable one was not written by a cache run
                log.warning("ignoring %s: not a readable cache shard (%s)", path, exc)
                continue
            self.check_identity(identity, meta.get("identity"), path)
            self._check_specs(specs, str(path))
            self.manifest["shards"][path.name] = len(keys)
            for row, key in enumerate(keys):
                if key not in self.entries:
                    self.entries[key] = [path.name, row]
                    adopted += 1
        if adopted:
            self.write_manifest()
        return adopted

    def add_shard(
        self, keys: list[str], tensors: dict[str, torch.Tensor], labels: list[str] | None = None
    ) -> str:
        """Write one shard (atomically), then record its rows in the manifest (atomically)."""
        tensors = {name: t.detach().cpu() for name, t in tensors.items()}
        self._check_specs({name: _spec(t) for name, t in tensors.items()}, "the encoder's output")
        name = f"{self.kind}-{_sha(self.identity, *keys)[:16]}.safetensors"
        metadata = {"format": FORMAT, "kind": self.kind, "identity": self.identity, "keys": json.dumps(keys)}
        if labels is not None:
            metadata["labels"] = json.dumps(labels)  # makes a shard readable on its own (debugging)
        atomic_save_safetensors(tensors, self.folder / name, metadata)
        # A kill here leaves a complete shard the manifest does not name: the next run adopts it.
        self.manifest["shards"][name] = len(keys)
        for row, key in enumerate(keys):
            self.entries[key] = [name, row]
        self.write_manifest()
        return name

    def write_manifest(self) -> None:
        """Rewrite ``manifest.json`` atomically."""
        atomic_write_text(self.folder / MANIFEST, json.dumps(self.manifest, separators=(",", ":")) + "\n")


def _open_reader(folder: str | Path, kind: str) -> ShardStore:
    """The store of ``folder`` itself, or of ``folder/<kind>`` (the layout ``senseflow cache`` writes)."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file() and (folder / kind / MANIFEST).is_file():
        folder = folder / kind
    store = ShardStore(folder, kind)
    if store.manifest is None:
        raise MissingArtefactError(
            f"{folder} holds no {kind} cache ({MANIFEST} is missing); fill it with `{store.fill_command}`"
        )
    return store


def _missing_error(store: ShardStore, what: str, missing: list[str], requested: int) -> MissingArtefactError:
    first = missing[0] if len(missing[0]) <= 60 else missing[0][:57] + "..."
    return MissingArtefactError(
        f"{what} {first!r} is not in the cache {store.folder} ({len(missing)} of {requested} requested "
        f"missing); fill it with `{store.fill_command}`"
    )


# ----------------------------------------------------------------------------- filling
@dataclass
class CacheStats:
    """What one filling run did."""

    folder: Path
    kind: str
    identity: str
    requested: int = 0  # items asked for, duplicates included
    unique: int = 0
    reused: int = 0  # already in the cache before this run encoded anything
    adopted: int = 0  # rows recovered from shards an interrupted run wrote
    encoded: int = 0
    shards: list[str] = field(default_factory=list)  # shard files written by this run

    def summary(self) -> str:
        """One line for the command line."""
        adopted = f", {self.adopted} adopted from an interrupted run" if self.adopted else ""
        return (
            f"{self.kind}: {self.unique} unique ({self.requested} requested), {self.reused} reused{adopted}, "
            f"{self.encoded} encoded into {len(self.shards)} new shard(s) in {self.folder} "
            f"(identity {self.identity[:12]})"
        )


def _fill(
    kind: str,
    out_dir: str | Path,
    identity: str,
    items: Iterable[tuple[str, Any, str | None]],
    encode: Callable[[list[Any]], dict[str, torch.Tensor]],
    *,
    command: str | None,
    shard_size: int,
    batch_size: int,
    progress: bool,
    total: int | None = None,
) -> CacheStats:
    """Encode the items (key, payload, label) not yet in the ``kind`` cache ``out_dir``, in shards."""
    store = ShardStore(out_dir, kind)
    stats = CacheStats(store.folder, kind, identity)
    stats.adopted = store.open_for_writing(identity, command)
    if shard_size < 1 or batch_size < 1:
        raise UserError(f"shard_size and batch_size must be positive, got {shard_size} and {batch_size}")
    batch: list[tuple[str, Any, str | None]] = []
    pending_keys: list[str] = []
    pending_labels: list[str | None] = []
    pending: dict[str, list[torch.Tensor]] = {}
    seen: set[str] = set()
    bar = tqdm(total=total, desc=f"cache {stats.kind}", unit="row", disable=not progress)

    def write(n: int) -> None:
        nonlocal pending_keys, pending_labels
        joined = {name: torch.cat(parts) for name, parts in pending.items()}
        labels = pending_labels[:n] if all(label is not None for label in pending_labels[:n]) else None
        stats.shards.append(store.add_shard(pending_keys[:n], {k: v[:n] for k, v in joined.items()}, labels))
        for name, t in joined.items():
            pending[name] = [t[n:].clone()] if len(t) > n else []  # clone: do not pin the written rows
        pending_keys, pending_labels = pending_keys[n:], pending_labels[n:]

    def encode_batch() -> None:
        with torch.no_grad():
            out = encode([payload for _, payload, _ in batch])
        for name, t in out.items():
            if len(t) != len(batch):
                raise ValueError(f"encoder returned {len(t)} rows of {name!r} for {len(batch)} inputs")
            pending.setdefault(name, []).append(t.detach().cpu())
        pending_keys.extend(key for key, _, _ in batch)
        pending_labels.extend(label for _, _, label in batch)
        stats.encoded += len(batch)
        bar.update(len(batch))
        batch.clear()
        while len(pending_keys) >= shard_size:
            write(shard_size)

    try:
        for key, payload, label in items:
            stats.requested += 1
            if key in seen:
                continue
            seen.add(key)
            stats.unique += 1
            if key in store:
                stats.reused += 1
                bar.update(1)
                continue
            batch.append((key, payload, label))
            if len(batch) == batch_size:
                encode_batch()
        if batch:
            encode_batch()
        if pending_keys:
            write(len(pending_keys))
    finally:
        bar.close()  # before any error message, so it does not land inside the bar
    if not (store.folder / MANIFEST).is_file():
        store.write_manifest()  # an empty cache is still a cache: readers find it, not a "missing" error
    return stats


def build_prompt_cache(
    encoder,
    prompts: list[str],
    out_dir: str | Path,
    *,
    encoder_id: str,
    shard_size: int = 256,
    batch_size: int = 64,
    progress: bool = True,
    command: str | None = None,
) -> CacheStats:
    """Encode ``prompts`` (plus ``""``, the unconditional prompt) into the cache ``out_dir``.

    ``encoder`` is any :class:`~senseflow.backbones.base.PromptEncoder`; ``encoder_id`` its
    fingerprint (see :func:`encoder_fingerprint`). Prompts already cached are skipped, so a
    rerun makes no encoder call and writes nothing; new prompts go into new shards. Rows keep
    the encoder's dtype. ``command`` is recorded and named by readers that miss a prompt.
    """
    texts = ["", *prompts]
    items = ((prompt_key(t, encoder_id), t, t) for t in texts)

    def encode(batch: list[str]) -> dict[str, torch.Tensor]:
        embeds = encoder.encode(batch)
        return {"hidden": embeds.hidden, "pooled": embeds.pooled}

    return _fill(
        PROMPTS,
        out_dir,
        encoder_id,
        items,
        encode,
        command=command,
        shard_size=shard_size,
        batch_size=batch_size,
        progress=progress,
        total=len(set(texts)),
    )


# ----------------------------------------------------------------------------- readers
class CachedPromptEncoder:
    """A :class:`~senseflow.backbones.base.PromptEncoder` that looks prompts up in a cache.

    ``cache_dir`` is the folder :func:`build_prompt_cache` filled, or the ``--out`` of
    ``senseflow cache`` (its ``prompts/`` is used). Shards are memory-mapped on first use;
    no text encoder is loaded. Pass ``encoder_id`` to refuse a cache written by another encoder.
    """

    def __init__(self, cache_dir: str | Path, *, encoder_id: str | None = None):
        self.store = _open_reader(cache_dir, PROMPTS)
        if encoder_id is not None:
            self.store.check_identity(encoder_id, self.store.identity, self.store.folder / MANIFEST)
        self.encoder_id: str = self.store.identity

    @property
    def hidden_size(self) -> int:
        """Width of the per-token embedding."""
        return self.store.specs["hidden"]["shape"][-1]

    @property
    def pooled_size(self) -> int:
        """Width of the pooled embedding."""
        return self.store.specs["pooled"]["shape"][-1]

    def __contains__(self, prompt: str) -> bool:
        return prompt_key(prompt, self.encoder_id) in self.store

    def check(self, prompts: list[str]) -> None:
        """Raise :class:`MissingArtefactError` naming the first prompt the cache lacks."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self]
        if missing:
            raise _missing_error(self.store, "prompt", missing, len(prompts))

    def encode(self, prompts: list[str]) -> PromptEmbeds:
        """Cached embeddings of ``prompts`` in order (``""`` is the unconditional prompt)."""
        self.check(prompts)
        rows = self.store.rows([prompt_key(p, self.encoder_id) for p in prompts])
        return PromptEmbeds(rows["hidden"], rows["pooled"])


# ----------------------------------------------------------------------------- profiles
class _LazyEncoder:
    """Loads the real encoder on its first call: a rerun that finds every prompt cached loads no model."""

    def __init__(self, load: Callable[[], Any]):
        self._load = load
        self.encoder = None

    def encode(self, prompts: list[str]) -> PromptEmbeds:
        if self.encoder is None:
            self.encoder = self._load()
        check = getattr(self.encoder, "check", None)  # the world's encoder names words it cannot read
        if check is not None:
            check(prompts)
        return self.encoder.encode(prompts)


def _real_text_encoder(cfg):
    """The text encoders of ``cfg``'s real teacher (loaded offline, with the rest of its pipeline)."""
    from senseflow.backbones.loading import load_backbone

    return load_backbone(cfg.family, cfg.teacher.pretrained).text


def _local_snapshot(pretrained) -> Path | None:
    path = Path(pretrained.model_id).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        # local_files_only: resolves the cached snapshot folder, never downloads
        return Path(
            snapshot_download(pretrained.model_id, revision=pretrained.revision, local_files_only=True)
        )
    except (OSError, ValueError):
        return None


def pretrained_encoder_id(family: str, pretrained) -> str:
    """Identity of a real teacher's text encoders: their files' hash, plus dtype and sequence length.

    Hashes the ``text_encoder*`` and ``tokenizer*`` folders of the local diffusers folder or
    Hugging Face cache snapshot (blob names stand in for content there, so it is cheap).
    When neither is found, the model id and revision stand in for the content.
    """
    settings = [family, pretrained.dtype, str(pretrained.max_sequence_length)]
    folder = _local_snapshot(pretrained)
    parts = (
        sorted(p for p in folder.iterdir() if p.name.startswith(("text_encoder", "tokenizer")))
        if folder
        else []
    )
    if parts:
        return _sha("pretrained", *settings, files_fingerprint(parts))
    return _sha("pretrained", *settings, pretrained.model_id, pretrained.revision)


@dataclass
class CacheReport:
    """What ``senseflow cache`` did for a profile."""

    prompts: CacheStats
    notes: list[str]

    def lines(self) -> list[str]:
        """Lines for the command line."""
        return [self.prompts.summary(), *self.notes]


def cache_profile(
    cfg,
    out_dir: str | Path,
    *,
    world_dir: str | Path | None = None,
    prompts_file: str | Path | None = None,
    progress: bool = True,
    shard_size: int = 256,
    batch_size: int = 64,
) -> CacheReport:
    """Fill ``out_dir/prompts`` for the profile ``cfg`` (training images are never cached as latents).

    Embedded family: the world's text encoder (``world_dir``) and every prompt of its
    splits, plus ``prompts_file`` if given; no latents (the world renders its training
    images on the fly, in pixel space). Real families (sdxl, sd3, flux): the teacher's text
    encoders (:func:`senseflow.backbones.loading.load_backbone`), the captions of the profile's ``data:`` (so
    :func:`senseflow.real_run.distill_real` trains without text encoders) plus the prompts of
    ``prompts_file``. The encoder is loaded only if some prompt is not cached yet.
    """
    out_dir = ensure_writable_dir(out_dir)
    extra = [r.prompt for r in load_prompt_file(prompts_file)] if prompts_file else []
    command = ["senseflow", "cache", "--profile", cfg.name, "--out", str(out_dir)]
    if cfg.family == "embedded":
        if world_dir is None:
            raise UserError(
                "the embedded profile reads its text encoder and prompts from the world: pass --world DIR"
            )
        world_dir = Path(world_dir)
        encoder_id = encoder_fingerprint(world_dir)
        prompts = []
        for split in cfg.world.prompts.model_dump():
            path = world_dir / "prompts" / f"{split}.jsonl"
            if not path.is_file():
                raise MissingArtefactError(
                    f"{path} is missing: build the world with `senseflow world build --out {world_dir}`"
                )
            prompts += [r.prompt for r in load_prompt_file(path)]
        encoder = _LazyEncoder(lambda: WorldTextEncoder.load(world_dir))
        command += ["--world", str(world_dir)]
        notes = [
            "latents: none needed, the embedded world renders its training images on the fly in pixel space"
        ]
    else:
        # the training captions of the profile's `data:` (what distill_real looks up), plus --prompts
        prompts = []
        if getattr(cfg, "data", None) is not None:
            from senseflow.real_data import data_from_profile

            prompts = data_from_profile(cfg, seed=0).captions()
        if not extra and not prompts:
            raise UserError(
                f"profile {cfg.name!r} (family {cfg.family}) names no training data: add a `data:` "
                "section or pass --prompts FILE (.txt, one prompt a line, or .jsonl)"
            )
        encoder_id = pretrained_encoder_id(cfg.family, cfg.teacher.pretrained)
        encoder = _LazyEncoder(lambda: _real_text_encoder(cfg))
        notes = ["latents: none cached, the VAE encodes the training images live (its decoder runs anyway)"]
    if prompts_file:
        command += ["--prompts", str(prompts_file)]
    stats = build_prompt_cache(
        encoder,
        prompts + extra,
        out_dir / PROMPTS,
        encoder_id=encoder_id,
        shard_size=shard_size,
        batch_size=batch_size,
        progress=progress,
        command=shlex.join(command),
    )
    return CacheReport(stats, notes)
