"""The :class:`Towers` module: frozen open_clip image and text towers with the token-level image output ADDS needs.

Image towers: open_clip's own ``VisionTransformer`` with a global image embedding, pooled either from the class
token (``pool_type="tok"``, OpenAI / LAION models) or as the mean of the patch tokens (``pool_type="avg"``, the
CLIPA family), with or without ``final_ln_after_pool`` and ``no_ln_pre``. Token 0 of :meth:`Towers.encode_image_tokens`
is always that global embedding -- exactly open_clip's ``encode_image`` -- and tokens ``1..`` are the patch tokens
after ``ln_post``. Refused with a message naming the model and the reason: ``pool_type="none"`` (no global
embedding), attention-pooled towers (CoCa: their tokens are pooler queries, not patches), ResNet and timm towers.

Text towers: open_clip's ``CLIP`` (built-in text transformer) and ``CustomTextCLIP`` (built-in or Hugging Face text
encoders: the xlm-roberta, mt5, nllb and roberta models, i.e. multilingual labels).
"""

from __future__ import annotations

import logging
from pathlib import Path

import open_clip
import torch
from torch import nn

from adds.towers import hub
from adds.towers.config import TowerConfig, quiet_random_init, register_model_configs
from adds.towers.identity import FINGERPRINT_SCHEME, fingerprint, legacy_fingerprint, weights_sha256
from adds.towers.preprocess import canonical_preprocess
from adds.towers.support import SUPPORTED_POOLS, reason_text
from adds.towers.weights import create_clip

__all__ = ["Towers", "load_towers", "meta_towers"]

logger = logging.getLogger(__name__)


def _check_visual(clip: nn.Module, model: str) -> str:
    """The pooling of a supported image tower (``"tok"`` or ``"avg"``); a ``ValueError`` naming the reason otherwise.

    The same rules as :func:`adds.towers.support.refusal_reason`, read from the built module (for models built
    without :func:`load_towers`, e.g. :func:`meta_towers`).
    """
    visual = getattr(clip, "visual", None)
    if isinstance(clip, open_clip.CoCa):
        raise ValueError(f"'{model}' {reason_text('coca')}")
    if not isinstance(visual, open_clip.transformer.VisionTransformer):
        kind = {"ModifiedResNet": "resnet", "TimmModel": "timm"}.get(type(visual).__name__, "other")
        if kind == "other":
            raise ValueError(f"'{model}' has a {type(visual).__name__} image tower; ADDS needs open_clip's "
                             f"VisionTransformer (class and patch tokens)")
        name = getattr(getattr(visual, "trunk", None), "default_cfg", {}).get("architecture", "?")
        raise ValueError(f"'{model}' {reason_text(kind, timm=str(name))}")
    if visual.attn_pool is not None or getattr(visual, "attn_pool_contrastive", None) is not None:
        raise ValueError(f"'{model}' {reason_text('vit-attn')}")
    if visual.pool_type not in SUPPORTED_POOLS:
        raise ValueError(f"'{model}' {reason_text('vit-pool', pool=str(visual.pool_type))}")
    if visual.proj is None:
        raise ValueError(f"'{model}' has no visual projection, so its tokens cannot be aligned")
    if getattr(clip, "text_pool_type", None) == "none":
        raise ValueError(f"'{model}' {reason_text('text-none')}")
    return visual.pool_type


class Towers(nn.Module):
    """Frozen CLIP image and text towers with the token-level image output ADDS needs.

    Build with :func:`load_towers`. Shapes: ``N`` images (or crops), ``T`` tokens per image (1 global token + the
    patch grid), ``D`` the joint embedding size (``embed_dim``), ``W`` the raw visual width.
    """

    def __init__(self, clip: nn.Module, config: TowerConfig, source: dict, tokenizer) -> None:
        super().__init__()
        self.pool: str = _check_visual(clip, config.model)
        visual = clip.visual
        self.config = config
        self.source = source
        self.clip = clip
        self.tokenizer = tokenizer
        self.text_cache: dict[tuple[tuple[str, ...], str], torch.Tensor] = {}  # (templates, label) -> (D,), see prompts
        self._identity: dict | None = None
        for param in self.clip.parameters():
            param.requires_grad_(False)
        self.clip.eval()
        size = visual.image_size
        self.image_size: int = int(size[0] if isinstance(size, (tuple, list)) else size)
        if isinstance(size, (tuple, list)) and size[0] != size[1]:
            raise ValueError(f"Pyramid-Forwarding needs a square tower input, '{config.model}' has {tuple(size)}")
        preprocess = canonical_preprocess(open_clip.get_model_preprocess_cfg(clip))
        self.preprocess: dict = preprocess
        self.mean: tuple[float, ...] = tuple(preprocess["mean"])
        self.std: tuple[float, ...] = tuple(preprocess["std"])
        self.embed_dim: int = int(visual.proj.shape[1])
        self.visual_width: int = int(visual.proj.shape[0])
        grid = visual.grid_size
        self.tokens_per_image: int = 1 + int(grid[0]) * int(grid[1])

    @property
    def token_dim(self) -> int:
        """Width of :meth:`encode_image_tokens` output: ``embed_dim`` when aligned, else the raw visual width."""
        return self.embed_dim if self.config.aligned else self.visual_width

    def train(self, mode: bool = True) -> Towers:
        """Towers stay in eval mode whatever is asked (frozen, paper: "fixed during the training")."""
        return super().train(False)

    @torch.no_grad()
    def encode_image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """Per-token visual embeddings of normalised ``(N, 3, S, S)`` pixels -> ``(N, T, D)`` (or ``(N, T, W)``).

        Token 0 is the global image embedding: the class token (``pool_type="tok"``) or the mean of the patch
        tokens (``"avg"``), normalised as open_clip does (``ln_post`` before pooling, or after it with
        ``final_ln_after_pool``). Tokens ``1..`` are the patch tokens after ``ln_post``. When aligned, all are
        multiplied by the visual projection, so token 0 equals ``clip.encode_image(pixels)`` (before normalisation).
        """
        visual = self.clip.visual
        pixels = pixels.to(next(visual.parameters()).dtype)  # a reduced-precision image path (adds.tagger.precision)
        out = visual.forward_intermediates(
            pixels, indices=1, normalize_intermediates=False, intermediates_only=True,
            output_fmt="NLC", output_extra_tokens=True,
        )
        raw = torch.cat([out["image_intermediates_prefix"][-1], out["image_intermediates"][-1]], dim=1)  # (N, T, W)
        tokens = visual.ln_post(raw)  # (N, T, W): LayerNorm is per token, so this is ln_post before any pooling
        if self.pool == "avg":
            if visual.final_ln_after_pool:
                pooled = visual.ln_post(raw[:, 1:].mean(dim=1))  # (N, W): ln_post(mean(patches))
            else:
                pooled = tokens[:, 1:].mean(dim=1)  # (N, W): mean(ln_post(patches))
            tokens = torch.cat([pooled[:, None], tokens[:, 1:]], dim=1)  # (N, T, W), the untrained class token dropped
        if self.config.aligned:
            tokens = tokens @ visual.proj  # (N, T, D)
        return tokens

    @torch.no_grad()
    def encode_text(self, prompts: list[str], truncate: bool = True) -> torch.Tensor:
        """Projected (not normalised) text embeddings of ``prompts`` -> ``(n, D)``.

        With ``truncate`` (default) the token batch is cut after its last end-of-text token before the text
        transformer runs: CLIP's text tower is causal and pools the end-of-text token, so the padding after it
        cannot change the result (equal to open_clip's ``encode_text`` up to float rounding, tested), and a prompt
        of ~10 tokens no longer pays for all 77 positions (6.6x faster label-embedding misses, see
        ``docs/performance.md``). Towers without a causal mask or end-of-text pooling (among them every
        ``CustomTextCLIP``: Hugging Face text encoders) use ``encode_text`` as is.
        """
        clip = self.clip
        device = next(clip.parameters()).device
        tokens = self.tokenizer(prompts).to(device)  # (n, context)
        pool = getattr(clip, "text_pool_type", None)
        if not truncate or getattr(clip, "attn_mask", None) is None or pool not in ("argmax", "eos"):
            return clip.encode_text(tokens).float()
        eos_id = getattr(clip, "text_eos_id", None)
        ends = tokens.argmax(dim=-1) if pool == "argmax" else (tokens == eos_id).int().argmax(dim=-1)  # (n,)
        length = int(ends.max()) + 1
        tokens = tokens[:, :length]  # (n, L)
        cast = clip.transformer.get_cast_dtype()
        x = clip.token_embedding(tokens).to(cast) + clip.positional_embedding[:length].to(cast)  # (n, L, W)
        x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask[:length, :length]))  # (n, L, W)
        x = open_clip.transformer.text_global_pool(x, tokens, pool, eos_token_id=eos_id)  # (n, W)
        if isinstance(clip.text_projection, nn.Linear):
            x = clip.text_projection(x)
        elif clip.text_projection is not None:
            x = x @ clip.text_projection  # (n, D)
        return x.float()

    def identity(self) -> dict:
        """A JSON-able description of these towers, stored in checkpoints and feature caches and compared on load.

        ``fingerprint`` hashes every weight of the CLIP model and the image normalisation (see
        :mod:`adds.towers.identity`); it is computed on the first call and cached. A weights file appears by name and
        SHA-256 only (``pretrained`` is the file name), never by an absolute path.
        """
        if self._identity is None:
            settings = f"{self.config.model}|{self.source.get('quick_gelu')}|{self.config.image_size}"
            digest = weights_sha256(self.clip, self.source.get("weights_file"), settings)
            identity = {key: value for key, value in self.source.items() if key not in ("weights_file",)}
            if "file_sha256" in identity:
                identity["pretrained"] = Path(str(self.config.pretrained)).name
            identity.update(
                aligned=self.config.aligned,
                embed_dim=self.embed_dim,
                token_dim=self.token_dim,
                image_size=self.image_size,
                pool=self.pool,
                preprocess=self.preprocess,
                weights_sha256=digest,
                fingerprint_scheme=FINGERPRINT_SCHEME,
                fingerprint=fingerprint(digest, self.preprocess),
            )
            self._identity = identity
        return dict(self._identity)

    def legacy_fingerprint(self) -> str | None:
        """The projection-only fingerprint of checkpoints written before fingerprint scheme 2."""
        return legacy_fingerprint(self.clip)


def load_towers(config: TowerConfig | None = None, device: str | torch.device | None = None) -> Towers:
    """Load frozen CLIP towers described by ``config`` (see :class:`TowerConfig` and :mod:`adds.towers.weights`)."""
    config = config or TowerConfig()
    clip, source = create_clip(config)  # registers the package's model configs, which the tokenizer lookup needs
    towers = Towers(clip, config, source, tokenizer=None)  # refuse unsupported towers before loading a tokenizer
    with hub.hf_text_context(open_clip.get_model_config(config.model) or {}, config.model):
        towers.tokenizer = open_clip.get_tokenizer(config.model)  # a Hugging Face tokenizer for CustomTextCLIP
    if device is not None:
        towers.to(device)
    logger.info("loaded towers %s", {k: v for k, v in source.items()})
    return towers


def meta_towers(model: str, image_size: int | None = None) -> Towers:
    """Weight-less towers on the meta device: shapes and FLOP counts without memory, initialisation or downloads.

    Used by the benchmarks (``torch.utils.flop_counter.FlopCounterMode`` over ``encode_image_tokens``); nothing can
    be computed with them. ``image_size`` forces the tower's input size (e.g. a naive full-resolution ViT).
    """
    register_model_configs()
    kwargs = {} if image_size is None else {"force_image_size": image_size}
    with torch.device("meta"), quiet_random_init():
        clip = open_clip.create_model(model, pretrained=None, device="meta", pretrained_text=False,
                                      pretrained_image=False, **kwargs)
    config = TowerConfig(model=model, pretrained=None, image_size=image_size)
    return Towers(clip, config, {"model": model, "pretrained": None}, tokenizer=None)
