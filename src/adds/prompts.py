"""Label embeddings from prompt templates (paper: "Overview" and Fig. 2).

A label word becomes the query of the DM-decoder through the frozen text tower: each label is put into every
prompt template ("This photo contains @.", "This is a @ photo." in the paper), each prompt embedding is
L2-normalised, the prompts of a label are averaged and the mean is re-normalised (CLIP's prompt ensembling).

Embeddings are cached in memory on the :class:`~adds.towers.Towers` object, keyed by ``(templates, label)``: a label
is encoded once per tower and template set, however many vocabularies it appears in. That memory cache is an LRU
bounded by :data:`DEFAULT_MAX_CACHED_LABELS` labels (:class:`LabelMemoryCache`; a long-running ``adds serve`` fed new
labels on every request stays bounded). With a :class:`~adds.label_cache.LabelCache` attached
(:meth:`LabelEmbedder.use_disk_cache`; the tagger does it by default) misses are first looked up on disk, per
label, and new embeddings are stored there.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from importlib import resources
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from adds.towers import Towers

if TYPE_CHECKING:
    from adds.label_cache import LabelCache, LabelCacheConfig

__all__ = ["DEFAULT_MAX_CACHED_LABELS", "EMBEDDING_VERSION", "PAPER_TEMPLATES", "LabelEmbedder", "LabelMemoryCache",
           "clip_templates", "resolve_templates", "validate_labels"]

#: Version of the prompt-ensembling arithmetic below; part of the on-disk cache key (:mod:`adds.label_cache`).
#: Bump it whenever :meth:`LabelEmbedder._encode` would compute other vectors for the same towers and templates.
EMBEDDING_VERSION = 1

#: Labels kept in the in-memory cache of one tower (all template sets together) before the least recently used go.
DEFAULT_MAX_CACHED_LABELS = 50_000

#: The two prompts of the paper ("Overview"): "This photo contains @", "This is a @ photo".
PAPER_TEMPLATES: tuple[str, ...] = ("This photo contains {}.", "This is a {} photo.")


def clip_templates() -> tuple[str, ...]:
    """The 80 ImageNet prompt templates of OpenAI's CLIP (``{}`` marks the label)."""
    text = resources.files("adds.resources").joinpath("clip_imagenet_templates_80.txt").read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line.strip())


def resolve_templates(templates: str | Sequence[str]) -> tuple[str, ...]:
    """``"paper"`` (the default two), ``"clip80"`` (the 80 CLIP templates) or an explicit list of templates."""
    if isinstance(templates, str):
        if templates == "paper":
            return PAPER_TEMPLATES
        if templates == "clip80":
            return clip_templates()
        raise ValueError(f"Unknown template set '{templates}': use 'paper', 'clip80' or a list of templates")
    resolved = tuple(templates)
    if not resolved:
        raise ValueError("At least one prompt template is needed")
    for template in resolved:
        if not isinstance(template, str) or template.count("{}") != 1:
            raise ValueError(f"A prompt template must contain '{{}}' exactly once, got {template!r}")
    return resolved


def validate_labels(labels: Sequence[str]) -> list[str]:
    """Check a label list and return it as a list.

    Raises ``ValueError`` naming the problem for an empty list, a non-string or empty/blank label, or a duplicate.
    Duplicates are refused rather than merged because the DM-decoder's scores depend on the whole label list
    (visual tokens attend to every label's output), so a silently repeated label would change the other scores.
    """
    if isinstance(labels, str):
        raise ValueError(f"labels must be a list of strings, got the single string {labels!r}")
    labels = list(labels)
    if not labels:
        raise ValueError("The label list is empty: give at least one label")
    seen: dict[str, int] = {}
    for index, label in enumerate(labels):
        if not isinstance(label, str):
            raise ValueError(f"Label #{index} is not a string: {label!r}")
        if not label.strip():
            raise ValueError(f"Label #{index} is empty or blank: {label!r}")
        if label in seen:
            raise ValueError(f"Duplicate label {label!r} at positions {seen[label]} and {index}")
        seen[label] = index
    return labels


class LabelMemoryCache(OrderedDict):
    """``(templates, label) -> (D,)`` embeddings, least recently used dropped past ``max_labels`` entries."""

    def __init__(self, max_labels: int = DEFAULT_MAX_CACHED_LABELS, items=()) -> None:
        if isinstance(max_labels, bool) or not isinstance(max_labels, int) or max_labels < 1:
            raise ValueError(f"max_labels must be a positive int, got {max_labels!r}")
        self.max_labels = max_labels  # set first: OrderedDict.__init__ inserts through __setitem__
        super().__init__()
        for key, value in items:
            self[key] = value

    def lookup(self, key):
        """The entry (marked as recently used), or ``None``."""
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        self._trim()

    def _trim(self) -> None:
        while len(self) > self.max_labels:
            self.popitem(last=False)


def memory_cache(towers: Towers, max_labels: int | None = None) -> LabelMemoryCache:
    """The towers' in-memory label cache as a :class:`LabelMemoryCache` (replacing a plain dict, entries kept);
    ``max_labels`` sets its bound."""
    cache = towers.text_cache
    if not isinstance(cache, LabelMemoryCache):
        cache = LabelMemoryCache(DEFAULT_MAX_CACHED_LABELS if max_labels is None else max_labels, cache.items())
        towers.text_cache = cache
    elif max_labels is not None:
        cache.max_labels = max_labels
        cache._trim()
    return cache


class LabelEmbedder:
    """Prompt-ensembled, L2-normalised label embeddings ``(k, D)``, cached per (towers, templates, label).

    Args:
        towers: the frozen towers whose text side encodes the prompts (the memory cache lives on them).
        templates: prompt templates (see :func:`resolve_templates`).
        batch_size: prompts per text-tower call when encoding cache misses.

    ``hits`` / ``misses`` count labels found in memory / not found there; ``disk_hits`` those of the misses the
    disk cache had, ``encoded`` those the text tower ran for.
    """

    def __init__(self, towers: Towers, templates: str | Sequence[str] = PAPER_TEMPLATES, batch_size: int = 1024):
        self.towers = towers
        self.templates = resolve_templates(templates)
        self.batch_size = batch_size
        self.disk: LabelCache | None = None
        self.hits = 0
        self.misses = 0
        self.disk_hits = 0
        self.encoded = 0

    def use_disk_cache(self, enabled: bool = True, config: LabelCacheConfig | None = None) -> LabelCache | None:
        """Attach the on-disk cache of these towers and templates (:mod:`adds.label_cache`), or detach it."""
        from adds.label_cache import LabelCache

        self.disk = LabelCache.for_embedder(self.towers, self.templates, EMBEDDING_VERSION, config) if enabled else None
        return self.disk

    def __call__(self, labels: Sequence[str]) -> torch.Tensor:
        """Embeddings of ``labels`` in order -> ``(k, D)`` float32 on the towers' device."""
        labels = validate_labels(labels)
        cache = memory_cache(self.towers)
        vectors: dict[str, torch.Tensor] = {}
        for label in labels:
            vector = cache.lookup((self.templates, label))
            if vector is not None:
                vectors[label] = vector
        missing = [label for label in labels if label not in vectors]
        self.hits += len(labels) - len(missing)
        self.misses += len(missing)
        if missing and self.disk is not None:
            stored = self.disk.get(missing)
            self.disk_hits += len(stored)
            vectors.update(stored)
            missing = [label for label in missing if label not in stored]
        if missing:
            fresh = self._encode(missing)
            self.encoded += len(fresh)
            vectors.update(fresh)
            if self.disk is not None:
                self.disk.put(fresh)
        for label in labels:  # after the lookups, so a small LRU cannot evict what this call still needs
            cache[(self.templates, label)] = vectors[label]
        device = next(self.towers.parameters()).device
        return torch.stack([vectors[label] for label in labels]).to(device)  # (k, D)

    def _encode(self, labels: list[str]) -> dict[str, torch.Tensor]:
        """Run the text tower: ``label -> (D,)`` float32 CPU vectors, in float32 whatever autocast is active."""
        n_templates = len(self.templates)
        per_call = max(1, self.batch_size // n_templates)
        out: dict[str, torch.Tensor] = {}
        device = next(self.towers.parameters()).device
        with torch.autocast(device.type, enabled=False):  # the same vectors (and disk cache) under any --precision
            for start in range(0, len(labels), per_call):
                chunk = labels[start:start + per_call]
                prompts = [template.format(label) for label in chunk for template in self.templates]
                emb = F.normalize(self.towers.encode_text(prompts).float(), dim=-1)  # (m * n_templates, D)
                emb = emb.view(len(chunk), n_templates, -1).mean(dim=1)  # (m, D)
                emb = F.normalize(emb, dim=-1).cpu()
                for label, vector in zip(chunk, emb.unbind(0), strict=True):
                    out[label] = vector.clone()  # (D,): its own storage, so evicting it frees it
        return out
