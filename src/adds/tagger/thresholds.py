"""Decision thresholds: per-label values and a global one (:class:`ThresholdSet`), threshold files, a checkpoint's own.

A label is kept when ``score >= threshold``. A checkpoint directory may carry calibrated per-label thresholds in
``thresholds.tsv`` (``label<TAB>threshold`` lines, written by ``adds calibrate`` and ``adds train``); the older name
``thresholds.txt`` is still read when there is no ``thresholds.tsv``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch
from torch import Tensor

__all__ = [
    "LEGACY_THRESHOLDS_NAME",
    "THRESHOLDS_NAME",
    "ThresholdSet",
    "ThresholdSpec",
    "check_threshold",
    "checkpoint_thresholds_file",
    "read_thresholds",
]

#: Calibrated per-label thresholds in a checkpoint directory (``label<TAB>threshold`` lines).
THRESHOLDS_NAME = "thresholds.tsv"
#: The name older checkpoints used; read only when :data:`THRESHOLDS_NAME` is absent.
LEGACY_THRESHOLDS_NAME = "thresholds.txt"


def check_threshold(value: Any, where: str) -> float:
    """``value`` as a float in ``[0, 1]``, or ``ValueError`` saying ``where`` it came from."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 <= float(value) <= 1.0):
        raise ValueError(f"threshold {where} must be a number in [0, 1], got {value!r}")
    return float(value)


def read_thresholds(path: str | os.PathLike) -> dict[str, float]:
    """Read per-label thresholds: ``label<TAB>threshold`` lines, or a JSON object ``{"label": threshold}``.

    A ``.json`` file, or one whose first non-blank character is ``{``, is read as JSON. In the tab-separated form
    empty lines and ``#`` comment lines are skipped, a first line ``label<TAB>threshold`` is a header, and every
    other line needs exactly one tab. Values must lie in ``[0, 1]``. Raises ``ValueError`` naming the file (and
    line) on any problem.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read threshold file {path}: {error}") from error
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"threshold file {path} is not valid JSON: {error}") from error
        if not isinstance(data, dict):
            raise ValueError(f"threshold file {path} must hold a JSON object {{label: threshold}}")
        return {str(label): check_threshold(value, f"for {label!r} in {path}") for label, value in data.items()}
    out: dict[str, float] = {}
    first = True
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.rstrip("\r\n").split("\t")
        if first and [p.strip().lower() for p in parts] == ["label", "threshold"]:
            first = False
            continue
        first = False
        if len(parts) != 2 or not parts[0].strip():
            raise ValueError(f"{path}:{number}: expected 'label<TAB>threshold', got {line!r}")
        label = parts[0].strip()
        try:
            value = float(parts[1])
        except ValueError as error:
            raise ValueError(f"{path}:{number}: threshold {parts[1]!r} is not a number") from error
        if label in out:
            raise ValueError(f"{path}:{number}: label {label!r} appears twice")
        out[label] = check_threshold(value, f"at {path}:{number}")
    return out


def checkpoint_thresholds_file(directory: str | os.PathLike) -> Path | None:
    """A checkpoint's per-label threshold file: ``thresholds.tsv``, else the legacy ``thresholds.txt``, else None."""
    for name in (THRESHOLDS_NAME, LEGACY_THRESHOLDS_NAME):
        candidate = Path(directory) / name
        if candidate.is_file():
            return candidate
    return None


@dataclass(frozen=True)
class ThresholdSet:
    """Decision thresholds: per-label values, and a global one for every other label.

    Attributes:
        default: threshold for labels without their own; ``None`` keeps every such label.
        per_label: label -> threshold.
        source: where the per-label values came from (a file name, ``"dict"``...), for messages only.
    """

    default: float | None = 0.5
    per_label: Mapping[str, float] = field(default_factory=dict)
    source: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.default is not None:
            object.__setattr__(self, "default", check_threshold(self.default, "(global)"))
        checked = {str(k): check_threshold(v, f"for {k!r}") for k, v in dict(self.per_label).items()}
        object.__setattr__(self, "per_label", checked)

    @classmethod
    def coerce(cls, spec: ThresholdSpec, default: float | None) -> ThresholdSet:
        """A set from a float (the same threshold for every label), a dict or file of per-label thresholds
        (combined with ``default``), or a set (returned as is)."""
        if isinstance(spec, ThresholdSet):
            return spec
        if isinstance(spec, (int, float)) and not isinstance(spec, bool):
            return cls(default=float(spec))
        if isinstance(spec, (str, os.PathLike)):
            return cls(default=default, per_label=read_thresholds(spec), source=os.fspath(spec))
        if isinstance(spec, Mapping):
            return cls(default=default, per_label=spec, source="the threshold dict")
        raise TypeError(f"threshold must be a float, a dict, a file path or a ThresholdSet, got {type(spec).__name__}")

    def check_labels(self, labels: Sequence[str]) -> None:
        """Refuse per-label thresholds for labels that are not in ``labels``: a typo such as ``dgo`` would
        otherwise leave ``dog`` on the global threshold without a word. Raises ``ValueError`` naming them."""
        known = set(labels)
        unknown = [label for label in self.per_label if label not in known]
        if unknown:
            shown = ", ".join(repr(label) for label in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
            where = f" in {self.source}" if self.source else ""
            raise ValueError(f"per-label thresholds{where} name {len(unknown)} label(s) that are not in the label "
                             f"list: {shown} (a typo? give thresholds only for the labels being tagged)")

    def for_labels(self, labels: Sequence[str]) -> Tensor:
        """Thresholds of ``labels`` in order -> ``(k,)`` float (``-inf`` where no threshold applies)."""
        fallback = -math.inf if self.default is None else self.default
        return torch.tensor([self.per_label.get(label, fallback) for label in labels], dtype=torch.float32)


#: A threshold specification: one float for every label, per-label values, a file of them, or a full set.
ThresholdSpec = Union[float, Mapping[str, float], str, os.PathLike, ThresholdSet]  # noqa: UP007
