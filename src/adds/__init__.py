"""adds: open-vocabulary multi-label image classification with ADDS.

ADDS (Aligned Dual moDality ClaSsifier, Xu et al.) tags an image with any list of words: frozen CLIP
towers embed the image (per token, in the joint image-text space) and the labels (prompt-ensembled
text embeddings); a stack of DM-decoder layers (Eq. 5) fuses the two and a shared fully-connected
layer turns each label's output into an independent logit.
"""

__version__ = "0.1.0"

from adds.decoder import DecoderConfig  # noqa: E402
from adds.model import ADDS, ADDSConfig  # noqa: E402
from adds.pyramid import PyramidConfig  # noqa: E402
from adds.towers import TowerConfig, Towers, load_towers  # noqa: E402

__all__ = ["ADDS", "ADDSConfig", "DecoderConfig", "PyramidConfig", "TowerConfig", "Towers", "load_towers"]
