"""The label-embedding cache: prompt-ensembled text-tower embeddings stored once per vocabulary."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor

from adds.features.manifest import _tower_identity

if TYPE_CHECKING:
    from adds.model import ADDS

__all__ = ["label_embedding_cache"]

logger = logging.getLogger(__name__)


def label_embedding_cache(model: ADDS, vocabulary: Sequence[str], out_dir: str | os.PathLike) -> Tensor:
    """Prompt-ensembled label embeddings ``(k, D)`` of ``vocabulary``, stored once per vocabulary on disk.

    The file ``labels-<hash>.safetensors`` in ``out_dir`` is keyed by the towers' identity, the prompt templates and
    the vocabulary (in order); a later call with the same three reloads it instead of running the text tower
    (21k ImageNet labels x 2 templates is minutes on a CPU). An unreadable file is recomputed with a warning.
    Returned float32 on the towers' device.
    """
    from safetensors.torch import load_file, save_file

    from adds.prompts import validate_labels

    labels = validate_labels(vocabulary)
    identity = _tower_identity(model)
    description = {"towers": identity, "templates": list(model.config.templates), "vocabulary": labels}
    digest = hashlib.sha256(json.dumps(description, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    directory = Path(out_dir)
    path = directory / f"labels-{digest[:16]}.safetensors"
    device = next(model.towers.parameters()).device
    expected = (len(labels), model.towers.embed_dim)
    if path.is_file():
        try:
            embeddings = load_file(str(path))["embeddings"]
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                stored_key = (handle.metadata() or {}).get("key")
            if stored_key == digest and tuple(embeddings.shape) == expected:
                logger.debug("label embeddings of %d labels loaded from %s", len(labels), path)
                return embeddings.float().to(device)
            logger.warning("%s does not match its name (key or shape); recomputing", path)
        except Exception as error:  # safetensors raises its own types for truncated / corrupt files
            logger.warning("%s is unreadable (%s); recomputing", path, error)
    embeddings = model.encode_labels(labels).float().cpu().contiguous()  # (k, D)
    directory.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    metadata = {"key": digest, "templates": json.dumps(list(model.config.templates)), "num_labels": str(len(labels)),
                "towers": json.dumps(identity)}
    save_file({"embeddings": embeddings}, str(temporary), metadata=metadata)
    os.replace(temporary, path)
    logger.info("label embeddings of %d labels cached in %s", len(labels), path)
    return embeddings.to(device)
