"""Frozen CLIP image and text towers (paper: "Visual-Textual Embedding Alignment").

ADDS keeps both CLIP towers frozen "to maintain the alignment" between visual and textual embeddings (Eq. 3).
This module loads any `open_clip <https://github.com/mlfoundations/open_clip>`_ model and exposes the two things
the rest of the library needs:

* :meth:`Towers.encode_image_tokens` -- per-token visual embeddings **in the joint image-text space**,
  ``(N, T, D)``: the class token and every patch token after ``ln_post``, multiplied by the visual projection.
  The projected class token is exactly open_clip's ``encode_image`` output; projecting the patch tokens with the
  same matrix puts every token in the space where the label embeddings live -- the alignment the paper relies on.
  With ``TowerConfig(aligned=False)`` the tokens are returned at the tower's raw width instead (for the alignment
  ablation, Tables 6 and 9: the model then learns its own linear map).
* :meth:`Towers.encode_text` -- pooled, projected text embeddings for a list of prompts.

Towers never train: they are put in eval mode, their parameters have ``requires_grad=False``, ``train()`` cannot
switch them back, and every forward runs under ``torch.no_grad()``.

Weights
-------
``TowerConfig.pretrained`` is an open_clip tag (``"openai"``, ``"laion2b_s34b_b79k"``, ...), a local file
(state dict ``.pt``/``.bin``, ``.safetensors``, or an original OpenAI TorchScript ``.pt``), or ``None`` for random
weights (tests, the toy world). OpenAI weights were trained with QuickGELU; loading them into a GELU model gives
silently wrong features. ``quick_gelu=None`` (the default) therefore decides automatically: on for ``*-quickgelu``
model names, for tags that open_clip marks as QuickGELU (all ``openai`` tags) and for OpenAI TorchScript files.
For an OpenAI state dict saved as a plain file, use a ``-quickgelu`` model name or ``quick_gelu=True``.

Offline, a tag that is not in the local cache raises :class:`WeightsUnavailableError`, whose message says how to
place the weights locally.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from torch import nn

__all__ = ["TowerConfig", "Towers", "WeightsUnavailableError", "load_towers", "meta_towers", "TINY_MODEL"]

logger = logging.getLogger(__name__)

#: Name of the tiny open_clip config shipped for tests and demos (2 layers, width 64, 32 px, joint dim 32).
TINY_MODEL = "adds-tiny-vit"

_MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
_registered = False


def _register_model_configs() -> None:
    """Make the package's own open_clip configs (``adds-tiny-vit``...) known to open_clip's registry."""
    global _registered
    if not _registered:
        open_clip.add_model_config(_MODEL_CONFIG_DIR)
        _registered = True


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be obtained (typically: no network and nothing in the local cache)."""


@dataclass(frozen=True)
class TowerConfig:
    """Which CLIP towers to load.

    Attributes:
        model: open_clip model name, e.g. ``"ViT-B-32-quickgelu"``, ``"ViT-L-14-336-quickgelu"``, ``"adds-tiny-vit"``.
        pretrained: open_clip pretrained tag, path to a local weights file, or ``None`` for random weights.
        quick_gelu: force QuickGELU on/off; ``None`` decides from the model name, the tag or the file (see module doc).
        aligned: return visual tokens in the joint space (``True``, ADDS) or at the raw tower width (ablation).
        cache_dir: where open_clip / Hugging Face downloads go; ``None`` uses their defaults.
        image_size: override the tower's input size (only sensible for random weights).
        seed: seed for random initialisation when ``pretrained is None``, so random towers are reproducible.
    """

    model: str = "ViT-B-32-quickgelu"
    pretrained: str | None = "openai"
    quick_gelu: bool | None = None
    aligned: bool = True
    cache_dir: str | None = None
    image_size: int | None = None
    seed: int = 0


def _is_torchscript_archive(path: Path) -> bool:
    """True for an original OpenAI CLIP ``.pt`` file, which is a TorchScript zip archive (it has a ``code/`` dir)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/")[1:2] == ["code"] for name in archive.namelist())


def _offline_help(model: str, tag: str, cache_dir: str | None) -> str:
    hf_cache = cache_dir or os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub"
    )
    return (
        f"Could not obtain pretrained weights '{tag}' for open_clip model '{model}'. If this machine is offline, "
        f"fetch them on a connected machine, e.g.\n"
        f"    python -c \"import open_clip; open_clip.create_model('{model}', pretrained='{tag}')\"\n"
        f"then either copy that machine's Hugging Face cache into {hf_cache} (or point HF_HOME / --cache-dir at a "
        f"copy), or pass the weights file itself: --pretrained /path/to/open_clip_model.safetensors "
        f"(a .bin/.pt state dict or an original OpenAI TorchScript .pt works too)."
    )


def _file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _quiet_random_init():
    """Drop open_clip's root-logger warning that a model was "initialized randomly": here that is what was asked."""

    def keep(record: logging.LogRecord) -> bool:
        return "Model initialized randomly" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _create_clip(config: TowerConfig) -> tuple[nn.Module, dict]:
    """Build the open_clip model for ``config``; returns it and a dict saying where the weights came from."""
    _register_model_configs()
    name = config.model
    if open_clip.get_model_config(name) is None:
        known = ", ".join(open_clip.list_models())
        raise ValueError(f"Unknown open_clip model '{name}'. Known models include: {known}")
    base_quick_gelu = bool(open_clip.get_model_config(name).get("quick_gelu", False))
    source: dict = {"model": name, "pretrained": config.pretrained}
    kwargs: dict = {}
    if config.image_size is not None:
        kwargs["force_image_size"] = config.image_size
    if config.cache_dir is not None:
        kwargs["cache_dir"] = config.cache_dir

    if config.pretrained is None:
        quick_gelu = base_quick_gelu if config.quick_gelu is None else config.quick_gelu
        with torch.random.fork_rng(devices=[]), _quiet_random_init():
            torch.manual_seed(config.seed)
            model = open_clip.create_model(name, pretrained=None, force_quick_gelu=quick_gelu, **kwargs)
        source.update(seed=config.seed)
    elif os.path.isfile(config.pretrained):
        path = Path(config.pretrained)
        source.update(file_sha256=_file_sha256(path))
        if _is_torchscript_archive(path):
            # Original OpenAI release: a TorchScript archive. open_clip rebuilds a plain module from its state dict;
            # that builder always uses QuickGELU, which is what these weights were trained with.
            if config.quick_gelu is False:
                raise ValueError(f"{path} is an OpenAI TorchScript file; its weights need QuickGELU (quick_gelu=False)")
            jit_model = torch.jit.load(str(path), map_location="cpu")
            state = {k: v for k, v in jit_model.state_dict().items() if k != "attn_mask"}  # buffer, not a weight
            model = open_clip.model.build_model_from_openai_state_dict(state)
            model.float()
            model.visual.image_mean = open_clip.OPENAI_DATASET_MEAN
            model.visual.image_std = open_clip.OPENAI_DATASET_STD
            quick_gelu = True
        else:
            quick_gelu = base_quick_gelu if config.quick_gelu is None else config.quick_gelu
            try:
                model = open_clip.create_model(
                    name, pretrained=str(path), force_quick_gelu=quick_gelu, weights_only=True, **kwargs
                )
            except RuntimeError as error:  # missing / unexpected keys: the file does not fit the named model
                raise ValueError(f"Weights file {path} does not match open_clip model '{name}': {error}") from error
    else:
        tag_cfg = open_clip.get_pretrained_cfg(name, config.pretrained)
        if not tag_cfg:
            tags = open_clip.list_pretrained_tags_by_model(name)
            raise ValueError(
                f"'{config.pretrained}' is neither an existing file nor a pretrained tag of '{name}' "
                f"(known tags: {', '.join(tags) or 'none'})"
            )
        tag_quick_gelu = bool(tag_cfg.get("quick_gelu", False))
        quick_gelu = (base_quick_gelu or tag_quick_gelu) if config.quick_gelu is None else config.quick_gelu
        if quick_gelu != tag_quick_gelu:
            logger.warning("%s/%s was trained with quick_gelu=%s but quick_gelu=%s was requested",
                           name, config.pretrained, tag_quick_gelu, quick_gelu)
        try:
            model = open_clip.create_model(name, pretrained=config.pretrained, force_quick_gelu=quick_gelu, **kwargs)
        except Exception as error:  # network / cache failures surface as many exception types inside open_clip
            raise WeightsUnavailableError(_offline_help(name, config.pretrained, config.cache_dir)) from error
    source.update(quick_gelu=quick_gelu)
    return model, source


class Towers(nn.Module):
    """Frozen CLIP image and text towers with the token-level image output ADDS needs.

    Build with :func:`load_towers`. Shapes: ``N`` images (or crops), ``T`` tokens per image (1 class token + the
    patch grid), ``D`` the joint embedding size (``embed_dim``), ``W`` the raw visual width.
    """

    def __init__(self, clip: nn.Module, config: TowerConfig, source: dict, tokenizer) -> None:
        super().__init__()
        visual = getattr(clip, "visual", None)
        if not isinstance(visual, open_clip.transformer.VisionTransformer) or visual.attn_pool is not None:
            raise ValueError(
                f"ADDS needs a ViT image tower with a class token; '{config.model}' has "
                f"{type(visual).__name__} (ResNet, timm and attention-pooled towers are not supported)"
            )
        if visual.proj is None:
            raise ValueError(f"'{config.model}' has no visual projection, so its tokens cannot be aligned")
        self.config = config
        self.source = source
        self.clip = clip
        self.tokenizer = tokenizer
        self.text_cache: dict[tuple[tuple[str, ...], str], torch.Tensor] = {}  # (templates, label) -> (D,), see prompts
        for param in self.clip.parameters():
            param.requires_grad_(False)
        self.clip.eval()
        size = visual.image_size
        self.image_size: int = int(size[0] if isinstance(size, (tuple, list)) else size)
        if isinstance(size, (tuple, list)) and size[0] != size[1]:
            raise ValueError(f"Pyramid-Forwarding needs a square tower input, '{config.model}' has {tuple(size)}")
        preprocess = open_clip.get_model_preprocess_cfg(clip)
        self.mean: tuple[float, ...] = tuple(preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN))
        self.std: tuple[float, ...] = tuple(preprocess.get("std", open_clip.OPENAI_DATASET_STD))
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

        Token 0 is the class token. All tokens pass ``ln_post``; when aligned they are multiplied by the visual
        projection, so token 0 equals ``clip.encode_image(pixels)`` (before normalisation).
        """
        visual = self.clip.visual
        out = visual.forward_intermediates(
            pixels, indices=1, normalize_intermediates=True, intermediates_only=True,
            output_fmt="NLC", output_extra_tokens=True,
        )
        tokens = torch.cat([out["image_intermediates_prefix"][-1], out["image_intermediates"][-1]], dim=1)  # (N,T,W)
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
        ``docs/performance.md``). Towers without a causal mask or end-of-text pooling use ``encode_text`` as is.
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
        """A JSON-able description of these towers, stored in checkpoints and compared on load.

        ``fingerprint`` hashes the two projection matrices, so towers with the same name but other weights
        (another tag, file or random seed) are told apart.
        """
        digest = hashlib.sha256()
        for tensor in (self.clip.visual.proj, self.clip.text_projection):
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        return {
            **self.source,
            "aligned": self.config.aligned,
            "embed_dim": self.embed_dim,
            "token_dim": self.token_dim,
            "image_size": self.image_size,
            "fingerprint": digest.hexdigest()[:16],
        }


def load_towers(config: TowerConfig | None = None, device: str | torch.device | None = None) -> Towers:
    """Load frozen CLIP towers described by ``config`` (see :class:`TowerConfig` and the module docstring)."""
    config = config or TowerConfig()
    clip, source = _create_clip(config)  # registers the package's model configs, which the tokenizer lookup needs
    tokenizer = open_clip.get_tokenizer(config.model)
    towers = Towers(clip, config, source, tokenizer)
    if device is not None:
        towers.to(device)
    logger.info("loaded towers %s", {k: v for k, v in source.items()})
    return towers


def meta_towers(model: str, image_size: int | None = None) -> Towers:
    """Weight-less towers on the meta device: shapes and FLOP counts without memory, initialisation or downloads.

    Used by the benchmarks (``torch.utils.flop_counter.FlopCounterMode`` over ``encode_image_tokens``); nothing can
    be computed with them. ``image_size`` forces the tower's input size (e.g. a naive full-resolution ViT).
    """
    _register_model_configs()
    kwargs = {} if image_size is None else {"force_image_size": image_size}
    with torch.device("meta"), _quiet_random_init():
        clip = open_clip.create_model(model, pretrained=None, device="meta", **kwargs)
    config = TowerConfig(model=model, pretrained=None, image_size=image_size)
    return Towers(clip, config, {"model": model, "pretrained": None}, tokenizer=None)
