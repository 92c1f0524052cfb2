"""The text conditioning every backbone receives, independent of any model family or of the world.

Lives outside ``senseflow/world/`` so the real-model core (backbones, losses, the distillation
loop) never imports the embedded world (``senseflow.world.text`` re-exports it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PromptEmbeds:
    """Per-token and pooled text embeddings, the conditioning of every backbone."""

    hidden: torch.Tensor  # (B, L, D)
    pooled: torch.Tensor  # (B, D)

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def index(self, idx) -> PromptEmbeds:
        """Rows ``idx`` of both tensors."""
        return PromptEmbeds(self.hidden[idx], self.pooled[idx])

    def to(self, device) -> PromptEmbeds:
        """Move both tensors to ``device``."""
        return PromptEmbeds(self.hidden.to(device), self.pooled.to(device))

    @staticmethod
    def cat(items: list[PromptEmbeds]) -> PromptEmbeds:
        """Concatenate along the batch dimension."""
        return PromptEmbeds(torch.cat([e.hidden for e in items]), torch.cat([e.pooled for e in items]))
