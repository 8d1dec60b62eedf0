"""The image preprocessing that belongs to a set of weights (mean/std, interpolation, resize mode).

open_clip attaches a tag's preprocessing to the model when it loads the tag; a weights *file* carries none, and
open_clip then falls back to OpenAI's statistics -- wrong for e.g. the CLIPA family (ImageNet statistics). Here the
preprocessing of file weights is taken from, in order:

1. ``TowerConfig.preprocess_from``: a pretrained tag of the model, a JSON file, or an inline JSON object;
2. an ``open_clip_config.json`` next to the file (what open_clip's hub repositories ship; its ``preprocess_cfg``);
3. an OpenAI TorchScript file: OpenAI's statistics;
4. the preprocessing all of the model's pretrained tags share (e.g. every ``ViT-L-14-CLIPA`` tag);
5. otherwise open_clip's defaults, with a warning naming the tags that disagree when the model has any.

The result is recorded in the towers' identity (so in checkpoints and feature caches) and changes the fingerprint.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import open_clip
from open_clip.transform import PreprocessCfg

__all__ = ["PREPROCESS_KEYS", "default_preprocess", "read_preprocess_json", "resolve_file_preprocess",
           "tag_preprocess", "canonical_preprocess"]

logger = logging.getLogger(__name__)

#: The preprocessing entries recorded and compared (size is the tower's own; mode/fill are constant for CLIP).
PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")
SIDECAR_NAME = "open_clip_config.json"


def canonical_preprocess(cfg: dict) -> dict:
    """The recorded entries of an open_clip preprocess dict, as JSON types (floats rounded to 6 digits)."""
    defaults = default_preprocess()
    out = {}
    for key in PREPROCESS_KEYS:
        value = cfg.get(key, defaults[key])
        out[key] = [round(float(v), 6) for v in value] if key in ("mean", "std") else str(value)
    return out


def default_preprocess() -> dict:
    """open_clip's defaults (OpenAI's statistics, bicubic, shortest-side resize)."""
    cfg = PreprocessCfg()
    return {"mean": list(cfg.mean), "std": list(cfg.std), "interpolation": cfg.interpolation,
            "resize_mode": cfg.resize_mode}


def tag_preprocess(model: str, tag: str) -> dict | None:
    """The preprocessing of pretrained tag ``tag`` of ``model``, or ``None`` if the tag does not exist."""
    cfg = open_clip.get_pretrained_cfg(model, tag)
    return canonical_preprocess(cfg) if cfg else None


def _validate(cfg: dict, where: str) -> dict:
    if not isinstance(cfg, dict):
        raise ValueError(f"{where}: expected a JSON object with mean/std, got {type(cfg).__name__}")
    unknown = sorted(set(cfg) - set(PREPROCESS_KEYS) - {"size", "mode", "fill_color"})
    if unknown:
        raise ValueError(f"{where}: unknown preprocessing key(s) {unknown}; known: {list(PREPROCESS_KEYS)}")
    for key in ("mean", "std"):
        value = cfg.get(key)
        if value is not None and (not isinstance(value, (list, tuple)) or len(value) != 3
                                  or not all(isinstance(v, (int, float)) for v in value)):
            raise ValueError(f"{where}: '{key}' must be a list of 3 numbers, got {value!r}")
    if any(float(v) <= 0 for v in cfg.get("std", [1.0])):
        raise ValueError(f"{where}: 'std' must be positive, got {cfg['std']!r}")
    return canonical_preprocess(cfg)


def read_preprocess_json(data: dict, where: str) -> dict:
    """Preprocessing from an ``open_clip_config.json``-style object (``preprocess_cfg`` inside) or a flat one."""
    if isinstance(data, dict) and "preprocess_cfg" in data:
        data = data["preprocess_cfg"]
    return _validate(data, where)


def _from_spec(spec: str, model: str) -> tuple[dict, str]:
    """``TowerConfig.preprocess_from`` -> (preprocessing, description of where it came from)."""
    text = spec.strip()
    if text.startswith("{"):
        try:
            return read_preprocess_json(json.loads(text), "preprocess_from"), "preprocess_from (inline JSON)"
        except json.JSONDecodeError as error:
            raise ValueError(f"preprocess_from is not valid JSON: {error}") from error
    path = Path(text)
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: not a readable JSON preprocessing file ({error})") from error
        return read_preprocess_json(data, str(path)), f"preprocess_from file {path.name}"
    found = tag_preprocess(model, text)
    if found is None:
        tags = open_clip.list_pretrained_tags_by_model(model)
        raise ValueError(f"preprocess_from '{text}' is neither a JSON file nor a pretrained tag of '{model}' "
                         f"(known tags: {', '.join(tags) or 'none'})")
    return found, f"tag {text}"


def sidecar_config(path: Path) -> tuple[Path, dict] | None:
    """``open_clip_config.json`` next to a weights file, parsed, or ``None`` (unreadable ones raise)."""
    sidecar = path.parent / SIDECAR_NAME
    if not sidecar.is_file():
        return None
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{sidecar}: not readable JSON ({error})") from error
    if not isinstance(data, dict):
        raise ValueError(f"{sidecar}: expected a JSON object")
    return sidecar, data


def resolve_file_preprocess(model: str, spec: str | None, path: Path | None, torchscript: bool) -> tuple[dict, str]:
    """Preprocessing for weights from ``path`` (``None``: random weights) -> (preprocessing, where it came from)."""
    if spec:
        return _from_spec(spec, model)
    if path is not None:
        found = sidecar_config(path)
        if found is not None and "preprocess_cfg" in found[1]:
            return read_preprocess_json(found[1], str(found[0])), f"{SIDECAR_NAME} next to {path.name}"
        if torchscript:
            return canonical_preprocess(open_clip.get_pretrained_cfg("ViT-B-32", "openai")), "OpenAI TorchScript"
    tags = open_clip.list_pretrained_tags_by_model(model)
    distinct: dict[str, list[str]] = {}
    for tag in tags:
        cfg = tag_preprocess(model, tag)
        distinct.setdefault(json.dumps(cfg, sort_keys=True), []).append(tag)
    if len(distinct) == 1:
        (key, shared), = distinct.items()
        return json.loads(key), f"shared by all tags of {model} ({', '.join(shared)})"
    if len(distinct) > 1 and path is not None:
        groups = "; ".join(f"{', '.join(group)}: mean {json.loads(key)['mean']}" for key, group in distinct.items())
        logger.warning(
            "%s carries no preprocessing and the tags of '%s' disagree (%s): using open_clip's default (OpenAI "
            "mean/std). If the file holds one of these tags' weights, set preprocess_from to that tag "
            "(TowerConfig.preprocess_from; towers.preprocess_from in a training config) or put an %s with its "
            "preprocess_cfg next to the file", path, model, groups, SIDECAR_NAME,
        )
    return canonical_preprocess({}), "open_clip default"
