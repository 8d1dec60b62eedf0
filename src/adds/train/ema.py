"""Exponential moving average (EMA) of the trainable weights, evaluated separately from the raw weights.

Only the trainable part of ADDS (decoder, classifier, optional token projection) is averaged -- the towers are
frozen, so their EMA would equal themselves. After every optimiser step::

    ema = d * ema + (1 - d) * weights          d = decay, or min(decay, (1 + t) / (10 + t)) with warm-up

The EMA lives in float32 on the model's device. :meth:`ModelEMA.swapped_into` temporarily loads it into the model
for evaluation or saving, so no second copy of the (large, frozen) towers is ever made.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from adds.train.config import EMAConfig

__all__ = ["ModelEMA"]


class ModelEMA:
    """EMA of a model's trainable state (:meth:`adds.model.ADDS.trainable_state_dict`).

    Args:
        model: the model whose trainable weights are averaged (an ``ADDS``).
        config: decay and warm-up.
    """

    def __init__(self, model: torch.nn.Module, config: EMAConfig | None = None) -> None:
        self.config = config or EMAConfig()
        self.updates = 0
        self.shadow: dict[str, torch.Tensor] = {
            name: value.detach().clone().float() for name, value in model.trainable_state_dict().items()
        }

    def decay(self) -> float:
        """Decay used by the next update."""
        if self.config.warmup:
            return min(self.config.decay, (1 + self.updates) / (10 + self.updates))
        return self.config.decay

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Fold the model's current trainable weights into the average."""
        decay = self.decay()
        for name, value in model.trainable_state_dict().items():
            shadow = self.shadow[name]
            if value.is_floating_point():
                shadow.mul_(decay).add_(value.detach().float(), alpha=1.0 - decay)
            else:  # integer buffers (none in ADDS today) are copied
                shadow.copy_(value)
        self.updates += 1

    @contextmanager
    def swapped_into(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """Load the EMA weights into ``model`` for the duration of the block, then restore the raw weights."""
        backup = {name: value.detach().clone() for name, value in model.trainable_state_dict().items()}
        model.load_state_dict(self._cast_like(backup), strict=False)
        try:
            yield model
        finally:
            model.load_state_dict(backup, strict=False)

    def _cast_like(self, reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: self.shadow[name].to(dtype=ref.dtype, device=ref.device) for name, ref in reference.items()}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The averaged weights (for a safetensors checkpoint)."""
        return {name: value.detach().cpu().contiguous() for name, value in self.shadow.items()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], updates: int) -> None:
        missing = sorted(set(self.shadow) - set(tensors))
        if missing:
            raise ValueError(f"EMA state lacks {missing}")
        for name, shadow in self.shadow.items():
            shadow.copy_(tensors[name])
        self.updates = int(updates)

    def to(self, device: torch.device | str) -> ModelEMA:
        self.shadow = {name: value.to(device) for name, value in self.shadow.items()}
        return self
