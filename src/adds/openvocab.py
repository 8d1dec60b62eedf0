"""Open-vocabulary mode: a trained head for the words it was trained on, the head *and* CLIP for the others.

Not in the ADDS paper (issue 9.6). A trained head ranks its training labels well, but on words it never saw as
labels it can fall below training-free CLIP (toy world: 25 vs 41 mAP on the 12 unseen concepts, see
``docs/tagging.md``, "Open vocabulary"). The open-vocabulary mode keeps the head where it is trustworthy and mixes
in the training-free prior where it is not:

* a label **inside** the training vocabulary keeps the head's logit exactly;
* a label **outside** it gets ``scale * ((1 - a) * z(head) + a * z(prior)) + bias``. ``prior`` is the training-free
  CLIP score, the cosine of the class token with the prompt-ensembled label embedding (the maximum over the
  head's crops when its plan has several, :func:`prior_cosine`); ``z`` standardises with fixed statistics fitted
  once (``standardise="global"``, the default) or each image's scores over the labels of the call (``"image"``).
  ``a`` (the prior's share, the ``w`` of "head + w x prior" is ``a / (1 - a)``) is chosen on *held-out seen*
  labels: training labels that a second head was trained without, so their head scores are as untrusted as a new
  word's; unless the mix beats the prior alone there by ``min_gain`` (1 mAP point), ``a = 1``: the new word gets
  the training-free ranking exactly. ``scale`` and ``bias`` (Platt scaling on the same labels) map the mix back
  to a calibrated logit.

The fitted parameters and the training vocabulary live in ``open_vocab.json`` next to the checkpoint's
``config.json`` (plain JSON, never pickle): :meth:`OpenVocabulary.save` / :meth:`OpenVocabulary.load`,
:func:`fit_and_save` (fitted from a fold head trained without some training labels; the toy world does it).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from adds.metrics import mean_average_precision

__all__ = [
    "OPEN_VOCAB_NAME",
    "Combiner",
    "OpenVocabulary",
    "checkpoint_open_vocabulary",
    "eval_score_fn",
    "fit_and_save",
    "fit_combiner",
    "prior_cosine",
    "standardise",
    "tagger_logits",
]

#: The open-vocabulary record next to a checkpoint's ``config.json``.
OPEN_VOCAB_NAME = "open_vocab.json"
_FORMAT = "adds-open-vocab"
_FORMAT_VERSION = 1
_EPS = 1e-6


def standardise(scores: Tensor, mean: float | None = None, std: float | None = None) -> Tensor:
    """``(B, k)`` scores -> z-scores: per image over the ``k`` labels, or with a fixed ``mean`` / ``std``.

    Per image with a single label there is nothing to standardise over: the z-score is 0.
    """
    scores = scores.float()
    if mean is not None and std is not None:
        return (scores - mean) / max(std, _EPS)
    if scores.shape[-1] < 2:
        return torch.zeros_like(scores)
    mu = scores.mean(dim=-1, keepdim=True)  # (B, 1)
    sigma = scores.std(dim=-1, keepdim=True).clamp_min(_EPS)  # (B, 1)
    return (scores - mu) / sigma  # (B, k)


def prior_cosine(tokens: Tensor, label_embeddings: Tensor, tokens_per_crop: int) -> Tensor:
    """The training-free prior: cosine of each crop's class token with each label, max over crops -> ``(B, k)``.

    ``tokens`` ``(B, crops * T, D)`` are aligned tokens (``ADDS.forward_features``); token 0 of a crop is CLIP's
    image embedding of that crop, so with one crop this is the plain CLIP cosine.
    """
    cls = tokens[:, ::tokens_per_crop]  # (B, crops, D)
    cls = F.normalize(cls.float(), dim=-1)
    labels = F.normalize(label_embeddings.float().to(cls.device), dim=-1)  # (k, D)
    return torch.einsum("bcd,kd->bck", cls, labels).amax(dim=1)  # (B, k)


@dataclass(frozen=True)
class Combiner:
    """``scale * ((1 - prior_weight) * z(head) + prior_weight * z(prior)) + bias`` for labels new to the head.

    Attributes:
        prior_weight: the prior's share ``a`` in [0, 1] (0: head only, 1: prior only).
        scale / bias: Platt scaling of the mix to a calibrated logit.
        standardise: ``"image"`` (z over each image's labels in the call) or ``"global"`` (fixed statistics).
        head_mean / head_std / prior_mean / prior_std: the fixed statistics of ``"global"`` (also the fallback of
            ``"image"`` for a call with a single label).
    """

    prior_weight: float = 0.5
    scale: float = 1.0
    bias: float = 0.0
    standardise: str = "image"
    head_mean: float = 0.0
    head_std: float = 1.0
    prior_mean: float = 0.0
    prior_std: float = 1.0

    def __post_init__(self) -> None:
        if self.standardise not in ("image", "global"):
            raise ValueError(f"standardise must be 'image' or 'global', got {self.standardise!r}")
        if not 0.0 <= self.prior_weight <= 1.0:
            raise ValueError(f"prior_weight must lie in [0, 1], got {self.prior_weight!r}")
        for name in ("scale", "bias", "head_mean", "head_std", "prior_mean", "prior_std"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)!r}")

    def mix(self, head_logits: Tensor, prior: Tensor) -> Tensor:
        """The uncalibrated mix ``(B, k)`` (standardised over the ``k`` labels given)."""
        if self.standardise == "global" or head_logits.shape[-1] < 2:
            z_head = standardise(head_logits, self.head_mean, self.head_std)
            z_prior = standardise(prior, self.prior_mean, self.prior_std)
        else:
            z_head, z_prior = standardise(head_logits), standardise(prior)
        return (1.0 - self.prior_weight) * z_head + self.prior_weight * z_prior  # (B, k)

    def __call__(self, head_logits: Tensor, prior: Tensor) -> Tensor:
        """Calibrated logits ``(B, k)``."""
        return self.scale * self.mix(head_logits, prior) + self.bias


def _platt(mix: Tensor, targets: Tensor, steps: int = 200) -> tuple[float, float]:
    """Logistic regression of ``targets`` on one feature ``mix`` (flattened) -> ``(scale, bias)``."""
    x, y = mix.flatten().double(), targets.flatten().double()
    params = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([params], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(params[0] * x + params[1], y)
        loss.backward()
        return loss

    optimizer.step(closure)
    scale, bias = (float(v) for v in params.detach())
    return scale, bias


def fit_combiner(
    head_logits: Tensor,
    prior: Tensor,
    targets: Tensor,
    new: Sequence[bool] | Tensor,
    standardise_mode: str = "global",
    grid: int = 41,
    min_gain: float = 1.0,
) -> Combiner:
    """Fit a :class:`Combiner` on held-out images.

    Args:
        head_logits: ``(N, k)`` logits of a head that was **not** trained on the labels marked ``new``, scored with
            all ``k`` labels in one call (as at tagging time: seen and new words together).
        prior: ``(N, k)`` training-free prior (:func:`prior_cosine`).
        targets: ``(N, k)`` ground truth in {0, 1}.
        new: ``(k,)`` which labels to fit on: the held-out ("pretend new") ones.
        standardise_mode: ``"global"`` (default) or ``"image"`` (see :class:`Combiner`). With fixed statistics
            the prior alone (weight 1) ranks every label's images exactly as the raw cosine does, so the fallback
            below gives the training-free baseline's mAP exactly; per-image z-scores change that ranking and lost
            2-5 mAP points against the raw cosine on the toy world (``benchmarks/open_vocab.py``).
        grid: number of prior weights tried in [0, 1]; the one with the best mAP on the new labels wins (ties: the
            smaller weight).
        min_gain: the mix must beat the prior alone by this many mAP points on the new labels, else the prior alone
            is used (weight 1): a head that is not clearly better than CLIP on held-out words is not trusted with
            new ones ("never worse than CLIP on new words", issue 9.6).
    """
    new = torch.as_tensor(new, dtype=torch.bool)
    if new.shape != (head_logits.shape[1],) or not bool(new.any()):
        raise ValueError(f"new must mark at least one of the {head_logits.shape[1]} labels, got shape {new.shape}")
    stats = {"head_mean": float(head_logits.float().mean()), "head_std": float(head_logits.float().std()),
             "prior_mean": float(prior.float().mean()), "prior_std": float(prior.float().std())}
    base = Combiner(standardise=standardise_mode, **stats)
    best: tuple[float, float] | None = None
    for step in range(grid):
        weight = step / (grid - 1)
        mix = Combiner(prior_weight=weight, standardise=standardise_mode, **stats).mix(head_logits, prior)
        value = mean_average_precision(mix[:, new], targets[:, new])
        if best is None or value > best[0] + 1e-9:
            best = (value, weight)
    assert best is not None
    weight = best[1]
    prior_only = mean_average_precision(
        Combiner(prior_weight=1.0, standardise=standardise_mode, **stats).mix(head_logits, prior)[:, new],
        targets[:, new])
    if best[0] < prior_only + min_gain / 100.0:
        weight = 1.0
    mix = Combiner(prior_weight=weight, standardise=standardise_mode, **stats).mix(head_logits, prior)
    scale, bias = _platt(mix[:, new], targets[:, new].float())
    return Combiner(prior_weight=weight, scale=scale, bias=bias, standardise=base.standardise, **stats)


@dataclass
class OpenVocabulary:
    """The training vocabulary of a head and the :class:`Combiner` for words outside it.

    Attributes:
        vocabulary: the head's training label names.
        combiner: the fitted combination for labels outside ``vocabulary``.
        info: free-form provenance (how it was fitted: held-out labels, images, the fit's mAP), kept in the JSON.
    """

    vocabulary: tuple[str, ...]
    combiner: Combiner = field(default_factory=Combiner)
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.vocabulary = tuple(self.vocabulary)
        self._known = frozenset(self.vocabulary)

    def seen_mask(self, labels: Sequence[str]) -> Tensor:
        """``(k,)`` bool: which of ``labels`` the head was trained on."""
        return torch.tensor([label in self._known for label in labels], dtype=torch.bool)

    def logits(self, head_logits: Tensor, prior: Tensor, labels: Sequence[str]) -> Tensor:
        """Open-vocabulary logits ``(B, k)``: the head's own for seen labels, the combiner's for the others."""
        if head_logits.shape != prior.shape or head_logits.shape[-1] != len(labels):
            raise ValueError(f"head logits {tuple(head_logits.shape)}, prior {tuple(prior.shape)} and "
                             f"{len(labels)} labels do not match")
        seen = self.seen_mask(labels).to(head_logits.device)
        if bool(seen.all()):
            return head_logits
        combined = self.combiner(head_logits, prior.to(head_logits.device)).to(head_logits.dtype)
        return torch.where(seen, head_logits, combined)  # (B, k)

    # -- open_vocab.json -------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": _FORMAT, "format_version": _FORMAT_VERSION, "vocabulary": list(self.vocabulary),
                "combiner": asdict(self.combiner), "info": self.info}

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``directory/open_vocab.json``."""
        path = Path(directory) / OPEN_VOCAB_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> OpenVocabulary:
        """Read ``directory/open_vocab.json`` (or that file itself); ``ValueError`` naming the file if malformed."""
        path = Path(directory)
        if path.is_dir():
            path = path / OPEN_VOCAB_NAME
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"{path} not found (the head has no open-vocabulary record; "
                             "adds.openvocab.fit_and_save writes it)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot read {path}: {error}") from error
        if not isinstance(record, dict) or record.get("format") != _FORMAT:
            raise ValueError(f"{path} is not an open-vocabulary record (missing \"format\": \"{_FORMAT}\")")
        if record.get("format_version") != _FORMAT_VERSION:
            raise ValueError(f"{path} has format_version {record.get('format_version')}, this adds reads "
                             f"{_FORMAT_VERSION}")
        vocabulary = record.get("vocabulary")
        if not isinstance(vocabulary, list) or not all(isinstance(v, str) for v in vocabulary):
            raise ValueError(f"{path}: 'vocabulary' must be a list of label strings")
        combiner = record.get("combiner")
        if not isinstance(combiner, dict):
            raise ValueError(f"{path}: 'combiner' must be an object")
        known = set(Combiner.__dataclass_fields__)
        unknown = sorted(set(combiner) - known)
        if unknown:
            raise ValueError(f"{path}: unknown combiner field(s) {unknown}")
        try:
            parsed = Combiner(**{k: (v if k == "standardise" else float(v)) for k, v in combiner.items()})
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: {error}") from error
        info = record.get("info", {})
        return cls(vocabulary=tuple(vocabulary), combiner=parsed, info=info if isinstance(info, dict) else {})

    @staticmethod
    def exists(directory: str | os.PathLike) -> bool:
        return (Path(directory) / OPEN_VOCAB_NAME).is_file()


def fit_and_save(
    checkpoint_dir: str | os.PathLike,
    vocabulary: Sequence[str],
    head_logits: Tensor,
    prior: Tensor,
    targets: Tensor,
    new: Sequence[bool] | Tensor,
    standardise_mode: str = "global",
    info: dict | None = None,
) -> OpenVocabulary:
    """Fit the combiner (:func:`fit_combiner`) and write ``checkpoint_dir/open_vocab.json``.

    Args:
        checkpoint_dir: the saved head's directory.
        vocabulary: the head's training labels (all of them; these keep the head's score).
        head_logits / prior / targets / new: as :func:`fit_combiner` -- held-out images scored by a head trained
            without the labels marked ``new`` (a subset of ``vocabulary``), all columns in one call.
    """
    combiner = fit_combiner(head_logits, prior, targets, new, standardise_mode)
    new_mask = torch.as_tensor(new, dtype=torch.bool)
    mix = combiner(head_logits, prior)[:, new_mask]
    record = {"held_out_labels": int(new_mask.sum()), "fit_images": int(head_logits.shape[0]),
              "fit_mAP": 100 * mean_average_precision(mix, targets[:, new_mask]),
              "fit_head_mAP": 100 * mean_average_precision(head_logits[:, new_mask], targets[:, new_mask]),
              "fit_prior_mAP": 100 * mean_average_precision(prior[:, new_mask], targets[:, new_mask]),
              **(info or {})}
    result = OpenVocabulary(vocabulary=tuple(vocabulary), combiner=combiner, info=record)
    result.save(checkpoint_dir)
    return result


def checkpoint_open_vocabulary(directory: str | os.PathLike, wanted: bool | None) -> OpenVocabulary | None:
    """The open-vocabulary record a tagger uses for a checkpoint (``TaggerConfig.open_vocabulary``).

    ``wanted=None`` (the default): the checkpoint's ``open_vocab.json`` when it has one, else the plain head;
    ``False``: the plain head; ``True``: the record, and ``ValueError`` naming the file when it is missing.
    """
    if wanted is False or (wanted is None and not OpenVocabulary.exists(directory)):
        return None
    return OpenVocabulary.load(directory)


def tagger_logits(
    record: OpenVocabulary, tokens: Tensor, head_logits: Tensor, label_embeddings: Tensor, labels: Sequence[str],
    tokens_per_crop: int,
) -> Tensor:
    """The tagger's open-vocabulary step: head logits ``(B, k)`` of ``tokens`` ``(B, crops * T, D)`` -> logits."""
    if bool(record.seen_mask(labels).all()):
        return head_logits
    prior = prior_cosine(tokens, label_embeddings, tokens_per_crop)  # (B, k)
    return record.logits(head_logits, prior.to(head_logits.dtype), labels)


def eval_score_fn(record: OpenVocabulary, model, vocabulary: Sequence[str]):
    """A ``score_fn`` for :func:`adds.evaluate.predict`: open-vocabulary sigmoid scores of an ADDS head.

    ``predict`` hands over label *embeddings* only (the whole vocabulary, or a single-to-multi subset of its rows),
    so each row is matched back to its label in ``vocabulary`` by its embedding.
    """
    vocabulary = list(vocabulary)
    full = F.normalize(model.encode_labels(vocabulary).float(), dim=-1)  # (C, D)
    seen = record.seen_mask(vocabulary)  # (C,)
    per_crop = model.towers.tokens_per_image

    def score_fn(tokens: Tensor, embeddings: Tensor) -> Tensor:
        rows = (F.normalize(embeddings.float(), dim=-1) @ full.to(embeddings.device).T).argmax(dim=1)  # (k,)
        names = [vocabulary[i] for i in rows.tolist()]
        head = model.forward_head(tokens, embeddings).float()  # (B, k)
        if bool(seen[rows.cpu()].all()):
            return head.sigmoid()
        return tagger_logits(record, tokens, head, embeddings, names, per_crop).sigmoid()

    return score_fn
