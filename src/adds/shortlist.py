"""Large-vocabulary shortlist: a cheap first pass picks ``M`` candidate labels per image, the full head scores only
those (issue 12.6; beyond the paper).

The paper's head costs the same per (image, label) pair whatever the label (37.8 MFLOP on ViT-B-32 with six
DM-decoder layers), so a 4,585-tag vocabulary costs ~20x the image tower. Most of those labels are plainly absent
from a given image, and CLIP's own class-token cosine -- which the towers compute anyway -- already says which.
The shortlist spends the head only on the labels that matter:

1. **First pass** (per image, all ``k`` labels): the training-free CLIP score, the cosine of each crop's class token
   with each label embedding, max over crops (:func:`adds.openvocab.prior_cosine`; token 0 of a crop is CLIP's
   ``encode_image``). Cost ``B x crops x k x D`` multiply-adds, nothing next to one decoder layer. Any other scorer
   ``(tokens, label_embeddings) -> (B, k)`` can stand in (e.g. a one-layer head, whose logits do not depend on the
   other labels), see :func:`shortlist`.
2. **Shortlist**: the ``M`` labels with the highest first-pass scores, kept in vocabulary order (so with
   ``M >= k`` the head sees exactly the full call).
3. **Full head** on the shortlist only: queries ``(B, M, D)`` through the DM-decoder (Eq. 5) and the shared
   classifier -- ``k / M`` times less head work.
4. **The others** get a logit below every shortlisted one of the same image, ordered by the first pass::

       base  = min(floor_logit, lowest shortlisted logit of the image)
       logit = base - 1 - (1 - cos)              # cosine first pass, cos in [-1, 1]: in [base - 3, base - 1]
       logit = base - 1 - 2 * sigmoid(-s)        # any other first-pass score s

   With the default ``floor_logit = -20`` a rejected label's score is ``sigmoid(logit) < 1e-9``: it never passes a
   threshold, and (while the image's shortlisted logits stay above -20, the usual case) its value depends only on
   its own first-pass score, so rejected labels also compare across images (per-label AP).

With two or more DM-decoder layers a label's logit depends on the other labels of the call (MHA2 lets the visual
tokens attend to every label's output of the previous layer, :mod:`adds.decoder`), so a shortlisted label's logit
is *not* its logit in the full call: the head sees ``M`` labels instead of ``k``. ``benchmarks/shortlist.py``
measures how much (and how much the full call itself differs from a call with the trained vocabulary only); with one
layer, or with the ML-Decoder, shortlisted logits equal the full call's.

Whether to shortlist by default is decided by that measurement: :data:`DEFAULT_SHORTLIST` (see
``docs/performance.md``, "Issue 12.6: shortlist"). A caller that has ``tokens = model.forward_features(images)``
and ``embeddings = model.encode_labels(labels)`` replaces ``model.forward_head(tokens, embeddings)`` by
``shortlist_logits(model, tokens, embeddings, ShortlistConfig(size=M))``; the result has the same shape and label
order, so thresholds and top-k work unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from adds.model import ADDS
from adds.openvocab import prior_cosine

__all__ = ["DEFAULT_SHORTLIST", "ShortlistConfig", "ShortlistOutput", "shortlist", "shortlist_logits"]

#: A first-pass scorer: tokens ``(B, N, D)`` and label embeddings ``(k, D)`` -> scores ``(B, k)`` (higher = keep).
FirstPass = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class ShortlistConfig:
    """The shortlist (see the module docstring).

    Attributes:
        size: ``M``, the candidate labels per image that the full head scores.
        min_labels: shortlist only vocabularies with more than this many labels (``k > min_labels``); smaller
            ones are decoded in full. ``None``: ``size`` (shortlist whenever it drops a label).
        floor_logit: the highest logit a label outside the shortlist can get (module docstring, step 4).
    """

    size: int = 256
    min_labels: int | None = None
    floor_logit: float = -20.0

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"shortlist size must be a positive int, got {self.size!r}")
        if self.min_labels is not None and (isinstance(self.min_labels, bool) or not isinstance(self.min_labels, int)
                                            or self.min_labels < 0):
            raise ValueError(f"min_labels must be None or a non-negative int, got {self.min_labels!r}")
        if not -1e6 < float(self.floor_logit) < 1e6:
            raise ValueError(f"floor_logit must be a finite number, got {self.floor_logit!r}")

    def applies(self, num_labels: int) -> bool:
        """Whether a call with ``num_labels`` labels is shortlisted (else decoded in full)."""
        threshold = self.size if self.min_labels is None else max(self.min_labels, self.size)
        return num_labels > threshold


#: The shortlist a tagger should use when the user does not choose: ``None`` (off). Measured on the toy world with
#: the 4,585 everyday tags as distractors (``benchmarks/shortlist.py``; docs/performance.md, "Issue 12.6:
#: shortlist"): every M fast enough for the >= 10x goal (M <= 256: 18x on the head) keeps only 84 +- 5 % of full
#: decoding's mAP (goal >= 99 %), so shortlisting is an explicit opt-in for vocabularies where speed matters more.
DEFAULT_SHORTLIST: ShortlistConfig | None = None


@dataclass(frozen=True)
class ShortlistOutput:
    """What :func:`shortlist` computed.

    Attributes:
        logits: ``(B, k)`` -- the head's logits for shortlisted labels, the fill of step 4 for the others.
        indices: ``(B, M)`` the shortlisted label indices per image, ascending (``M = min(size, k)``).
        first_pass: ``(B, k)`` the first-pass scores.
        shortlisted: whether the call was shortlisted (``False``: full decoding, ``indices`` = every label).
    """

    logits: Tensor
    indices: Tensor
    first_pass: Tensor
    shortlisted: bool

    @property
    def mask(self) -> Tensor:
        """``(B, k)`` bool, ``True`` where a label was scored by the head."""
        mask = torch.zeros_like(self.first_pass, dtype=torch.bool)
        return mask.scatter_(1, self.indices, True)


def _cosine_first_pass(model: ADDS) -> FirstPass:
    if not model.towers.config.aligned:
        raise ValueError("the cosine first pass needs aligned towers (class token in the label space)")
    tokens_per_crop = model.towers.tokens_per_image
    return lambda tokens, labels: prior_cosine(tokens, labels, tokens_per_crop)


@torch.no_grad()
def shortlist(
    model: ADDS,
    tokens: Tensor,
    label_embeddings: Tensor,
    config: ShortlistConfig | None = None,
    first_pass: FirstPass | None = None,
) -> ShortlistOutput:
    """Shortlisted decoding of ``tokens`` ``(B, N, token_dim)`` (:meth:`ADDS.forward_features`) against
    ``label_embeddings`` ``(k, D)`` -> :class:`ShortlistOutput` with logits ``(B, k)``.

    Args:
        model: the ADDS model whose head scores the shortlist.
        config: ``M`` and the fill (default :class:`ShortlistConfig`).
        first_pass: scorer ``(tokens, label_embeddings) -> (B, k)``; default the class-token cosine (needs aligned
            towers). A one-layer head works too: ``lambda t, e: small_head.forward_head(t, e)``.

    When ``config.applies(k)`` is false the call is full decoding, ``model.forward_head(tokens, label_embeddings)``,
    bit for bit.
    """
    config = config or ShortlistConfig()
    if label_embeddings.dim() != 2:
        raise ValueError(f"label_embeddings must be (k, D), got {tuple(label_embeddings.shape)}")
    batch, k = tokens.shape[0], label_embeddings.shape[0]
    scorer = first_pass or _cosine_first_pass(model)
    scores = scorer(tokens, label_embeddings).float()  # (B, k)
    if scores.shape != (batch, k):
        raise ValueError(f"first_pass must return ({batch}, {k}) scores, got {tuple(scores.shape)}")
    if not config.applies(k):
        every = torch.arange(k, device=scores.device).expand(batch, k)  # (B, k)
        return ShortlistOutput(model.forward_head(tokens, label_embeddings), every, scores, shortlisted=False)
    size = min(config.size, k)
    indices = scores.topk(size, dim=1).indices.sort(dim=1).values  # (B, M), vocabulary order within the shortlist
    queries = label_embeddings[indices.to(label_embeddings.device)]  # (B, M, D): a different label set per image
    head = model.forward_head(tokens, queries)  # (B, M)
    base = torch.clamp(head.float().amin(dim=1, keepdim=True), max=config.floor_logit)  # (B, 1)
    spread = (1.0 - scores) if first_pass is None else 2.0 * torch.sigmoid(-scores)  # (B, k), in [0, 2]
    logits = (base - 1.0 - spread.clamp(0.0, 2.0)).to(head.dtype)  # (B, k): every label below the shortlist
    logits.scatter_(1, indices.to(head.device), head)  # (B, k): shortlisted labels keep the head's logits
    return ShortlistOutput(logits, indices, scores, shortlisted=True)


def shortlist_logits(
    model: ADDS,
    tokens: Tensor,
    label_embeddings: Tensor,
    config: ShortlistConfig | None = None,
    first_pass: FirstPass | None = None,
) -> Tensor:
    """:func:`shortlist`'s logits ``(B, k)`` alone (the drop-in for ``model.forward_head``)."""
    return shortlist(model, tokens, label_embeddings, config, first_pass).logits
