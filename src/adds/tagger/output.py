"""Tagging results as text: the four output formats, and reading a results file back to resume a run.

Every format holds every input, failed ones included with their error:

* ``jsonl`` -- one object per line, ``{"path": ..., "tags": [{"label", "score"}, ...] | null, "error": null | "..."}``,
  streamed; resumable.
* ``csv`` -- ``path,label,score,error`` rows: one row per tag, one row with empty label for an image without tags,
  one row with the ``error`` for a failed input; resumable.
* ``json`` -- one array of the ``jsonl`` objects, written at the end.
* ``table`` -- readable: the path, then ``  0.912  label`` lines, ``  (no tag above threshold)`` or ``  error: ...``.

A record has ``tags`` when the image was tagged and ``error`` when something failed (loading it, or writing its XMP
sidecar -- then it has both). Scores are rounded to 6 decimals.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from adds.tagger.core import FileTags

__all__ = ["FORMATS", "RESUMABLE_FORMATS", "ResultWriter", "read_results", "record_from_dict", "record_to_dict"]

logger = logging.getLogger("adds.tagger")

FORMATS = ("table", "json", "jsonl", "csv")
#: Formats a run can append to and resume from.
RESUMABLE_FORMATS = ("jsonl", "csv")
_CSV_HEADER = ["path", "label", "score", "error"]


def record_to_dict(record: FileTags) -> dict[str, Any]:
    """The JSON form of a record (``tags`` rounded to 6 decimals; ``None`` when not tagged)."""
    tags = None if record.tags is None else [{"label": t["label"], "score": round(float(t["score"]), 6)}
                                             for t in record.tags]
    return {"path": record.path, "tags": tags, "error": record.error}


def record_from_dict(data: Any, where: str) -> FileTags:
    """A record from its JSON form; ``ValueError`` naming ``where`` when it is not one."""
    if not isinstance(data, dict) or not isinstance(data.get("path"), str):
        raise ValueError(f"{where}: not a tagging record (an object with a 'path')")
    tags = data.get("tags")
    if tags is not None and (not isinstance(tags, list) or not all(isinstance(t, dict) for t in tags)):
        raise ValueError(f"{where}: 'tags' must be a list of {{label, score}} objects")
    error = data.get("error")
    return FileTags(path=data["path"], tags=tags, error=None if error is None else str(error))


class ResultWriter:
    """Writes records in one of :data:`FORMATS` to ``stream``, flushing after every record so results stream.

    Args:
        fmt: the format.
        stream: where to write.
        header: write the CSV header (not when appending to a file that has one).
        sync: also ``os.fsync`` the stream every ``sync`` records (files only), so a crash loses at most that many.
    """

    def __init__(self, fmt: str, stream: TextIO, header: bool = True, sync: int = 0) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
        self.fmt = fmt
        self.stream = stream
        self.sync = sync
        self.count = 0
        self.collected: list[dict[str, Any]] = []
        self.csv = csv.writer(stream, lineterminator="\n") if fmt == "csv" else None
        if self.csv is not None and header:
            self.csv.writerow(_CSV_HEADER)

    def write(self, record: FileTags) -> None:
        data = record_to_dict(record)
        if self.fmt == "json":
            self.collected.append(data)
            return
        if self.fmt == "jsonl":
            self.stream.write(json.dumps(data, ensure_ascii=False) + "\n")
        elif self.csv is not None:
            error = record.error or ""
            rows = data["tags"] or [{"label": "", "score": ""}]
            for tag in rows:
                self.csv.writerow([record.path, tag["label"], tag["score"], error])
        else:
            lines = [record.path] + [f"  {t['score']:.3f}  {t['label']}" for t in record.tags or []]
            if record.tags == []:
                lines.append("  (no tag above threshold)")
            if record.error is not None:
                lines.append(f"  error: {record.error}")
            self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()
        self.count += 1
        if self.sync and self.count % self.sync == 0:
            _fsync(self.stream)

    def write_all(self, records: Iterable[FileTags]) -> None:
        for record in records:
            self.write(record)

    def close(self) -> None:
        if self.fmt == "json":
            self.stream.write(json.dumps(self.collected, indent=2, ensure_ascii=False) + "\n")
        self.stream.flush()
        if self.sync:
            _fsync(self.stream)


def _fsync(stream: TextIO) -> None:
    try:
        os.fsync(stream.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        pass  # not a file (a pipe, a StringIO)


def _complete_text(path: Path, repair: bool) -> str:
    """The file's text up to its last complete line; with ``repair`` a partial last line (a run killed while
    writing) is cut off the file itself, so appending continues on a fresh line."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        logger.warning("%s: dropped a partial last line (%d bytes) left by an interrupted run", path,
                       len(data) - end)
        if repair:
            with open(path, "r+b") as handle:
                handle.truncate(end)
    try:
        return data[:end].decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not a UTF-8 results file: {error}") from error


def read_results(path: str | os.PathLike, fmt: str, repair: bool = False) -> list[FileTags]:
    """Records of a ``jsonl`` or ``csv`` results file (see the module docstring), in file order.

    A partial last line is ignored (and with ``repair`` removed from the file). Raises ``ValueError`` naming the
    file and line when the file is not such a results file.
    """
    path = Path(path)
    if fmt not in RESUMABLE_FORMATS:
        raise ValueError(f"only {' and '.join(RESUMABLE_FORMATS)} results can be read back, not {fmt}")
    try:
        text = _complete_text(path, repair)
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error}") from error
    records: list[FileTags] = []
    if fmt == "jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not a JSON line ({error.msg})") from error
            records.append(record_from_dict(data, f"{path}:{number}"))
        return records
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return records
    if rows[0] != _CSV_HEADER:
        raise ValueError(f"{path}:1: expected the header {','.join(_CSV_HEADER)}, got {','.join(rows[0])}")
    record: FileTags | None = None
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(_CSV_HEADER):
            raise ValueError(f"{path}:{number}: expected {len(_CSV_HEADER)} columns, got {len(row)}")
        name, label, score, error = row
        if record is None or record.path != name:  # a record's rows are contiguous; a later block is a new record
            record = FileTags(path=name, tags=None, error=error or None)
            records.append(record)
        if label:
            try:
                value = float(score)
            except ValueError:
                raise ValueError(f"{path}:{number}: score {score!r} is not a number") from None
            record.tags = (record.tags or []) + [{"label": label, "score": value}]
        elif not error and record.tags is None:
            record.tags = []
    return records
