"""HPSv2 (Wu et al. 2023), versions 2.0 and 2.1, batched and offline.

HPSv2 is open_clip ViT-H-14 fine-tuned on human preferences; the score is the dot product of
the normalised image and prompt embeddings (about 0.27-0.31; the benchmark scripts print it
times 100). The ``hpsv2`` package (1.2.0) is not used at run time: its ``score()`` downloads
the ViT-H-14 weights and the HPS checkpoint on every first call, reloads the checkpoint on
every call, scores one image at a time, and its wheel lacks the BPE vocabulary it imports.
This module builds the same architecture with open_clip, loads the same checkpoint file
(``HPS_v2_compressed.pt`` for v2.0, ``HPS_v2.1_compressed.pt`` for v2.1: ``hpsv2.score``
defaults to 2.0 and ``hpsv2.evaluate`` to 2.1, the two are not comparable) and preprocesses
exactly as the package's ``preprocess_val`` (its ``light_augmentation`` path): RGB,
``ToTensor``, bicubic resize of the LONGER side to the model's size on the float tensor
(antialiased), zero padding to a centred square, OpenAI mean and std. (The package skips the
padding when the longer side already has the right length, which leaves a non-square image
the model cannot take; here such an image is padded too, identical whenever it is square.)
"""

from __future__ import annotations

import functools
import os

import torch
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from eval.metrics._preference import (
    default_device,
    register_scorer_metric,
)
from eval.metrics.clip_score import OpenClipScorer
from eval.weights import require_path

HPS_FILES = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
HPS_ARCH = "ViT-H-14"
# the manifest entries holding each version's checkpoint
ARTEFACTS = {"v2.0": "hpsv2", "v2.1": "hpsv2_1"}
# open_clip's OPENAI_DATASET_MEAN / STD: the HPS package resolves these for ViT-H-14.
_MEAN = (0.48145466, 0.4578275, 0.40821073)
_STD = (0.26862954, 0.26130258, 0.27577711)


def _file(version: str) -> str:
    if version not in HPS_FILES:
        raise ValueError(f"unknown HPS version {version!r}: use one of {sorted(HPS_FILES)}")
    return HPS_FILES[version]


class _ResizeLongestAndPad:
    """Bicubic resize of the longer side to ``size`` on a float tensor, then zero-pad to square."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        height, width = img.shape[1:]
        scale = self.size / float(max(height, width))
        if scale != 1.0:
            new = tuple(round(d * scale) for d in (height, width))
            img = TF.resize(img, list(new), T.InterpolationMode.BICUBIC)
        pad_h, pad_w = self.size - img.shape[1], self.size - img.shape[2]
        return TF.pad(img, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)


def hps_preprocess(image_size: int) -> T.Compose:
    """The hpsv2 package's validation transform (ToTensor first, resize longest side, pad)."""
    return T.Compose([T.ToTensor(), _ResizeLongestAndPad(image_size), T.Normalize(_MEAN, _STD)])


@functools.lru_cache(maxsize=2)
def _load_hps(arch: str, checkpoint: str, device: str):
    import open_clip

    model = open_clip.create_model(arch, pretrained=None, device=device)
    state = torch.load(checkpoint, map_location=device, weights_only=True)
    model.load_state_dict(state["state_dict"] if "state_dict" in state else state)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    return model.eval(), open_clip.get_tokenizer(arch), hps_preprocess(int(size))


def load_hpsv2_scorer(
    version: str = "v2.1",
    checkpoint: str | os.PathLike | None = None,
    *,
    arch: str = HPS_ARCH,
    scale: float = 1.0,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    precision: str = "fp16",
) -> OpenClipScorer:
    """An HPSv2 scorer from a LOCAL checkpoint file; the model is loaded once and cached.

    ``precision``: fp16 autocast on CUDA by default, as the hpsv2 package scores.

    ``scale=100`` gives the benchmark scripts' convention. ``arch`` exists so that tests can
    register a tiny open_clip config under another name.
    """
    _file(version)
    path = require_path(checkpoint, ARTEFACTS[version])
    device = torch.device(device) if device is not None else default_device()
    model, tokenizer, preprocess = _load_hps(arch, str(path), str(device))
    info = {
        "metric": "hpsv2",
        "version": version,
        "backbone": f"open_clip {arch}",
        "weights": path.name,
        "preprocess": "hpsv2 preprocess_val",
    }
    scorer = OpenClipScorer(
        model, tokenizer, preprocess, scale=scale, batch_size=batch_size, device=device, info=info,
        precision=precision,
    )  # fmt: skip
    scorer.weights_file = path
    return scorer


def hpsv2_scores(images, prompts, version: str = "v2.1", **kwargs) -> torch.Tensor:
    """Per-image HPSv2 scores, shape (B,); ``kwargs`` go to :func:`load_hpsv2_scorer`."""
    return load_hpsv2_scorer(version, **kwargs)(images, prompts)


# the functional core under the common name, e.g. ``eval.metrics.hpsv2.score``
score = hpsv2_scores


# `senseflow-eval evaluate --metrics hpsv2`
register_scorer_metric("hpsv2", load_hpsv2_scorer, "hpsv2.1/1")
