"""Asymmetric Loss (ASL) for multi-label classification.

ASL (Ben-Baruch et al., "Asymmetric Loss For Multi-Label Classification", arXiv:2009.14119, 2020) treats each
label as an independent binary problem and down-weights the many easy negatives of a multi-label batch with
two mechanisms:

* *asymmetric focusing*: a focal weight ``(1 - p_t) ** gamma`` with a larger exponent for negatives
  (``gamma_neg``) than for positives (``gamma_pos``);
* *probability shifting* (``clip``, the "margin" m): a negative's probability is shifted down by ``m``,
  ``p_m = max(p - m, 0)``, so negatives with ``p < m`` are discarded entirely (zero loss and zero gradient).

ADDS trains its classifier with ASL (paper, "Implementation Settings"); the defaults here are those of the
ML-Decoder / ASL reference setup: ``gamma_neg = 4``, ``gamma_pos = 0``, ``clip = 0.05``, summed over entries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["ASLConfig", "AsymmetricLoss"]

_REDUCTIONS = ("sum", "mean")


@dataclass(frozen=True)
class ASLConfig:
    """Hyper-parameters of :class:`AsymmetricLoss`.

    Attributes:
        gamma_neg: focusing exponent for negatives (gamma-minus in ASL). ML-Decoder default 4.
        gamma_pos: focusing exponent for positives (gamma-plus in ASL). ML-Decoder default 0.
        clip: probability margin ``m`` applied to negatives only; ``0`` disables shifting. Default 0.05.
        eps: lower clamp on probabilities before ``log``.
        reduction: ``"sum"`` (default, as in the reference ASL code) sums the loss over every known
            ``(image, label)`` entry, so its magnitude -- and the gradient -- grows with
            ``batch size x number of labels``; learning rates tuned for it (e.g. the paper's Adam lr) assume
            that scale. ``"mean"`` divides by the number of known entries instead.
    """

    gamma_neg: float = 4.0
    gamma_pos: float = 0.0
    clip: float = 0.05
    eps: float = 1e-8
    reduction: str = "sum"

    def __post_init__(self) -> None:
        if self.gamma_neg < 0 or self.gamma_pos < 0:
            raise ValueError(f"gammas must be >= 0, got gamma_neg={self.gamma_neg}, gamma_pos={self.gamma_pos}")
        if not 0.0 <= self.clip < 1.0:
            raise ValueError(f"clip must be in [0, 1), got {self.clip}")
        if self.eps <= 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if self.reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {self.reduction!r}")


class AsymmetricLoss(nn.Module):
    """Asymmetric Loss (ASL, Ben-Baruch et al. 2020) on per-label logits.

    With ``p = sigmoid(x)``, target ``y`` in {0, 1} and margin ``m = clip``::

        p_neg = min(1 - p + m, 1)                       # = 1 - max(p - m, 0), shifting on negatives only
        L+    = y * log(max(p, eps))
        L-    = (1 - y) * log(max(p_neg, eps))
        p_t   = p * y + p_neg * (1 - y)
        w     = (1 - p_t) ** (gamma_pos * y + gamma_neg * (1 - y))      # treated as a constant (no gradient)
        loss  = -sum(w * (L+ + L-))                     # over known entries; "mean" divides by their count

    As in the reference implementation, the focusing weight ``w`` is computed without gradient. Unlike the
    reference code, this does not force gradient mode back on afterwards: the caller's grad mode is preserved,
    so the loss can be evaluated under ``torch.no_grad()``.

    Computation is done in float32 even for float16 / bfloat16 logits (they are cast up): ``log`` of probabilities
    near ``eps`` and the power ``(1 - p_t) ** 4`` underflow or lose precision in half precision. The returned
    scalar is float32; gradients flow back to the logits in their own dtype.
    """

    def __init__(self, config: ASLConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else ASLConfig()

    def extra_repr(self) -> str:
        c = self.config
        return f"gamma_neg={c.gamma_neg}, gamma_pos={c.gamma_pos}, clip={c.clip}, reduction={c.reduction!r}"

    def forward(self, logits: Tensor, targets: Tensor, mask: Tensor | None = None) -> Tensor:
        """Return the scalar ASL loss.

        Args:
            logits: raw scores, any shape, typically ``(B, k)``.
            targets: same shape as ``logits``; float, bool or integer values in {0, 1}.
            mask: optional bool tensor of the same shape; ``False`` marks an unknown entry, which contributes
                nothing to the loss (its target value is ignored) nor to the ``"mean"`` count.

        Returns:
            A float32 scalar tensor.
        """
        if targets.shape != logits.shape:
            raise ValueError(f"targets shape {tuple(targets.shape)} does not match logits shape {tuple(logits.shape)}")
        if mask is not None and mask.shape != logits.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match logits shape {tuple(logits.shape)}")
        cfg = self.config

        x = logits.float()  # (B, k) float32 even for half-precision logits
        y = targets.to(device=x.device, dtype=torch.float32)  # (B, k)
        if mask is not None:
            mask = mask.to(device=x.device, dtype=torch.bool)
            y = torch.where(mask, y, torch.zeros_like(y))  # unknown targets may hold anything (e.g. -1)

        p = torch.sigmoid(x)  # (B, k)
        p_neg = 1.0 - p  # (B, k)
        if cfg.clip > 0:
            p_neg = (p_neg + cfg.clip).clamp(max=1.0)  # probability shifting, negatives only

        loss = y * torch.log(p.clamp(min=cfg.eps)) + (1.0 - y) * torch.log(p_neg.clamp(min=cfg.eps))  # (B, k)

        if cfg.gamma_neg > 0 or cfg.gamma_pos > 0:
            with torch.no_grad():  # restores the caller's grad mode on exit
                pt = p * y + p_neg * (1.0 - y)  # (B, k)
                gamma = cfg.gamma_pos * y + cfg.gamma_neg * (1.0 - y)  # (B, k)
                weight = torch.pow(1.0 - pt, gamma)  # (B, k)
            loss = loss * weight

        if mask is not None:
            loss = torch.where(mask, loss, torch.zeros_like(loss))
            count = mask.sum()
        else:
            count = torch.tensor(loss.numel(), device=loss.device)

        total = -loss.sum()
        if cfg.reduction == "mean":
            total = total / count.clamp(min=1).to(total.dtype)
        return total
