"""Robust image loading: any file PIL can read -> float32 RGB tensor ``(3, H, W)`` in ``[0, 1]``.

Used by the tagger, the datasets and the CLI, so that every entry point sees the same pixels:

* EXIF orientation is applied (``PIL.ImageOps.exif_transpose``), so a portrait phone photo stays portrait.
* Transparency ("RGBA", "LA", "PA", "RGBa", "La", and "P"/"L"/"RGB" with a ``transparency`` key) is
  alpha-composited on **white**: the usual look of a transparent PNG in a browser or viewer, and no black halo
  around cut-out objects.
* Grayscale ("L", "1") is replicated to three channels.
* 16-bit grayscale ("I;16", "I;16B", "I;16L", "I;16N") is divided by 65535; 32-bit integer "I" (how some Pillow
  versions decode 16-bit PNG/TIFF) is also read on the 16-bit scale and clipped to ``[0, 1]``. Neither is squeezed
  through 8 bits first.
* Floating point "F" follows PIL's own convention (the one of ``convert("L")``): values on the 0-255 scale, divided
  by 255 and clipped to ``[0, 1]``; NaN becomes 0.
* "CMYK", "YCbCr", "LAB", "HSV", "RGBX" and any other mode are converted with ``Image.convert("RGB")``.
* Multi-frame files (GIF, TIFF) give their first frame.

Safety and errors: every failure is an :class:`ImageLoadError` (a ``ValueError``) naming the path and the reason -
missing file, directory, zero-byte file, not an image, truncated or corrupt data (the image is fully decoded inside
the ``try`` with ``img.load()``; this module never sets ``ImageFile.LOAD_TRUNCATED_IMAGES``), and decompression
bombs: an image with more than :data:`MAX_IMAGE_PIXELS` pixels is refused before it is decoded, and PIL's own
``DecompressionBombWarning`` is raised as an error too.
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

__all__ = ["MAX_IMAGE_PIXELS", "ImageLoadError", "as_image_batch", "image_to_tensor", "load_image", "open_image"]

#: Largest accepted ``width * height``; ``None`` disables the check. PIL's default limit (``Image.MAX_IMAGE_PIXELS``,
#: ~89.5 megapixels, about 0.25 GiB of RGB at 24 bits), where PIL only starts to warn. Change it on this module.
MAX_IMAGE_PIXELS: int | None = int(1024 * 1024 * 1024 // 4 // 3)

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_UINT16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
# Errors PIL raises on bad or truncated data, depending on the format plugin.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)


class ImageLoadError(ValueError):
    """An image could not be loaded; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot load image '{path}': {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self):  # picklable across DataLoader worker processes
        return (type(self), (self.path, self.reason))


def _alpha_composite_white(img: Image.Image) -> np.ndarray:
    if img.mode == "La":
        img = img.convert("LA")  # PIL cannot go from "La" to "RGBA" directly
    rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0  # (H, W, 4)
    alpha = rgba[..., 3:]
    return rgba[..., :3] * alpha + (1.0 - alpha)  # (H, W, 3) over white


def _gray(values: np.ndarray) -> np.ndarray:
    return np.repeat(values[..., None], 3, axis=-1)  # (H, W) -> (H, W, 3)


def image_to_tensor(img: Image.Image) -> Tensor:
    """Convert a PIL image of any mode to a float32 RGB tensor ``(3, H, W)`` in ``[0, 1]`` (rules in the module doc).

    EXIF orientation is *not* applied here (use :func:`load_image`); the image must already be loaded or loadable.
    """
    mode = img.mode
    if mode in _UINT16_MODES:
        rgb = _gray(np.asarray(img).astype(np.float32) / 65535.0)
    elif mode == "I":
        rgb = _gray(np.clip(np.asarray(img).astype(np.float32) / 65535.0, 0.0, 1.0))
    elif mode == "F":
        values = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        rgb = _gray(np.clip(values / 255.0, 0.0, 1.0))
    elif mode in _ALPHA_MODES or "transparency" in img.info:
        rgb = _alpha_composite_white(img)
    else:
        rgb = np.asarray(img if mode == "RGB" else img.convert("RGB")).astype(np.float32) / 255.0  # (H, W, 3)
    return torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1).contiguous()  # (3, H, W)


def _check_pixels(img: Image.Image, name: str) -> None:
    limit = MAX_IMAGE_PIXELS
    width, height = img.size
    if limit is not None and width * height > limit:
        raise ImageLoadError(
            name,
            f"decompression bomb: {width}x{height} = {width * height} pixels exceeds the limit of {limit} "
            "(adds.data.images.MAX_IMAGE_PIXELS)",
        )


def _decode(img: Image.Image, name: str) -> Image.Image:
    """Check the size, decode every pixel, apply EXIF orientation; returns a new in-memory image."""
    _check_pixels(img, name)
    img.load()  # full decode: truncated / corrupt data fails here, not later
    return ImageOps.exif_transpose(img)


def _open(source: str | Image.Image, name: str) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            if isinstance(source, Image.Image):
                return _decode(source, name)
            with Image.open(source) as img:
                return _decode(img, name)
        except ImageLoadError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ImageLoadError(name, f"decompression bomb: {err}") from err
        except UnidentifiedImageError as err:
            raise ImageLoadError(name, "not an image, or a format PIL cannot identify") from err
        except FileNotFoundError as err:
            raise ImageLoadError(name, "file not found") from err
        except PermissionError as err:
            raise ImageLoadError(name, "permission denied") from err
        except _DECODE_ERRORS as err:
            raise ImageLoadError(name, f"truncated or corrupt image data ({type(err).__name__}: {err})") from err


def open_image(source: str | os.PathLike | Image.Image) -> Image.Image:
    """Open and fully decode an image file (or a PIL image) with :func:`load_image`'s checks: the decoded,
    EXIF-oriented PIL image, for callers that resize before converting to a tensor (the tagger).

    Raises the same errors as :func:`load_image`.
    """
    if isinstance(source, Image.Image):
        return _open(source, getattr(source, "filename", "") or "<PIL.Image.Image>")
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a path or a PIL image, got {type(source).__name__}")
    path = os.fsdecode(os.fspath(source))
    if not os.path.exists(path):
        raise ImageLoadError(path, "file not found")
    if os.path.isdir(path):
        raise ImageLoadError(path, "is a directory, not an image file")
    if os.path.getsize(path) == 0:
        raise ImageLoadError(path, "zero-byte file")
    return _open(path, path)


def load_image(source: str | os.PathLike | Image.Image) -> Tensor:
    """Load an image file (or a PIL image) as a float32 RGB tensor ``(3, H, W)`` in ``[0, 1]``.

    Args:
        source: a path, or an already opened PIL image (decoded here; not closed).

    Raises:
        ImageLoadError: missing, empty, unreadable, truncated/corrupt, or too large (decompression bomb) images.
        TypeError: ``source`` is neither a path nor a PIL image.
    """
    return image_to_tensor(open_image(source))


def as_image_batch(images: Tensor) -> Tensor:
    """Normalise an image tensor to a float batch ``(B, 3, H, W)`` in ``[0, 1]``.

    Accepts ``(3, H, W)`` (a single image becomes a batch of one) or ``(B, 3, H, W)``; one-channel ``(1, H, W)`` /
    ``(B, 1, H, W)`` is replicated to RGB; ``uint8`` is divided by 255. Float input is passed through unchanged
    (the ``[0, 1]`` range is not checked). Anything else (4 channels, other ranks, integer or bool dtypes) raises a
    ``ValueError`` naming the shape or dtype.
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    shape = tuple(images.shape)
    if images.dim() == 3:
        images = images.unsqueeze(0)  # (1, C, H, W)
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (3, H, W), (B, 3, H, W) or (B, 1, H, W), got {shape}")
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    elif not images.is_floating_point():
        raise ValueError(f"images must be float in [0, 1] or uint8, got dtype {images.dtype} (shape {shape})")
    if images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)  # (B, 3, H, W)
    return images
