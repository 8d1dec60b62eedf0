"""ONNX export of the image path plus head, with the label embeddings as an *input* (issue 12.7).

The exported graph is ``(images, label_embeddings) -> (logits, scores)``:

* ``images`` ``(B, 3, s, s)`` float32 in ``[0, 1]`` (RGB, not normalised), already squash-resized to the export's
  input size ``s`` -- exactly what :class:`~adds.tagger.Tagger` feeds the model (``adds tag`` squashes every image
  to the head's input size first, :mod:`adds.tagger.plan`). The batch ``B`` is dynamic.
* ``label_embeddings`` ``(k, D)`` float32: prompt-ensembled, normalised label embeddings
  (:meth:`ADDS.encode_labels`, or a ``.npy`` written by ``adds export --labels``). ``k`` is dynamic, so the
  vocabulary stays open after export: any word whose embedding is computed with the same towers and templates can
  be scored, nothing about the labels is baked into the file.
* ``logits`` / ``scores`` ``(B, k)``: the head's logits and their sigmoids (independent per label).

Inside the graph: Pyramid-Forwarding ("Pyramid-Forwarding" section, Fig. 4; the crop geometry is fixed by ``s``
and the levels at export time) cuts every image into its ``n`` crops, all ``B * n`` crops go through the image
tower as **one batch** (:meth:`Towers.encode_image_tokens`), the crops' tokens are concatenated per image, and the
DM-decoder (Eq. 5) and the shared classifier score every label.

Two things are rewritten for tracing, with the same numbers (tested against PyTorch):

* The pyramid's bicubic (anti-aliased) resize of a level has no ONNX counterpart in the TorchScript exporter
  (``aten::_upsample_bicubic2d_aa``). For a fixed input size it is a linear map per axis, so it is exported as
  two ``MatMul`` with resize matrices taken from PyTorch's own ``interpolate`` applied to unit images (hence the
  same weights), followed by the same clamp to ``[0, 1]``.
* The decoder runs its plain ``forward`` formulas (Eq. 5) rather than the blocked inference path of
  :meth:`Decoder.forward` (Python loops over blocks, which a trace would freeze to the example's shapes).

The training-free CLIP baseline (:class:`~adds.tagger.CLIPBaseline`) exports the same way: its crops and the maximum
over them, CLIP's logit scale and the label-free reference are constants of the graph.

ONNX needs the ``export`` extra (``pip install 'adds[export]'``: onnx and onnxruntime); :func:`require_onnx` names
what is missing. The exporter is PyTorch's TorchScript-based ``torch.onnx.export(dynamo=False)``, which needs no
``onnxscript``.
"""

from __future__ import annotations

import importlib
import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adds.model import ADDS
from adds.pyramid import Level, PyramidConfig, PyramidForwarding, plan
from adds.tagger.baseline import CLIPBaseline, pooled_logits

__all__ = [
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "ExportConfig",
    "ExportDependencyError",
    "ExportResult",
    "ExportableADDS",
    "ExportableBaseline",
    "export_onnx",
    "exportable",
    "require_onnx",
    "resize_matrix",
    "eager_logits",
    "verify_onnx",
]

INPUT_NAMES = ("images", "label_embeddings")
OUTPUT_NAMES = ("logits", "scores")
_FORMAT = "adds-onnx"
_FORMAT_VERSION = 1


class ExportDependencyError(ImportError):
    """onnx or onnxruntime is not installed (the ``export`` extra)."""


def require_onnx(*modules: str) -> None:
    """Raise :class:`ExportDependencyError` naming the missing packages among ``modules`` (default: both)."""
    wanted = modules or ("onnx", "onnxruntime")
    missing = []
    for name in wanted:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportDependencyError(
            f"ONNX export needs {' and '.join(wanted)}; missing: {', '.join(missing)} "
            f"(install them with: pip install 'adds[export]')"
        )


@dataclass(frozen=True)
class ExportConfig:
    """How to export.

    Attributes:
        input_size: side ``s`` of the square images the graph takes; ``None`` = the tower's size ``S`` (one crop
            with ``levels=None``). ``adds export`` defaults to the head's trained size (``training.json``).
        levels: Pyramid-Forwarding levels (Table 7); ``None`` = the model's ``PyramidConfig.levels``, else every
            level ``s`` allows. Fixed in the graph. The CLIP baseline: ``None`` = its own levels (0 and 1 by
            default, one view with ``pooling="view"``), and ``input_size=None`` = ``S * 2^max(levels)``.
        opset: ONNX opset version.
        verify: after writing, compare onnxruntime with PyTorch eager on random inputs (:func:`verify_onnx`).
        tolerance: the largest max-abs logit difference ``verify`` accepts (fp32).
        verify_batches / verify_labels: the batch sizes and label counts ``verify`` tries (all pairs), which also
            checks that both axes are dynamic.
    """

    input_size: int | None = None
    levels: tuple[int, ...] | None = None
    opset: int = 17
    verify: bool = True
    tolerance: float = 1e-4
    verify_batches: tuple[int, ...] = (1, 3)
    verify_labels: tuple[int, ...] = (1, 7)

    def __post_init__(self) -> None:
        if self.input_size is not None and (isinstance(self.input_size, bool) or not isinstance(self.input_size, int)
                                            or self.input_size < 1):
            raise ValueError(f"input_size must be None or a positive int, got {self.input_size!r}")
        if self.levels is not None:
            object.__setattr__(self, "levels", PyramidConfig(levels=tuple(self.levels)).levels)
        if not self.tolerance > 0:
            raise ValueError(f"tolerance must be > 0, got {self.tolerance!r}")
        if not self.verify_batches or not self.verify_labels or min(*self.verify_batches, *self.verify_labels) < 1:
            raise ValueError("verify_batches and verify_labels must be non-empty positive sizes")


def resize_matrix(in_size: int, out_size: int, antialias: bool = True) -> Tensor:
    """The 1-D bicubic resize ``in_size -> out_size`` as a matrix ``(out_size, in_size)``.

    It is PyTorch's ``interpolate`` (bicubic, ``align_corners=False``, as in :class:`~adds.pyramid.PyramidForwarding`)
    of the ``in_size x in_size`` identity image to ``out_size x in_size`` (the second axis keeps its size, which
    the kernel leaves unchanged), computed in float64. The resize is separable, so ``R_h @ image @ R_w.T`` is the
    2-D resize up to float rounding (tested: <= 3e-7 in float32).
    """
    eye = torch.eye(in_size, dtype=torch.float64).view(1, 1, in_size, in_size)  # (1, 1, in, in)
    out = F.interpolate(eye, size=(out_size, in_size), mode="bicubic", antialias=antialias, align_corners=False)
    return out[0, 0].float().contiguous()  # (out, in)


class _PyramidCrops(nn.Module):
    """Traceable Pyramid-Forwarding crops for a fixed ``s x s`` input: ``(B, 3, s, s)`` -> ``(B * n, 3, S, S)``.

    Same geometry and numbers as :meth:`PyramidForwarding.crops` in eval mode (no random disposal): each level is
    resized with :func:`resize_matrix` (or kept when its size equals ``s``), clamped to ``[0, 1]``, cut into its
    crops, and every crop is normalised with the tower's mean and std.
    """

    def __init__(self, pyramid: PyramidForwarding, input_size: int) -> None:
        super().__init__()
        self.base_size = pyramid.base_size
        self.input_size = input_size
        self.levels: list[Level] = pyramid.plan(input_size, input_size)
        antialias = pyramid.config.antialias
        self.register_buffer("mean", pyramid.mean.clone().view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("std", pyramid.std.clone().view(1, 1, 3, 1, 1), persistent=False)
        self.resizes = nn.ParameterList()  # per level: (h_i, s) matrices, or an empty tensor for "no resize"
        for level in self.levels:
            same = (level.height, level.width) == (input_size, input_size)
            rows = torch.empty(0) if same else resize_matrix(input_size, level.height, antialias)  # (h_i, s)
            cols = torch.empty(0) if same else resize_matrix(input_size, level.width, antialias)  # (w_i, s)
            self.resizes.append(nn.Parameter(rows, requires_grad=False))
            self.resizes.append(nn.Parameter(cols.t().contiguous(), requires_grad=False))  # (s, w_i)

    @property
    def num_crops(self) -> int:
        return sum(len(level.crops) for level in self.levels)

    def forward(self, images: Tensor) -> Tensor:
        size = self.base_size
        pieces: list[Tensor] = []
        for index, level in enumerate(self.levels):
            rows, cols = self.resizes[2 * index], self.resizes[2 * index + 1]
            resized = images if rows.numel() == 0 else (rows @ images @ cols).clamp(0.0, 1.0)  # (B, 3, h_i, w_i)
            pieces.extend(resized[:, :, c.top : c.top + size, c.left : c.left + size] for c in level.crops)
        crops = torch.stack(pieces, dim=1)  # (B, n, 3, S, S)
        crops = (crops - self.mean) / self.std  # (B, n, 3, S, S)
        return crops.reshape(-1, 3, size, size)  # (B * n, 3, S, S), image-major


class ExportableADDS(nn.Module):
    """An :class:`ADDS` model as one traceable graph: ``(images (B, 3, s, s), label_embeddings (k, D))`` ->
    ``(logits, scores)`` each ``(B, k)``. Shares the model's weights (nothing is copied)."""

    def __init__(self, model: ADDS, input_size: int | None = None, levels: Sequence[int] | None = None) -> None:
        super().__init__()
        towers = model.towers
        size = input_size or towers.image_size
        chosen = tuple(levels) if levels is not None else model.config.pyramid.levels
        pyramid = PyramidForwarding(towers.image_size, towers.mean, towers.std,
                                    PyramidConfig(levels=chosen, antialias=model.config.pyramid.antialias))
        plan(size, size, towers.image_size, chosen)  # ValueError naming the size when the levels do not fit
        self.model = model
        self.crops = _PyramidCrops(pyramid, size)
        self.input_size = size

    @property
    def levels(self) -> tuple[int, ...]:
        return tuple(level.index for level in self.crops.levels)

    def forward(self, images: Tensor, label_embeddings: Tensor) -> tuple[Tensor, Tensor]:
        model = self.model
        batch = images.shape[0]
        crops = self.crops(images)  # (B * n, 3, S, S)
        tokens = model.towers.encode_image_tokens(crops)  # (B * n, T, token_dim): all crops as one batch
        tokens = tokens.reshape(batch, -1, tokens.shape[-1])  # (B, n * T, token_dim)
        visual = model.token_proj(tokens)  # (B, n * T, D)
        if model.config.token_norm is not None:
            visual = model.config.token_norm * F.normalize(visual, dim=-1)  # (B, n * T, D)
        queries = label_embeddings.unsqueeze(0).expand(batch, -1, -1)  # (B, k, D)
        for layer in model.decoder.layers:  # Eq. 5, the plain formulas (see the module docstring)
            queries, visual = layer(queries, visual)
        logits = model.classifier(queries)  # (B, k)
        return logits, torch.sigmoid(logits)


class ExportableBaseline(nn.Module):
    """The training-free :class:`CLIPBaseline` as one graph: its crops (the baseline's levels, or ``levels``), the
    maximum over them (:func:`~adds.tagger.baseline.pooled_logits`), CLIP's logit scale and the label-free
    reference as constants."""

    def __init__(self, baseline: CLIPBaseline, input_size: int | None = None,
                 levels: Sequence[int] | None = None) -> None:
        super().__init__()
        towers = baseline.towers
        if baseline.config.pooling == "view" and levels is not None and tuple(levels) != (0,):
            raise ValueError(f"the CLIP baseline with pooling 'view' exports the level-0 view only, got levels "
                             f"{tuple(levels)}")
        chosen = tuple(levels) if levels is not None else baseline.levels
        size = input_size or (towers.image_size << max(chosen))
        pyramid = PyramidForwarding(towers.image_size, towers.mean, towers.std, PyramidConfig(levels=chosen))
        plan(size, size, towers.image_size, chosen)  # ValueError naming the size when the levels do not fit
        self.model = baseline
        self.crops = _PyramidCrops(pyramid, size)
        self.input_size = size
        reference = baseline.reference_term()
        self.blank = None if isinstance(reference, Tensor) else float(reference)
        vector = reference.detach().float().clone() if isinstance(reference, Tensor) else torch.empty(0)
        self.register_buffer("reference", vector, persistent=False)  # (D,), or empty with the blank constant
        self.logit_scale = float(baseline.logit_scale)

    @property
    def levels(self) -> tuple[int, ...]:
        return tuple(level.index for level in self.crops.levels)

    def forward(self, images: Tensor, label_embeddings: Tensor) -> tuple[Tensor, Tensor]:
        batch = images.shape[0]
        crops = self.crops(images)  # (B * n, 3, S, S)
        pooled = self.model.towers.encode_image_tokens(crops)[:, 0]  # (B * n, D)
        features = F.normalize(pooled, dim=-1).reshape(batch, -1, pooled.shape[-1])  # (B, n, D)
        reference = self.blank if self.blank is not None else self.reference
        logits = pooled_logits(features, label_embeddings, reference, self.logit_scale,
                               self.model.config.pooling)  # (B, k)
        return logits, torch.sigmoid(logits)


def exportable(model: ADDS | CLIPBaseline, config: ExportConfig | None = None) -> ExportableADDS | ExportableBaseline:
    """The traceable wrapper of ``model`` for ``config`` (eval mode, on the CPU)."""
    config = config or ExportConfig()
    if isinstance(model, ADDS):
        wrapped: nn.Module = ExportableADDS(model, config.input_size, config.levels)
    elif isinstance(model, CLIPBaseline):
        wrapped = ExportableBaseline(model, config.input_size, config.levels)
    else:
        raise TypeError(f"model must be an ADDS model or a CLIPBaseline, got {type(model).__name__}")
    return wrapped.eval()


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote and measured.

    Attributes:
        path / metadata_path: the ``.onnx`` file and its ``.json`` sidecar (:meth:`metadata`).
        kind: ``"head"`` (ADDS) or ``"baseline"`` (training-free CLIP).
        input_size / levels / crops: the fixed input plan (images ``(B, 3, input_size, input_size)``).
        embed_dim: ``D`` of the label-embedding input.
        max_abs_diff: the largest logit difference onnxruntime vs PyTorch over the verification inputs
            (``None`` without verification).
        seconds: export (and verification) time.
    """

    path: Path
    metadata_path: Path
    kind: str
    input_size: int
    levels: tuple[int, ...]
    crops: int
    embed_dim: int
    max_abs_diff: float | None
    seconds: float


def _metadata(model: ADDS | CLIPBaseline, wrapped: nn.Module, config: ExportConfig, result: dict) -> dict:
    towers = model.towers
    identity = towers.identity()
    templates = model.config.templates if isinstance(model, ADDS) else model.templates
    return {
        "format": _FORMAT,
        "format_version": _FORMAT_VERSION,
        "kind": result["kind"],
        "inputs": {
            "images": ["batch", 3, wrapped.input_size, wrapped.input_size],
            "label_embeddings": ["labels", towers.embed_dim],
        },
        "outputs": {"logits": ["batch", "labels"], "scores": ["batch", "labels"]},
        "images": "float32 RGB in [0, 1], squash-resized (bicubic, antialias) to input_size x input_size",
        "label_embeddings": "float32, prompt-ensembled and L2-normalised (ADDS.encode_labels) with these templates",
        "input_size": wrapped.input_size,
        "levels": list(wrapped.levels),
        "crops": wrapped.crops.num_crops,
        "templates": list(templates),
        "towers": {key: identity.get(key) for key in ("model", "pretrained", "fingerprint", "embed_dim", "image_size")},
        "opset": config.opset,
        "max_abs_diff": result["max_abs_diff"],
        "tolerance": config.tolerance if config.verify else None,
        "baseline": ({"pooling": model.config.pooling, "reference": model.config.reference}
                     if isinstance(model, CLIPBaseline) else None),
    }


def export_onnx(
    model: ADDS | CLIPBaseline, path: str | Path, config: ExportConfig | None = None
) -> ExportResult:
    """Write ``model`` (image path + head) as ONNX to ``path`` and a ``.json`` sidecar next to it.

    The batch and label axes are dynamic. With ``config.verify`` (default) the file is run with onnxruntime on
    random inputs of every ``verify_batches x verify_labels`` size and compared with PyTorch eager; a difference
    above ``config.tolerance`` raises ``RuntimeError`` (the file is kept for inspection).

    Raises:
        ExportDependencyError: onnx / onnxruntime missing (:func:`require_onnx`).
        ValueError: levels that the input size does not have.
    """
    config = config or ExportConfig()
    require_onnx()
    start = time.perf_counter()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    wrapped = exportable(model, config)
    device = next(model.towers.parameters()).device
    if device.type != "cpu":
        raise ValueError(f"export runs on the CPU; the model is on {device} (call model.cpu() first)")
    dim = model.towers.embed_dim
    images = torch.rand(2, 3, wrapped.input_size, wrapped.input_size)  # (B, 3, s, s)
    labels = F.normalize(torch.randn(3, dim), dim=-1)  # (k, D)
    dynamic = {"images": {0: "batch"}, "label_embeddings": {0: "labels"},
               "logits": {0: "batch", 1: "labels"}, "scores": {0: "batch", 1: "labels"}}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        # nn.MultiheadAttention's inference fast path (open_clip towers with an even head count) is a fused op the
        # exporter does not know; the regular path computes the same attention.
        torch.backends.mha.set_fastpath_enabled(False)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
            _onnx_export(wrapped, (images, labels), path, dynamic, config.opset)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    max_diff = verify_onnx(path, wrapped, config) if config.verify else None
    kind = "head" if isinstance(model, ADDS) else "baseline"
    meta = _metadata(model, wrapped, config, {"kind": kind, "max_abs_diff": max_diff})
    metadata_path = path.with_suffix(".json")
    metadata_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    if max_diff is not None and max_diff > config.tolerance:
        raise RuntimeError(f"{path}: onnxruntime differs from PyTorch by {max_diff:.2e} > {config.tolerance:.0e}")
    return ExportResult(path=path, metadata_path=metadata_path, kind=kind, input_size=wrapped.input_size,
                        levels=tuple(wrapped.levels), crops=wrapped.crops.num_crops, embed_dim=dim,
                        max_abs_diff=max_diff, seconds=time.perf_counter() - start)


def _onnx_export(wrapped: nn.Module, example: tuple[Tensor, Tensor], path: Path, dynamic: dict, opset: int) -> None:
    torch.onnx.export(wrapped, example, str(path), dynamo=False, input_names=list(INPUT_NAMES),
                      output_names=list(OUTPUT_NAMES), dynamic_axes=dynamic, opset_version=opset,
                      do_constant_folding=True)


def verify_onnx(path: str | Path, wrapped: nn.Module, config: ExportConfig | None = None, seed: int = 0) -> float:
    """Max abs logit difference between onnxruntime (CPU) on ``path`` and the model's own PyTorch path.

    The reference is the original model's eager forward (``ADDS.forward_head(ADDS.forward_features(...))`` with
    the export's pyramid, or ``CLIPBaseline.forward``), not the traced wrapper, so the rewrites of this module are
    checked too. Every ``verify_batches x verify_labels`` size is tried (dynamic axes).
    """
    import onnxruntime

    config = config or ExportConfig()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    dim = wrapped.model.towers.embed_dim
    worst = 0.0
    for batch in config.verify_batches:
        for k in config.verify_labels:
            size = wrapped.input_size
            images = torch.rand(batch, 3, size, size, generator=generator)  # (B, 3, s, s)
            labels = F.normalize(torch.randn(k, dim, generator=generator), dim=-1)  # (k, D)
            expected = eager_logits(wrapped, images, labels)  # (B, k)
            got, _ = session.run(list(OUTPUT_NAMES), {"images": images.numpy(), "label_embeddings": labels.numpy()})
            if tuple(got.shape) != (batch, k):
                raise RuntimeError(f"{path}: output shape {tuple(got.shape)} for batch {batch} and {k} labels")
            worst = max(worst, float((torch.from_numpy(got) - expected).abs().max()))
    return worst


@torch.no_grad()
def eager_logits(wrapped: nn.Module, images: Tensor, label_embeddings: Tensor) -> Tensor:
    """PyTorch reference for an exported wrapper: the model's own eager path with the export's plan -> ``(B, k)``."""
    model = wrapped.model
    towers = model.towers
    if isinstance(model, CLIPBaseline):
        pyramid = PyramidForwarding(towers.image_size, towers.mean, towers.std, PyramidConfig(levels=wrapped.levels))
        tokens = pyramid(images, towers.encode_image_tokens)  # (B, n * T, token_dim)
        return model.forward_head(model.class_tokens(tokens), label_embeddings)  # (B, k)
    pyramid = PyramidForwarding(towers.image_size, towers.mean, towers.std,
                                PyramidConfig(levels=wrapped.levels, antialias=model.config.pyramid.antialias))
    tokens = pyramid(images, towers.encode_image_tokens)  # (B, n * T, token_dim)
    return model.forward_head(tokens, label_embeddings)  # (B, k)


def config_dict(config: ExportConfig) -> dict:
    """``config`` as plain JSON-able values (for benchmark records)."""
    return asdict(config)
