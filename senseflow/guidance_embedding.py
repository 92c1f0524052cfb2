"""A guidance-conditioned student for LCM: the CFG weight ``w`` as an input of the network.

LCM (Luo et al. 2023, section 4.2) distils the CFG-guided ODE for a range of ``w`` into one
network that takes ``w`` as a condition. Here ``w`` enters an SD3-family transformer through
its global conditioning vector: a sinusoidal embedding of ``w`` goes through a small MLP whose
last layer starts at zero, and is *added to the pooled-text projection*
(``time_text_embed``'s output = timestep embedding + text projection). At initialisation the
student therefore equals the teacher for every ``w``.

Because the addition is a constant for a fixed ``w``, :meth:`GuidanceConditioned.bake` folds
it into the bias of ``time_text_embed.text_embedder.linear_2``: the exported student is a plain
``SD3Transformer2DModel`` that behaves exactly like the conditioned one at that ``w``, so the
student folder format and :func:`senseflow.student.load_student` need nothing new (the recipe
records the baked ``w``).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn

W_SCALE = 100.0  # w ~ 1..15 -> "timesteps" 100..1500: the sinusoid's frequencies resolve 0.1 steps of w


def guidance_features(w: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of the guidance weight (as LCM's ``guidance_scale_embedding``), (B, dim)."""
    return get_timestep_embedding(torch.as_tensor(w, dtype=torch.float32).reshape(-1) * W_SCALE, dim,
                                  flip_sin_to_cos=True, downscale_freq_shift=0)  # fmt: skip


class GuidanceConditioned(nn.Module):
    """An SD3-family transformer plus a zero-initialised ``w`` embedding added to its global conditioning.

    Call it like the transformer, inside :meth:`at` (``with net.at(w): net(**kwargs)``), so
    that :class:`~senseflow.backbones.flow.SD3FlowBackbone` drives it unchanged. With
    ``embed=False`` it is the bare transformer (Hyper-SD's unconditioned student): ``w`` is ignored.
    """

    def __init__(self, transformer: nn.Module, *, embed: bool = True, dim: int = 256, seed: int = 0):
        super().__init__()
        self.transformer = transformer
        self.dim = dim
        self.w_embedding: nn.Sequential | None = None
        if embed:
            inner = transformer.time_text_embed.text_embedder.linear_2.out_features
            with torch.random.fork_rng(devices=[]):  # init independent of earlier RNG use
                torch.manual_seed(seed)
                self.w_embedding = nn.Sequential(nn.Linear(dim, inner), nn.SiLU(), nn.Linear(inner, inner))
            nn.init.zeros_(self.w_embedding[2].weight)  # zero: the student starts as the teacher
            nn.init.zeros_(self.w_embedding[2].bias)
            transformer.time_text_embed.register_forward_hook(self._add_w)
        self._w: torch.Tensor | None = None

    @property
    def config(self):
        """The transformer's config (the backbone reads sample size and channels from it)."""
        return self.transformer.config

    def _add_w(self, module, args, output):
        if self.w_embedding is None:
            return output
        if self._w is None:
            raise RuntimeError("a guidance-conditioned student was called outside `with net.at(w)`")
        w = self._w.to(output.device).reshape(-1).expand(output.shape[0])
        emb = self.w_embedding(guidance_features(w, self.dim).to(output.device, output.dtype))
        return output + emb

    @contextmanager
    def at(self, w: torch.Tensor | float):
        """Calls inside this block are conditioned on ``w`` (a scalar or one value per sample)."""
        previous, self._w = self._w, torch.as_tensor(w, dtype=torch.float32)
        try:
            yield self
        finally:
            self._w = previous

    def forward(self, **kwargs):
        """The transformer's forward (keyword arguments as diffusers' ``SD3Transformer2DModel``)."""
        return self.transformer(**kwargs)

    def fresh_copy(self) -> GuidanceConditioned:
        """An independent copy with the same weights (the EMA target); its hook points at itself."""
        other = GuidanceConditioned(_clone_transformer(self.transformer),
                                    embed=self.w_embedding is not None, dim=self.dim)  # fmt: skip
        other.load_state_dict(self.state_dict())
        return other

    @torch.no_grad()
    def bake(self, w: float) -> nn.Module:
        """A plain transformer equal to this network at guidance ``w``: the embedding folded into a bias."""
        net = _clone_transformer(self.transformer)
        if self.w_embedding is not None:
            bias = net.time_text_embed.text_embedder.linear_2.bias
            # the network may be on an accelerator mid-training
            w_t = torch.tensor([float(w)], device=next(self.w_embedding.parameters()).device)
            emb = self.w_embedding(guidance_features(w_t, self.dim)).reshape(-1).to(bias.device)
            bias.add_(emb.to(bias.dtype))
        return net


def _clone_transformer(transformer: nn.Module) -> nn.Module:
    """A deep copy without the forward hooks (they belong to the wrapper that registered them)."""
    hooks = transformer.time_text_embed._forward_hooks
    saved = dict(hooks)
    hooks.clear()
    try:
        return copy.deepcopy(transformer)
    finally:
        hooks.update(saved)
