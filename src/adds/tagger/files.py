"""Finding image files: files, folders (recursive) and glob patterns, symlink-safe; lists of paths from a file.

Rules (the same for folders and for ``**`` in globs, so the two always agree):

* Symlinked folders are followed, and every real folder is visited once: a folder whose real path
  (``os.path.realpath``) was already visited is skipped, so a symlink loop is walked once, not until the path gets
  too long.
* Every real file is tagged once: files are deduplicated by real path (the first spelling found is kept), so a
  symlink to a photo, a photo reached through two symlinked folders, or two overlapping arguments/globs give one
  result.
* Inside folders and glob matches only files with an image extension PIL knows are taken, names starting with ``.``
  (hidden files and folders) are skipped unless the pattern itself starts that name with ``.``, and the order is
  sorted per folder. Files named explicitly are kept whatever their extension (so a non-image is reported).
"""

from __future__ import annotations

import fnmatch
import os
import sys
from collections.abc import Callable, Iterable, Iterator

from PIL import Image

__all__ = ["find_images", "read_path_list"]

_MAGIC = frozenset("*?[")


def _image_suffixes() -> frozenset[str]:
    Image.init()
    return frozenset(ext.lower() for ext in Image.registered_extensions())


def _has_magic(text: str) -> bool:
    return any(char in text for char in _MAGIC)


def _walk(folder: str, visited: set[str]) -> Iterator[tuple[str, list[str]]]:
    """``(folder, sorted file names)`` for ``folder`` and every non-hidden folder below it, top-down, following
    symlinked folders; a folder whose real path is in ``visited`` is skipped (loop and duplicate detection)."""
    real = os.path.realpath(folder)
    if real in visited:
        return
    visited.add(real)
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError:
        return  # unreadable folder: nothing found there (a named folder that vanished is reported by the caller)
    files, folders = [], []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            is_dir = entry.is_dir()  # follows symlinks
        except OSError:
            is_dir = False
        (folders if is_dir else files).append(entry.name)
    yield folder, files
    for name in folders:
        yield from _walk(os.path.join(folder, name), visited)


def _glob(pattern: str) -> Iterator[str]:
    """Paths matching ``pattern`` (``*``, ``?``, ``[...]`` within a name; a ``**`` component = any number of folders,
    walked with :func:`_walk`'s loop detection). Matches are yielded in sorted order per folder."""
    pattern = os.path.normpath(pattern) if pattern else pattern
    parts = pattern.replace(os.altsep or os.sep, os.sep).split(os.sep)
    if parts and parts[0] == "":  # absolute path
        yield from _match(os.sep, parts[1:])
    else:
        yield from _match("", parts)


def _match(base: str, parts: list[str]) -> Iterator[str]:
    if not parts:
        yield base
        return
    head, rest = parts[0], parts[1:]
    here = base or os.curdir
    if head == "**":
        for folder, _ in _walk(here, set()):
            prefix = folder if base else os.path.relpath(folder, os.curdir) if folder != os.curdir else ""
            if rest:
                yield from _match(prefix, rest)
            elif prefix:
                yield prefix
        return
    if not _has_magic(head):
        path = os.path.join(base, head) if base else head
        if rest:
            if os.path.isdir(path):
                yield from _match(path, rest)
        elif os.path.lexists(path):
            yield path
        return
    try:
        names = sorted(os.listdir(here))
    except OSError:
        return
    for name in names:
        if name.startswith(".") and not head.startswith("."):
            continue
        if fnmatch.fnmatchcase(name, head):
            path = os.path.join(base, name) if base else name
            if not rest:
                yield path
            elif os.path.isdir(path):
                yield from _match(path, rest)


def find_images(
    paths: Iterable[str | os.PathLike],
    on_found: Callable[[int], None] | None = None,
) -> tuple[list[str], list[str]]:
    """Expand files, folders (recursively) and glob patterns into image files (see the module docstring).

    Args:
        paths: files, folders and glob patterns, in order.
        on_found: called with the number of files found so far after each folder (a progress counter).

    Returns:
        ``(files, unmatched)``: the files in order, and the arguments that matched nothing (missing paths, empty
        globs). An argument or glob whose files were all found already by an earlier one is *not* unmatched.
    """
    suffixes = _image_suffixes()
    files: list[str] = []
    seen: set[str] = set()
    unmatched: list[str] = []
    visited: set[str] = set()  # real folders walked, shared by every argument

    def add(path: str) -> None:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            files.append(path)

    def walk(folder: str) -> int:
        count = 0
        for root, names in _walk(folder, visited):
            for name in names:
                if os.path.splitext(name)[1].lower() in suffixes:
                    add(os.path.join(root, name))
                    count += 1
            if on_found is not None:
                on_found(len(files))
        return count

    def walk_again(folder: str) -> int:
        """Images under ``folder`` even if it was walked already (so a repeated argument is not 'unmatched')."""
        if os.path.realpath(folder) in visited:
            return 1
        return walk(folder)

    for raw in paths:
        path = os.fspath(raw)
        if os.path.isdir(path):
            walk_again(path)
        elif os.path.exists(path) or os.path.islink(path):
            add(path)
        elif _has_magic(path):
            found = 0
            for match in _glob(path):
                if os.path.isdir(match):
                    found += walk_again(match)
                elif os.path.splitext(match)[1].lower() in suffixes:
                    add(match)
                    found += 1
            if not found:
                unmatched.append(path)
        else:
            unmatched.append(path)
    return files, unmatched


def read_path_list(source: str) -> list[str]:
    """Paths listed in a file, one per line (``-`` = standard input): surrounding blanks stripped, empty lines
    skipped. Each path is then used like a command-line argument (a file, a folder or a glob).

    Raises ``ValueError`` naming the file when it cannot be read.
    """
    try:
        if source == "-":
            text = sys.stdin.read()
        else:
            with open(source, encoding="utf-8") as handle:
                text = handle.read()
    except (OSError, UnicodeDecodeError) as error:
        where = "standard input" if source == "-" else source
        raise ValueError(f"cannot read the path list {where}: {error}") from error
    return [line.strip() for line in text.splitlines() if line.strip()]
