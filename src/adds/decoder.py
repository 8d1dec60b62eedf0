"""The DM-decoder (Dual-Modal decoder, Eq. 5), the ML-Decoder baseline layer and the shared classifier.

One DM-decoder layer takes label queries ``Q`` (B, k, D) and visual tokens ``V`` (B, T, D) (keys ``K = V``) and
returns ``Q'`` and ``V'`` (``K' = V'``)::

    Q1 = LN(Q + DP(Q))                 # ML-Decoder's stand-in for the removed self-attention
    Q2 = MHA1(Q1, K, V)                # labels query the image
    Q3 = LN(Q2 + Q1)
    Q4 = DP(FFN1(ReLU(FFN2(Q3))))
    Q5 = LN(Q4 + Q3)
    Q' = LN(Q5 + Q)                    # extra skip from the layer's query input (new in ADDS)
    V1 = MHA2(V, Q5, Q5)               # image tokens query the label outputs (new in ADDS)
    V' = LN(V1 + V);  K' = V'

The ML-Decoder layer (Ridnik et al. 2021; Table 5's baseline) is the same without ``MHA2`` and without the
``Q' = LN(Q5 + Q)`` skip: it returns ``Q' = Q5`` and leaves ``V`` unchanged.

Choices where the paper is silent or ambiguous (also in ``docs/architecture.md``):

* "We output Q' only if it is the last layer": read as *only the last layer's* ``Q'`` reaches the classifier
  (no deep supervision); every layer's ``Q'`` is the next layer's ``Q``, and ``V'`` its ``K`` and ``V``.
* The last layer's ``V'`` would feed nothing, so the last layer has no ``MHA2`` (same output, less work, and no
  parameters that never get a gradient -- which DDP would reject). Hence with a
  single layer a label's logit does not depend on the other labels; from two layers on it does, because the
  visual tokens of layer 2 have attended to every label's output of layer 1.
* Dropout in the DM-decoder sits exactly where Eq. 5 puts ``DP`` (on ``Q`` in ``Q1`` and after the FFN), plus
  dropout on the attention weights as in ML-Decoder's ``nn.MultiheadAttention(dropout=0.1)``; Eq. 5 shows no
  dropout on the attention output nor after the ReLU, and none is applied there.
* The ML-Decoder baseline layer trains like ML-Decoder's own ``TransformerDecoderLayerOptimal``: four dropouts
  of the same rate, in its order -- on ``Q`` (in ``Q1``), on the attention output (``Q3 = LN(DP(Q2) + Q1)``),
  after the ReLU (``FFN1(DP(ReLU(FFN2(Q3))))``) and after the FFN -- plus the attention-weight dropout. In eval
  mode every dropout is the identity, so both layers compute the formulas above.
* ``FFN2`` is applied first (D -> ffn_dim) and ``FFN1`` second (ffn_dim -> D), following the order in Eq. 5.
* Attention heads, FFN width and dropout follow ML-Decoder (8 heads, 2048, 0.1); ``d_model`` is the joint CLIP
  embedding size, since queries are CLIP label embeddings and must not be projected out of the joint space.

:class:`SharedClassifier` is one ``Linear(D, 1)`` applied to every label's output (xavier-normal weight, zero
bias) -- nothing in the head is per-label, so any label list works at inference.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: (image, label) rows per block of the inference path (eval mode without autograd): the FFN's hidden block
#: (rows x ffn_dim x 4 bytes: 4 MiB at 2048) stays in cache. Measured in ``benchmarks/head_overhead.py``.
INFERENCE_BLOCK_ROWS = 512

#: One block of the inference path: (images, labels, the block's input queries, its ``Q5``).
Block = tuple[slice, slice, torch.Tensor, torch.Tensor]

__all__ = [
    "DecoderConfig",
    "MultiHeadAttention",
    "DMDecoderLayer",
    "MLDecoderLayer",
    "Decoder",
    "SharedClassifier",
]


@dataclass(frozen=True)
class DecoderConfig:
    """Decoder hyper-parameters (defaults: the paper's six DM-decoder layers, ML-Decoder's layer sizes).

    Attributes:
        kind: ``"dm"`` (DM-decoder, Eq. 5) or ``"ml"`` (ML-Decoder baseline layer, Table 5).
        num_layers: number of stacked layers (paper: 6; Table 5 compares 1, 3, 6).
        num_heads: attention heads (must divide the joint embedding size).
        ffn_dim: hidden width of the feed-forward block.
        dropout: the ``DP`` of Eq. 5 and the attention-weight dropout.
    """

    kind: str = "dm"
    num_layers: int = 6
    num_heads: int = 8
    ffn_dim: int = 2048
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in ("dm", "ml"):
            raise ValueError(f"DecoderConfig.kind must be 'dm' or 'ml', got {self.kind!r}")
        if self.num_layers < 1:
            raise ValueError(f"DecoderConfig.num_layers must be >= 1, got {self.num_layers}")
        if self.num_heads < 1 or self.ffn_dim < 1:
            raise ValueError(f"num_heads and ffn_dim must be >= 1, got {self.num_heads} and {self.ffn_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"DecoderConfig.dropout must be in [0, 1), got {self.dropout}")


class MultiHeadAttention(nn.Module):
    """Batch-first multi-head attention on :func:`torch.nn.functional.scaled_dot_product_attention`."""

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, H, L, D / H)."""
        batch, length, dim = x.shape
        return x.view(batch, length, self.num_heads, dim // self.num_heads).transpose(1, 2)

    @staticmethod
    def merge_heads(x: torch.Tensor) -> torch.Tensor:
        """(B, H, L, Dh) -> (B, L, H * Dh)."""
        batch, heads, length, head_dim = x.shape
        return x.transpose(1, 2).reshape(batch, length, heads * head_dim)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """``query`` (B, Lq, D), ``key``/``value`` (B, Lk, D) -> (B, Lq, D)."""
        q = self.split_heads(self.q_proj(query))  # (B, H, Lq, Dh)
        k = self.split_heads(self.k_proj(key))  # (B, H, Lk, Dh)
        v = self.split_heads(self.v_proj(value))  # (B, H, Lk, Dh)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(self.merge_heads(out))  # (B, Lq, D)


class MLDecoderLayer(nn.Module):
    """ML-Decoder layer: Eq. 5 without ``MHA2`` and without the ``Q' = LN(Q5 + Q)`` skip (Table 5 baseline).

    ``ml_dropouts`` (default) adds ML-Decoder's two dropouts that Eq. 5 does not show, on the attention output and
    after the ReLU (``TransformerDecoderLayerOptimal``'s ``dropout2`` and ``dropout``); the DM-decoder layer turns
    them off (identity modules), following Eq. 5.
    """

    def __init__(
        self, d_model: int, num_heads: int = 8, ffn_dim: int = 2048, dropout: float = 0.1, ml_dropouts: bool = True
    ) -> None:
        super().__init__()
        self.dropout_q = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.cross_attn = MultiHeadAttention(d_model, num_heads, dropout)  # MHA1
        self.dropout_attn = nn.Dropout(dropout) if ml_dropouts else nn.Identity()
        self.norm2 = nn.LayerNorm(d_model)
        self.ffn2 = nn.Linear(d_model, ffn_dim)
        self.dropout_act = nn.Dropout(dropout) if ml_dropouts else nn.Identity()
        self.ffn1 = nn.Linear(ffn_dim, d_model)
        self.dropout_ffn = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def query_block(self, query: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """``Q1 ... Q5`` of Eq. 5: ``query`` (B, k, D), ``visual`` (B, T, D) -> ``Q5`` (B, k, D)."""
        q1 = self.norm1(query + self.dropout_q(query))
        q2 = self.cross_attn(q1, visual, visual)
        q3 = self.norm2(self.dropout_attn(q2) + q1)
        q4 = self.dropout_ffn(self.ffn1(self.dropout_act(F.relu(self.ffn2(q3)))))
        return self.norm3(q4 + q3)

    def forward(self, query: torch.Tensor, visual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(Q5, V)``: the visual tokens pass through unchanged."""
        return self.query_block(query, visual), visual

    def query_blocks(self, query: torch.Tensor, visual: torch.Tensor, block_rows: int) -> Iterator[Block]:
        """Inference path of ``Q1 ... Q5`` (eval mode, no autograd; same formulas as :meth:`query_block`).

        ``query`` is (k, D) when every image has the same queries (the first layer: the label embeddings) or
        (B, k, D); ``visual`` (B, T, D). Yields ``(images, labels, Q_in, Q5)`` for blocks of about ``block_rows``
        (image, label) rows, so that the FFN's hidden block (rows x ffn_dim) stays in cache and is reused instead of
        one (B * k, ffn_dim) tensor written to and read back from memory per layer. Every step of the block is
        per label row (MHA1's queries attend to the image's tokens independently), so blocking changes nothing
        but the order of work. For a shared (k, D) query, ``Q1 = LN(Q + Q)`` and MHA1's query projection of it do
        not depend on the image (Eq. 5) and are computed once for the batch instead of once per image.
        """
        attn = self.cross_attn
        batch, k, dim = visual.shape[0], query.shape[-2], query.shape[-1]
        keys = attn.split_heads(attn.k_proj(visual))  # (B, H, T, Dh)
        values = attn.split_heads(attn.v_proj(visual))  # (B, H, T, Dh)
        shared = query.dim() == 2
        if shared:
            q1_all = self.norm1(query + query).unsqueeze(0)  # (1, k, D): Q1 of Eq. 5, image-independent
            qh_all = attn.split_heads(attn.q_proj(q1_all))  # (1, H, k, Dh)
        w2t, w1t = self.ffn2.weight.t(), self.ffn1.weight.t()  # (D, F), (F, D)
        for images, labels in _blocks(batch, k, block_rows):
            count = images.stop - images.start
            if shared:
                q_in, q1 = query[labels].unsqueeze(0), q1_all[:, labels]  # (1, c, D), broadcast over the images
                qh = qh_all[:, :, labels].expand(count, -1, -1, -1)  # (b, H, c, Dh)
            else:
                q_in = query[images, labels]  # (b, c, D)
                q1 = self.norm1(q_in + q_in)
                qh = attn.split_heads(attn.q_proj(q1))  # (b, H, c, Dh)
            context = F.scaled_dot_product_attention(qh, keys[images], values[images])  # (b, H, c, Dh)
            q3 = self.norm2(attn.out_proj(attn.merge_heads(context)) + q1)  # Q3 = LN(Q2 + Q1), (b, c, D)
            rows = q3.reshape(-1, dim)  # (b * c, D)
            hidden = torch.addmm(self.ffn2.bias, rows, w2t).relu_()  # ReLU(FFN2(Q3)), (b * c, F), in place
            q5 = self.norm3(torch.addmm(self.ffn1.bias, hidden, w1t) + rows)  # Q5 = LN(Q4 + Q3)
            yield images, labels, q_in, q5.view(count, -1, dim)

    @torch.no_grad()
    def infer(self, query: torch.Tensor, visual: torch.Tensor, block_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` in eval mode without autograd, blocked over label rows (see :meth:`query_blocks`)."""
        out = visual.new_empty(visual.shape[0], query.shape[-2], query.shape[-1])  # (B, k, D)
        for images, labels, _, q5 in self.query_blocks(query, visual, block_rows):
            out[images, labels] = q5
        return out, visual


class DMDecoderLayer(MLDecoderLayer):
    """DM-decoder layer, exactly Eq. 5 (see the module docstring)."""

    def __init__(
        self, d_model: int, num_heads: int = 8, ffn_dim: int = 2048, dropout: float = 0.1, update_visual: bool = True
    ) -> None:
        super().__init__(d_model, num_heads, ffn_dim, dropout, ml_dropouts=False)  # Eq. 5's two DPs only
        self.norm_q = nn.LayerNorm(d_model)
        self.update_visual = update_visual
        if update_visual:  # the last layer of a stack has no MHA2: its V' would feed nothing
            self.visual_attn = MultiHeadAttention(d_model, num_heads, dropout)  # MHA2
            self.norm_v = nn.LayerNorm(d_model)

    def forward(self, query: torch.Tensor, visual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``query`` (B, k, D), ``visual`` (B, T, D) -> ``(Q', V')`` (``V' = V`` for a layer without MHA2)."""
        q5 = self.query_block(query, visual)  # (B, k, D)
        q_out = self.norm_q(q5 + query)  # Q' = LN(Q5 + Q)
        if self.update_visual:
            v1 = self.visual_attn(visual, q5, q5)  # (B, T, D): image tokens attend to label outputs
            visual = self.norm_v(v1 + visual)  # V' = K'
        return q_out, visual

    @torch.no_grad()
    def infer(self, query: torch.Tensor, visual: torch.Tensor, block_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` in eval mode without autograd, blocked over label rows (see ``query_blocks``).

        ``Q' = LN(Q5 + Q)`` and MHA2's key/value projections of ``Q5`` (one GEMM with the two weights stacked) are
        done per block, so ``Q5`` itself is never stored; MHA2 runs once all labels' keys and values are there.
        """
        batch, k, dim = visual.shape[0], query.shape[-2], query.shape[-1]
        q_out = visual.new_empty(batch, k, dim)  # (B, k, D)
        if self.update_visual:
            attn = self.visual_attn
            kv_weight = torch.cat([attn.k_proj.weight, attn.v_proj.weight]).t()  # (D, 2D)
            kv_bias = torch.cat([attn.k_proj.bias, attn.v_proj.bias])  # (2D,)
            label_kv = visual.new_empty(batch, k, 2 * dim)  # (B, k, 2D): MHA2's keys | values
        for images, labels, q_in, q5 in self.query_blocks(query, visual, block_rows):
            q_out[images, labels] = self.norm_q(q5 + q_in)  # Q' = LN(Q5 + Q)
            if self.update_visual:
                rows = q5.reshape(-1, dim)
                label_kv[images, labels] = torch.addmm(kv_bias, rows, kv_weight).view(q5.shape[0], -1, 2 * dim)
        if self.update_visual:
            keys, values = label_kv.split(dim, dim=-1)  # (B, k, D) each
            context = F.scaled_dot_product_attention(
                attn.split_heads(attn.q_proj(visual)), attn.split_heads(keys), attn.split_heads(values)
            )  # (B, H, T, Dh): image tokens attend to the label outputs
            visual = self.norm_v(attn.out_proj(attn.merge_heads(context)) + visual)  # V' = LN(V1 + V)
        return q_out, visual


class Decoder(nn.Module):
    """A stack of DM-decoder (or ML-Decoder) layers; returns the last layer's label outputs ``(B, k, D)``."""

    def __init__(self, d_model: int, config: DecoderConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or DecoderConfig()
        sizes = (d_model, config.num_heads, config.ffn_dim, config.dropout)
        if config.kind == "dm":
            last = config.num_layers - 1
            layers = [DMDecoderLayer(*sizes, update_visual=index < last) for index in range(config.num_layers)]
        else:
            layers = [MLDecoderLayer(*sizes) for _ in range(config.num_layers)]
        self.layers = nn.ModuleList(layers)
        self.d_model = d_model
        self.block_rows = INFERENCE_BLOCK_ROWS

    def forward(self, queries: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """``queries`` (k, D) shared by the batch or (B, k, D); ``visual`` (B, T, D) -> (B, k, D)."""
        if visual.dim() != 3 or visual.shape[-1] != self.d_model:
            raise ValueError(f"visual tokens must be (B, T, {self.d_model}), got {tuple(visual.shape)}")
        valid = queries.dim() == 2 or (queries.dim() == 3 and queries.shape[0] == visual.shape[0])
        if not valid or queries.shape[-1] != self.d_model:
            expected = f"(k, {self.d_model}) or (B, k, {self.d_model})"
            raise ValueError(f"queries must be {expected}, got {tuple(queries.shape)}")
        if not (self.training or torch.is_grad_enabled()):  # inference: blocked path, same numbers (tested)
            for layer in self.layers:
                queries, visual = layer.infer(queries, visual, self.block_rows)
            return queries if queries.dim() == 3 else queries.unsqueeze(0).expand(visual.shape[0], -1, -1)
        if queries.dim() == 2:
            queries = queries.unsqueeze(0).expand(visual.shape[0], -1, -1)  # (B, k, D)
        for layer in self.layers:
            queries, visual = layer(queries, visual)
        return queries


def _blocks(batch: int, k: int, rows: int) -> Iterator[tuple[slice, slice]]:
    """(images, labels) slices covering a (batch, k) grid in blocks of about ``rows`` rows: label chunks of one
    image when ``k >= rows``, else groups of whole images (so that small vocabularies still make large GEMMs)."""
    if k >= rows:
        for image in range(batch):
            for start in range(0, k, rows):
                yield slice(image, image + 1), slice(start, min(k, start + rows))
    else:
        group = max(1, rows // max(k, 1))
        for start in range(0, batch, group):
            yield slice(start, min(batch, start + group)), slice(0, k)


class SharedClassifier(nn.Module):
    """One ``Linear(D, 1)`` for every label: ``(B, k, D)`` -> logits ``(B, k)``."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d_model, 1)
        nn.init.xavier_normal_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, label_outputs: torch.Tensor) -> torch.Tensor:
        return self.fc(label_outputs).squeeze(-1)  # (B, k)
