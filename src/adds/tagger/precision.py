"""Reduced precision for inference: ``--precision {fp32,bf16,fp16}`` of ``adds tag``, ``adds serve`` and ``adds eval``.

What each value does (see docs/tagging.md and docs/performance.md, item 12.3, for the measurements):

* ``fp32``: every weight and activation in float32 (the default).
* ``bf16`` on a CPU: the *vision tower* is cast to bfloat16 in place and images go through it in bfloat16; its
  tokens are cast back to float32 for the ADDS head (``token_proj``, DM-decoder, shared classifier), which stays
  float32. It needs a CPU with native bfloat16 (AVX512-BF16 or AMX; :func:`cpu_supports_bf16`); elsewhere it is
  refused, since emulated bfloat16 is slower than float32. The weights are cast rather than run under
  ``torch.autocast`` because autocast turns off ``nn.MultiheadAttention``'s fused inference path in open_clip's
  towers, and the unfused path copies the attention weights once per token (0.33x the fp32 speed on ViT-B-32).
  The head stays float32 because casting it too lowered the toy world's top-5 agreement with fp32 from 97.5 % to
  93.0 % of the images (``benchmarks/precision.py``, docs/performance.md item 12.3).
* ``bf16`` / ``fp16`` on a CUDA GPU: ``torch.autocast`` with that dtype around the image path (the mixed precision
  training and ``adds eval`` already use on GPUs); the weights stay float32. ``fp16`` needs CUDA: on a CPU it is
  refused (no faster than fp32 on x86 without AMX-FP16, measured: see ``benchmarks/precision.py``).

The text tower is never touched: label embeddings are computed in float32 (and cached, :mod:`adds.label_cache`,
keyed by the float32 towers' fingerprint, which is computed before any cast). Scores are always returned as float32.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["PRECISIONS", "InferencePrecision", "PrecisionError", "cpu_supports_bf16", "resolve_precision"]

logger = logging.getLogger("adds.tagger")

#: The values of ``--precision`` and ``TaggerConfig.precision``.
PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class PrecisionError(ValueError):
    """A precision this device cannot run (the message is one line for the command line)."""


def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bfloat16 natively (oneDNN's check: AVX512-BF16 / AMX-BF16)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # an older or a stripped-down torch build
        return False


@dataclass(frozen=True)
class InferencePrecision:
    """A precision resolved for a device: how the image path runs (see the module docstring).

    Attributes:
        name: ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        device_type: ``"cpu"`` or ``"cuda"`` (``torch.device.type``).
    """

    name: str = "fp32"
    device_type: str = "cpu"

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.name]

    @property
    def casts_weights(self) -> bool:
        """Reduced precision by casting the image path's weights (CPU bf16)."""
        return self.name != "fp32" and self.device_type != "cuda"

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The ``torch.autocast`` dtype of the image path (CUDA bf16 / fp16), else ``None``."""
        return self.dtype if self.name != "fp32" and self.device_type == "cuda" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context the image path runs in: ``torch.autocast`` on CUDA, nothing otherwise."""
        dtype = self.autocast_dtype
        return torch.autocast(self.device_type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    def prepare(self, model: nn.Module) -> nn.Module:
        """Cast ``model``'s vision tower in place when this precision casts weights (CPU bf16); returns ``model``.

        ``model`` is an :class:`~adds.model.ADDS` or a :class:`~adds.tagger.CLIPBaseline`: its ``towers.clip.visual``
        is cast (shared towers are shared: every head on them sees the cast). The head and the text tower stay
        float32. The towers' fingerprint (:meth:`~adds.towers.Towers.identity`) is computed first, from the float32
        weights, so label-cache and checkpoint-compatibility keys do not change.
        """
        if not self.casts_weights:
            return model
        towers = model.towers
        towers.identity()  # the float32 fingerprint, cached on the towers
        towers.clip.visual.to(self.dtype)
        logger.info("precision: vision tower in %s on the CPU (head and text tower in float32)", self.name)
        return model


def resolve_precision(name: str, device: torch.device | str) -> InferencePrecision:
    """Check that ``name`` can run on ``device`` -> :class:`InferencePrecision`.

    Raises:
        PrecisionError: an unknown name, fp16 on a CPU, bf16 on a CPU without native bfloat16 or on a GPU without
            it, or reduced precision on another device kind -- one line naming the value and what to use instead.
    """
    if name not in PRECISIONS:
        raise PrecisionError(f"--precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    device = torch.device(device)
    if name == "fp32":
        return InferencePrecision("fp32", device.type)
    if device.type == "cuda":
        if name == "bf16" and not torch.cuda.is_bf16_supported():
            raise PrecisionError("--precision bf16: this GPU has no bfloat16 support; use --precision fp16 or fp32")
        return InferencePrecision(name, "cuda")
    if device.type != "cpu":
        raise PrecisionError(f"--precision {name} is supported on cpu and cuda devices, not on {device.type}")
    if name == "fp16":
        raise PrecisionError("--precision fp16 needs a CUDA GPU (on a CPU it is no faster than fp32); "
                             "use --precision bf16 on a CPU with bfloat16 support, or fp32")
    if not cpu_supports_bf16():
        raise PrecisionError("--precision bf16: this CPU has no native bfloat16 (AVX512-BF16 or AMX); "
                             "use --precision fp32")
    return InferencePrecision("bf16", "cpu")
