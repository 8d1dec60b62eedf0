"""What to load (:class:`TowerConfig`), the package's own open_clip configs, and the errors tower loading raises."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import open_clip

__all__ = ["TINY_MODEL", "TowerConfig", "WeightsFileError", "WeightsUnavailableError", "register_model_configs"]

#: Name of the tiny open_clip config shipped for tests and demos (2 layers, width 64, 32 px, joint dim 32).
TINY_MODEL = "adds-tiny-vit"

_MODEL_CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"
_registered = False


def register_model_configs() -> None:
    """Make the package's own open_clip configs (``adds-tiny-vit``...) known to open_clip's registry."""
    global _registered
    if not _registered:
        open_clip.add_model_config(_MODEL_CONFIG_DIR)
        _registered = True


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be obtained (typically: no network and nothing in the local cache)."""


class WeightsFileError(ValueError):
    """A local weights file is unreadable (truncated, corrupt, not weights) or holds another architecture.

    The message is one line naming the file; commands turn it into exit code 2 without a traceback.
    """


@dataclass(frozen=True)
class TowerConfig:
    """Which CLIP towers to load.

    Attributes:
        model: open_clip model name, e.g. ``"ViT-B-32-quickgelu"``, ``"ViT-L-14-336-quickgelu"``, ``"adds-tiny-vit"``.
        pretrained: open_clip pretrained tag, path to a local weights file, or ``None`` for random weights.
        quick_gelu: force QuickGELU on/off; ``None`` decides from the model name, the tag or the file (see
            :mod:`adds.towers.weights`).
        aligned: return visual tokens in the joint space (``True``, ADDS) or at the raw tower width (ablation).
        cache_dir: where open_clip / Hugging Face downloads go; ``None`` uses their defaults.
        image_size: override the tower's input size (only sensible for random weights).
        seed: seed for random initialisation when ``pretrained is None``, so random towers are reproducible.
        preprocess_from: the image normalisation of the weights when ``pretrained`` is a file that does not carry it:
            a pretrained tag of ``model`` (``"datacomp1b"``), a JSON file (open_clip's ``open_clip_config.json`` or
            a flat ``{"mean": [...], "std": [...]}``), or such a JSON object inline. ``None``: the tag's own, an
            ``open_clip_config.json`` next to the file, or the one all of the model's tags share (see
            :mod:`adds.towers.preprocess`).
    """

    model: str = "ViT-B-32-quickgelu"
    pretrained: str | None = "openai"
    quick_gelu: bool | None = None
    aligned: bool = True
    cache_dir: str | None = None
    image_size: int | None = None
    seed: int = 0
    preprocess_from: str | None = None


@contextlib.contextmanager
def quiet_random_init():
    """Drop open_clip's root-logger warning that a model was "initialized randomly": here that is what was asked."""

    def keep(record: logging.LogRecord) -> bool:
        return "Model initialized randomly" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)
