"""The training-free CLIP baseline scorer: zero-shot CLIP as an independent multi-label scorer (no trained head).

The score is ``sigmoid(s * (cos(image, label) - cos(image, reference)))``: ``s`` is CLIP's learned logit scale
(``exp(logit_scale)``, 100 for trained CLIP models) and ``reference`` is the prompt-ensembled embedding of the same
templates *without* a label ("This is a photo."). This is CLIP's own two-way softmax between "a photo of <label>"
and "a photo", so it stays independent per label, needs no invented constant, and is above 0.5 exactly when the
label describes the image better than the label-free caption. It is **not calibrated**.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adds.data.images import as_image_batch
from adds.prompts import LabelEmbedder, resolve_templates
from adds.pyramid import PyramidConfig, PyramidForwarding
from adds.towers import Towers

__all__ = ["CLIPBaseline", "CLIPBaselineConfig"]


@dataclass(frozen=True)
class CLIPBaselineConfig:
    """The training-free CLIP scorer.

    Attributes:
        templates: prompt templates for label embeddings (``"paper"``, ``"clip80"`` or a list, see
            :func:`adds.prompts.resolve_templates`).
        max_logit_scale: cap on CLIP's learned logit scale (CLIP clamps it at 100 during training).
    """

    templates: str | tuple[str, ...] = "paper"
    max_logit_scale: float = 100.0


class CLIPBaseline(nn.Module):
    """Zero-shot CLIP as an independent multi-label scorer (no trained head).

    ``logits = s * (cos(image, label) - cos(image, reference))`` with ``s`` CLIP's logit scale, the image embedding
    the normalised class token of the level-0 view (``Towers.encode_image_tokens(...)[:, 0]`` = ``encode_image``),
    label embeddings prompt-ensembled and normalised (:class:`~adds.prompts.LabelEmbedder`), and ``reference`` the
    templates' label-free prompts ensembled the same way. ``logits.sigmoid()`` is CLIP's two-way softmax between a
    label's prompts and the label-free ones: independent per label, uncalibrated. Same call shape as :class:`ADDS`.
    """

    def __init__(self, towers: Towers, config: CLIPBaselineConfig | None = None) -> None:
        super().__init__()
        if not towers.config.aligned:
            raise ValueError("the CLIP baseline needs aligned towers (TowerConfig(aligned=True))")
        self.config = config or CLIPBaselineConfig()
        self.towers = towers
        self.templates = resolve_templates(self.config.templates)
        self.label_embedder = LabelEmbedder(towers, self.templates)
        self.pyramid = PyramidForwarding(towers.image_size, towers.mean, towers.std, PyramidConfig(levels=(0,)))
        self._reference: Tensor | None = None

    @property
    def logit_scale(self) -> float:
        scale = float(self.towers.clip.logit_scale.exp()) if hasattr(self.towers.clip, "logit_scale") else 100.0
        return min(scale, self.config.max_logit_scale)

    def reference_embedding(self) -> Tensor:
        """Normalised, prompt-ensembled embedding of the templates without a label -> ``(D,)``."""
        if self._reference is None:
            prompts = [" ".join(t.format("").split()).replace(" .", ".").replace(" ,", ",") for t in self.templates]
            emb = F.normalize(self.towers.encode_text(prompts), dim=-1)  # (n_templates, D)
            self._reference = F.normalize(emb.mean(dim=0), dim=-1)  # (D,)
        return self._reference

    def encode_labels(self, labels: Sequence[str]) -> Tensor:
        """Prompt-ensembled, normalised label embeddings ``(k, D)`` (cached on the towers)."""
        return self.label_embedder(labels)

    @torch.no_grad()
    def forward_features(self, images: Tensor) -> Tensor:
        """Images ``(B, 3, H, W)`` in [0, 1] -> normalised pooled embeddings ``(B, D)`` of the level-0 view."""
        device = next(self.towers.parameters()).device
        crops, _ = self.pyramid.crops(as_image_batch(images).to(device))  # (B, 3, S, S)
        pooled = self.towers.encode_image_tokens(crops)[:, 0].float()  # (B, D), float32 with a bf16 tower too
        return F.normalize(pooled, dim=-1)  # (B, D)

    def forward_head(self, features: Tensor, label_embeddings: Tensor) -> Tensor:
        """Pooled embeddings ``(B, D)`` and label embeddings ``(k, D)`` -> logits ``(B, k)``."""
        label_embeddings = F.normalize(label_embeddings.to(features), dim=-1)
        reference = self.reference_embedding().to(features)
        cos = features @ label_embeddings.T  # (B, k)
        base = features @ reference  # (B,)
        return self.logit_scale * (cos - base.unsqueeze(1))  # (B, k)

    def forward(self, images: Tensor, labels: Sequence[str] | Tensor) -> Tensor:
        label_embeddings = labels if isinstance(labels, Tensor) else self.encode_labels(labels)
        return self.forward_head(self.forward_features(images), label_embeddings)

