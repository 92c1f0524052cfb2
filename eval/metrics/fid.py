"""FID feature extractors, FID-T, patch FID and cached reference statistics (functions, no state).

FID (Heusel et al. 2017) is the Fréchet distance between Gaussians fitted to features of two
image sets: features come from :func:`image_features` (or, sharded and streamed from sample
folders, :func:`inception_features`), the distance from
:func:`eval.metrics.frechet.fid_from_features`.

Feature extractors:

- :class:`InceptionFeatures`: Inception-v3 with the TF-ported 2015-12-05 FID weights, read
  from a local file (never downloaded), under an explicit image protocol
  (:mod:`eval.image_protocols`): ``"dmd2"`` (the paper's: centre crop, LANCZOS 512, clean-fid
  float bicubic 299), ``"clean"`` (clean-fid, Parmar et al. 2022) or ``"torchmetrics"``
  (antialiased bilinear tensor resize inside the extractor). They give different numbers;
  the protocol is part of every card and of the reference-statistics key.
- :class:`ProbeFeatures`: the embedded world's attribute probe (its penultimate features).

Variants: FID against real images, FID-T against teacher samples of the same prompts and
seeds (:func:`check_pairing`), patch FID (:class:`PatchCrops`, 299x299 crops at full
resolution). Reference statistics are cached by :func:`reference_statistics`.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from eval.image_protocols import (
    FID_PROTOCOLS,
    INCEPTION_SIZE,
    clean_resize_float,
    describe_fid_protocol,
    inception_input,
    patch_input,
)
from eval.metrics.frechet import (  # noqa: F401  (FIDInputError, check_features, fid_from_features: re-exported)
    FIDInputError,
    check_features,
    feature_statistics,
    fid_from_features,
    frechet_distance,
)
from eval.registry import MetricResult
from eval.streaming import map_batches
from senseflow.errors import MissingArtefactError, UserError
from senseflow.io import atomic_write_bytes, atomic_write_text, sha256_file
from senseflow.samples import read_manifest

log = logging.getLogger(__name__)

INCEPTION_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
RESIZE_PROTOCOLS = FID_PROTOCOLS


def best_device() -> torch.device:
    """CUDA when present, else the CPU: Inception of 10k 1024 px images is hours on a CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------- functional core


def statistics_from_sums(total: torch.Tensor, outer: torch.Tensor, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance from running sums: ``mu = S / n``, ``C = (O - n mu mu^T) / (n - 1)``."""
    if n < 2:
        raise FIDInputError(f"FID needs at least 2 images per set, got {n}: pass more images")
    s, o = total.detach().cpu().double().numpy(), outer.detach().cpu().double().numpy()
    mu = s / n
    sigma = (o - n * np.outer(mu, mu)) / (n - 1)
    return mu, (sigma + sigma.T) / 2


def check_images(images: torch.Tensor, name: str = "images") -> torch.Tensor:
    """Validate a batch: (B, 3, H, W) uint8 in [0, 255] or floating in [-1, 1]; return it as uint8.

    Floating images are the project's pixel space ([-1, 1]); anything else is refused with
    the offending dtype, shape or range rather than silently rescaled, because a wrong
    scale still gives a plausible-looking FID.
    """
    if not isinstance(images, torch.Tensor):
        raise FIDInputError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise FIDInputError(f"{name} must be (B, 3, H, W), got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise FIDInputError(f"{name} has dtype {images.dtype}: pass uint8 [0, 255] or float [-1, 1]")
    if not torch.isfinite(images).all():
        raise FIDInputError(f"{name} has non-finite pixels (NaN or inf)")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1 - 1e-4 or hi > 1 + 1e-4:
        raise FIDInputError(
            f"{name} range is [{lo:.3g}, {hi:.3g}], expected [-1, 1] for float images: "
            "clamp decoded images or pass uint8"
        )
    # quantise as a PNG would: in-memory samples and the same samples read from a folder score the same
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def images_hash(images: torch.Tensor) -> str:
    """sha256 of a uint8 image batch (shape and bytes, in order): the identity of a reference set."""
    u8 = check_images(images).cpu().contiguous()
    h = hashlib.sha256(str(tuple(u8.shape)).encode())
    h.update(u8.numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- feature extractors


class FeatureExtractor(Protocol):
    """Maps uint8 (B, 3, H, W) images to (B, dim) features; ``id`` names weights, ``resize`` protocol."""

    id: str
    dim: int
    resize: str

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Features of a uint8 batch."""
        ...


def clean_resize(images: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """clean-fid's float resize of uint8 (B, 3, H, W) images: float32 (B, 3, size, size) in [0, 255].

    Clean-FID (Parmar et al. 2022): PIL's bicubic filter on each channel as a float image,
    properly antialiased and never re-quantised (:func:`eval.image_protocols.clean_resize_float`).
    """
    out = [clean_resize_float(img, size) for img in images.permute(0, 2, 3, 1).cpu().numpy()]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


# the layers of torch-fidelity's FeatureExtractorInceptionV3 up to pool3, in order
_POOL3_LAYERS = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
    "MaxPool_2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
    "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "AvgPool",
)  # fmt: skip


def tf_inception_pool3(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """pool3 features of float (B, 3, 299, 299) images in [0, 255], as the TF graph computes them.

    torch-fidelity's forward only takes uint8 (it rounds clean-fid's float resize away); the
    TF graph normalises ``(x - 128) / 128`` and runs the same layers, which is done here.
    """
    if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
        raise FIDInputError(f"Inception takes 299x299 inputs here, got {tuple(x.shape[-2:])}")
    x = (x.float() - 128) / 128
    for name in _POOL3_LAYERS:
        x = getattr(net, name)(x)
    return torch.flatten(x, 1)


class InceptionFeatures:
    """Inception-v3 pool features (2048-d) with the TF-ported FID weights from a local file.

    ``resize`` is the image protocol (:mod:`eval.image_protocols`): ``"dmd2"`` (centre crop,
    LANCZOS 512, clean-fid float bicubic 299; the paper's), ``"clean"`` (clean-fid float
    bicubic 299) or ``"torchmetrics"`` (the extractor's own antialiased bilinear resize of
    uint8). Needs ``torch-fidelity`` (the network definition that torchmetrics wraps).
    ``device``: where the network runs (default: CUDA when present).
    """

    dim = 2048

    def __init__(
        self,
        weights_path: str | Path,
        *,
        resize: str = "dmd2",
        device: str | torch.device | None = None,
        batch_size: int = 32,
    ):
        if resize not in FID_PROTOCOLS:
            raise UserError(f"unknown FID resize protocol {resize!r}: use one of {', '.join(FID_PROTOCOLS)}")
        path = Path(weights_path)
        if not path.is_file():
            raise MissingArtefactError(
                f"Inception FID weights missing at {path}: put {INCEPTION_WEIGHTS_FILE} there (TF Inception "
                "2015-12-05 ported by pytorch-fid, release 'fid_weights'; torch-fidelity ships the same "
                "weights as weights-inception-2015-12-05-6726825d.pth), e.g. with "
                "`senseflow weights fetch --artefact inception_fid`"
            )
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
            from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE
        except ImportError as exc:  # pragma: no cover - torchmetrics is a hard dependency
            raise UserError(f"torchmetrics image metrics unavailable ({exc})") from exc
        if not _TORCH_FIDELITY_AVAILABLE:
            raise UserError(
                "the Inception FID extractor needs torch-fidelity: pip install torch-fidelity==0.4.0"
            )
        try:
            self.net = NoTrainInceptionV3(
                name="inception-v3-compat",
                features_list=[str(self.dim)],
                feature_extractor_weights_path=str(path),
                antialias=True,
            )
        except Exception as exc:  # a corrupt or foreign file: name it
            raise UserError(
                f"{path} is not a usable Inception FID state dict ({exc}): fetch it again"
            ) from exc
        self.device = torch.device(device) if device is not None else best_device()
        self.net.to(self.device)
        self.resize = resize
        self.batch_size = batch_size
        self.weights_path = path
        self.weights_sha256 = sha256_file(path)
        self.id = f"inception-v3-tf-2015-12-05:{self.weights_sha256}"

    def prepare(self, pixels: np.ndarray) -> np.ndarray:
        """The network input of one (H, W, 3) uint8 image under this protocol (runs in data workers)."""
        return inception_input(pixels, self.resize)

    @torch.no_grad()
    def forward_prepared(self, x: torch.Tensor) -> torch.Tensor:
        """Features of a batch of :meth:`prepare` outputs, float64 on the CPU."""
        if self.resize == "torchmetrics":
            out = self.net(x.round().clamp(0, 255).to(torch.uint8).to(self.device))
        else:
            out = tf_inception_pool3(self.net, x.to(self.device))
        return out.double().cpu()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """2048-d features of uint8 (B, 3, H, W) images at any resolution."""
        outs = []
        for i in range(0, len(images), self.batch_size):
            x = images[i : i + self.batch_size].permute(0, 2, 3, 1).cpu().numpy()
            prepared = torch.from_numpy(np.stack([self.prepare(img) for img in x]))
            outs.append(self.forward_prepared(prepared))
        return torch.cat(outs) if outs else torch.zeros(0, self.dim, dtype=torch.float64)


class ProbeFeatures:
    """The embedded world's attribute probe: penultimate features (the embedded FID space)."""

    def __init__(self, probe, batch_size: int = 512):
        from senseflow.world.probes import AttributeProbe

        if not isinstance(probe, AttributeProbe):
            raise UserError(f"ProbeFeatures needs an AttributeProbe, got {type(probe).__name__}")
        self.probe = probe
        self.batch_size = batch_size
        self.dim = probe.embed[1].out_features
        self.resize = "none"  # the probe pools adaptively; the world's images are its training size
        h = hashlib.sha256()
        for k, v in sorted(probe.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        self.id = f"probe:{h.hexdigest()[:16]}"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Features of uint8 (B, 3, H, W) images (converted to the probe's [-1, 1])."""
        from senseflow.world.probes import run_probe

        x = images.float() / 127.5 - 1.0
        return run_probe(self.probe, x, batch_size=self.batch_size).features.double()


# ----------------------------------------------------------------------------- patch crops


@dataclass(frozen=True)
class PatchCrops:
    """Crops taken at full resolution before feature extraction (patch FID, DMD2).

    ``mode``: ``"center"`` (one centre crop), ``"grid"`` (``ceil(H/size) x ceil(W/size)`` crops
    spread evenly over the image, covering it) or ``"random"`` (``per_image`` crops whose
    offsets come from ``seed`` and a hash of the image, so they do not depend on batching
    or on which rank sees the image).
    """

    mode: str = "center"
    size: int = INCEPTION_SIZE
    per_image: int = 1
    seed: int = 0

    def __post_init__(self):
        if self.mode not in ("center", "grid", "random"):
            raise UserError(f"unknown patch mode {self.mode!r}: use center, grid or random")

    @property
    def id(self) -> str:
        """The crop protocol as a string (part of the reference-statistics key)."""
        extra = f",n={self.per_image},seed={self.seed}" if self.mode == "random" else ""
        return f"patch={self.mode}{self.size}{extra}"

    def _offsets(self, img: torch.Tensor) -> list[tuple[int, int]]:
        h, w = img.shape[-2:]
        s = self.size
        if self.mode == "center":
            return [((h - s) // 2, (w - s) // 2)]
        if self.mode == "grid":
            ys = np.linspace(0, h - s, -(-h // s)).round().astype(int)
            xs = np.linspace(0, w - s, -(-w // s)).round().astype(int)
            return [(int(y), int(x)) for y in ys for x in xs]
        digest = hashlib.sha256(img.contiguous().numpy().tobytes()).digest()
        rng = np.random.default_rng([self.seed, int.from_bytes(digest[:8], "little")])
        return [
            (int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))) for _ in range(self.per_image)
        ]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """All crops of a uint8 batch, image by image."""
        h, w = images.shape[-2:]
        if h < self.size or w < self.size:
            raise FIDInputError(
                f"patch FID needs images of at least {self.size}x{self.size}, got {h}x{w}: "
                "use whole-image FID for small images or a smaller patch size"
            )
        crops = [
            img[:, y : y + self.size, x : x + self.size]
            for img in images.cpu()
            for y, x in self._offsets(img)
        ]
        return torch.stack(crops)


# ----------------------------------------------------------------------------- features and protocol


@dataclass
class ReferenceStats:
    """Gaussian statistics of a reference set and what they were computed with."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    extractor_id: str
    protocol: str
    images_hash: str
    sha256: str = ""  # of the cached .npz file
    from_cache: bool = False


def extractor_id(extractor) -> str:
    """The extractor's id (its weights), or its type name for a plain callable."""
    return getattr(extractor, "id", type(extractor).__name__)


def fid_protocol(extractor, patches: PatchCrops | None = None) -> str:
    """Resize and crop protocol, e.g. ``resize=clean`` or ``resize=clean;patch=grid299``.

    Part of the reference-statistics key: the same images under another protocol give another FID.
    """
    resize = f"resize={getattr(extractor, 'resize', 'none')}"
    return resize + (f";{patches.id}" if patches else "")


def image_features(images: torch.Tensor, extractor, patches: PatchCrops | None = None) -> torch.Tensor:
    """Validated float64 (N, dim) features of an image batch (crops first for patch FID).

    Images: (B, 3, H, W) uint8 or float in [-1, 1] (:func:`check_images`).
    """
    x = check_images(images)
    if patches is not None:
        x = patches(x)
        # crops are already the network's size: no protocol resize (DMD2's patch FID)
        if hasattr(extractor, "forward_prepared"):
            return check_features(extractor.forward_prepared(x.float()), "extracted features")
    return check_features(extractor(x), "extracted features")


# ----------------------------------------------------------------------------- folders, FID-T, cache


def iter_folder_images(folder: str | Path, batch_size: int = 256) -> Iterable[torch.Tensor]:
    """uint8 (B, 3, H, W) batches of a sample folder, in manifest order (never all in memory)."""
    folder = Path(folder)
    records = read_manifest(folder)
    if not records:
        raise MissingArtefactError(f"{folder / 'manifest.jsonl'} is missing or empty: generate samples first")
    for i in range(0, len(records), batch_size):
        arrays = [
            np.asarray(Image.open(folder / r["file"]).convert("RGB")) for r in records[i : i + batch_size]
        ]
        yield torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def folder_hash(folder: str | Path) -> str:
    """sha256 over (file name, sha256 of its bytes) of a sample folder, in manifest order."""
    folder = Path(folder)
    h = hashlib.sha256()
    for r in read_manifest(folder):
        h.update(f"{r['file']}:{sha256_file(folder / r['file'])}\n".encode())
    return h.hexdigest()


def check_pairing(generated: str | Path, teacher: str | Path) -> int:
    """FID-T pairing: both manifests hold the same prompt ids, each with the same prompt and seed.

    Returns the number of pairs; the first mismatch raises :class:`UserError` naming it.
    """
    gen = {r["id"]: r for r in read_manifest(generated)}
    ref = {r["id"]: r for r in read_manifest(teacher)}
    if not gen or not ref:
        empty = generated if not gen else teacher
        raise MissingArtefactError(
            f"{Path(empty) / 'manifest.jsonl'} is missing or empty: generate samples first"
        )
    if gen.keys() != ref.keys():
        only = sorted(gen.keys() ^ ref.keys())
        raise UserError(
            f"FID-T pairs by prompt id, but {len(only)} ids are in only one of {generated} and {teacher} "
            f"(e.g. {only[0]}): sample both on the same prompt list"
        )
    for pid, g in gen.items():
        for key in ("prompt", "seed"):
            if g.get(key) != ref[pid].get(key):
                raise UserError(
                    f"FID-T pairing: prompt id {pid} has {key} {g.get(key)!r} in {generated} but "
                    f"{ref[pid].get(key)!r} in {teacher}: sample both with the same prompts and base seed"
                )
    return len(gen)


def fid_t(generated: str | Path, teacher: str | Path, extractor, *, batch_size: int = 256) -> float:
    """FID-T (SenseFlow): FID of a sample folder against teacher samples of the same prompts and seeds."""
    check_pairing(generated, teacher)
    gen, ref = (
        torch.cat([image_features(b, extractor) for b in iter_folder_images(folder, batch_size)])
        for folder in (generated, teacher)
    )
    return fid_from_features(gen, ref)


def _npz_bytes(stats: ReferenceStats) -> bytes:
    buf = io.BytesIO()
    meta = {"extractor_id": stats.extractor_id, "protocol": stats.protocol, "images_hash": stats.images_hash}
    np.savez(buf, mu=stats.mu, sigma=stats.sigma, n=np.int64(stats.n), meta=np.array(json.dumps(meta)))
    return buf.getvalue()


def _load_cache(path: Path, key: dict[str, str]) -> ReferenceStats | None:
    """The cached statistics if they match protocol and image set and the file is intact, else None."""
    sidecar = path.with_name(path.name + ".sha256")
    if not path.is_file():
        return None
    sha = sha256_file(path)
    recorded = sidecar.read_text().split()[0] if sidecar.is_file() else ""
    if sha != recorded:
        log.warning("%s: sha256 %s does not match %s; recomputing", path, sha[:12], sidecar)
        return None
    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        stats = ReferenceStats(
            z["mu"],
            z["sigma"],
            int(z["n"]),
            meta["extractor_id"],
            meta["protocol"],
            meta["images_hash"],
            sha,
            True,
        )
    for field, want in key.items():
        if getattr(stats, field) != want:
            log.warning(
                "%s: cached %s %r differs from %r; recomputing", path, field, getattr(stats, field), want
            )
            return None
    return stats


def reference_statistics(
    images: torch.Tensor | str | Path,
    extractor,
    cache: str | Path,
    *,
    patches: PatchCrops | None = None,
    batch_size: int = 256,
) -> ReferenceStats:
    """Reference statistics of an image tensor or sample folder, cached in ``cache`` (.npz).

    The .npz holds mu, sigma, n, the extractor id, the resize / crop protocol and the hash
    of the image set; ``<cache>.sha256`` records the file's own sha256. A cache whose
    protocol or image hash differs, or whose bytes do not match the recorded sha256, is
    recomputed and overwritten, never reused.
    """
    cache = Path(cache)
    is_folder = isinstance(images, (str, Path))
    want_hash = folder_hash(images) if is_folder else images_hash(images)
    key = {
        "extractor_id": extractor_id(extractor),
        "protocol": fid_protocol(extractor, patches),
        "images_hash": want_hash,
    }
    hit = _load_cache(cache, key)
    if hit is not None:
        return hit
    # running float64 sums, not all features: a 10k-image reference set stays one batch in memory
    total, outer, n = 0.0, 0.0, 0
    batches = iter_folder_images(images, batch_size) if is_folder else images.split(batch_size)
    for batch in batches:
        f = image_features(batch, extractor, patches)
        total, outer, n = total + f.sum(0), outer + f.T @ f, n + len(f)
    mu, sigma = statistics_from_sums(total, outer, n)
    stats = ReferenceStats(mu, sigma, n, **key)
    data = _npz_bytes(stats)
    stats.sha256 = hashlib.sha256(data).hexdigest()
    atomic_write_bytes(cache, data)
    atomic_write_text(cache.with_name(cache.name + ".sha256"), f"{stats.sha256}  {cache.name}\n")
    return stats


# ----------------------------------------------------------------------------- senseflow-eval evaluate
def inception_features(ctx, folder, extractor, indices=None, patch: bool = False) -> np.ndarray:
    """(N, 2048) features of ``folder``'s images (rows ``indices``, default all), sharded, gathered.

    Streamed (:mod:`eval.streaming`): data workers decode each PNG and prepare it under the
    extractor's protocol (or cut its 299 px centre patch when ``patch``: DMD2's patch FID, no
    resize); the network runs on its device per batch and only the features are kept.
    """
    indices = np.arange(len(folder.records)) if indices is None else np.asarray(indices)
    prepare = patch_input if patch else functools.partial(inception_input, protocol=extractor.resize)

    def block(rows):
        paths = [folder.images.paths[i] for i in indices[rows]]
        fn = lambda batch, _rows: extractor.forward_prepared(batch).numpy()  # noqa: E731
        out = map_batches(paths, fn, prepare, batch_size=extractor.batch_size)
        return out.reshape(len(paths), extractor.dim)

    return ctx.map_rows(block, n=len(indices))


def fid_metric(ctx) -> MetricResult:
    """``fid``: Inception FID of the samples against ``--reference`` (real images, or teacher samples: FID-T).

    Inception weights come from the weights directory (``senseflow weights fetch --artefact
    inception_fid``), images are prepared under ``ctx.protocol`` (``dmd2`` by default); the
    interval half-samples both sets (``eval.stats.subsample_set_ci``).
    """
    from eval.registry import MetricError, protocol_card
    from eval.stats import SUBSAMPLING, subsample_set_ci
    from eval.weights import require

    if ctx.reference is None:
        raise MetricError("fid needs --reference DIR: real images (or the teacher's samples, for FID-T)")
    extractor = InceptionFeatures(require("inception_fid"), resize=ctx.protocol)
    fs = inception_features(ctx, ctx.samples, extractor)
    fr = inception_features(ctx, ctx.reference, extractor)
    value = fid_from_features(fs, fr)
    # half-samples of each set, independently (eval.stats.subsample_set_ci)
    ci = subsample_set_ci([len(fs), len(fr)], lambda a, b: fid_from_features(fs[a], fr[b]), value,
                          n_sub=ctx.n_boot_set, seed=ctx.seed)  # fmt: skip
    ref_hash = hashlib.sha256("".join(r["sha256"] for r in ctx.reference.records).encode()).hexdigest()
    card = protocol_card(
        ctx, metric="FID (Inception-v3 pool3, TF 2015-12-05 weights)", version="fid/3", backbone=extractor.id,
        weights_sha256=extractor.weights_sha256, image_count=len(fs),
        resize=describe_fid_protocol(ctx.protocol), reference_stats_sha256=ref_hash, n_boot=ctx.n_boot_set,
        precision="fp32",
    )  # fmt: skip
    details = {"interval": f"{SUBSAMPLING}, {ctx.n_boot_set} subsets of each set"}
    return MetricResult(card, higher_is_better=False, value=value, ci95=ci, n=len(fs), details=details)


def _register() -> None:
    from eval.registry import register

    register("fid", lambda: fid_metric)


_register()
