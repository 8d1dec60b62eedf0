"""adds: open-vocabulary multi-label image classification with ADDS.

ADDS (Aligned Dual moDality ClaSsifier, Xu et al.) tags an image with any list of words: frozen CLIP
towers embed the image (per token, in the joint image-text space) and the labels (prompt-ensembled
text embeddings); a stack of DM-decoder layers (Eq. 5) fuses the two and a shared fully-connected
layer turns each label's output into an independent logit.

The names below are imported lazily (PEP 562 module ``__getattr__``): ``import adds`` does not import torch or
open_clip, so ``adds --help`` and argument errors answer at once; ``adds.ADDS`` imports :mod:`adds.model` on
first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it (imported on first attribute access).
_LAZY: dict[str, str] = {
    "ADDS": "adds.model",
    "ADDSConfig": "adds.model",
    "DecoderConfig": "adds.decoder",
    "PyramidConfig": "adds.pyramid",
    "TowerConfig": "adds.towers",
    "Towers": "adds.towers",
    "load_towers": "adds.towers",
}

__all__ = ["ADDS", "ADDSConfig", "DecoderConfig", "PyramidConfig", "TowerConfig", "Towers", "load_towers"]

if TYPE_CHECKING:  # for type checkers and IDEs only; at run time the names come from __getattr__
    from adds.decoder import DecoderConfig
    from adds.model import ADDS, ADDSConfig
    from adds.pyramid import PyramidConfig
    from adds.towers import TowerConfig, Towers, load_towers


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'adds' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
