"""Reading a local weights file safely, and checking that it holds the named architecture.

Formats are told apart by content, not by name: a TorchScript archive (an original OpenAI release ``.pt``: a zip
with a ``code/`` folder), safetensors (8-byte header length, then JSON), or a ``torch.save`` file, which is read with
``weights_only=True`` -- nothing but tensors and plain containers is ever unpickled. Anything unreadable (truncated,
garbage, a pickled object) is a :class:`WeightsFileError` with a one-line message naming the file.

:func:`fit_state_dict` applies open_clip's own conversions (those of ``open_clip.load_checkpoint``), then compares
every key and shape with the named model before loading, so a ViT-B-16 file named as ``ViT-B-32-quickgelu`` (or a
336 px file as a 224 px model) is refused with a line describing both instead of running as the wrong tower.
"""

from __future__ import annotations

import math
import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from adds.towers.config import WeightsFileError

__all__ = ["describe_state", "fit_state_dict", "is_torchscript_archive", "read_weights_file"]

#: Non-weight entries of OpenAI's TorchScript state dicts (open_clip drops the same ones).
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


def is_torchscript_archive(path: Path) -> bool:
    """True for an original OpenAI CLIP ``.pt`` file, which is a TorchScript zip archive (it has a ``code/`` dir)."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            return any(name.split("/")[1:2] == ["code"] for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _short(error: BaseException) -> str:
    """The first sentence of an error's first line (torch's zip errors go on with advice about miniz)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return text.split(". ")[0].rstrip(".")[:200]


def _unpickling_detail(error: BaseException) -> str:
    """The informative part of torch's weights-only unpickling error (its first lines suggest ``weights_only=False``,
    which adds never does: that would execute the file's pickle)."""
    for line in str(error).splitlines():
        if "Unsupported operand" in line:
            return f"not a pickle of tensors: {line.strip()[:100]}"
    return "not a pickle of tensors"


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    length = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < length <= size - 8


def read_weights_file(path: Path) -> tuple[str, dict[str, torch.Tensor]]:
    """``(kind, state dict)`` of a weights file; kind is ``"torchscript"``, ``"safetensors"`` or ``"torch"``."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError as error:
        raise WeightsFileError(f"{path}: cannot read the weights file ({error.strerror or error})") from error
    if size == 0:
        raise WeightsFileError(f"{path} is empty, not a weights file")
    if is_torchscript_archive(path):
        try:
            scripted = torch.jit.load(str(path), map_location="cpu")
        except Exception as error:  # torch raises RuntimeError and friends for truncated archives
            raise WeightsFileError(f"{path}: not a readable TorchScript weights file ({_short(error)})") from error
        state = {k: v for k, v in scripted.state_dict().items() if k not in (*OPENAI_EXTRA_KEYS, "attn_mask")}
        return "torchscript", state
    if _looks_like_safetensors(head, size) or path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return "safetensors", load_file(str(path), device="cpu")
        except Exception as error:  # SafetensorError for a truncated header or body
            raise WeightsFileError(f"{path}: not a readable safetensors file, truncated or corrupt "
                                   f"({_short(error)})") from error
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" in str(error) or "GLOBAL " in str(error):  # a pickled object, not garbage bytes
            raise WeightsFileError(
                f"{path} holds Python objects besides tensors, which adds never unpickles: save a plain state dict "
                f"(torch.save(model.state_dict(), ...)) or a .safetensors file"
            ) from error
        raise WeightsFileError(f"{path}: not a readable PyTorch or safetensors weights file, truncated or "
                               f"corrupt ({_unpickling_detail(error)})") from error
    except Exception as error:  # RuntimeError (bad zip), EOFError, ValueError, ... for damaged files
        raise WeightsFileError(f"{path}: not a readable PyTorch or safetensors weights file, truncated or "
                               f"corrupt ({_short(error)})") from error
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not loaded or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise WeightsFileError(f"{path} holds no state dict of tensors (found {type(loaded).__name__})")
    return "torch", loaded


def describe_state(state: dict[str, torch.Tensor]) -> str:
    """A short description of the image tower a state dict holds, e.g. ``ViT (patch 16, width 768, 12 layers, ...)``."""
    keys = state.keys()
    if any(k.startswith("visual.layer1.") for k in keys):
        return "a ResNet image tower"
    if any(k.startswith("visual.trunk.") for k in keys):
        return "a timm image tower"
    conv = state.get("visual.conv1.weight")
    if conv is None or conv.dim() != 4:
        return "no open_clip ViT image tower"
    width, patch = int(conv.shape[0]), int(conv.shape[-1])
    layers = len({k.split(".")[3] for k in keys if k.startswith("visual.transformer.resblocks.")})
    parts = [f"patch {patch}", f"width {width}", f"{layers} layers"]
    pos = state.get("visual.positional_embedding")
    if pos is not None and pos.dim() == 2:
        grid = math.isqrt(int(pos.shape[0]) - 1)
        parts.append(f"{grid * patch} px")
    proj = state.get("visual.proj")
    if proj is not None and proj.dim() == 2:
        parts.append(f"embed {int(proj.shape[1])}")
    return f"ViT ({', '.join(parts)})"


def _open_clip_conversions(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The key conversions of ``open_clip.factory.load_checkpoint`` (3.x), applied to an in-memory state dict."""
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict

    if next(iter(state)).startswith("module."):
        state = {k[len("module."):]: v for k, v in state.items()}
    state = convert_state_dict(model, state)
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    for key in ("logit_scale", "logit_bias"):
        target = getattr(model, key, None)
        if key in state and isinstance(target, torch.Tensor) and target.ndim != state[key].ndim:
            state[key] = state[key].reshape(target.shape)
    if "logit_bias" not in state and getattr(model, "logit_bias", None) is not None and "logit_scale" in state:
        state["logit_bias"] = torch.zeros_like(state["logit_scale"])
    position_ids = "text.transformer.embeddings.position_ids"
    if position_ids in state and position_ids not in model.state_dict():
        del state[position_ids]
    return state


def fit_state_dict(model: nn.Module, state: dict[str, torch.Tensor], path: Path, name: str,
                   resize_positions: bool) -> None:
    """Load ``state`` (from ``path``) into ``model`` (open_clip model ``name``) or refuse it in one line.

    ``resize_positions``: interpolate positional embeddings to the model's grid (only when the input size was
    forced on purpose); otherwise a file of another input size is another tower and is refused.
    """
    from open_clip.model import resize_pos_embed, resize_text_pos_embed

    described = describe_state(state)
    expected = model.state_dict()
    # OpenAI's non-weight entries (a state dict saved from their model or TorchScript file), as open_clip drops them
    state = {k: v for k, v in state.items() if k not in (*OPENAI_EXTRA_KEYS, "attn_mask") or k in expected}
    state = _open_clip_conversions(model, state)
    if resize_positions:
        resize_pos_embed(state, model)
        resize_text_pos_embed(state, model)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        example = (wrong or missing or unexpected)[0]
        raise WeightsFileError(
            f"{path} does not fit open_clip model '{name}': the file holds {described}, '{name}' is "
            f"{describe_state(expected)} ({len(wrong)} tensors of another shape, {len(missing)} missing, "
            f"{len(unexpected)} unexpected, e.g. {example}); name the model the file was trained as"
        )
    model.load_state_dict(state, strict=True)
