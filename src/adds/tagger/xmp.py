"""Tags where photo tools read them: XMP sidecars (and, only when asked, the image file's own XMP).

Written with pyexiv2 (the exiv2 library that digiKam and darktable use; the ``[xmp]`` extra): no XML is written by
hand. What is written, and how an existing sidecar is updated (never clobbered):

* ``dc:subject`` (an ``rdf:Bag``; the keywords digiKam, Lightroom, darktable, exiftool and most photo tools show):
  the tags are added. Keywords that were already there and that ``adds`` did not add are kept; keywords an
  earlier ``adds`` run added (listed in ``adds:AddedKeywords``) and that no longer pass the threshold are removed,
  so re-tagging replaces only our own keywords.
* the project's namespace ``urn:x-adds:xmp:1.0/`` (prefix ``adds``): ``adds:Tags``, an ordered list of
  ``{adds:Label, adds:Score}`` (best first), ``adds:AddedKeywords`` (a Bag) and ``adds:Scorer`` (which model).
* ``xmp:MetadataDate`` is set to now, which tells photo tools that the metadata changed.
* every other field of the sidecar (ratings, labels, titles, develop settings, ...) is kept as it was.

Sidecar names: ``photo.jpg.xmp`` (``naming="full"``, the default: what digiKam and darktable write and read, and
unambiguous when ``photo.jpg`` and ``photo.cr2`` sit side by side) or ``photo.xmp`` (``naming="stem"``: Lightroom,
Capture One and digiKam's "compatible" mode). Files are replaced atomically (written next to the target, then
renamed), so an interrupted run never leaves a half-written sidecar or image.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["NAMESPACE", "PREFIX", "SIDECAR_NAMING", "XmpError", "XmpTags", "read_xmp_tags", "sidecar_path",
           "write_embedded", "write_sidecar", "xmp_available"]

#: The project's XMP namespace and its prefix.
NAMESPACE = "urn:x-adds:xmp:1.0/"
PREFIX = "adds"
#: Sidecar naming conventions: ``full`` = ``photo.jpg.xmp``, ``stem`` = ``photo.xmp``.
SIDECAR_NAMING = ("full", "stem")


class XmpError(OSError):
    """XMP metadata could not be read or written; the message names the file."""


def _pyexiv2():
    try:
        import pyexiv2
    except ImportError as error:
        raise XmpError(f"writing XMP needs pyexiv2, the [xmp] extra: pip install 'adds[xmp]' ({error})") from error
    pyexiv2.set_log_level(4)  # exiv2 warnings would go to stderr; errors still raise
    pyexiv2.registerNs(NAMESPACE, PREFIX)
    return pyexiv2


def xmp_available() -> str | None:
    """``None`` when XMP can be written here, else the reason (the missing extra)."""
    try:
        _pyexiv2()
    except XmpError as error:
        return str(error)
    return None


@dataclass
class XmpTags:
    """What :func:`read_xmp_tags` finds: the ``dc:subject`` keywords and the fields of our namespace."""

    keywords: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    added: list[str] = field(default_factory=list)
    scorer: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)


def sidecar_path(image: str | os.PathLike, naming: str = "full") -> Path:
    """The sidecar of ``image``: ``photo.jpg.xmp`` (``full``) or ``photo.xmp`` (``stem``)."""
    image = Path(image)
    if naming == "full":
        return image.with_name(image.name + ".xmp")
    if naming == "stem":
        return image.with_suffix(".xmp")
    raise ValueError(f"sidecar naming must be one of {', '.join(SIDECAR_NAMING)}, got {naming!r}")


def _as_list(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _parse(xmp: Mapping[str, Any]) -> XmpTags:
    out = XmpTags(keywords=_as_list(xmp.get("Xmp.dc.subject")), added=_as_list(xmp.get("Xmp.adds.AddedKeywords")),
                  scorer=xmp.get("Xmp.adds.Scorer"), fields=dict(xmp))
    index = 1
    while f"Xmp.adds.Tags[{index}]/adds:Label" in xmp:
        label = str(xmp[f"Xmp.adds.Tags[{index}]/adds:Label"])
        out.scores[label] = float(xmp.get(f"Xmp.adds.Tags[{index}]/adds:Score", "nan"))
        index += 1
    return out


def _modify(data: bytes, changes: Mapping[str, Any], where: Path) -> bytes:
    pyexiv2 = _pyexiv2()
    try:
        image = pyexiv2.ImageData(data)
        try:
            image.modify_xmp(dict(changes))
            return image.get_bytes()
        finally:
            image.close()
    except RuntimeError as error:
        raise XmpError(f"cannot write XMP metadata of {where}: {error}") from error


def _read(data: bytes, where: Path) -> dict[str, Any]:
    pyexiv2 = _pyexiv2()
    try:
        image = pyexiv2.ImageData(data)
        try:
            return image.read_xmp()
        finally:
            image.close()
    except RuntimeError as error:
        raise XmpError(f"cannot read XMP metadata of {where}: {error}") from error


def _empty_packet() -> bytes:
    """A new, empty XMP packet, generated by exiv2 (through a 1 x 1 in-memory JPEG: pyexiv2 opens no empty file)."""
    from PIL import Image

    pyexiv2 = _pyexiv2()
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, "JPEG")
    image = pyexiv2.ImageData(buffer.getvalue())
    try:
        image.modify_xmp({"Xmp.xmp.MetadataDate": _now()})
        return image.read_raw_xmp().strip().encode("utf-8")
    finally:
        image.close()


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def _updated(data: bytes, tags: Sequence[Mapping[str, Any]], scorer: str | None, where: Path) -> bytes:
    """``data`` (a sidecar or an image) with the tags merged in (see the module docstring); two exiv2 passes, as
    exiv2 needs an array to exist before items can be added to it."""
    old = _parse(_read(data, where))
    labels = [str(tag["label"]) for tag in tags]
    ours_before = set(old.added)
    theirs = [k for k in old.keywords if k not in ours_before]  # keywords adds did not add: always kept
    added = [label for label in labels if label not in theirs]
    subject = theirs + added
    first: dict[str, Any] = {key: None for key in old.fields if key.startswith("Xmp.adds.Tags[")}
    first.update({
        "Xmp.dc.subject": 'type="Bag"' if subject else None,
        "Xmp.adds.AddedKeywords": 'type="Bag"' if added else None,
        "Xmp.adds.Tags": 'type="Seq"' if tags else None,
        "Xmp.adds.Scorer": scorer,
        "Xmp.xmp.MetadataDate": _now(),
    })
    data = _modify(data, first, where)
    second: dict[str, Any] = {}
    for index, keyword in enumerate(subject, start=1):
        second[f"Xmp.dc.subject[{index}]"] = keyword
    for index, keyword in enumerate(added, start=1):
        second[f"Xmp.adds.AddedKeywords[{index}]"] = keyword
    for index, tag in enumerate(tags, start=1):
        second[f"Xmp.adds.Tags[{index}]/adds:Label"] = str(tag["label"])
        second[f"Xmp.adds.Tags[{index}]/adds:Score"] = f"{float(tag['score']):.6f}"
    return _modify(data, second, where) if second else data


def _replace(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file in the same folder, then a rename)."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".adds-tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if path.exists():
            os.chmod(temporary, path.stat().st_mode & 0o7777)
        else:
            os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _update_file(path: Path, tags: Sequence[Mapping[str, Any]], scorer: str | None, create: bool) -> Path:
    """Read ``path`` (or start from an empty packet when ``create`` and it does not exist), merge the tags in and
    replace it atomically; :class:`XmpError` naming the file on failure (the file is then unchanged)."""
    try:
        data = _empty_packet() if create and not path.exists() else path.read_bytes()
    except OSError as error:
        raise XmpError(f"cannot read {path}: {error}") from error
    updated = _updated(data, tags, scorer, path)
    try:
        _replace(path, updated)
    except OSError as error:
        raise XmpError(f"cannot write {path}: {error}") from error
    return path


def write_sidecar(image: str | os.PathLike, tags: Sequence[Mapping[str, Any]], scorer: str | None = None,
                  naming: str = "full") -> Path:
    """Create or update the XMP sidecar of ``image`` with ``tags`` (``[{"label", "score"}, ...]``, best first).

    Returns the sidecar's path. Raises :class:`XmpError` naming the file when it cannot be read or written (an
    existing sidecar that is not XMP is never overwritten).
    """
    return _update_file(sidecar_path(image, naming), tags, scorer, create=True)


def write_embedded(image: str | os.PathLike, tags: Sequence[Mapping[str, Any]], scorer: str | None = None) -> Path:
    """Merge ``tags`` into the XMP inside ``image`` itself (JPEG, PNG, TIFF, WebP, ... as exiv2 supports); the
    pixels are not re-encoded. Raises :class:`XmpError` naming the file on failure (the file is then unchanged)."""
    return _update_file(Path(image), tags, scorer, create=False)


def read_xmp_tags(path: str | os.PathLike) -> XmpTags:
    """The keywords and ``adds`` fields of a sidecar or an image file (with pyexiv2)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise XmpError(f"cannot read {path}: {error}") from error
    return _parse(_read(data, path))
