"""Your own data: a CSV or JSONL manifest of (image, labels), plus an optional vocabulary file.

CSV (header row required; other columns are ignored)::

    image,labels
    photos/beach_001.jpg,sea|sand|person
    photos/office_17.png,laptop|person
    photos/empty_room.jpg,

JSONL (one object per line)::

    {"image": "photos/beach_001.jpg", "labels": ["sea", "sand", "person"]}
    {"image": "photos/office_17.png", "labels": ["laptop", "person"], "unknown": ["cup"]}

* Files are UTF-8; a UTF-8 byte-order mark (Excel's "CSV UTF-8") is accepted. Another encoding is an error
  naming the file and line (re-save the file as UTF-8).
* Labels in a CSV cell are separated by ``|`` (label names may contain spaces and commas; quote the cell).
  An empty cell means "no positives". In JSONL every row needs a ``labels`` list (``[]`` for no positives):
  a row without the key is an error, not an image with no labels.
* A label may appear only once per row (in ``labels`` and ``unknown`` together): a repeat is an error naming
  the file and line, since it is usually a typo or a merge gone wrong.
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
import io
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


def _read_text(path: str | os.PathLike) -> str:
    """The file's text as UTF-8 (a leading byte-order mark dropped), or :class:`ManifestError` naming the file
    and the line of the first byte that is not UTF-8."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ManifestError(f"{path}: cannot read ({error.strerror or error})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ManifestError(f"{path}:{line}: not UTF-8 text (byte 0x{data[error.start]:02x}); "
                            "save the file as UTF-8 (Excel: 'CSV UTF-8')") from None


def read_vocabulary(path: str | os.PathLike) -> list[str]:
    """One label per line (blank lines ignored, surrounding whitespace stripped); duplicates are an error."""
    vocabulary: list[str] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(_read_text(path).split("\n"), start=1):
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


def _check_repeats(path: Path, number: int, labels: list[str], unknown: list[str]) -> None:
    """A label named twice in one row (in ``labels``, ``unknown`` or both) is an error naming file and line."""
    seen: dict[str, str] = {}
    for where, names in (("labels", labels), ("unknown", unknown)):
        for label in names:
            if label in seen:
                both = f"'{where}'" if seen[label] == where else "both 'labels' and 'unknown'"
                raise ManifestError(f"{path}:{number}: label {label!r} appears twice in {both}")
            seen[label] = where


def _csv_rows(path: Path) -> list[_Row]:
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    try:
        fields = [field.strip() for field in (reader.fieldnames or [])]
    except csv.Error as error:
        raise ManifestError(f"{path}:1: not a valid CSV header ({error})") from None
    if "image" not in fields or "labels" not in fields:
        raise ManifestError(f"{path}:1: CSV header must have columns 'image' and 'labels', got {fields}")
    reader.fieldnames = fields
    rows = []
    try:
        for row in reader:
            number = reader.line_num
            image = (row.get("image") or "").strip()
            if not image:
                raise ManifestError(f"{path}:{number}: empty 'image' cell")
            labels, unknown = _split_cell(row.get("labels")), _split_cell(row.get("unknown"))
            _check_repeats(path, number, labels, unknown)
            rows.append((number, image, labels, unknown))
    except csv.Error as error:
        raise ManifestError(f"{path}:{reader.line_num}: not valid CSV ({error})") from None
    return rows


def _jsonl_rows(path: Path) -> list[_Row]:
    rows = []
    for number, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise ManifestError(f"{path}:{number}: not valid JSON ({error.msg})") from None
        if not isinstance(item, dict) or not isinstance(item.get("image"), str) or not item["image"].strip():
            raise ManifestError(f"{path}:{number}: expected an object with a non-empty string 'image'")
        if "labels" not in item:
            raise ManifestError(f"{path}:{number}: no 'labels' key (write \"labels\": [] for an image without "
                                "positive labels)")
        lists = []
        for key in ("labels", "unknown"):
            value = item.get(key, [])
            if not isinstance(value, list) or not all(isinstance(label, str) for label in value):
                raise ManifestError(f"{path}:{number}: '{key}' must be a list of strings, got {value!r}")
            lists.append([label.strip() for label in value if label.strip()])
        _check_repeats(path, number, lists[0], lists[1])
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
        positives = tuple(sorted(index[label] for label in labels))
        unknown_ids = tuple(sorted(index[label] for label in unknown))
        records.append(Record(path=image, positives=positives, unknown=unknown_ids))
    return records
