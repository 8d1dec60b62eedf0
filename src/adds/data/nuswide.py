"""NUS-WIDE in its official release layout, for conventional, zero-shot (ZSL) and generalized zero-shot (GZSL) use.

Expected layout under the dataset root (the official zips unpacked side by side; see ``docs/datasets.md``)::

    ImageList/Imagelist.txt              all 269,648 images, e.g. C:\\ImageData\\Flickr\\actor\\0001_2124494179.jpg
    ImageList/TrainImagelist.txt         161,789 train images, e.g. actor\\0001_2124494179.jpg
    ImageList/TestImagelist.txt          107,859 test images
    ConceptsList/Concepts81.txt          the 81 human-annotated concepts (also accepted at the root)
    NUS_WID_Tags/TagList1k.txt           the 1000 Flickr tags, column order of the tag matrices
    NUS_WID_Tags/AllTags1k.txt           269,648 rows x 1000 0/1 columns (Imagelist order)
    Groundtruth/AllLabels/Labels_<concept>.txt   269,648 rows of 0/1 per concept (Imagelist order)
    Flickr/<folder>/<file>.jpg           the images (``images/`` is accepted too)

If ``AllTags1k.txt`` or ``Groundtruth/AllLabels`` is absent, the per-split files of the same release are used
instead: ``NUS_WID_Tags/{Train,Test}_Tags1k.dat`` and ``Groundtruth/TrainTestLabels/Labels_<concept>_{Train,Test}.txt``
(rows in the Train/Test image-list order).

Label sets (``protocols.md``, the LESA/BiAM/MKT protocol):

* ``unseen81``: the 81 concepts, ground truth from the human annotations (AllLabels). ZSL test labels.
* ``seen925``: TagList1k minus the concepts (order kept), ground truth from the noisy Flickr tags (AllTags1k).
  ZSL/GZSL training labels.
* ``all1006``: GZSL, 925 seen then 81 unseen (the BiAM/MKT order), each from its own source.

Test images without any positive are kept (each counts in every metric); ``require_positive=True`` gives the
"filtered" variant some later papers use, named with a ``-filtered`` suffix. Missing images (many Flickr files
are gone) are skipped and counted; corrupt ones surface at load time as ``image=None``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from adds.data.base import MultiLabelDataset, Record
from adds.data.registry import DatasetConfig, keep_existing, resource_lines

__all__ = ["NUSWIDE_LABEL_SETS", "NusWideError", "read_nuswide", "nuswide_vocabularies"]

logger = logging.getLogger(__name__)

#: label-set variants and the default per split.
NUSWIDE_LABEL_SETS = ("seen925", "unseen81", "all1006")
_DEFAULT_LABELS = {"train": "seen925", "test": "unseen81"}
_IMAGE_DIRS = ("Flickr", "images", "Images", "image")
_SPLIT_LIST = {"train": "TrainImagelist.txt", "test": "TestImagelist.txt"}
_SPLIT_SUFFIX = {"train": "Train", "test": "Test"}


class NusWideError(ValueError):
    """A NUS-WIDE file that is missing or malformed; the message names the file (and line)."""


def nuswide_vocabularies(concepts: Sequence[str], taglist: Sequence[str]) -> dict[str, list[str]]:
    """The three label sets from Concepts81 and TagList1k: seen = tags minus concepts (tag order), unseen = concepts.

    ``all1006`` is seen followed by unseen (the BiAM/MKT GZSL order).
    """
    unseen = list(concepts)
    concept_set = set(unseen)
    seen = [tag for tag in taglist if tag not in concept_set]
    return {"seen925": seen, "unseen81": unseen, "all1006": seen + unseen}


def read_nuswide(config: DatasetConfig) -> MultiLabelDataset:
    """Read the NUS-WIDE ``config.split`` list with the ``config.labels`` label set (see the module docstring)."""
    root = Path(config.root)
    if not root.is_dir():
        raise FileNotFoundError(f"NUS-WIDE root is not a directory: {root}")
    variant = config.labels or _DEFAULT_LABELS[config.split]
    if variant not in NUSWIDE_LABEL_SETS:
        raise ValueError(f"unknown NUS-WIDE label set {variant!r}; expected one of {list(NUSWIDE_LABEL_SETS)}")

    concepts = _read_list(_first_existing(root, ("ConceptsList/Concepts81.txt", "Concepts81.txt"), "Concepts81.txt"))
    taglist_file = _first_existing(root, ("NUS_WID_Tags/TagList1k.txt", "TagList1k.txt", "ConceptsList/TagList1k.txt"),
                                   "TagList1k.txt")
    taglist = _read_list(taglist_file)
    vocabularies = nuswide_vocabularies(concepts, taglist)
    _compare_with_official(vocabularies)
    seen, unseen = vocabularies["seen925"], vocabularies["unseen81"]

    split_paths = [_image_key(line) for line in _read_list(root / "ImageList" / _SPLIT_LIST[config.split])]
    positives: list[list[int]] = [[] for _ in split_paths]
    vocabulary = vocabularies[variant]
    if variant in ("seen925", "all1006"):
        tag_column = {tag: i for i, tag in enumerate(taglist)}
        seen_columns = {tag_column[tag]: index for index, tag in enumerate(seen)}  # tag matrix column -> label id
        _add_tag_positives(root, config.split, split_paths, seen_columns, len(taglist), positives)
    if variant in ("unseen81", "all1006"):
        offset = len(seen) if variant == "all1006" else 0
        _add_concept_positives(root, config.split, split_paths, unseen, offset, positives)

    image_dir = _image_dir(root)
    records = (Record(path=os.path.join(image_dir, path), positives=tuple(sorted(set(ids))))
               for path, ids in zip(split_paths, positives, strict=True))
    name = f"nuswide-{config.split}-{variant}" + ("-filtered" if config.require_positive else "")
    kept = keep_existing(records, root, name, limit=config.limit, require_positive=config.require_positive)
    unlabelled = sum(1 for record in kept if not record.positives)
    if unlabelled:
        logger.info("%s: %d of %d images have no positive label (kept, as in the LESA/BiAM/MKT protocol)", name,
                    unlabelled, len(kept))
    return MultiLabelDataset(kept, vocabulary, name=name, root=root)


def _read_list(path: Path) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as handle:
        return [line.strip() for line in handle if line.strip()]


def _first_existing(root: Path, candidates: Sequence[str], what: str) -> Path:
    for candidate in candidates:
        if (root / candidate).is_file():
            return root / candidate
    raise NusWideError(f"{what} not found under {root}; looked for {', '.join(candidates)}")


def _image_dir(root: Path) -> str:
    for candidate in _IMAGE_DIRS:
        if (root / candidate).is_dir():
            return candidate
    raise NusWideError(f"no image folder under {root}; expected one of {', '.join(_IMAGE_DIRS)}")


def _image_key(line: str) -> str:
    """``C:\\ImageData\\Flickr\\actor\\0001_2124494179.jpg`` or ``actor\\0001_...jpg`` -> ``actor/0001_...jpg``."""
    parts = [part for part in line.strip().replace("\\", "/").split("/") if part]
    return "/".join(parts[-2:])


def _compare_with_official(vocabularies: dict[str, list[str]]) -> None:
    official = {"seen925": resource_lines("nuswide_seen925.txt"), "unseen81": resource_lines("nuswide_concepts81.txt")}
    for key, labels in official.items():
        if vocabularies[key] != labels:
            logger.warning("NUS-WIDE %s label set (%d labels) differs from the official one (%d labels): results "
                           "are not comparable with published numbers", key, len(vocabularies[key]), len(labels))


def _binary_rows(path: Path, width: int) -> Iterator[np.ndarray]:
    """Column indices of the 1s in each row of a 0/1 matrix file (tab- or space-separated, single digits)."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            raw = np.frombuffer(line, dtype=np.uint8)
            digits = raw[raw > 32]  # drop tabs, spaces, CR, LF
            if digits.size != width or np.any((digits != 48) & (digits != 49)):
                raise NusWideError(f"{path}:{number}: expected {width} values of 0 or 1, got "
                                   f"{line[:60].decode('latin-1').strip()!r}{'...' if len(line) > 60 else ''}")
            yield np.flatnonzero(digits == 49)


def _binary_column(path: Path) -> np.ndarray:
    """A one-value-per-line 0/1 file (``Labels_<concept>.txt``) -> ``(N,)`` bool."""
    values = _read_list(path)
    bad = next((i for i, value in enumerate(values) if value not in ("0", "1")), None)
    if bad is not None:
        raise NusWideError(f"{path}:{bad + 1}: expected 0 or 1, got {values[bad]!r}")
    return np.array([value == "1" for value in values], dtype=bool)


def _row_lookup(root: Path, split: str, split_paths: Sequence[str], all_rows: bool) -> tuple[list[int], int]:
    """Row of each split image in the per-row files: Imagelist order (``all_rows``) or the split list's own order."""
    if not all_rows:
        return list(range(len(split_paths))), len(split_paths)
    all_list = root / "ImageList" / "Imagelist.txt"
    if not all_list.is_file():
        raise NusWideError(f"{all_list} not found: needed to align AllTags1k.txt / AllLabels with the {split} list")
    row_of = {_image_key(line): row for row, line in enumerate(_read_list(all_list))}
    missing = [path for path in split_paths if path not in row_of]
    if missing:
        raise NusWideError(f"{len(missing)} image(s) of the {split} list are not in {all_list}, e.g. {missing[:3]}")
    return [row_of[path] for path in split_paths], len(row_of)


def _add_tag_positives(root: Path, split: str, split_paths: Sequence[str], seen_columns: dict[int, int],
                       width: int, positives: list[list[int]]) -> None:
    """Seen-tag positives from the Flickr tag matrix (AllTags1k, or the split's Tags1k.dat)."""
    all_file = root / "NUS_WID_Tags" / "AllTags1k.txt"
    split_file = root / "NUS_WID_Tags" / f"{_SPLIT_SUFFIX[split]}_Tags1k.dat"
    use_all = all_file.is_file()
    if not use_all and not split_file.is_file():
        raise NusWideError(f"no Flickr tag matrix under {root / 'NUS_WID_Tags'}: expected AllTags1k.txt or "
                           f"{split_file.name}")
    path = all_file if use_all else split_file
    rows, expected = _row_lookup(root, split, split_paths, use_all)
    wanted: dict[int, list[int]] = {}
    for position, row in enumerate(rows):
        wanted.setdefault(row, []).append(position)
    count = 0
    for row, columns in enumerate(_binary_rows(path, width)):
        count += 1
        for position in wanted.get(row, ()):
            positives[position].extend(seen_columns[c] for c in columns.tolist() if c in seen_columns)
    if count != expected:
        raise NusWideError(f"{path}: {count} rows, expected {expected} (one per image of the image list)")


def _add_concept_positives(root: Path, split: str, split_paths: Sequence[str], concepts: Sequence[str], offset: int,
                           positives: list[list[int]]) -> None:
    """Concept positives from the human annotations (Groundtruth/AllLabels, or TrainTestLabels for the split)."""
    all_dir = root / "Groundtruth" / "AllLabels"
    use_all = all_dir.is_dir()
    if not use_all and not (root / "Groundtruth" / "TrainTestLabels").is_dir():
        raise NusWideError(f"no concept ground truth under {root / 'Groundtruth'}: expected AllLabels/ or "
                           "TrainTestLabels/")
    rows, expected = _row_lookup(root, split, split_paths, use_all)
    row_index = np.asarray(rows, dtype=np.int64)
    for label, concept in enumerate(concepts):
        if use_all:
            path = all_dir / f"Labels_{concept}.txt"
        else:
            path = root / "Groundtruth" / "TrainTestLabels" / f"Labels_{concept}_{_SPLIT_SUFFIX[split]}.txt"
        if not path.is_file():
            raise NusWideError(f"ground truth for concept {concept!r} not found: {path}")
        column = _binary_column(path)
        if column.size != expected:
            raise NusWideError(f"{path}: {column.size} rows, expected {expected} (one per image of the image list)")
        for position in np.flatnonzero(column[row_index]).tolist():
            positives[position].append(offset + label)
