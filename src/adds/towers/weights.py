"""Building the open_clip model of a :class:`TowerConfig`: random weights, a pretrained tag, or a local file.

QuickGELU
---------
OpenAI's weights were trained with QuickGELU; loaded into a GELU model they give silently wrong features.
``quick_gelu=None`` (the default) therefore decides automatically. QuickGELU is used for ``*-quickgelu`` model
names, for tags open_clip marks as QuickGELU (all ``openai`` tags), and for files that are recognisably OpenAI's:

* an OpenAI TorchScript archive (the original release ``.pt``);
* a file whose SHA-256 is one of OpenAI's releases (the hashes in open_clip's download URLs);
* a file inside the Hugging Face cache folder of a QuickGELU tag's repository (``models--timm--...openai``), or next
  to an ``open_clip_config.json`` whose ``model_cfg`` says ``quick_gelu``;
* a state dict with the non-weight entries only OpenAI's checkpoints have (``input_resolution``, ``vocab_size``...).

A plain state dict without such a mark, loaded under a GELU name of an architecture OpenAI released weights for,
cannot be told apart: a warning says so and how to choose (``-quickgelu`` name or ``quick_gelu=True``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from pathlib import Path

import open_clip
import torch
from torch import nn

from adds.towers import hub
from adds.towers.config import (
    TowerConfig,
    WeightsFileError,
    WeightsUnavailableError,
    quiet_random_init,
    register_model_configs,
)
from adds.towers.files import OPENAI_EXTRA_KEYS, fit_state_dict, read_weights_file
from adds.towers.identity import file_sha256
from adds.towers.preprocess import canonical_preprocess, resolve_file_preprocess, sidecar_config
from adds.towers.support import missing_dependency, refusal_reason

__all__ = ["create_clip", "openai_release_hashes"]

logger = logging.getLogger(__name__)

_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


@functools.lru_cache(maxsize=1)
def openai_release_hashes() -> dict[str, str]:
    """SHA-256 of OpenAI's released files -> model name, from the URLs of open_clip's QuickGELU tags."""
    known: dict[str, str] = {}
    for model, tag in open_clip.list_pretrained():
        cfg = open_clip.get_pretrained_cfg(model, tag)
        url = cfg.get("url", "")
        if cfg.get("quick_gelu") and "openaipublic" in url:
            known.setdefault(url.split("/")[-2], model)
    return known


@functools.lru_cache(maxsize=1)
def _quick_gelu_hub_folders() -> dict[str, str]:
    """``models--ORG--NAME`` cache folder names of QuickGELU tags' hub repositories -> ``model/tag``."""
    folders: dict[str, str] = {}
    for model, tag in open_clip.list_pretrained():
        cfg = open_clip.get_pretrained_cfg(model, tag)
        repo = os.path.split(cfg.get("hf_hub", ""))[0]
        if cfg.get("quick_gelu") and repo:
            folders.setdefault("models--" + repo.replace("/", "--"), f"{model}/{tag}")
    return folders


def _has_openai_release(model: str) -> bool:
    return any(open_clip.get_pretrained_cfg(model, tag).get("quick_gelu")
               for tag in open_clip.list_pretrained_tags_by_model(model))


def _openai_evidence(path: Path, sha: str, state: dict, kind: str, sidecar: tuple[Path, dict] | None) -> str | None:
    """Why the file at ``path`` is recognisably OpenAI's (QuickGELU) weights, or ``None``."""
    if kind == "torchscript":
        return "it is an OpenAI TorchScript archive"
    if sha in openai_release_hashes():
        return f"its SHA-256 is that of OpenAI's {openai_release_hashes()[sha]} release"
    if sidecar is not None and isinstance(sidecar[1].get("model_cfg"), dict) and sidecar[1]["model_cfg"].get(
            "quick_gelu"):
        return f"{sidecar[0].name} next to it says quick_gelu"
    for part in Path(os.path.abspath(path)).parts:
        if part in _quick_gelu_hub_folders():
            return f"it lies in the Hugging Face cache of {_quick_gelu_hub_folders()[part]}"
    extra = [key for key in OPENAI_EXTRA_KEYS if key in state]
    if extra:
        return f"it has the entries of an OpenAI checkpoint ({', '.join(extra)})"
    return None


def _decide_file_quick_gelu(config: TowerConfig, path: Path, base: bool, evidence: str | None,
                            sidecar: tuple[Path, dict] | None) -> bool:
    name = config.model
    if config.quick_gelu is not None:
        if evidence and not config.quick_gelu:
            logger.warning("%s looks like OpenAI weights (%s), which need QuickGELU, but quick_gelu=False was asked",
                           path, evidence)
        return config.quick_gelu
    if evidence:
        if not base:
            logger.warning("%s: using QuickGELU although '%s' names a GELU model, because %s", path, name, evidence)
        return True
    says_gelu = sidecar is not None and isinstance(sidecar[1].get("model_cfg"), dict)
    if not base and not says_gelu and _has_openai_release(name):
        logger.warning(
            "WARNING: %s is loaded into '%s' with GELU. If it holds OpenAI's weights (or a fine-tune of them) the "
            "features are silently wrong: those need QuickGELU, i.e. the model name '%s-quickgelu' or "
            "quick_gelu=True. Nothing in the file tells which.", path, name, name,
        )
    return base


def _random_model(name: str, quick_gelu: bool, seed: int, kwargs: dict) -> nn.Module:
    """A randomly initialised model -- all of it: a Hugging Face text tower is built from its config, not fetched
    with its pretrained weights (random towers are random; a weights file overwrites them anyway)."""
    with torch.random.fork_rng(devices=[]), quiet_random_init():
        torch.manual_seed(seed)
        return open_clip.create_model(name, pretrained=None, force_quick_gelu=quick_gelu, pretrained_text=False,
                                      pretrained_image=False, **kwargs)


def _set_preprocess(model: nn.Module, preprocess: dict) -> None:
    cfg = dict(open_clip.get_model_preprocess_cfg(model))
    cfg.update(preprocess)
    open_clip.model.set_model_preprocess_cfg(model, cfg)


def _load_file(config: TowerConfig, path: Path, base_quick_gelu: bool, kwargs: dict, source: dict) -> nn.Module:
    name = config.model
    sha = file_sha256(path)
    kind, state = read_weights_file(path)
    sidecar = sidecar_config(path)
    evidence = _openai_evidence(path, sha, state, kind, sidecar)
    if kind == "torchscript" and config.quick_gelu is False:
        raise ValueError(f"{path} is an OpenAI TorchScript file; its weights need QuickGELU (quick_gelu=False)")
    quick_gelu = _decide_file_quick_gelu(config, path, base_quick_gelu, evidence, sidecar)
    model = _random_model(name, quick_gelu, 0, kwargs)
    fit_state_dict(model, state, path, name, resize_positions=config.image_size is not None)
    preprocess, where = resolve_file_preprocess(name, config.preprocess_from, path, kind == "torchscript")
    _set_preprocess(model, preprocess)
    source.update(file_sha256=sha, weights_file=str(path), quick_gelu=quick_gelu,
                  quick_gelu_reason=evidence, preprocess_source=where)
    return model


def _load_tag(config: TowerConfig, base_quick_gelu: bool, kwargs: dict, source: dict) -> nn.Module:
    name, tag = config.model, config.pretrained
    tag_cfg = open_clip.get_pretrained_cfg(name, tag)
    tag_quick_gelu = bool(tag_cfg.get("quick_gelu", False))
    quick_gelu = (base_quick_gelu or tag_quick_gelu) if config.quick_gelu is None else config.quick_gelu
    if quick_gelu != tag_quick_gelu:
        logger.warning("%s/%s was trained with quick_gelu=%s but quick_gelu=%s was requested",
                       name, tag, tag_quick_gelu, quick_gelu)
    cached = hub.cached_tag_file(tag_cfg, config.cache_dir)
    context: contextlib.AbstractContextManager = contextlib.nullcontext()
    if cached is not None:
        context = hub.hub_offline()  # the file is here: no request at all, not even a revision check
    elif hub.hub_is_offline():
        raise WeightsUnavailableError(hub.offline_help(
            name, tag, config.cache_dir, "HF_HUB_OFFLINE is set and they are not in the local cache"))
    else:
        host, port = hub.tag_host(tag_cfg)
        if not hub.host_reachable(host, port):
            raise WeightsUnavailableError(hub.offline_help(
                name, tag, config.cache_dir, f"{host} is unreachable and they are not in the local cache"))
    try:
        with context:
            model = open_clip.create_model(name, pretrained=tag, force_quick_gelu=quick_gelu, **kwargs)
    except Exception as error:  # network / cache failures surface as many exception types inside open_clip
        raise WeightsUnavailableError(hub.offline_help(name, tag, config.cache_dir)) from error
    where = f"tag {tag}"
    if config.preprocess_from:
        preprocess, where = resolve_file_preprocess(name, config.preprocess_from, None, False)
        _set_preprocess(model, preprocess)
    weights_file = cached or hub.cached_tag_file(tag_cfg, config.cache_dir)
    source.update(quick_gelu=quick_gelu, preprocess_source=where, weights_file=weights_file)
    return model


def create_clip(config: TowerConfig) -> tuple[nn.Module, dict]:
    """Build the open_clip model for ``config``; returns it and a dict saying where the weights came from."""
    register_model_configs()
    name = config.model
    model_cfg = open_clip.get_model_config(name)
    if model_cfg is None:
        known = ", ".join(open_clip.list_models())
        raise ValueError(f"Unknown open_clip model '{name}'. Known models include: {known}")
    reason = refusal_reason(model_cfg) or missing_dependency(model_cfg)
    if reason:  # before any download: a SigLIP or ResNet tag would otherwise be fetched only to be refused
        raise ValueError(f"'{name}' {reason}")
    base_quick_gelu = bool(model_cfg.get("quick_gelu", False))
    source: dict = {"model": name, "pretrained": config.pretrained}
    kwargs: dict = {}
    if config.image_size is not None:
        kwargs["force_image_size"] = config.image_size
    if config.cache_dir is not None:
        kwargs["cache_dir"] = config.cache_dir
    with hub.hf_text_context(model_cfg, name):
        model = _create(config, model_cfg, base_quick_gelu, kwargs, source)
    source["preprocess"] = canonical_preprocess(open_clip.get_model_preprocess_cfg(model))
    return model, source


def _create(config: TowerConfig, model_cfg: dict, base_quick_gelu: bool, kwargs: dict, source: dict) -> nn.Module:
    name = config.model
    pretrained = config.pretrained
    if pretrained is None:
        quick_gelu = base_quick_gelu if config.quick_gelu is None else config.quick_gelu
        model = _random_model(name, quick_gelu, config.seed, kwargs)
        preprocess, where = resolve_file_preprocess(name, config.preprocess_from, None, False)
        _set_preprocess(model, preprocess)
        source.update(seed=config.seed, quick_gelu=quick_gelu, preprocess_source=where)
    elif os.path.isfile(pretrained):
        model = _load_file(config, Path(pretrained), base_quick_gelu, kwargs, source)
    elif open_clip.get_pretrained_cfg(name, pretrained):
        model = _load_tag(config, base_quick_gelu, kwargs, source)
    elif os.path.exists(pretrained):
        raise WeightsFileError(f"{pretrained} is not a file (a weights file or a pretrained tag of '{name}' is needed)")
    elif pretrained.endswith(_WEIGHT_SUFFIXES) or os.sep in pretrained:
        raise WeightsFileError(f"weights file {pretrained} not found")
    else:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise ValueError(
            f"'{pretrained}' is neither an existing file nor a pretrained tag of '{name}' "
            f"(known tags: {', '.join(tags) or 'none'})"
        )
    return model
