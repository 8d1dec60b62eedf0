"""The :class:`Tagger`: images and label words in, scored tags out (see :mod:`adds.tagger` for the overview).

The scoring path lives in one place, in this order: :meth:`Tagger.prepare` (load, squash to the head's input size)
-> :meth:`Tagger.score_prepared` (batch) -> :meth:`Tagger._logits` (Pyramid-Forwarding + head, or the CLIP
baseline) -> ``sigmoid`` -> :meth:`Tagger.select` (thresholds, top-k).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import torch
from PIL import Image
from torch import Tensor

from adds.data.base import SquashResize
from adds.data.images import ImageLoadError, as_image_batch
from adds.label_cache import label_cache_enabled
from adds.model import ADDS
from adds.openvocab import OpenVocabulary, checkpoint_open_vocabulary, tagger_logits
from adds.prompts import memory_cache, validate_labels
from adds.pyramid import PyramidConfig, PyramidForwarding
from adds.shortlist import ShortlistConfig, shortlist_logits
from adds.tagger.baseline import CLIPBaseline, CLIPBaselineConfig
from adds.tagger.decode import squash_image
from adds.tagger.plan import InputPlan, input_plan, trained_input_size
from adds.tagger.precision import PRECISIONS, resolve_precision
from adds.tagger.thresholds import (
    ThresholdSet,
    ThresholdSpec,
    check_threshold,
    checkpoint_thresholds_file,
    read_thresholds,
)
from adds.tagger.vocabulary import builtin_tags, builtin_thresholds, read_labels
from adds.towers import TowerConfig, Towers, load_towers

__all__ = ["LABELS_NAME", "FileTags", "ImageInput", "PreparedImage", "Tagger", "TaggerConfig"]

logger = logging.getLogger("adds.tagger")

#: The optional vocabulary file in an ADDS checkpoint directory (one label per line; ``adds train`` writes it).
LABELS_NAME = "labels.txt"

#: One image as the tagger accepts it.
ImageInput = Union[str, os.PathLike, Image.Image, Tensor]  # noqa: UP007 (a runtime alias, Python 3.10 safe)


@dataclass(frozen=True)
class TaggerConfig:
    """How a :class:`Tagger` turns images into tags (see :mod:`adds.tagger`).

    Attributes:
        threshold: global decision threshold (labels without their own); ``None`` keeps every label. 0.5 is the
            paper's (Appendix, Figure 5).
        top_k: keep at most this many tags per image (after thresholds); ``None`` = no cap.
        batch_size: images per forward pass.
        levels: Pyramid-Forwarding levels instead of the head's (e.g. ``(0, 1, 2)``, Table 7); ``None`` = the
            head's plan (:mod:`adds.tagger.plan`). For the CLIP baseline: the crops its maximum runs over
            (default levels 0 and 1); ignored with its ``pooling="view"`` (one view).
        input_size: squash images to this size instead of the size the head was trained at; ``None`` = the
            head's plan (the CLIP baseline: ``S * 2^max(levels)``). Ignored with the baseline's ``"view"``.
        label_cache: keep label embeddings on disk (:mod:`adds.label_cache`; ``$ADDS_CACHE_DIR``, default
            ``~/.cache/adds``) so a repeated start does not run the text tower again; ``$ADDS_LABEL_CACHE=0`` also
            turns it off.
        max_cached_labels: bound of the in-memory label-embedding LRU of the towers (``None`` = the default,
            :data:`adds.prompts.DEFAULT_MAX_CACHED_LABELS`).
        open_vocabulary: the open-vocabulary mode of a trained head (:mod:`adds.openvocab`): labels outside its
            training vocabulary mix the head with the training-free CLIP prior, training labels keep the head's
            score. ``None`` = on when the checkpoint has an ``open_vocab.json``; ``True`` = required (an error
            without the file); ``False`` = the plain head (the paper's model).
        precision: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"``, see :mod:`adds.tagger.precision`. On a CPU,
            bf16 casts the model's vision tower in place (needs native bfloat16; the head stays float32; fp16 is
            refused); on a GPU, bf16/fp16 run the tower and head under ``torch.autocast``. Label embeddings are
            computed in float32 and scores are float32 whatever the precision.
        shortlist: ``M``: score a call with more than ``M`` labels in two passes (:mod:`adds.shortlist`, issue 12.6):
            CLIP's class-token cosine picks each image's ``M`` candidates and the head scores only those; the
            others get scores below every candidate's (below ``sigmoid(-20)``). ``None`` (default) decodes every
            label, see docs/performance.md for what it costs and changes. Not combined with the open-vocabulary
            mode (an error; use ``open_vocabulary=False``). Ignored by the CLIP baseline (it has no head).
        fast_decode: squash 8-bit image files in 8 bits before the float conversion (:mod:`adds.tagger.decode`):
            ~2x cheaper decoding of photos larger than the input size, pixels within 2/255 of the exact path
            (the one ``adds eval``, training and tensor inputs take). ``False`` (default): the exact pixels.
    """

    threshold: float | None = 0.5
    top_k: int | None = None
    batch_size: int = 16
    levels: tuple[int, ...] | None = None
    input_size: int | None = None
    label_cache: bool = True
    max_cached_labels: int | None = None
    open_vocabulary: bool | None = None
    precision: str = "fp32"
    shortlist: int | None = None
    fast_decode: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.threshold is not None:
            check_threshold(self.threshold, "(TaggerConfig.threshold)")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int)
                                       or self.top_k < 1):
            raise ValueError(f"top_k must be a positive int or None, got {self.top_k!r}")
        for name in ("batch_size", "input_size", "max_cached_labels", "shortlist"):
            value = getattr(self, name)
            if (name == "batch_size" or value is not None) and (
                    isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.levels is not None:
            object.__setattr__(self, "levels", PyramidConfig(levels=tuple(self.levels)).levels)


@dataclass
class PreparedImage:
    """An image ready for the scorer: squashed to the plan's input size.

    Attributes:
        pixels: ``(3, s, s)`` float in ``[0, 1]`` with ``s`` the plan's input size.
        levels: the Pyramid-Forwarding levels of the plan.
        size: the original ``(height, width)``.
    """

    pixels: Tensor
    levels: tuple[int, ...]
    size: tuple[int, int]


@dataclass
class FileTags:
    """The outcome for one file: ``tags`` on success; ``error`` (the reason) when it failed. Both may be set when
    the image was tagged but writing its tags (an XMP sidecar) failed."""

    path: str
    tags: list[dict[str, Any]] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Tagger:
    """Scores images against label words and returns the tags above threshold, best first.

    Args:
        model: an :class:`~adds.model.ADDS` model (a trained head) or a :class:`CLIPBaseline`.
        config: thresholds, top-k, batching and plan overrides (:class:`TaggerConfig`).
        labels: the default vocabulary; ``None`` = the built-in 4,585-tag vocabulary.
        thresholds: the tagger's thresholds (float, dict, file or :class:`ThresholdSet`); ``None`` = the default
            vocabulary's per-label thresholds (``vocabulary_thresholds``) with ``config.threshold`` for the rest.
            Per-label values for labels outside the vocabulary are refused (``ValueError`` naming them).
        vocabulary_thresholds: per-label thresholds that come with ``labels`` (e.g. a checkpoint's
            ``thresholds.tsv``); ignored when ``thresholds`` is given. With ``labels=None`` the built-in list's.
        device: where to run; ``None`` = where ``model`` already is.
        trained_input_size: the size the head was trained at (``training.json``; :meth:`from_checkpoint` reads
            it), which decides the input plan (:mod:`adds.tagger.plan`).

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
        trained_input_size: int | None = None,
        open_vocabulary: OpenVocabulary | None = None,
    ) -> None:
        if not isinstance(model, (ADDS, CLIPBaseline)):
            raise TypeError(f"model must be an ADDS model or a CLIPBaseline, got {type(model).__name__}")
        self.config = config or TaggerConfig()
        if device is not None:
            model = model.to(_resolve_device(device))
        self.model = model.eval()
        self.towers: Towers = model.towers
        self.device = next(self.towers.parameters()).device
        self.precision = resolve_precision(self.config.precision, self.device)  # PrecisionError: one line
        self.precision.prepare(self.model)  # CPU bf16: the vision tower cast in place (adds.tagger.precision)
        self.plan = self._input_plan(trained_input_size)
        if open_vocabulary is not None and self.config.shortlist is not None:
            raise ValueError("the shortlist cannot be combined with the open-vocabulary mode yet (the mode "
                             "standardises over every label's head score); turn one off (--open-vocabulary off)")
        if open_vocabulary is not None and not isinstance(model, ADDS):
            raise ValueError("the open-vocabulary mode needs a trained ADDS head, not the CLIP baseline")
        self.open_vocabulary = open_vocabulary  # adds.openvocab: None = the plain head
        antialias = model.config.pyramid.antialias if isinstance(model, ADDS) else PyramidConfig().antialias
        self._pyramid = PyramidForwarding(self.base_size, self.towers.mean, self.towers.std,
                                          PyramidConfig(levels=self.plan.levels, antialias=antialias))
        self._embeddings: OrderedDict[tuple[str, ...], Tensor] = OrderedDict()  # vocabulary -> (k, D), LRU
        memory_cache(self.towers, self.config.max_cached_labels)
        if self.config.label_cache and label_cache_enabled():
            self.model.label_embedder.use_disk_cache()
        self._labels: list[str] | None = None
        self.thresholds = ThresholdSet(default=self.config.threshold)
        if labels is None:
            vocabulary_thresholds = builtin_thresholds() if vocabulary_thresholds is None else vocabulary_thresholds
        else:
            self._labels = validate_labels(labels)
        if thresholds is not None:
            self.thresholds = ThresholdSet.coerce(thresholds, self.config.threshold)
            self.thresholds.check_labels(self.labels)
        elif vocabulary_thresholds:
            self.thresholds = ThresholdSet(default=self.config.threshold, per_label=vocabulary_thresholds)

    def _input_plan(self, trained_size: int | None) -> InputPlan:
        if isinstance(self.model, CLIPBaseline):
            if self.model.config.pooling == "view":
                if self.config.levels is not None or self.config.input_size is not None:
                    logger.warning("the CLIP baseline with pooling 'view' scores one %d px view: levels / "
                                   "input_size are ignored", self.base_size)
                return input_plan(self.base_size, levels=(0,))
            return input_plan(self.base_size, self.model.levels, input_size=self.config.input_size,
                              levels=self.config.levels)
        return input_plan(self.base_size, self.model.config.pyramid.levels, trained_size,
                          input_size=self.config.input_size, levels=self.config.levels)

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
        file or directory standing in for the recorded ``pretrained`` tag). Optional files next to its
        ``config.json``: ``labels.txt`` (one label per line) is the default vocabulary; ``thresholds.tsv``
        (``label<TAB>threshold`` lines, written by ``adds calibrate`` / ``adds train``; an older ``thresholds.txt``
        is read when it is absent) gives calibrated per-label thresholds; ``training.json`` gives the input size
        the head was trained at, hence the input plan. Without ``labels.txt`` the built-in vocabulary and its
        per-tag thresholds are used.
        """
        directory = Path(path)
        target = _resolve_device(device)
        resolve_precision((config or TaggerConfig()).precision, target)  # refuse before loading anything
        model = ADDS.from_pretrained(directory, tower_weights=tower_weights, map_location=target)
        vocabulary = None
        vocab_thresholds = None
        if labels is None and (directory / LABELS_NAME).is_file():
            vocabulary = read_labels(directory / LABELS_NAME)
        threshold_file = checkpoint_thresholds_file(directory)
        if threshold_file is not None:
            vocab_thresholds = read_thresholds(threshold_file)
        elif vocabulary is not None:
            vocab_thresholds = {}  # the checkpoint's own vocabulary comes without the built-in thresholds
        open_vocab = checkpoint_open_vocabulary(directory, (config or TaggerConfig()).open_vocabulary)
        tagger = cls(model, config, labels if labels is not None else vocabulary, thresholds, vocab_thresholds,
                     trained_input_size=trained_input_size(directory), open_vocabulary=open_vocab)
        logger.info("tagger: ADDS checkpoint %s on %s, %s, %s", directory, target, tagger.plan.describe(),
                    tagger.vocabulary_description())
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
        resolve_precision((config or TaggerConfig()).precision, _resolve_device(device))  # before loading
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
        return list(self._labels if self._labels is not None else builtin_tags())

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
            self.thresholds.check_labels(self.labels)
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
        """Pyramid levels used for an ``height x width`` image: the plan's, the same for every image."""
        return self.plan.levels

    def prepare(self, image: ImageInput) -> PreparedImage:
        """Load (paths, PIL) or check (tensors) one image and squash it to the plan's input size.

        Raises :class:`~adds.data.images.ImageLoadError` for a file that cannot be read (its path and the reason).
        """
        if isinstance(image, (str, os.PathLike, Image.Image)):
            pixels, size = squash_image(image, self.plan.input_size, fast=self.config.fast_decode)  # (3, s, s)
            return PreparedImage(pixels=pixels.contiguous(), levels=self.plan.levels, size=size)
        if not isinstance(image, Tensor):
            raise TypeError(f"an image must be a path, a PIL image or a tensor, got {type(image).__name__}")
        batch = as_image_batch(image)  # (1, 3, H, W)
        if batch.shape[0] != 1:
            raise ValueError(f"prepare takes one image, got a batch of shape {tuple(image.shape)}")
        pixels = batch[0]
        height, width = int(pixels.shape[-2]), int(pixels.shape[-1])
        pixels = SquashResize(self.plan.input_size)(pixels.float())  # (3, s, s)
        return PreparedImage(pixels=pixels.float().contiguous(), levels=self.plan.levels, size=(height, width))

    @torch.no_grad()
    def _logits(self, pixels: Tensor, label_embeddings: Tensor, labels: Sequence[str] | None = None) -> Tensor:
        """Same-size pixels ``(b, 3, s, s)`` -> logits ``(b, k)`` (``labels``: for the open-vocabulary mode)."""
        pixels = pixels.to(self.device)
        with self.precision.autocast():  # CUDA bf16/fp16; a CPU bf16 vision tower is cast already
            tokens = self._pyramid(pixels, self.towers.encode_image_tokens)  # (b, crops*T, token_dim)
            if isinstance(self.model, CLIPBaseline):  # each label's best crop (adds.tagger.baseline)
                return self.model.forward_head(self.model.class_tokens(tokens), label_embeddings).float()  # (b, k)
            if self.config.shortlist is not None:
                logits = shortlist_logits(self.model, tokens, label_embeddings,
                                          ShortlistConfig(size=self.config.shortlist)).float()  # (b, k)
            else:
                logits = self.model.forward_head(tokens, label_embeddings).float()  # (b, k)
        if self.open_vocabulary is not None and labels is not None:
            logits = tagger_logits(self.open_vocabulary, tokens, logits, label_embeddings, labels,
                                   self.towers.tokens_per_image)
        return logits

    def score_prepared(self, images: Sequence[PreparedImage], labels: Sequence[str] | None = None) -> Tensor:
        """Scores ``(n, k)`` in ``[0, 1]`` (CPU, float32) of prepared images, in batches of ``batch_size``."""
        labels = self._resolve_labels(labels)
        label_embeddings = self._label_embeddings(labels)  # (k, D)
        out = torch.empty(len(images), len(labels), dtype=torch.float32)  # (n, k)
        size = self.config.batch_size
        for start in range(0, len(images), size):
            pixels = torch.stack([image.pixels for image in images[start:start + size]])  # (b, 3, s, s)
            out[start:start + len(pixels)] = self._logits(pixels, label_embeddings, labels).float().sigmoid().cpu()
        return out

    def scores(self, images: ImageInput | Sequence[ImageInput], labels: Sequence[str] | None = None) -> Tensor:
        """Raw scores ``(n, k)`` of every label for every image (no threshold, label order kept)."""
        return self.score_prepared([self.prepare(image) for image in _as_image_list(images)[0]], labels)

    # -- tags ----------------------------------------------------------------------------------------------------
    def _resolve_labels(self, labels: Sequence[str] | None) -> list[str]:
        return self.labels if labels is None else validate_labels(labels)

    def resolve_thresholds(self, threshold: ThresholdSpec | None, labels: Sequence[str]) -> ThresholdSet:
        """The thresholds a call uses: the tagger's (``None``), or ``threshold`` combined with the tagger's global
        one. Explicit per-label values must name labels in ``labels`` (``ValueError`` otherwise)."""
        if threshold is None or threshold is self.thresholds:
            return self.thresholds
        resolved = ThresholdSet.coerce(threshold, self.thresholds.default)
        resolved.check_labels(labels)
        return resolved

    def select(
        self,
        scores: Tensor,
        labels: Sequence[str],
        threshold: ThresholdSpec | None = None,
        top_k: int | None = None,
    ) -> list[list[dict[str, Any]]]:
        """Scores ``(n, k)`` -> per image, ``[{"label", "score"}, ...]`` above threshold, best first, at most top-k."""
        thresholds = self.resolve_thresholds(threshold, labels).for_labels(labels)  # (k,)
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
            threshold: for this call only (see :mod:`adds.tagger`); ``None`` = the tagger's thresholds.
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
        threshold = self.resolve_thresholds(threshold, labels)  # read a threshold file once, and fail early
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
        """A JSON-able summary (scorer, towers, input plan, vocabulary, thresholds) for logs and the web demo."""
        kind = "clip-baseline" if isinstance(self.model, CLIPBaseline) else "adds"
        identity = self.towers.identity()
        return {
            "scorer": kind,
            "model": identity.get("model"),
            "pretrained": identity.get("pretrained"),
            "image_size": self.base_size,
            "input_size": self.plan.input_size,
            "levels": list(self.plan.levels),
            "crops": self.plan.num_crops,
            "device": str(self.device),
            "vocabulary": "builtin" if self._labels is None else "custom",
            "vocabulary_size": len(self.labels),
            "threshold": self.thresholds.default,
            "per_label_thresholds": len(self.thresholds.per_label),
            "top_k": self.config.top_k,
            "open_vocabulary": self.open_vocabulary is not None,
            "shortlist": self.config.shortlist if isinstance(self.model, ADDS) else None,
            "precision": self.precision.name,
            "baseline_pooling": self.model.config.pooling if isinstance(self.model, CLIPBaseline) else None,
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
