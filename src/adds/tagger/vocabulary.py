"""Label lists: the built-in vocabulary, label files, typed label text, and the ``--labels`` word-list-or-file rule.

One set of label rules for every entry point (``adds tag``, ``adds serve``, the web page and the Python API):
labels are split on commas and new lines (typed text) or read one per line (files), blanks are dropped, and the
list is checked by :func:`adds.prompts.validate_labels` -- an empty list, a blank or a *duplicate* label is refused,
never merged (the DM-decoder's scores depend on the whole list).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from adds.prompts import validate_labels

__all__ = [
    "LABEL_FILE_SUFFIXES",
    "builtin_thresholds",
    "builtin_vocabulary",
    "labels_from_values",
    "looks_like_label_file",
    "read_labels",
    "split_label_text",
]

_BUILTIN_TAGS = "ram_tag_list_4585.txt"
_BUILTIN_THRESHOLDS = "ram_tag_list_4585_thresholds.txt"

#: A ``--labels`` value without a comma that ends in one of these is a label *file* (it must exist).
LABEL_FILE_SUFFIXES = (".txt", ".tsv", ".csv", ".list", ".lst", ".labels")


@functools.lru_cache(maxsize=1)
def builtin_tags() -> tuple[str, ...]:
    """The built-in vocabulary as a tuple (cached; :func:`builtin_vocabulary` returns a fresh list)."""
    text = resources.files("adds.resources").joinpath(_BUILTIN_TAGS).read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def builtin_vocabulary() -> list[str]:
    """The built-in everyday vocabulary: 4,585 tags from Recognize Anything (Apache-2.0), in their file order."""
    return list(builtin_tags())


def builtin_thresholds() -> dict[str, float]:
    """Recognize Anything's per-tag thresholds for :func:`builtin_vocabulary` (tuned for its model, not ADDS)."""
    text = resources.files("adds.resources").joinpath(_BUILTIN_THRESHOLDS).read_text(encoding="utf-8")
    values = [float(line) for line in text.split()]
    tags = builtin_tags()
    if len(values) != len(tags):
        raise RuntimeError(f"{_BUILTIN_THRESHOLDS} has {len(values)} values for {len(tags)} tags")
    return dict(zip(tags, values, strict=True))


def split_label_text(text: str) -> list[str]:
    """Typed labels -> a list: split on commas and new lines, surrounding blanks stripped, empty parts dropped.

    Repeats are kept (and then refused by :func:`~adds.prompts.validate_labels`), never merged silently.
    """
    return [part.strip() for part in re.split(r"[,\r\n]", text) if part.strip()]


def read_labels(path: str | os.PathLike) -> list[str]:
    """Read a label file: one label per line (UTF-8; surrounding blanks stripped; empty lines and ``#`` comment
    lines -- first non-blank character ``#`` -- skipped).

    Raises ``ValueError`` naming the file when it is missing, a folder, unreadable, holds no label or repeats one.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"label file {path} is a folder, not a file with one label per line")
    try:
        text = path.read_text(encoding="utf-8-sig")  # an editor's UTF-8 BOM is not part of the first label
    except FileNotFoundError:
        raise ValueError(f"label file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read label file {path}: {error}") from error
    labels = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    try:
        return validate_labels(labels)
    except ValueError as error:
        raise ValueError(f"label file {path}: {error}") from error


def looks_like_label_file(value: str) -> bool:
    """The ``--labels`` rule: a value is a label *file* when it names an existing file or folder, or has no comma
    and contains a path separator or ends in one of :data:`LABEL_FILE_SUFFIXES`; otherwise it is a comma-separated
    word list (add a comma to force words: ``'AC/DC,'``)."""
    if os.path.exists(value):
        return True
    if "," in value:
        return False
    separators = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    return any(sep in value for sep in separators) or value.strip().lower().endswith(LABEL_FILE_SUFFIXES)


def labels_from_values(values: Sequence[str]) -> list[str]:
    """``--labels`` values (each a comma-separated word list or a label file, see :func:`looks_like_label_file`)
    -> one checked label list. Raises ``ValueError`` naming the value or file on any problem."""
    labels: list[str] = []
    for value in values:
        if looks_like_label_file(value):
            labels.extend(read_labels(value))
        else:
            labels.extend(split_label_text(value))
    if not labels:
        raise ValueError("--labels gave no label")
    return validate_labels(labels)
