"""The training-free CLIP baseline scorer: zero-shot CLIP as an independent multi-label scorer (no trained head).

The logit of a label is ``s * (max_c cos(crop_c, label) - b)``:

* ``s`` is CLIP's learned logit scale (``exp(logit_scale)``, 100 for trained CLIP models);
* ``crop_c`` runs over the image's crops (Pyramid-Forwarding, :mod:`adds.pyramid`): with ``pooling="max"`` (the
  default) the crops of levels 0 and 1, the whole view and its four quadrants at ``2S``, so a small object that
  only a quadrant shows large enough still counts; ``pooling="view"`` scores the one level-0 view, as plain CLIP
  zero-shot does (one tower pass per image instead of five);
* ``b`` is the *label-free reference*: the cosine of the templates without a label ("This is a photo.") with a
  blank image (every pixel the tower's mean colour), one constant per tower (``reference="blank"``, the default).
  A label scores above 0.5 when its best crop matches it better than the label-free caption matches an empty
  picture. Because ``b`` is the same for every image, a label's scores rank images exactly as its cosine does
  (the ranking ``adds eval`` measures). ``reference="image"`` subtracts each crop's own label-free cosine
  instead (CLIP's two-way softmax between "a photo of <label>" and "a photo" on that crop; the score before
  2026-12-03): image-dependent, it reorders the images of a label.

docs/tagging.md measures the poolings and the references (issue 9.7). The score is **not calibrated**: rank with
it, or fit thresholds with ``adds calibrate``.
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

__all__ = ["BASELINE_POOLINGS", "BASELINE_REFERENCES", "CLIPBaseline", "CLIPBaselineConfig",
           "DEFAULT_BASELINE_LEVELS", "pooled_logits"]

#: How the baseline pools its crops: ``"max"`` over the crops of its levels, ``"view"`` the one level-0 view.
BASELINE_POOLINGS: tuple[str, ...] = ("max", "view")

#: What the baseline's logit is measured against: ``"blank"`` one constant per tower, ``"image"`` each crop's own
#: label-free cosine.
BASELINE_REFERENCES: tuple[str, ...] = ("blank", "image")

#: The levels of ``pooling="max"`` when none are given: the whole view and its 2 x 2 quadrants (1 + 4 crops).
DEFAULT_BASELINE_LEVELS: tuple[int, ...] = (0, 1)


@dataclass(frozen=True)
class CLIPBaselineConfig:
    """The training-free CLIP scorer.

    Attributes:
        templates: prompt templates for label embeddings (``"paper"``, ``"clip80"`` or a list, see
            :func:`adds.prompts.resolve_templates`).
        max_logit_scale: cap on CLIP's learned logit scale (CLIP clamps it at 100 during training).
        pooling: ``"max"`` (default): each label's logit is its maximum over the crops of ``levels``; ``"view"``:
            the level-0 view only (plain CLIP zero-shot, one tower pass per image).
        levels: Pyramid-Forwarding levels of ``pooling="max"`` (``None`` = :data:`DEFAULT_BASELINE_LEVELS`);
            ``"view"`` takes none but ``(0,)``.
        reference: ``"blank"`` (default): the label-free caption's cosine with a blank image, one constant;
            ``"image"``: each crop's own label-free cosine (see the module docstring).
    """

    templates: str | tuple[str, ...] = "paper"
    max_logit_scale: float = 100.0
    pooling: str = "max"
    levels: tuple[int, ...] | None = None
    reference: str = "blank"

    def __post_init__(self) -> None:
        if self.pooling not in BASELINE_POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(BASELINE_POOLINGS)}, got {self.pooling!r}")
        if self.reference not in BASELINE_REFERENCES:
            raise ValueError(f"reference must be one of {', '.join(BASELINE_REFERENCES)}, got {self.reference!r}")
        if self.levels is not None:
            levels = PyramidConfig(levels=tuple(self.levels)).levels
            if self.pooling == "view" and levels != (0,):
                raise ValueError(f"pooling 'view' scores the level-0 view only, got levels {levels}; use "
                                 "pooling 'max' for more crops")
            object.__setattr__(self, "levels", levels)

    @property
    def pyramid_levels(self) -> tuple[int, ...]:
        """The levels the baseline crops at."""
        if self.pooling == "view":
            return (0,)
        return self.levels if self.levels is not None else DEFAULT_BASELINE_LEVELS


def pooled_logits(crops: Tensor, label_embeddings: Tensor, reference: Tensor | float, logit_scale: float,
                  pooling: str = "max") -> Tensor:
    """Each label's best crop cosine against the label-free reference, times CLIP's scale -> logits ``(B, k)``.

    Args:
        crops: ``(B, n, D)`` normalised class tokens of each image's ``n`` crops (crop 0 = the level-0 view when
            the plan has level 0), or ``(B, D)`` for one crop.
        label_embeddings: ``(k, D)`` label embeddings (normalised here).
        reference: a float ``b`` (``reference="blank"``: ``s * (max_c cos_c - b)``), or the ``(D,)`` normalised
            label-free embedding (``reference="image"``: ``s * max_c (cos_c - cos(crop_c, reference))``).
        logit_scale: CLIP's ``s``.
        pooling: ``"max"`` over the crops, or ``"view"`` (crop 0 only).
    """
    if crops.dim() == 2:
        crops = crops.unsqueeze(1)  # (B, 1, D)
    if pooling == "view":
        crops = crops[:, :1]  # (B, 1, D)
    labels = F.normalize(label_embeddings.to(crops), dim=-1)  # (k, D)
    cos = torch.einsum("bnd,kd->bnk", crops, labels)  # (B, n, k)
    if isinstance(reference, Tensor):
        base = crops @ reference.to(crops)  # (B, n): each crop's label-free cosine
        return logit_scale * (cos - base.unsqueeze(-1)).amax(dim=1)  # (B, k)
    return logit_scale * (cos.amax(dim=1) - reference)  # (B, k)


class CLIPBaseline(nn.Module):
    """Zero-shot CLIP as an independent multi-label scorer (no trained head); see the module docstring.

    The image embedding of a crop is its normalised class token (``Towers.encode_image_tokens(...)[:, 0]`` =
    ``encode_image``), label embeddings are prompt-ensembled and normalised (:class:`~adds.prompts.LabelEmbedder`)
    and the label-free reference is the templates without a label, ensembled the same way. Scores are independent
    per label and uncalibrated. Same call shape as :class:`ADDS`; images must be at least :attr:`input_size` square for
    the levels (the :class:`~adds.tagger.Tagger` squashes them to it).
    """

    def __init__(self, towers: Towers, config: CLIPBaselineConfig | None = None) -> None:
        super().__init__()
        if not towers.config.aligned:
            raise ValueError("the CLIP baseline needs aligned towers (TowerConfig(aligned=True))")
        self.config = config or CLIPBaselineConfig()
        self.towers = towers
        self.templates = resolve_templates(self.config.templates)
        self.label_embedder = LabelEmbedder(towers, self.templates)
        self.pyramid = PyramidForwarding(towers.image_size, towers.mean, towers.std,
                                         PyramidConfig(levels=self.levels))
        self._reference: Tensor | None = None
        self._blank: float | None = None
        if self.config.reference == "blank":
            self.blank_reference()  # now, in float32: before a tagger casts the vision tower to bfloat16

    @property
    def levels(self) -> tuple[int, ...]:
        """The Pyramid-Forwarding levels of the baseline's crops."""
        return self.config.pyramid_levels

    @property
    def input_size(self) -> int:
        """The smallest square size that has every level: ``S * 2^max(levels)``."""
        return self.towers.image_size << max(self.levels)

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

    @torch.no_grad()
    def blank_reference(self) -> float:
        """``b`` of ``reference="blank"``: the label-free embedding's cosine with a blank image's level-0 view (every
        pixel the tower's mean colour, i.e. zeros after normalisation), computed once."""
        if self._blank is None:
            device = next(self.towers.parameters()).device
            blank = torch.zeros(1, 3, self.towers.image_size, self.towers.image_size, device=device)  # normalised
            pooled = F.normalize(self.towers.encode_image_tokens(blank)[:, 0].float(), dim=-1)  # (1, D)
            self._blank = float(pooled[0] @ self.reference_embedding().float().to(device))
        return self._blank

    def reference_term(self) -> Tensor | float:
        """What :func:`pooled_logits` measures against: :meth:`blank_reference` or the label-free embedding."""
        return self.blank_reference() if self.config.reference == "blank" else self.reference_embedding()

    def encode_labels(self, labels: Sequence[str]) -> Tensor:
        """Prompt-ensembled, normalised label embeddings ``(k, D)`` (cached on the towers)."""
        return self.label_embedder(labels)

    def class_tokens(self, tokens: Tensor) -> Tensor:
        """Pyramid tokens ``(B, n * T, D)`` (``PyramidForwarding(..., encode_image_tokens)``) -> normalised class
        tokens of the ``n`` crops ``(B, n, D)``, float32."""
        return F.normalize(tokens[:, :: self.towers.tokens_per_image].float(), dim=-1)  # (B, n, D)

    @torch.no_grad()
    def forward_features(self, images: Tensor) -> Tensor:
        """Images ``(B, 3, H, W)`` in [0, 1] -> normalised class tokens of the baseline's crops ``(B, n, D)``."""
        device = next(self.towers.parameters()).device
        crops, _ = self.pyramid.crops(as_image_batch(images).to(device))  # (B * n, 3, S, S), image-major
        pooled = self.towers.encode_image_tokens(crops)[:, 0].float()  # (B * n, D), float32 with a bf16 tower too
        return F.normalize(pooled, dim=-1).reshape(images.shape[0], -1, pooled.shape[-1])  # (B, n, D)

    def forward_head(self, features: Tensor, label_embeddings: Tensor) -> Tensor:
        """Class tokens ``(B, n, D)`` (or ``(B, D)``) and label embeddings ``(k, D)`` -> logits ``(B, k)``."""
        return pooled_logits(features, label_embeddings, self.reference_term(), self.logit_scale,
                             self.config.pooling)

    def forward(self, images: Tensor, labels: Sequence[str] | Tensor) -> Tensor:
        label_embeddings = labels if isinstance(labels, Tensor) else self.encode_labels(labels)
        return self.forward_head(self.forward_features(images), label_embeddings)
