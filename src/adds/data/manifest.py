"""Your own data: a CSV or JSONL manifest of (image, labels), plus an optional vocabulary file.

CSV (header row required; other columns are ignored)::

    image,labels
    photos/beach_001.jpg,sea|sand|person
    photos/office_17.png,laptop|person
    photos/empty_room.jpg,

JSONL (one object per line)::

    {"image": "photos/beach_001.jpg", "labels": ["sea", "sand", "person"]}
    {"image": "photos/office_17.png", "labels": ["laptop", "person"], "unknown": ["cup"]}

* Labels in a CSV cell are separated by ``|`` (label names may contain spaces and commas; quote the cell).
* An optional ``unknown`` column / key lists labels whose ground truth is not known for that image: they are
  left out of the loss and the metrics (``mask=False``) instead of counted as negatives.
* Relative image paths resolve against the manifest's directory.
* Vocabulary: with a vocabulary file (one label per line, in the order you want), every label must be in it
  and an unknown name is an error naming the file and line; without one, the vocabulary is the sorted set of
  labels seen in the manifest.
* Missing image files are skipped and counted in the log.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path

from adds.data.base import MultiLabelDataset, Record
from adds.data.registry import DatasetConfig, keep_existing

__all__ = ["ManifestError", "read_manifest", "read_vocabulary", "LABEL_SEPARATOR"]

#: separator between labels in a CSV ``labels`` cell.
LABEL_SEPARATOR = "|"


class ManifestError(ValueError):
    """A manifest or vocabulary file that cannot be read; the message names the file and line."""


def read_vocabulary(path: str | os.PathLike) -> list[str]:
    """One label per line (blank lines ignored, surrounding whitespace stripped); duplicates are an error."""
    vocabulary: list[str] = []
    first_line: dict[str, int] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            label = line.strip()
            if not label:
                continue
            if label in first_line:
                raise ManifestError(f"{path}:{number}: label {label!r} repeats line {first_line[label]}")
            first_line[label] = number
            vocabulary.append(label)
    if not vocabulary:
        raise ManifestError(f"{path}: vocabulary file has no labels")
    return vocabulary


def read_manifest(config: DatasetConfig) -> MultiLabelDataset:
    """Read a ``.csv`` or ``.jsonl`` manifest (``config.root``) with optional vocabulary file (``config.labels``)."""
    path = Path(config.root)
    if not path.is_file():
        raise FileNotFoundError(f"manifest file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = _csv_rows(path)
    elif suffix in (".jsonl", ".ndjson"):
        rows = _jsonl_rows(path)
    else:
        raise ManifestError(f"{path}: manifest must end in .csv or .jsonl, got {suffix or 'no suffix'!r}")
    if config.labels is not None:
        vocabulary = read_vocabulary(config.labels)
    else:
        vocabulary = sorted({label for _, _, labels, unknown in rows for label in (*labels, *unknown)})
    records = _records(rows, vocabulary, path, given=config.labels is not None)
    name = f"manifest-{path.stem}" + ("-filtered" if config.require_positive else "")
    root = path.parent.resolve()
    records = keep_existing(records, root, name, limit=config.limit, require_positive=config.require_positive)
    return MultiLabelDataset(records, vocabulary, name=name, root=root)


# rows are (line number, image path, labels, unknown labels)
_Row = tuple[int, str, list[str], list[str]]


def _split_cell(cell: str | None) -> list[str]:
    if not cell:
        return []
    return [label.strip() for label in cell.split(LABEL_SEPARATOR) if label.strip()]


def _csv_rows(path: Path) -> list[_Row]:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        fields = [field.strip() for field in (reader.fieldnames or [])]
        if "image" not in fields or "labels" not in fields:
            raise ManifestError(f"{path}:1: CSV header must have columns 'image' and 'labels', got {fields}")
        reader.fieldnames = fields
        rows = []
        for row in reader:
            number = reader.line_num
            image = (row.get("image") or "").strip()
            if not image:
                raise ManifestError(f"{path}:{number}: empty 'image' cell")
            rows.append((number, image, _split_cell(row.get("labels")), _split_cell(row.get("unknown"))))
    return rows


def _jsonl_rows(path: Path) -> list[_Row]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as error:
                raise ManifestError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            if not isinstance(item, dict) or not isinstance(item.get("image"), str) or not item["image"].strip():
                raise ManifestError(f"{path}:{number}: expected an object with a non-empty string 'image'")
            lists = []
            for key in ("labels", "unknown"):
                value = item.get(key, [])
                if not isinstance(value, list) or not all(isinstance(label, str) for label in value):
                    raise ManifestError(f"{path}:{number}: '{key}' must be a list of strings, got {value!r}")
                lists.append([label.strip() for label in value if label.strip()])
            rows.append((number, item["image"].strip(), lists[0], lists[1]))
    return rows


def _records(rows: Sequence[_Row], vocabulary: Sequence[str], path: Path, given: bool) -> list[Record]:
    index = {label: i for i, label in enumerate(vocabulary)}
    records = []
    for number, image, labels, unknown in rows:
        missing = [label for label in (*labels, *unknown) if label not in index]
        if missing:
            hint = " (not in the vocabulary file)" if given else ""
            raise ManifestError(f"{path}:{number}: unknown label(s) {missing}{hint}")
        positives = tuple(sorted({index[label] for label in labels}))
        unknown_ids = tuple(sorted({index[label] for label in unknown} - set(positives)))
        records.append(Record(path=image, positives=positives, unknown=unknown_ids))
    return records
