"""Selective Language Supervision (paper, "Selective Language Supervision", Eq. 6).

With a very large vocabulary (21k labels for ImageNet-21k) feeding every label through the decoder for every
batch is too slow and too memory hungry. Instead, for a batch ``B`` with ``k`` labels, ADDS trains on::

    S' = S_pos U S_slt                                                   (Eq. 6)

where ``S_pos`` holds every label that is positive for at least one image of the batch,
``S_neg = {1..k} - S_pos`` and ``S_slt`` is drawn uniformly at random, without replacement, from ``S_neg``
with ``|S_slt| = min(alpha * |S_pos|, k - |S_pos|)``; ``alpha = 3`` in the paper. ``alpha`` balances positives
and negatives. For a non-integer ``alpha`` the count is ``floor(alpha * |S_pos|)``.

The paper uses it for ImageNet-21k; the intended use in this library is to switch it on when training with a
vocabulary of more than ~1k labels. A batch without any positive label yields an empty selection (exactly
Eq. 6); the caller should skip such a batch (see :attr:`LabelSelection.is_empty`).

Everything is tensor ops over the label axis (no Python loop over labels), so it is cheap for k = 21,843.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["LabelSelection", "SLSConfig", "SelectiveLanguageSupervision", "select_labels"]


@dataclass(frozen=True)
class SLSConfig:
    """Configuration of selective language supervision.

    Attributes:
        alpha: negatives sampled per positive label (Eq. 6); ``|S_slt| = min(floor(alpha * |S_pos|), k - |S_pos|)``.
            ``0`` keeps only the positives. Paper default 3.
    """

    alpha: float = 3.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.alpha) or self.alpha < 0:
            raise ValueError(f"alpha must be a finite number >= 0, got {self.alpha}")


@dataclass
class LabelSelection:
    """The label subset ``S'`` chosen for one batch.

    Attributes:
        indices: ``(k',)`` int64 label indices, sorted ascending, on the device of the targets.
        targets: ``(B, k')`` the input targets restricted to ``indices`` (``targets[:, indices]``).
        num_positive: ``|S_pos|``.
        num_sampled: ``|S_slt|``, the number of sampled negatives.
        mask: ``(B, k')`` the input mask restricted to ``indices``, or ``None`` when no mask was given.
    """

    indices: Tensor  # (k',) int64
    targets: Tensor  # (B, k')
    num_positive: int
    num_sampled: int
    mask: Tensor | None = None  # (B, k') bool

    @property
    def num_labels(self) -> int:
        """``|S'| = |S_pos| + |S_slt|``."""
        return int(self.indices.numel())

    @property
    def is_empty(self) -> bool:
        """True when the batch had no positive label (the caller should skip the batch)."""
        return self.num_labels == 0


def _positive_entries(targets: Tensor) -> Tensor:
    """Bool ``(B, k)``: entries whose target is positive (bool True, or a number > 0.5)."""
    if targets.dtype == torch.bool:
        return targets
    return targets > 0.5


def select_labels(
    targets: Tensor,
    config: SLSConfig | None = None,
    generator: torch.Generator | None = None,
    mask: Tensor | None = None,
) -> LabelSelection:
    """Choose the labels to train on for one batch (Eq. 6).

    Args:
        targets: ``(B, k)`` targets in {0, 1} (float, int or bool), on any device.
        config: selection settings; defaults to ``SLSConfig()`` (alpha = 3).
        generator: optional random generator for reproducible sampling. Sampling runs on the generator's device
            (CPU when ``None``, using the global RNG) and the indices are moved to the targets' device.
        mask: optional ``(B, k)`` bool; ``False`` marks an unknown entry, which never makes a label positive.

    Returns:
        A :class:`LabelSelection`; empty when no label is positive in the batch.
    """
    if targets.dim() != 2:
        raise ValueError(f"targets must have shape (B, k), got {tuple(targets.shape)}")
    if mask is not None and mask.shape != targets.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match targets shape {tuple(targets.shape)}")
    cfg = config if config is not None else SLSConfig()
    device = targets.device
    num_classes = targets.shape[1]

    positive = _positive_entries(targets)  # (B, k) bool
    if mask is not None:
        positive = positive & mask.to(device=device, dtype=torch.bool)
    is_pos = positive.any(dim=0)  # (k,) bool

    pos_idx = torch.nonzero(is_pos, as_tuple=False).flatten()  # (|S_pos|,)
    neg_idx = torch.nonzero(~is_pos, as_tuple=False).flatten()  # (|S_neg|,)
    num_pos = int(pos_idx.numel())
    # The small tolerance keeps e.g. alpha=0.29, |S_pos|=100 at 29 despite 0.29 * 100 == 28.999999999999996.
    num_sampled = min(math.floor(cfg.alpha * num_pos + 1e-9), num_classes - num_pos)

    if num_sampled > 0:
        sample_device = generator.device if generator is not None else torch.device("cpu")
        perm = torch.randperm(neg_idx.numel(), generator=generator, device=sample_device)[:num_sampled]  # (n,)
        sampled = neg_idx[perm.to(device)]  # (|S_slt|,)
        indices = torch.cat([pos_idx, sampled]).sort().values  # (k',)
    else:
        indices = pos_idx  # (k',) already ascending

    return LabelSelection(
        indices=indices,
        targets=targets[:, indices],  # (B, k')
        num_positive=num_pos,
        num_sampled=num_sampled,
        mask=None if mask is None else mask[:, indices.to(mask.device)],
    )


class SelectiveLanguageSupervision:
    """Stateful wrapper around :func:`select_labels` for training loops.

    Holds a config and a CPU ``torch.Generator`` seeded from ``seed``, so a run's label draws are reproducible
    and independent of the global RNG. ``state_dict`` / ``load_state_dict`` save and restore the generator for
    resuming a run.

    Example::

        sls = SelectiveLanguageSupervision(SLSConfig(alpha=3.0), seed=0)
        sel = sls(targets)                        # targets: (B, k)
        if not sel.is_empty:
            logits = model(images, label_embeddings[sel.indices])  # (B, k')
            loss = criterion(logits, sel.targets)
    """

    def __init__(self, config: SLSConfig | None = None, seed: int = 0) -> None:
        self.config = config if config is not None else SLSConfig()
        self.seed = int(seed)
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(self.seed)

    def __call__(self, targets: Tensor, mask: Tensor | None = None) -> LabelSelection:
        return select_labels(targets, self.config, generator=self.generator, mask=mask)

    def state_dict(self) -> dict[str, object]:
        return {"seed": self.seed, "generator_state": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.seed = int(state["seed"])  # type: ignore[arg-type]
        self.generator.set_state(state["generator_state"])  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alpha={self.config.alpha}, seed={self.seed})"
