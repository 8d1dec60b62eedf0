"""The input plan of a head: the size images are squashed to and the Pyramid-Forwarding levels (hence the crops).

A head must be run the way it was trained. ``adds train`` squash-resizes every image to ``input_size x
input_size`` (recorded in the checkpoint's ``training.json``) and runs Pyramid-Forwarding with the checkpoint's
``PyramidConfig.levels`` (``None`` = every level that size allows), so the crop geometry is
:func:`adds.pyramid.plan` ``(input_size, input_size, S, levels)``. For example a 640 px head on a 336 px tower gets
level 0 (one 336 crop) and level 1 (a 640 x 640 image cut into 2 x 2 *overlapping* 336 crops at 0 and 304), not a
672 px tiling; a head trained at the tower's own size with ``levels=None`` gets exactly one crop.

:func:`input_plan` is the one place that decides this, for :class:`~adds.tagger.Tagger`, ``adds serve`` and
``adds eval``:

* ``input_size``: an explicit size if given, else the trained size (``training.json``), else the tower's size ``S``;
  when explicit ``levels`` need more than that size allows, the smallest size that has them, ``S * 2^max(levels)``.
* ``levels``: explicit levels if given, else the checkpoint's ``PyramidConfig.levels``, else every level
  ``0..L`` of the input size (``L`` = :func:`adds.pyramid.top_level`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from adds.pyramid import Level, num_crops, plan, top_level

__all__ = ["TRAINING_NAME", "InputPlan", "input_plan", "trained_input_size"]

#: The run record ``adds train`` writes next to a saved head (``input_size``, epoch, ...).
TRAINING_NAME = "training.json"


@dataclass(frozen=True)
class InputPlan:
    """How images reach a head: squash-resize to ``input_size`` square, then Pyramid-Forwarding ``levels``.

    Attributes:
        base_size: the tower's square input size ``S``.
        input_size: images are squashed (aspect ratio not kept, as in training) to ``input_size x input_size``.
        levels: the pyramid levels, ascending, all possible at ``input_size``.
        trained: whether ``input_size`` is the size the head was trained at (read from ``training.json``).
    """

    base_size: int
    input_size: int
    levels: tuple[int, ...]
    trained: bool = False

    def crops(self) -> list[Level]:
        """The crop geometry (:func:`adds.pyramid.plan`) of one squashed image."""
        return plan(self.input_size, self.input_size, self.base_size, self.levels)

    @property
    def num_crops(self) -> int:
        return num_crops(self.crops())

    def describe(self) -> str:
        return (f"{self.input_size}x{self.input_size} px, levels {','.join(map(str, self.levels))} "
                f"({self.num_crops} crop(s) of {self.base_size} px)")


def trained_input_size(directory: str | os.PathLike) -> int | None:
    """The ``input_size`` a checkpoint was trained at (its ``training.json``), or ``None`` without the file.

    Raises ``ValueError`` naming the file when it exists but is not valid JSON or holds no positive integer.
    """
    path = Path(directory) / TRAINING_NAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read {path}: {error}") from error
    size = record.get("input_size") if isinstance(record, dict) else None
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"{path}: input_size must be a positive integer, got {size!r}")
    return size


def input_plan(
    base_size: int,
    pyramid_levels: Sequence[int] | None = None,
    trained_size: int | None = None,
    input_size: int | None = None,
    levels: Sequence[int] | None = None,
) -> InputPlan:
    """Decide the plan (see the module docstring).

    Args:
        base_size: the tower's size ``S``.
        pyramid_levels: the head's ``PyramidConfig.levels`` (``None`` = all levels of the input size).
        trained_size: the size the head was trained at (:func:`trained_input_size`), if known.
        input_size: an explicit size (``--input-size``) that overrides the trained one.
        levels: explicit levels (``--levels``) that override the head's.

    Raises ``ValueError`` when explicit ``input_size`` and levels do not fit together (a level above the size's
    top level).
    """
    for name, value in (("input_size", input_size), ("trained input size", trained_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    chosen = tuple(levels) if levels is not None else (tuple(pyramid_levels) if pyramid_levels is not None else None)
    size = input_size or trained_size or base_size
    if input_size is None and chosen is not None and top_level(size, size, base_size) < max(chosen):
        size = base_size << max(chosen)  # the smallest size that has every requested level
    resolved = plan(size, size, base_size, chosen)  # checks the levels (ValueError naming the size)
    return InputPlan(base_size=base_size, input_size=size, levels=tuple(level.index for level in resolved),
                     trained=trained_size is not None and size == trained_size)
