"""Label embeddings from prompt templates (paper: "Overview" and Fig. 2).

A label word becomes the query of the DM-decoder through the frozen text tower: each label is put into every
prompt template ("This photo contains @.", "This is a @ photo." in the paper), each prompt embedding is
L2-normalised, the prompts of a label are averaged and the mean is re-normalised (CLIP's prompt ensembling).

Embeddings are cached on the :class:`~adds.towers.Towers` object, keyed by ``(templates, label)``: a label is
encoded once per tower and template set, however many vocabularies it appears in.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources

import torch
import torch.nn.functional as F

from adds.towers import Towers

__all__ = ["PAPER_TEMPLATES", "clip_templates", "resolve_templates", "validate_labels", "LabelEmbedder"]

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


class LabelEmbedder:
    """Prompt-ensembled, L2-normalised label embeddings ``(k, D)``, cached per (towers, templates, label).

    Args:
        towers: the frozen towers whose text side encodes the prompts (the cache lives on them).
        templates: prompt templates (see :func:`resolve_templates`).
        batch_size: prompts per text-tower call when encoding cache misses.
    """

    def __init__(self, towers: Towers, templates: str | Sequence[str] = PAPER_TEMPLATES, batch_size: int = 1024):
        self.towers = towers
        self.templates = resolve_templates(templates)
        self.batch_size = batch_size
        self.hits = 0
        self.misses = 0

    def __call__(self, labels: Sequence[str]) -> torch.Tensor:
        """Embeddings of ``labels`` in order -> ``(k, D)`` float32 on the towers' device."""
        labels = validate_labels(labels)
        cache = self.towers.text_cache
        missing = [label for label in labels if (self.templates, label) not in cache]
        self.hits += len(labels) - len(missing)
        self.misses += len(missing)
        if missing:
            self._encode(missing)
        device = next(self.towers.parameters()).device
        return torch.stack([cache[(self.templates, label)] for label in labels]).to(device)  # (k, D)

    def _encode(self, labels: list[str]) -> None:
        n_templates = len(self.templates)
        per_call = max(1, self.batch_size // n_templates)
        for start in range(0, len(labels), per_call):
            chunk = labels[start:start + per_call]
            prompts = [template.format(label) for label in chunk for template in self.templates]
            emb = F.normalize(self.towers.encode_text(prompts), dim=-1)  # (m * n_templates, D)
            emb = emb.view(len(chunk), n_templates, -1).mean(dim=1)  # (m, D)
            emb = F.normalize(emb, dim=-1).cpu()
            for label, vector in zip(chunk, emb, strict=True):
                self.towers.text_cache[(self.templates, label)] = vector
