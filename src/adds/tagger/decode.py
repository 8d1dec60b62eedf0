"""Decoding for the tagger: an image file (or PIL image) -> ``(3, s, s)`` float pixels squashed to the plan's size.

The decode runs in the tagger's ``--workers`` threads while the model scores the previous batch
(:meth:`adds.tagger.Tagger.tag_files`), so its cost is what limits ``adds tag`` on a few cores. The pixels are
exactly those of :func:`~adds.data.images.load_image` + :class:`~adds.data.base.SquashResize` (the path ``adds eval``
and training take, and the tagger's tensor inputs): only the 8-bit RGB / grayscale to float conversion is done with
one copy into a preallocated float tensor and an in-place division, instead of NumPy's three full-size passes (the
same float32 values, bit for bit, tested; a third of the conversion time of a 1920x1080 photo). Every other mode
(alpha, 16-bit, float, palette, CMYK, ...) goes through :func:`~adds.data.images.image_to_tensor`'s rules. Errors are
:func:`~adds.data.images.load_image`'s (:class:`~adds.data.images.ImageLoadError` naming the file).

``fast=True`` (``TaggerConfig.fast_decode``, ``adds tag --fast-decode``) trades that exactness for speed on a busy
CPU: an 8-bit RGB / grayscale image at least as large as the plan's size is squashed *in 8 bits* (torch's
antialiased bicubic on ``uint8``, the same filter, on the image's own channels-last layout) and only the small
result becomes float. A 1920x1080 JPEG's squash then costs 1.7 ms instead of 10.4 ms of float conversion plus
14.0 ms of float resize (``benchmarks/decode_overlap.py --decode-only``); the pixels differ from the exact path's by
the 8-bit rounding (mean 0.3/255, at most 2/255), so scores move by a few 10^-4. Smaller images are enlarged on the
exact path (in 8 bits, bicubic's overshoot would be clipped: up to 16/255).
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from adds.data.base import SquashResize
from adds.data.images import image_to_tensor, open_image

__all__ = ["pixels_of", "squash_image"]


def pixels_of(image: Image.Image) -> Tensor:
    """A decoded PIL image -> float32 ``(3, H, W)`` in ``[0, 1]``, equal to ``image_to_tensor(image)``."""
    if image.mode not in ("RGB", "L") or "transparency" in image.info:
        return image_to_tensor(image)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a read-only array: only read here
        values = torch.from_numpy(np.asarray(image))  # (H, W, 3) or (H, W) uint8
    out = torch.empty(3, image.height, image.width, dtype=torch.float32)  # (3, H, W)
    out.copy_(values.permute(2, 0, 1) if values.dim() == 3 else values.unsqueeze(0).expand(3, -1, -1))
    return out.div_(255.0)


def _squash_8bit(image: Image.Image, size: int) -> Tensor:
    """An RGB / L image squashed in 8 bits -> float32 ``(3, size, size)`` in ``[0, 1]`` (the ``fast`` path)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a read-only array: only read here
        values = torch.from_numpy(np.asarray(image))  # (H, W, 3) or (H, W) uint8
    if values.dim() == 2:
        values = values.unsqueeze(-1).expand(-1, -1, 3)  # (H, W, 3)
    batch = values.permute(2, 0, 1).unsqueeze(0)  # (1, 3, H, W) uint8, channels-last strides (the fast kernel)
    if batch.shape[-2:] != (size, size):
        batch = F.interpolate(batch, size=(size, size), mode="bicubic", antialias=True)  # (1, 3, s, s) uint8
    return batch[0].float().div_(255.0).contiguous()  # (3, s, s)


def squash_image(source: str | os.PathLike | Image.Image, size: int,
                 fast: bool = False) -> tuple[Tensor, tuple[int, int]]:
    """Decode ``source`` and squash it (no aspect ratio kept) to ``size x size``.

    Args:
        fast: squash 8-bit RGB / grayscale images in 8 bits (see the module docstring); ``False``: the exact pixels
            of ``load_image`` + ``SquashResize``.

    Returns:
        ``(pixels, (height, width))``: float32 ``(3, size, size)`` in ``[0, 1]`` and the original size.
    """
    image = open_image(source)
    original = (image.height, image.width)
    shrinks = image.width >= size and image.height >= size  # enlarging in 8 bits clips bicubic's overshoot
    if fast and shrinks and image.mode in ("RGB", "L") and "transparency" not in image.info:
        return _squash_8bit(image, size), original
    return SquashResize(size)(pixels_of(image)), original  # (3, size, size)
