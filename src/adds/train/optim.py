"""Adam's parameter groups and the learning-rate schedules of a training run (``OptimConfig``)."""

from __future__ import annotations

import math
from typing import Any

import torch

from adds.model import ADDS
from adds.train.config import TrainConfig

__all__ = ["parameter_groups", "make_scheduler", "CosineFactor", "resolve_amp"]


def parameter_groups(model: ADDS, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only: biases and normalisation weights (1-D) get none (ML-Decoder's rule)."""
    decay, no_decay = [], []
    for param in model.trainable_parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, lr: float, steps_per_epoch: int):
    """The schedule of ``config.optim.schedule``, stepped once per optimiser step (``None`` for ``constant``)."""
    optim = config.optim
    total = max(1, config.epochs * steps_per_epoch)
    if optim.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total, pct_start=optim.pct_start)
    if optim.schedule == "cosine":
        warmup = int(round(optim.warmup_epochs * steps_per_epoch))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, CosineFactor(total, warmup, optim.min_lr_ratio))
    return None


class CosineFactor:
    """Linear warm-up then cosine decay to ``min_ratio`` (a picklable-free pure function of the step)."""

    def __init__(self, total: int, warmup: int, min_ratio: float) -> None:
        self.total, self.warmup, self.min_ratio = total, warmup, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``TrainConfig.amp`` on ``device`` (``None``: full precision; always on CPU)."""
    if device.type != "cuda" or mode == "off":
        return None
    if mode == "bf16" or (mode == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16
