"""The ADDS model: frozen towers + Pyramid-Forwarding + DM-decoder + shared classifier (paper Fig. 2).

``ADDS(config)(images, labels)`` returns logits ``(B, k)`` for any list of label strings. The pieces follow the
timm convention:

* :meth:`ADDS.forward_features` -- frozen image side: Pyramid-Forwarding crops through the image tower, tokens of
  all crops of an image concatenated, ``(B, N, token_dim)``. This is what a frozen-feature cache stores.
* :meth:`ADDS.encode_labels` -- frozen text side: cached prompt-ensembled label embeddings ``(k, D)``.
* :meth:`ADDS.forward_head` -- the trainable part: (optional token projection for the unaligned ablation),
  DM-decoder stack (Eq. 5) and the shared ``Linear(D, 1)``.

Checkpoints hold only the trainable part: ``model.safetensors`` (tensors, no pickle) and ``config.json`` (the full
:class:`ADDSConfig` and the identity of the towers it was trained on, see :meth:`Towers.identity`). Loading checks
that the towers match, so a head is never silently run on features from other towers. Tower weights from a local
file are recorded by name and SHA-256, not by path, and found again on load (:mod:`adds.towers.checkpoint`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from adds import __version__
from adds.config import config_from_dict, config_to_dict
from adds.data.images import as_image_batch
from adds.decoder import Decoder, DecoderConfig, SharedClassifier
from adds.prompts import PAPER_TEMPLATES, LabelEmbedder, resolve_templates
from adds.pyramid import PyramidConfig, PyramidForwarding
from adds.towers import TowerConfig, Towers, load_towers
from adds.towers.checkpoint import (
    IDENTITY_KEYS,
    local_tower_config,
    resolve_weights_file,
    tower_differences,
    tower_record,
)

__all__ = ["ADDSConfig", "ADDS", "CheckpointError"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_FORMAT = "adds-checkpoint"
_FORMAT_VERSION = 1
# Tower properties that must agree between a checkpoint and the towers it is loaded onto.
_IDENTITY_KEYS = IDENTITY_KEYS


class CheckpointError(ValueError):
    """A checkpoint is malformed or does not fit the towers / model it is loaded into."""


@dataclass(frozen=True)
class ADDSConfig:
    """Everything that defines an ADDS model.

    Attributes:
        towers: which frozen CLIP towers (``TowerConfig``).
        decoder: the DM-decoder stack (``DecoderConfig``; ``kind="ml"`` for the ML-Decoder baseline).
        pyramid: Pyramid-Forwarding levels and crop disposal (``PyramidConfig``).
        templates: prompt templates for the label embeddings (default: the paper's two).
        token_norm: ``None`` (the paper, and the default) feeds the visual tokens to the decoder as the towers give
            them; a number ``s`` L2-normalises each token and multiplies it by ``s`` first. Eq. 4 argues on
            ``a/|a|`` and ``b/|b|``, while real CLIP patch tokens carry a few high-norm outliers; normalised tokens
            put every token on the label embeddings' scale (``s = 1``) or a chosen one. See docs/architecture.md.
    """

    towers: TowerConfig = field(default_factory=TowerConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    pyramid: PyramidConfig = field(default_factory=PyramidConfig)
    templates: tuple[str, ...] = PAPER_TEMPLATES
    token_norm: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "templates", resolve_templates(self.templates))
        if self.token_norm is not None and not (isinstance(self.token_norm, (int, float)) and self.token_norm > 0):
            raise ValueError(f"token_norm must be None or a positive number, got {self.token_norm!r}")


class ADDS(nn.Module):
    """Aligned Dual moDality ClaSsifier.

    Args:
        config: model description; ``ADDSConfig()`` gives ViT-B-32 (OpenAI weights) with six DM-decoder layers.
        towers: already-loaded towers to use instead of loading ``config.towers`` (they are shared, not copied,
            so several heads can share one set of towers and its label-embedding cache); ``config.towers`` is
            replaced by ``towers.config``.
    """

    def __init__(self, config: ADDSConfig | None = None, towers: Towers | None = None) -> None:
        super().__init__()
        config = config or ADDSConfig()
        if towers is None:
            towers = load_towers(config.towers)
        config = replace(config, towers=towers.config)
        self.config = config
        self.towers = towers
        dim = towers.embed_dim
        self.pyramid = PyramidForwarding(towers.image_size, towers.mean, towers.std, config.pyramid)
        # Unaligned ablation (Tables 6/9): raw-width tokens need a learned map into the decoder's space.
        self.token_proj = nn.Identity() if towers.config.aligned else nn.Linear(towers.visual_width, dim)
        self.decoder = Decoder(dim, config.decoder)
        self.classifier = SharedClassifier(dim)
        self.label_embedder = LabelEmbedder(towers, config.templates)

    # -- the three stages -------------------------------------------------------------------------------------
    def encode_labels(self, labels: Sequence[str]) -> torch.Tensor:
        """Prompt-ensembled, normalised label embeddings ``(k, D)`` (cached per label)."""
        return self.label_embedder(labels)

    @torch.no_grad()
    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` in [0, 1] (also ``(3, H, W)``, uint8, 1-channel) -> tokens ``(B, N, token_dim)``.

        ``N = crops x tokens per crop`` from Pyramid-Forwarding; with the default ``levels=None`` every level the
        input size allows is used (a 224 px image on a 224 px tower is a single crop).
        """
        device = self.classifier.fc.weight.device
        images = as_image_batch(images).to(device)
        return self.pyramid(images, self.towers.encode_image_tokens)

    def forward_head(self, tokens: torch.Tensor, label_embeddings: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, N, token_dim)`` and label embeddings ``(k, D)`` -> logits ``(B, k)`` (the trainable part)."""
        if tokens.dim() != 3 or tokens.shape[-1] != self.towers.token_dim:
            raise ValueError(f"tokens must be (B, N, {self.towers.token_dim}), got {tuple(tokens.shape)}")
        weight = self.classifier.fc.weight
        visual = self.token_proj(tokens.to(weight.dtype))  # (B, N, D)
        if self.config.token_norm is not None:
            visual = self.config.token_norm * nn.functional.normalize(visual, dim=-1)  # (B, N, D), |token| = s
        return self.classifier(self.decoder(label_embeddings.to(weight.dtype), visual))  # (B, k)

    def forward(self, images: torch.Tensor, labels: Sequence[str] | torch.Tensor) -> torch.Tensor:
        """Logits ``(B, k)`` for ``labels`` (strings, or precomputed ``(k, D)`` embeddings) on ``images``.

        Scores are independent sigmoids (``logits.sigmoid()``), not a distribution over labels; with two or more
        DM-decoder layers each label's score also depends on the other labels in the list.
        """
        label_embeddings = labels if isinstance(labels, torch.Tensor) else self.encode_labels(labels)
        return self.forward_head(self.forward_features(images), label_embeddings)

    # -- trainable state and checkpoints ----------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters an optimiser may see (never the towers')."""
        return [param for name, param in self.named_parameters() if not name.startswith("towers.")]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """State of the trainable part only (decoder, classifier, optional token projection)."""
        return {name: value for name, value in self.state_dict().items() if not name.startswith("towers.")}

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (trainable weights only) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {name: tensor.detach().cpu().contiguous() for name, tensor in self.trainable_state_dict().items()}
        save_file(state, str(directory / WEIGHTS_NAME))
        config = config_to_dict(self.config)
        config["towers"], towers = tower_record(self.towers, config["towers"], directory)
        meta = {
            "format": _FORMAT,
            "format_version": _FORMAT_VERSION,
            "adds_version": __version__,
            "config": config,
            "towers": towers,
        }
        (directory / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return directory

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        towers: Towers | None = None,
        tower_weights: str | None = None,
        map_location: str | torch.device = "cpu",
    ) -> ADDS:
        """Load a checkpoint written by :meth:`save_pretrained` -- tensors via safetensors, never unpickling.

        Args:
            directory: the checkpoint directory.
            towers: towers to attach (must match the recorded identity); default: load the recorded towers.
            tower_weights: replacement for the recorded ``pretrained`` tag/file (e.g. the weights file's path on
                this machine); the loaded weights must still match the recorded fingerprint. Without it, a recorded
                weights file is looked for by name and SHA-256 (see :mod:`adds.towers.checkpoint`).
            map_location: device for the trainable weights.
        """
        directory = Path(directory)
        meta = read_checkpoint_config(directory)
        config = config_from_dict(ADDSConfig, meta["config"], where=f" ({directory / CONFIG_NAME})")
        if towers is None:
            if tower_weights is None:
                try:
                    tower_weights = resolve_weights_file(meta["towers"], config.towers.pretrained, directory)
                except FileNotFoundError as error:
                    raise CheckpointError(str(error)) from error
            towers = load_towers(local_tower_config(config.towers, tower_weights))
        _check_towers(meta["towers"], towers, directory)
        model = cls(config, towers=towers)
        weights_path = directory / WEIGHTS_NAME
        if not weights_path.is_file():
            raise CheckpointError(f"{weights_path} is missing")
        try:
            state = load_file(str(weights_path), device=str(map_location))
        except Exception as error:  # safetensors raises its own error types for truncated / corrupt files
            raise CheckpointError(f"{weights_path} is not a readable safetensors file: {error}") from error
        expected = model.trainable_state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong = sorted(name for name in set(expected) & set(state) if expected[name].shape != state[name].shape)
        if missing or unexpected or wrong:
            raise CheckpointError(
                f"{weights_path} does not fit the model described by its config: missing {missing}, "
                f"unexpected {unexpected}, wrong shape {wrong}"
            )
        model.load_state_dict(state, strict=False)
        return model.to(map_location)


def read_checkpoint_config(directory: str | Path) -> dict:
    """Read and validate a checkpoint's ``config.json`` (plain JSON, nothing executed)."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path} not found: is {directory} an ADDS checkpoint directory?")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise CheckpointError(f"{path} is not an ADDS checkpoint config (missing \"format\": \"{_FORMAT}\")")
    if meta.get("format_version") != _FORMAT_VERSION:
        version = meta.get("format_version")
        raise CheckpointError(f"{path} has format_version {version}, this adds reads {_FORMAT_VERSION}")
    for key in ("config", "towers"):
        if not isinstance(meta.get(key), dict):
            raise CheckpointError(f"{path} lacks the '{key}' section")
    return meta


def _check_towers(recorded: dict, towers: Towers, directory: Path) -> None:
    diffs = tower_differences(recorded, towers)
    if diffs:
        raise CheckpointError(
            f"The checkpoint in {directory} was trained on other towers than the ones given: " + "; ".join(diffs)
        )
