"""Text encoders for the alignment tables (Tables 6/9) of the toy world v2.

Each encoder maps the world's 160 labels to ``(L, 64)`` L2-normalised label embeddings that an ADDS head takes in
place of the aligned toy CLIP's (the head's shared classifier needs the joint dimension, 64):

* ``aligned`` -- the toy CLIP's own text tower with the paper's two prompts (the default of every table);
* ``linear_map`` -- the text tower of the second toy CLIP (seed 1), trained the same way from another seed:
  aligned with *its own* image tower, so with the first one's image tokens at best "up to a linear map";
* ``caption_lm`` -- a word-level GRU language model trained on the same captions with next-word prediction only
  (no contrastive loss): the analogue of the paper's caption-fine-tuned BLIP (Table 9, 2.52 mAP);
* ``word_vectors`` -- word vectors from caption co-occurrence (PPMI + SVD, the Word2Vec analogue of ML-Decoder's
  zero-shot mode), a label being the mean of its words' vectors;
* ``random`` -- a random Gaussian matrix (Table 6's first row).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from adds.prompts import PAPER_TEMPLATES, LabelEmbedder
from adds.towers import Towers
from adds.toyworld.world import VOCABULARY, captions, sample_objects

__all__ = ["ENCODERS", "caption_corpus", "caption_lm_embeddings", "label_embeddings", "linear_map_transfer",
           "random_embeddings", "word_vector_embeddings"]

#: Encoder names in table order.
ENCODERS: tuple[str, ...] = ("aligned", "linear_map", "caption_lm", "word_vectors", "random")
_DIM = 64


@functools.lru_cache(maxsize=2)
def caption_corpus(count: int = 6000, seed: int = 0) -> list[list[str]]:
    """``count`` toy-web captions (the toy CLIP's caption distribution) as word lists (cached; do not mutate)."""
    generator = torch.Generator().manual_seed(seed)
    texts = captions(sample_objects(count, generator), generator)
    return [text.lower().replace(".", "").split() for text in texts]


def _prompt_words(label: str, template: str) -> tuple[list[str], list[int]]:
    """Words of ``template.format(label)`` and the positions of the label's words among them."""
    before, after = template.lower().replace(".", "").split("{}")
    head, label_words, tail = before.split(), label.split(), after.split()
    return head + label_words + tail, list(range(len(head), len(head) + len(label_words)))


def random_embeddings(labels: Sequence[str], seed: int = 0) -> torch.Tensor:
    """Random normalised label embeddings ``(L, 64)``."""
    noise = torch.randn(len(labels), _DIM, generator=torch.Generator().manual_seed(seed))
    return F.normalize(noise, dim=-1)


def word_vector_embeddings(labels: Sequence[str], corpus: list[list[str]], window: int = 2) -> torch.Tensor:
    """Co-occurrence word vectors: PPMI of words within ``window`` positions, top singular vectors (zero-padded to
    64 dims), label = normalised mean of its word vectors -> ``(L, 64)``."""
    vocabulary = sorted({word for sentence in corpus for word in sentence})
    index = {word: i for i, word in enumerate(vocabulary)}
    counts = torch.zeros(len(vocabulary), len(vocabulary), dtype=torch.float64)
    for sentence in corpus:
        ids = [index[w] for w in sentence]
        for i, a in enumerate(ids):
            for b in ids[max(0, i - window):i]:
                counts[a, b] += 1
                counts[b, a] += 1
    total = counts.sum()
    row = counts.sum(1, keepdim=True)
    ppmi = torch.log((counts * total / (row * row.T)).clamp_min(1e-12)).clamp_min(0)  # (V, V)
    u, s, _ = torch.linalg.svd(ppmi)
    rank = min(_DIM, len(vocabulary))
    vectors = torch.zeros(len(vocabulary), _DIM, dtype=torch.float64)
    vectors[:, :rank] = u[:, :rank] * s[:rank].sqrt()
    out = torch.stack([vectors[[index[w] for w in label.split() if w in index]].mean(0) for label in labels])
    return F.normalize(out.float(), dim=-1)


class _CaptionLM(nn.Module):
    """Word embedding -> one GRU layer -> next-word logits."""

    def __init__(self, words: int, dim: int = _DIM) -> None:
        super().__init__()
        self.embed = nn.Embedding(words, dim)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.out = nn.Linear(dim, words)

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        return self.gru(self.embed(ids))[0]  # (B, T, D)


def caption_lm_embeddings(labels: Sequence[str], corpus: list[list[str]], steps: int = 300, seed: int = 0,
                          batch_size: int = 128) -> torch.Tensor:
    """Train the caption-only LM (next-word cross-entropy) and embed each label as the mean hidden state over its
    words in the paper's two prompts -> ``(L, 64)``."""
    torch.manual_seed(seed)
    vocabulary = ["<pad>", "<bos>"] + sorted({word for sentence in corpus for word in sentence}
                                             | {w for t in PAPER_TEMPLATES for w in _prompt_words("x", t)[0]})
    index = {word: i for i, word in enumerate(vocabulary)}
    length = max(len(s) for s in corpus) + 1
    ids = torch.zeros(len(corpus), length, dtype=torch.long)
    for row, sentence in enumerate(corpus):
        ids[row, : len(sentence) + 1] = torch.tensor([1] + [index[w] for w in sentence])
    model = _CaptionLM(len(vocabulary))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = ids[torch.randint(len(corpus), (batch_size,), generator=generator)]
        logits = model.out(model.hidden(batch[:, :-1]))  # (B, T-1, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), ignore_index=0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    out = torch.zeros(len(labels), _DIM)
    with torch.no_grad():
        for template in PAPER_TEMPLATES:
            for row, label in enumerate(labels):
                words, positions = _prompt_words(label, template)
                prompt = torch.tensor([[1] + [index.get(w, 0) for w in words]])
                hidden = model.hidden(prompt)[0, 1:]  # (T, D), position p = word p
                out[row] += F.normalize(hidden[positions].mean(0), dim=-1)
    return F.normalize(out, dim=-1)


def linear_map_transfer(source: torch.Tensor, target: torch.Tensor, fit: Sequence[int],
                        test: Sequence[int]) -> float:
    """How "linear" two label spaces are: fit ``target ~ source @ W`` by least squares on the ``fit`` rows, return
    the mean cosine of the mapped ``test`` rows with their targets (1 = a perfect linear map)."""
    fit, test = list(fit), list(test)
    weight = torch.linalg.lstsq(source[fit].double(), target[fit].double()).solution  # (D, D)
    mapped = F.normalize((source[test].double() @ weight).float(), dim=-1)
    return float((mapped * F.normalize(target[test], dim=-1)).sum(-1).mean())


def label_embeddings(name: str, towers: Towers, control: Towers | None = None,
                     labels: Sequence[str] | None = None, seed: int = 0) -> torch.Tensor:
    """Label embeddings ``(L, 64)`` of encoder ``name`` (see :data:`ENCODERS`) for ``labels`` (default: all 160).

    ``towers`` is the aligned toy CLIP, ``control`` the second one (needed for ``linear_map``); ``seed`` only
    changes the random matrix (the language models are trained with seed 0, like the toy CLIPs).
    """
    labels = list(labels if labels is not None else VOCABULARY.labels)
    if name == "aligned":
        return LabelEmbedder(towers)(labels)
    if name == "linear_map":
        if control is None:
            raise ValueError("the linear_map encoder needs the second toy CLIP (control=...)")
        return LabelEmbedder(control)(labels)
    if name == "caption_lm":
        return caption_lm_embeddings(labels, caption_corpus())
    if name == "word_vectors":
        return word_vector_embeddings(labels, caption_corpus())
    if name == "random":
        return random_embeddings(labels, seed)
    raise ValueError(f"unknown text encoder {name!r}; choose from {', '.join(ENCODERS)}")
