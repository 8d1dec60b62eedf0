"""Frozen CLIP image and text towers (paper: "Visual-Textual Embedding Alignment").

ADDS keeps both CLIP towers frozen "to maintain the alignment" between visual and textual embeddings (Eq. 3).
This package loads any `open_clip <https://github.com/mlfoundations/open_clip>`_ ViT model -- class-token or
average-pooled image towers, with the built-in text tower or a Hugging Face one (``CustomTextCLIP``: xlm-roberta,
mt5, nllb, roberta, i.e. multilingual labels) -- and exposes the two things the rest of the library needs:

* :meth:`Towers.encode_image_tokens` -- per-token visual embeddings **in the joint image-text space**,
  ``(N, T, D)``: the global image embedding (token 0, exactly open_clip's ``encode_image``) and every patch token
  after ``ln_post``, multiplied by the visual projection, so every token lives in the space of the label
  embeddings -- the alignment the paper relies on. With ``TowerConfig(aligned=False)`` the tokens are returned at
  the tower's raw width instead (for the alignment ablation, Tables 6 and 9).
* :meth:`Towers.encode_text` -- pooled, projected text embeddings for a list of prompts.

Towers never train: they are put in eval mode, their parameters have ``requires_grad=False``, ``train()`` cannot
switch them back, and every forward runs under ``torch.no_grad()``.

Modules: :mod:`~adds.towers.config` (what to load, errors), :mod:`~adds.towers.weights` (tags, files, QuickGELU),
:mod:`~adds.towers.files` (reading and checking weights files), :mod:`~adds.towers.hub` (offline in seconds),
:mod:`~adds.towers.preprocess` (the normalisation that belongs to the weights), :mod:`~adds.towers.identity`
(fingerprints over all weights), :mod:`~adds.towers.support` (which towers are supported, refused and why,
decided before any download), :mod:`~adds.towers.core` (the :class:`Towers` module),
:mod:`~adds.towers.checkpoint` (portable references to weights files in checkpoints).

``TowerConfig.pretrained`` is an open_clip tag (``"openai"``, ``"laion2b_s34b_b79k"``, ...), a local file
(state dict ``.pt``/``.bin``, ``.safetensors``, or an original OpenAI TorchScript ``.pt``), or ``None`` for random
weights (tests, the toy world). Offline, a tag that is not in the local cache raises
:class:`WeightsUnavailableError` within seconds, whose message says how to place the weights locally.
"""

from adds.towers.config import (
    TINY_MODEL,
    TowerConfig,
    WeightsFileError,
    WeightsUnavailableError,
    register_model_configs,
)
from adds.towers.core import Towers, load_towers, meta_towers
from adds.towers.files import is_torchscript_archive
from adds.towers.identity import file_sha256

# Names kept for existing importers (the toy world, tests).
_register_model_configs = register_model_configs
_is_torchscript_archive = is_torchscript_archive
_file_sha256 = file_sha256

__all__ = ["TINY_MODEL", "TowerConfig", "Towers", "WeightsFileError", "WeightsUnavailableError", "load_towers",
           "meta_towers", "register_model_configs"]
