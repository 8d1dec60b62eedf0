"""Tag images with any words: the inference API of ``adds``.

Three lines of Python::

    from adds.tagger import Tagger
    tagger = Tagger.clip_baseline("ViT-B-32-quickgelu", "openai")      # or Tagger.from_checkpoint("run/best")
    tagger(["cat.jpg", "beach.png"], labels=["cat", "dog", "sea"])      # [[{"label": "cat", "score": 0.93}], ...]

Two kinds of scorer sit behind :class:`Tagger`:

* a trained ADDS head (:meth:`Tagger.from_checkpoint`): frozen towers, Pyramid-Forwarding, DM-decoder (Eq. 5) and
  the shared classifier; the score of a label is ``sigmoid(logit)``, thresholded at 0.5 in the paper (Appendix,
  Figure 5).
* the training-free CLIP baseline (:meth:`Tagger.clip_baseline`, :class:`CLIPBaseline`): no head at all, only the
  cosine similarity of CLIP's pooled image embedding with the prompt-ensembled label embedding.

Scores
------
Every score is an independent sigmoid in ``[0, 1]``: scores do **not** sum to 1 over the labels, several labels can
score high at once (multi-label), and none may. With an ADDS head of two or more DM-decoder layers a label's score
also depends on the *whole label list* (the image tokens of layer 2 have attended to every label's layer-1 output,
see ``docs/architecture.md``), so tagging with ``["dog", "cat"]`` and with ``["dog", "cat", "car"]`` can give "dog"
slightly different scores. A 1-layer DM-decoder, the ML-Decoder baseline and the CLIP baseline score each label on
its own.

The CLIP baseline's score is ``sigmoid(s * (cos(image, label) - cos(image, reference)))``: ``s`` is CLIP's learned
logit scale (``exp(logit_scale)``, 100 for trained CLIP models) and ``reference`` is the prompt-ensembled embedding
of the same templates *without* a label ("This is a photo."). This is CLIP's own two-way softmax between "a photo of
<label>" and "a photo", so it stays independent per label, needs no invented constant, and is above 0.5 exactly when
the label describes the image better than the label-free caption. It is **not calibrated** (nothing was trained to
make 0.7 mean "70 % of the time right"): rank with it, and choose thresholds on your own data.

Images
------
Images may be paths, PIL images or tensors (``(3, H, W)`` or ``(B, 3, H, W)``, float in ``[0, 1]`` or uint8); files
and PIL images go through :func:`adds.data.images.load_image` (EXIF orientation, CMYK, 16-bit, palette, alpha).

Pyramid-Forwarding is on by default: for an ``H x W`` image and a tower of base size ``S`` the top level is the
smallest ``L`` with ``S * 2^L >= max(H, W)``, capped at :attr:`TaggerConfig.max_level` (default 1: at most 1 + 4
crops, the paper's 640-on-336 setting of Table 1); levels ``0..L`` are used. Each image is squashed (resized
without keeping the aspect ratio, the convention ADDS is trained with) to ``S * 2^L`` square before the pyramid,
so images of *different sizes* can share one call: images with the same levels are batched together, the others
in their own batches, and results come back in input order. Explicit levels (``TaggerConfig.levels``, or levels
fixed in the checkpoint's ``PyramidConfig``) apply to every image, which is then squashed to
``S * 2^max(levels)``. The CLIP baseline uses only level 0 (one ``S x S`` view), as CLIP zero-shot does.

Vocabulary and thresholds
-------------------------
Labels default to the checkpoint's vocabulary (an optional ``labels.txt`` next to its ``config.json``, one label
per line), else to a built-in everyday vocabulary of 4,585 tags from Recognize Anything (Apache-2.0, see
``resources/NOTICE-recognize-anything.md``). Label embeddings are computed once per vocabulary and reused
(:meth:`Tagger.set_labels`).

A label is kept when ``score >= threshold`` for that label. Thresholds are looked up by label name in a
:class:`ThresholdSet`: the label's own threshold if the set has one, else the set's global threshold. A tagger
starts with its default vocabulary's per-label thresholds (the built-in list's per-tag thresholds, or a
checkpoint's optional ``thresholds.txt``) and the global :attr:`TaggerConfig.threshold` (0.5, the paper's).
A per-call ``threshold=`` replaces them for that call: a float is used for every label; a dict or a file of
per-label thresholds (``label<TAB>threshold`` lines, or a JSON object) is combined with the global threshold.
``top_k`` then keeps at most the ``k`` best of the labels that passed (``threshold=0`` for a plain top-k).
"""

from __future__ import annotations

import functools
import glob
import json
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Union

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from adds.data.base import SquashResize
from adds.data.images import ImageLoadError, as_image_batch, load_image
from adds.model import ADDS
from adds.prompts import LabelEmbedder, resolve_templates, validate_labels
from adds.pyramid import PyramidConfig, PyramidForwarding, top_level
from adds.towers import TowerConfig, Towers, load_towers

__all__ = [
    "CLIPBaseline",
    "CLIPBaselineConfig",
    "FileTags",
    "PreparedImage",
    "Tagger",
    "TaggerConfig",
    "ThresholdSet",
    "builtin_thresholds",
    "builtin_vocabulary",
    "find_images",
    "read_labels",
    "read_thresholds",
]

logger = logging.getLogger(__name__)

#: Optional files in an ADDS checkpoint directory that the tagger reads (training code writes them).
LABELS_NAME = "labels.txt"
THRESHOLDS_NAME = "thresholds.txt"

_BUILTIN_TAGS = "ram_tag_list_4585.txt"
_BUILTIN_THRESHOLDS = "ram_tag_list_4585_thresholds.txt"

#: One image as the tagger accepts it.
ImageInput = Union[str, os.PathLike, Image.Image, Tensor]  # noqa: UP007 (a runtime alias, Python 3.10 safe)


# -- vocabularies and thresholds --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _builtin_tags() -> tuple[str, ...]:
    text = resources.files("adds.resources").joinpath(_BUILTIN_TAGS).read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def builtin_vocabulary() -> list[str]:
    """The built-in everyday vocabulary: 4,585 tags from Recognize Anything (Apache-2.0), in their file order."""
    return list(_builtin_tags())


def builtin_thresholds() -> dict[str, float]:
    """Recognize Anything's per-tag thresholds for :func:`builtin_vocabulary` (tuned for its model, not ADDS)."""
    text = resources.files("adds.resources").joinpath(_BUILTIN_THRESHOLDS).read_text(encoding="utf-8")
    values = [float(line) for line in text.split()]
    tags = _builtin_tags()
    if len(values) != len(tags):
        raise RuntimeError(f"{_BUILTIN_THRESHOLDS} has {len(values)} values for {len(tags)} tags")
    return dict(zip(tags, values, strict=True))


def read_labels(path: str | os.PathLike) -> list[str]:
    """Read a label file: one label per line (UTF-8; surrounding blanks stripped, empty lines skipped).

    Raises ``ValueError`` naming the file when it cannot be read, holds no label or repeats one.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read label file {path}: {error}") from error
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    try:
        return validate_labels(labels)
    except ValueError as error:
        raise ValueError(f"label file {path}: {error}") from error


def _check_threshold(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 <= float(value) <= 1.0):
        raise ValueError(f"threshold {where} must be a number in [0, 1], got {value!r}")
    return float(value)


def read_thresholds(path: str | os.PathLike) -> dict[str, float]:
    """Read per-label thresholds: ``label<TAB>threshold`` lines, or a JSON object ``{"label": threshold}``.

    A ``.json`` file, or one whose first non-blank character is ``{``, is read as JSON. In the tab-separated form
    empty lines are skipped; every other line needs exactly one tab. Values must lie in ``[0, 1]``. Raises
    ``ValueError`` naming the file (and line) on any problem.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read threshold file {path}: {error}") from error
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"threshold file {path} is not valid JSON: {error}") from error
        if not isinstance(data, dict):
            raise ValueError(f"threshold file {path} must hold a JSON object {{label: threshold}}")
        return {str(label): _check_threshold(value, f"for {label!r} in {path}") for label, value in data.items()}
    out: dict[str, float] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.rstrip("\r\n").split("\t")
        if len(parts) != 2 or not parts[0].strip():
            raise ValueError(f"{path}:{number}: expected 'label<TAB>threshold', got {line!r}")
        label = parts[0].strip()
        try:
            value = float(parts[1])
        except ValueError as error:
            raise ValueError(f"{path}:{number}: threshold {parts[1]!r} is not a number") from error
        if label in out:
            raise ValueError(f"{path}:{number}: label {label!r} appears twice")
        out[label] = _check_threshold(value, f"at {path}:{number}")
    return out


@dataclass(frozen=True)
class ThresholdSet:
    """Decision thresholds: per-label values, and a global one for every other label.

    Attributes:
        default: threshold for labels without their own; ``None`` keeps every such label.
        per_label: label -> threshold.
    """

    default: float | None = 0.5
    per_label: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.default is not None:
            object.__setattr__(self, "default", _check_threshold(self.default, "(global)"))
        checked = {str(k): _check_threshold(v, f"for {k!r}") for k, v in dict(self.per_label).items()}
        object.__setattr__(self, "per_label", checked)

    @classmethod
    def coerce(cls, spec: float | Mapping[str, float] | str | os.PathLike | ThresholdSet,
               default: float | None) -> ThresholdSet:
        """A set from a float (the same threshold for every label), a dict or file of per-label thresholds
        (combined with ``default``), or a set (returned as is)."""
        if isinstance(spec, ThresholdSet):
            return spec
        if isinstance(spec, (int, float)) and not isinstance(spec, bool):
            return cls(default=float(spec))
        if isinstance(spec, (str, os.PathLike)):
            return cls(default=default, per_label=read_thresholds(spec))
        if isinstance(spec, Mapping):
            return cls(default=default, per_label=spec)
        raise TypeError(f"threshold must be a float, a dict, a file path or a ThresholdSet, got {type(spec).__name__}")

    def for_labels(self, labels: Sequence[str]) -> Tensor:
        """Thresholds of ``labels`` in order -> ``(k,)`` float (``-inf`` where no threshold applies)."""
        fallback = -math.inf if self.default is None else self.default
        return torch.tensor([self.per_label.get(label, fallback) for label in labels], dtype=torch.float32)


#: A threshold specification: one float for every label, per-label values, a file of them, or a full set.
ThresholdSpec = Union[float, Mapping[str, float], str, os.PathLike, ThresholdSet]  # noqa: UP007


# -- the training-free CLIP baseline ----------------------------------------------------------------------------


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
        return F.normalize(self.towers.encode_image_tokens(crops)[:, 0], dim=-1)  # (B, D)

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


# -- the tagger --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaggerConfig:
    """How a :class:`Tagger` turns images into tags (see the module docstring).

    Attributes:
        threshold: global decision threshold (labels without their own); ``None`` keeps every label. 0.5 is the
            paper's (Appendix, Figure 5).
        top_k: keep at most this many tags per image (after thresholds); ``None`` = no cap.
        batch_size: images per forward pass.
        levels: explicit Pyramid-Forwarding levels for every image (e.g. ``(0, 1, 2)``, Table 7); ``None`` = from
            the checkpoint's ``PyramidConfig.levels`` if set, else chosen from each image's size.
        max_level: highest level the automatic choice may use (level ``L`` costs ``4^L`` crops).
    """

    threshold: float | None = 0.5
    top_k: int | None = None
    batch_size: int = 16
    levels: tuple[int, ...] | None = None
    max_level: int = 1

    def __post_init__(self) -> None:
        if self.threshold is not None:
            _check_threshold(self.threshold, "(TaggerConfig.threshold)")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int)
                                       or self.top_k < 1):
            raise ValueError(f"top_k must be a positive int or None, got {self.top_k!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if isinstance(self.max_level, bool) or not isinstance(self.max_level, int) or self.max_level < 0:
            raise ValueError(f"max_level must be a non-negative int, got {self.max_level!r}")
        if self.levels is not None:
            object.__setattr__(self, "levels", PyramidConfig(levels=tuple(self.levels)).levels)


@dataclass
class PreparedImage:
    """An image ready for the scorer: squashed to the size its pyramid levels need.

    Attributes:
        pixels: ``(3, s, s)`` float in ``[0, 1]`` with ``s = S * 2^max(levels)``.
        levels: the Pyramid-Forwarding levels for this image.
        size: the original ``(height, width)``.
    """

    pixels: Tensor
    levels: tuple[int, ...]
    size: tuple[int, int]


@dataclass
class FileTags:
    """The outcome for one file of :meth:`Tagger.tag_files`: ``tags`` on success, else ``error`` (the reason)."""

    path: str
    tags: list[dict[str, Any]] | None = None
    error: str | None = None


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Tagger:
    """Scores images against label words and returns the tags above threshold, best first.

    Args:
        model: an :class:`~adds.model.ADDS` model (a trained head) or a :class:`CLIPBaseline`.
        config: thresholds, top-k, batching and pyramid levels (:class:`TaggerConfig`).
        labels: the default vocabulary; ``None`` = the built-in 4,585-tag vocabulary.
        thresholds: the tagger's thresholds (float, dict, file or :class:`ThresholdSet`); ``None`` = the default
            vocabulary's per-label thresholds (``vocabulary_thresholds``) with ``config.threshold`` for the rest.
        vocabulary_thresholds: per-label thresholds that come with ``labels`` (e.g. a checkpoint's
            ``thresholds.txt``); ignored when ``thresholds`` is given. With ``labels=None`` the built-in list's.
        device: where to run; ``None`` = where ``model`` already is.

    Most users build one with :meth:`from_checkpoint` or :meth:`clip_baseline` and call it.
    """

    def __init__(
        self,
        model: ADDS | CLIPBaseline,
        config: TaggerConfig | None = None,
        labels: Sequence[str] | None = None,
        thresholds: ThresholdSpec | None = None,
        vocabulary_thresholds: Mapping[str, float] | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        if not isinstance(model, (ADDS, CLIPBaseline)):
            raise TypeError(f"model must be an ADDS model or a CLIPBaseline, got {type(model).__name__}")
        self.config = config or TaggerConfig()
        if device is not None:
            model = model.to(_resolve_device(device))
        self.model = model.eval()
        self.towers: Towers = model.towers
        self.device = next(self.towers.parameters()).device
        self._pyramids: dict[tuple[int, ...], PyramidForwarding] = {}
        self._embeddings: OrderedDict[tuple[str, ...], Tensor] = OrderedDict()  # vocabulary -> (k, D), LRU
        self._labels: list[str] | None = None
        self.thresholds = ThresholdSet(default=self.config.threshold)
        if labels is None:
            vocabulary_thresholds = builtin_thresholds() if vocabulary_thresholds is None else vocabulary_thresholds
        else:
            self._labels = validate_labels(labels)
        if thresholds is not None:
            self.thresholds = ThresholdSet.coerce(thresholds, self.config.threshold)
        elif vocabulary_thresholds:
            self.thresholds = ThresholdSet(default=self.config.threshold, per_label=vocabulary_thresholds)

    # -- constructors ----------------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str | torch.device | None = None,
        tower_weights: str | None = None,
        config: TaggerConfig | None = None,
        labels: Sequence[str] | None = None,
        thresholds: ThresholdSpec | None = None,
    ) -> Tagger:
        """A tagger for a trained ADDS head saved with :meth:`ADDS.save_pretrained` (a directory).

        The checkpoint names its towers, which are loaded (from the cache, or ``tower_weights``: a local weights
        file or directory standing in for the recorded ``pretrained`` tag). An optional ``labels.txt`` in the
        directory (one label per line) is the default vocabulary, and an optional ``thresholds.txt``
        (``label<TAB>threshold`` lines) gives per-label thresholds; otherwise the built-in vocabulary and its
        per-tag thresholds are used.
        """
        directory = Path(path)
        target = _resolve_device(device)
        model = ADDS.from_pretrained(directory, tower_weights=tower_weights, map_location=target)
        vocabulary = None
        vocab_thresholds = None
        if labels is None and (directory / LABELS_NAME).is_file():
            vocabulary = read_labels(directory / LABELS_NAME)
        if (directory / THRESHOLDS_NAME).is_file():
            vocab_thresholds = read_thresholds(directory / THRESHOLDS_NAME)
        elif vocabulary is not None:
            vocab_thresholds = {}  # the checkpoint's own vocabulary comes without the built-in thresholds
        tagger = cls(model, config, labels if labels is not None else vocabulary, thresholds, vocab_thresholds)
        logger.info("tagger: ADDS checkpoint %s on %s, %s", directory, target, tagger.vocabulary_description())
        return tagger

    @classmethod
    def clip_baseline(
        cls,
        model: str = "ViT-B-32-quickgelu",
        pretrained: str | None = "openai",
        device: str | torch.device | None = None,
        config: TaggerConfig | None = None,
        baseline: CLIPBaselineConfig | None = None,
        cache_dir: str | None = None,
        labels: Sequence[str] | None = None,
        thresholds: ThresholdSpec | None = None,
        seed: int = 0,
    ) -> Tagger:
        """The training-free CLIP tagger (see :class:`CLIPBaseline` for the score).

        Args:
            model: open_clip model name (a ViT with a class token).
            pretrained: open_clip tag, local weights file (state dict, ``.safetensors``, OpenAI TorchScript ``.pt``),
                or ``None`` for random weights (tests and debugging only; ``seed`` makes them reproducible).
            cache_dir: where open_clip looks for / stores downloaded weights.
        """
        towers = load_towers(TowerConfig(model=model, pretrained=pretrained, cache_dir=cache_dir, seed=seed),
                             device=_resolve_device(device))
        tagger = cls(CLIPBaseline(towers, baseline), config, labels, thresholds)
        logger.info("tagger: CLIP baseline %s/%s on %s, %s", model, pretrained, tagger.device,
                    tagger.vocabulary_description())
        return tagger

    # -- vocabulary --------------------------------------------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        """The default vocabulary (a copy)."""
        return list(self._labels if self._labels is not None else _builtin_tags())

    @property
    def uses_builtin_vocabulary(self) -> bool:
        return self._labels is None

    def vocabulary_description(self) -> str:
        if self._labels is None:
            return "built-in vocabulary (4,585 tags, Recognize Anything)"
        return f"vocabulary of {len(self._labels)} labels"

    def set_labels(self, labels: Sequence[str] | None, thresholds: ThresholdSpec | None = None) -> None:
        """Make ``labels`` the default vocabulary (``None``: the built-in one) and compute their embeddings now.

        ``thresholds`` (float, dict, file or :class:`ThresholdSet`) replaces the tagger's thresholds; without it
        they are kept, except that switching to the built-in vocabulary restores its per-tag thresholds.
        """
        self._labels = None if labels is None else validate_labels(labels)
        if thresholds is not None:
            self.thresholds = ThresholdSet.coerce(thresholds, self.config.threshold)
        elif labels is None:
            self.thresholds = ThresholdSet(default=self.config.threshold, per_label=builtin_thresholds())
        self._label_embeddings(self.labels)

    def _label_embeddings(self, labels: list[str]) -> Tensor:
        key = tuple(labels)
        cached = self._embeddings.get(key)
        if cached is None:
            cached = self.model.encode_labels(labels).to(self.device)  # (k, D)
            self._embeddings[key] = cached
            while len(self._embeddings) > 4:
                self._embeddings.popitem(last=False)
        else:
            self._embeddings.move_to_end(key)
        return cached

    # -- images ------------------------------------------------------------------------------------------------
    @property
    def base_size(self) -> int:
        return self.towers.image_size

    def levels_for(self, height: int, width: int) -> tuple[int, ...]:
        """Pyramid levels used for an ``height x width`` image (see the module docstring)."""
        if isinstance(self.model, CLIPBaseline):
            return (0,)
        if self.config.levels is not None:
            return self.config.levels
        if self.model.config.pyramid.levels is not None:
            return self.model.config.pyramid.levels
        top = min(top_level(height, width, self.base_size), self.config.max_level)
        return tuple(range(top + 1))

    def prepare(self, image: ImageInput) -> PreparedImage:
        """Load (paths, PIL) or check (tensors) one image and squash it to the size its pyramid levels need.

        Raises :class:`~adds.data.images.ImageLoadError` for a file that cannot be read (its path and the reason).
        """
        if isinstance(image, Tensor):
            batch = as_image_batch(image)  # (1, 3, H, W)
            if batch.shape[0] != 1:
                raise ValueError(f"prepare takes one image, got a batch of shape {tuple(image.shape)}")
            pixels = batch[0]
        elif isinstance(image, (str, os.PathLike, Image.Image)):
            pixels = load_image(image)  # (3, H, W)
        else:
            raise TypeError(f"an image must be a path, a PIL image or a tensor, got {type(image).__name__}")
        height, width = int(pixels.shape[-2]), int(pixels.shape[-1])
        levels = self.levels_for(height, width)
        pixels = SquashResize(self.base_size << levels[-1])(pixels.float())  # (3, side, side)
        return PreparedImage(pixels=pixels.float().contiguous(), levels=levels, size=(height, width))

    def _pyramid(self, levels: tuple[int, ...]) -> PyramidForwarding:
        if levels not in self._pyramids:
            antialias = self.model.config.pyramid.antialias if isinstance(self.model, ADDS) else True
            config = PyramidConfig(levels=levels, antialias=antialias)
            self._pyramids[levels] = PyramidForwarding(self.base_size, self.towers.mean, self.towers.std, config)
        return self._pyramids[levels]

    @torch.no_grad()
    def _logits(self, pixels: Tensor, levels: tuple[int, ...], label_embeddings: Tensor) -> Tensor:
        """Same-size pixels ``(b, 3, s, s)`` -> logits ``(b, k)``."""
        pixels = pixels.to(self.device)
        if isinstance(self.model, CLIPBaseline):
            return self.model(pixels, label_embeddings)
        tokens = self._pyramid(levels)(pixels, self.towers.encode_image_tokens)  # (b, crops*T, token_dim)
        return self.model.forward_head(tokens, label_embeddings)  # (b, k)

    def score_prepared(self, images: Sequence[PreparedImage], labels: Sequence[str] | None = None) -> Tensor:
        """Scores ``(n, k)`` in ``[0, 1]`` (CPU, float32) of prepared images, batched by pyramid levels."""
        labels = self._resolve_labels(labels)
        label_embeddings = self._label_embeddings(labels)  # (k, D)
        out = torch.empty(len(images), len(labels), dtype=torch.float32)  # (n, k)
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(images):
            groups.setdefault(image.levels, []).append(index)
        size = self.config.batch_size
        for levels, indices in groups.items():
            for start in range(0, len(indices), size):
                chunk = indices[start:start + size]
                pixels = torch.stack([images[i].pixels for i in chunk])  # (b, 3, s, s)
                out[chunk] = self._logits(pixels, levels, label_embeddings).float().sigmoid().cpu()
        return out

    def scores(self, images: ImageInput | Sequence[ImageInput], labels: Sequence[str] | None = None) -> Tensor:
        """Raw scores ``(n, k)`` of every label for every image (no threshold, label order kept)."""
        return self.score_prepared([self.prepare(image) for image in _as_image_list(images)[0]], labels)

    # -- tags ----------------------------------------------------------------------------------------------------
    def _resolve_labels(self, labels: Sequence[str] | None) -> list[str]:
        return self.labels if labels is None else validate_labels(labels)

    def _resolve_thresholds(self, threshold: ThresholdSpec | None) -> ThresholdSet:
        if threshold is None:
            return self.thresholds
        return ThresholdSet.coerce(threshold, self.thresholds.default)

    def select(
        self,
        scores: Tensor,
        labels: Sequence[str],
        threshold: ThresholdSpec | None = None,
        top_k: int | None = None,
    ) -> list[list[dict[str, Any]]]:
        """Scores ``(n, k)`` -> per image, ``[{"label", "score"}, ...]`` above threshold, best first, at most top-k."""
        thresholds = self._resolve_thresholds(threshold).for_labels(labels)  # (k,)
        top_k = self.config.top_k if top_k is None else top_k
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a positive int, got {top_k!r}")
        results = []
        for row in scores:  # (k,)
            keep = torch.nonzero(row >= thresholds).flatten()  # label indices that pass
            order = keep[torch.argsort(row[keep], descending=True, stable=True)]
            if top_k is not None:
                order = order[:top_k]
            results.append([{"label": labels[i], "score": float(row[i])} for i in order.tolist()])
        return results

    def __call__(
        self,
        images: ImageInput | Sequence[ImageInput],
        labels: Sequence[str] | None = None,
        threshold: ThresholdSpec | None = None,
        top_k: int | None = None,
    ) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        """Tag images.

        Args:
            images: one image (path, PIL image, ``(3, H, W)`` tensor) or several (a list of those, or a
                ``(B, 3, H, W)`` tensor). Sizes may differ.
            labels: label words; ``None`` = the default vocabulary. Duplicates are refused.
            threshold: for this call only (see the module docstring); ``None`` = the tagger's thresholds.
            top_k: keep at most this many tags per image; ``None`` = ``TaggerConfig.top_k``.

        Returns:
            For one image, a list of ``{"label": str, "score": float}`` sorted by score, highest first; for several,
            one such list per image, in input order (the Hugging Face zero-shot pipeline's shape).
        """
        items, single = _as_image_list(images)
        labels = self._resolve_labels(labels)
        results = self.select(self.score_prepared([self.prepare(item) for item in items], labels), labels,
                              threshold, top_k)
        return results[0] if single else results

    def tag_files(
        self,
        paths: Iterable[str | os.PathLike],
        labels: Sequence[str] | None = None,
        threshold: ThresholdSpec | None = None,
        top_k: int | None = None,
        workers: int = 2,
    ) -> Iterator[FileTags]:
        """Tag image files batch by batch, yielding one :class:`FileTags` per path in order, as soon as ready.

        A file that cannot be loaded (missing, zero bytes, not an image, truncated, corrupt, decompression bomb)
        yields ``FileTags(path, error=reason)`` and the others go on. ``workers`` threads decode the next batch
        while the current one is scored (0 = decode in this thread).
        """
        paths = [os.fspath(path) for path in paths]
        labels = self._resolve_labels(labels)
        threshold = self._resolve_thresholds(threshold)  # read a threshold file once, and fail early
        size = self.config.batch_size
        chunks = [paths[i:i + size] for i in range(0, len(paths), size)]
        pool = ThreadPoolExecutor(max_workers=workers) if workers > 0 else None

        def submit(chunk: list[str]) -> list[Future | PreparedImage | Exception]:
            if pool is not None:
                return [pool.submit(self.prepare, path) for path in chunk]
            return [_call(self.prepare, path) for path in chunk]

        try:
            pending = submit(chunks[0]) if chunks else []
            for index, chunk in enumerate(chunks):
                current, pending = pending, (submit(chunks[index + 1]) if index + 1 < len(chunks) else [])
                outcomes = [_result(job) for job in current]
                ready = [(i, out) for i, out in enumerate(outcomes) if isinstance(out, PreparedImage)]
                tags: dict[int, list[dict[str, Any]]] = {}
                if ready:
                    scores = self.score_prepared([out for _, out in ready], labels)
                    selected = self.select(scores, labels, threshold, top_k)
                    tags = {i: result for (i, _), result in zip(ready, selected, strict=True)}
                for i, (path, out) in enumerate(zip(chunk, outcomes, strict=True)):
                    if i in tags:
                        yield FileTags(path=path, tags=tags[i])
                    else:
                        reason = out.reason if isinstance(out, ImageLoadError) else f"{type(out).__name__}: {out}"
                        yield FileTags(path=path, error=reason)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary (scorer, towers, vocabulary, thresholds) for logs and the web demo."""
        kind = "clip-baseline" if isinstance(self.model, CLIPBaseline) else "adds"
        identity = self.towers.identity()
        return {
            "scorer": kind,
            "model": identity.get("model"),
            "pretrained": identity.get("pretrained"),
            "image_size": self.base_size,
            "device": str(self.device),
            "vocabulary": "builtin" if self._labels is None else "custom",
            "vocabulary_size": len(self.labels),
            "threshold": self.thresholds.default,
            "per_label_thresholds": len(self.thresholds.per_label),
            "top_k": self.config.top_k,
        }


def _call(fn, arg) -> Any:
    try:
        return fn(arg)
    except (ValueError, OSError, MemoryError, RuntimeError) as error:  # ImageLoadError is a ValueError
        return error


def _result(job: Future | PreparedImage | Exception) -> PreparedImage | Exception:
    if isinstance(job, Future):
        try:
            return job.result()
        except (ValueError, OSError, MemoryError, RuntimeError) as error:
            return error
    return job


def _as_image_list(images: ImageInput | Sequence[ImageInput]) -> tuple[list[ImageInput], bool]:
    """``(items, single)``: the images as a list of single images, and whether one image was given."""
    if isinstance(images, Tensor):
        if images.dim() == 3:
            return [images], True
        if images.dim() == 4:
            return list(images.unbind(0)), False
        raise ValueError(f"image tensors must be (3, H, W) or (B, 3, H, W), got {tuple(images.shape)}")
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images], True
    if isinstance(images, Sequence):
        return list(images), False
    raise TypeError(f"images must be a path, a PIL image, a tensor or a list of them, got {type(images).__name__}")


# -- finding files -----------------------------------------------------------------------------------------------


def _image_suffixes() -> frozenset[str]:
    Image.init()
    return frozenset(ext.lower() for ext in Image.registered_extensions())


def find_images(paths: Iterable[str | os.PathLike]) -> tuple[list[str], list[str]]:
    """Expand files, folders (recursively) and glob patterns into image files.

    Files named explicitly are kept whatever their extension (so a non-image is reported, not skipped); inside
    folders and glob matches only files with an image extension PIL knows are taken, hidden files and folders
    (names starting with ``.``) are skipped, and the order is sorted. Duplicates are dropped.

    Returns:
        ``(files, unmatched)``: the files in order, and the arguments that matched nothing (missing paths,
        empty globs).
    """
    suffixes = _image_suffixes()
    files: list[str] = []
    seen: set[str] = set()
    unmatched: list[str] = []

    def add(path: str) -> None:
        key = os.path.normpath(os.path.abspath(path))
        if key not in seen:
            seen.add(key)
            files.append(path)

    def walk(folder: str) -> None:
        for root, dirs, names in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                if not name.startswith(".") and os.path.splitext(name)[1].lower() in suffixes:
                    add(os.path.join(root, name))

    for raw in paths:
        path = os.fspath(raw)
        if os.path.isdir(path):
            walk(path)
        elif os.path.exists(path) or os.path.islink(path):
            add(path)
        elif any(char in path for char in "*?["):
            matches = sorted(glob.glob(path, recursive=True))
            before = len(files)
            for match in matches:
                if os.path.isdir(match):
                    walk(match)
                elif os.path.splitext(match)[1].lower() in suffixes:
                    add(match)
            if len(files) == before:
                unmatched.append(path)
        else:
            unmatched.append(path)
    return files, unmatched

