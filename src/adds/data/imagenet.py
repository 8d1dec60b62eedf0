"""ImageNet-1k / ImageNet-21k as ImageFolder trees of WordNet-id folders, and the Table 8 21k subset builder.

Expected layout (see ``docs/datasets.md``)::

    <root>/train/n01440764/n01440764_10026.JPEG ...
    <root>/val/n01440764/ILSVRC2012_val_00000293.JPEG ...     (validation images sorted into wnid folders)

For ImageNet-21k, whose releases have no train/val split, the wnid folders may sit directly under ``<root>``.

Label names (the prompts the text tower sees): ImageNet-1k classes get the clean names of the CLIP / open_clip
zero-shot lists; other 21k classes their first WordNet lemma. Names that would repeat (1k has "missile" and
"sunglasses" twice) fall back to the next unused WordNet lemma, then to ``"lemma (wnid)"``, because the model
refuses duplicate labels.

:func:`build_imagenet21k_subset` reproduces the Table 8 setup: the first N classes in the ImageNet-21k (fall11)
order that do not overlap a target vocabulary (the WordNet rules of :mod:`adds.data.overlap`: ``"broad"`` leaves
out every kind of a target label, ``"narrow"`` only the classes that are one; only the narrow rule leaves the
paper's 15,000), M images per class. It writes its class list (``wnid``, ``name``, ``max_images``), which
``DatasetConfig(kind="imagenet", labels=<that file>)`` reads back. The lists of both rules are published under
``configs/imagenet_classes/``.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from tqdm import tqdm

from adds.data.base import MultiLabelDataset, Record
from adds.data.registry import DatasetConfig, resource_table

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageNetClass",
    "ImageNetError",
    "ImageNetSubsetConfig",
    "build_imagenet21k_subset",
    "build_imagenet_subset",
    "imagenet_classes",
    "read_class_list",
    "read_imagenet",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
_WNID = re.compile(r"^n\d{8}$")


class ImageNetError(ValueError):
    """A class list or folder tree that cannot be used; the message names the file or folder."""


@dataclass(frozen=True)
class ImageNetClass:
    """One class: its WordNet id, the label name used in prompts, and an optional cap on images read."""

    wnid: str
    name: str
    max_images: int | None = None


@cache
def _lemmas() -> dict[str, list[str]]:
    """wnid -> WordNet lemmas (21k list, plus 1k classes it lacks)."""
    lemmas = {row["wnid"]: _split_lemmas(row["wordnet_lemmas"])
              for row in resource_table("imagenet21k_goog_21843_wnid_lemmas.tsv")}
    for row in resource_table("imagenet1k_index_wnid_name_lemmas.tsv"):
        lemmas.setdefault(row["wnid"], _split_lemmas(row["wordnet_lemmas"]))
    return lemmas


@cache
def _clean_1k_names() -> dict[str, str]:
    return {row["wnid"]: row["openclip_name"] for row in resource_table("imagenet1k_index_wnid_name_lemmas.tsv")}


def _split_lemmas(text: str) -> list[str]:
    return [lemma.strip().replace("_", " ") for lemma in text.split(",") if lemma.strip()]


def unique_names(wnids: Sequence[str]) -> list[str]:
    """Prompt names for ``wnids``: 1k clean name or first lemma; repeats get another lemma, then ``(wnid)``."""
    clean, lemmas = _clean_1k_names(), _lemmas()
    preferred = [clean.get(wnid) or (lemmas.get(wnid) or [wnid])[0] for wnid in wnids]
    counts: dict[str, int] = {}
    for name in preferred:
        counts[name] = counts.get(name, 0) + 1
    used = {name for name in preferred if counts[name] == 1}
    names = []
    for wnid, name in zip(wnids, preferred, strict=True):
        if counts[name] > 1:
            options = [lemma for lemma in lemmas.get(wnid, []) if lemma not in used]
            name = options[0] if options else f"{name} ({wnid})"
            used.add(name)
        names.append(name)
    return names


def imagenet_classes(variant: str = "1k") -> list[ImageNetClass]:
    """The 1,000 ImageNet-1k classes in the standard index order (sorted wnids) or the 21,843 of ``"21k"``."""
    if variant == "1k":
        wnids = [row["wnid"] for row in resource_table("imagenet1k_index_wnid_name_lemmas.tsv")]
    elif variant == "21k":
        wnids = [row["wnid"] for row in resource_table("imagenet21k_goog_21843_wnid_lemmas.tsv")]
    else:
        raise ValueError(f"unknown ImageNet class set {variant!r}; expected '1k', '21k' or a class-list file")
    return [ImageNetClass(wnid, name) for wnid, name in zip(wnids, unique_names(wnids), strict=True)]


def read_class_list(path: str | os.PathLike) -> list[ImageNetClass]:
    """Read a class list: a TSV with header ``wnid<TAB>name[<TAB>max_images]`` or one wnid per line.

    Lines starting with ``#`` are comments. Missing names are filled with :func:`unique_names`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ImageNet class-list file not found: {path}")
    with open(path, encoding="utf-8") as handle:
        lines = [(number, line.rstrip("\n")) for number, line in enumerate(handle, start=1)
                 if line.strip() and not line.startswith("#")]
    if not lines:
        raise ImageNetError(f"{path}: no classes")
    columns = ["wnid", "name", "max_images"]
    if lines[0][1].split("\t")[0].strip() == "wnid":
        columns = [cell.strip() for cell in lines[0][1].split("\t")]
        lines = lines[1:]
    rows: list[tuple[int, dict[str, str]]] = []
    for number, line in lines:
        cells = [cell.strip() for cell in line.split("\t")]
        rows.append((number, dict(zip(columns, cells, strict=False))))
    seen: dict[str, int] = {}
    for number, row in rows:
        wnid = row.get("wnid", "")
        if not _WNID.match(wnid):
            raise ImageNetError(f"{path}:{number}: {wnid!r} is not a WordNet id like n01440764")
        if wnid in seen:
            raise ImageNetError(f"{path}:{number}: class {wnid} repeats line {seen[wnid]}")
        seen[wnid] = number
    filled = unique_names([row["wnid"] for _, row in rows])
    classes = []
    for (number, row), fallback in zip(rows, filled, strict=True):
        cap = row.get("max_images") or None
        if cap is not None and (not cap.isdigit() or int(cap) < 1):
            raise ImageNetError(f"{path}:{number}: max_images must be a positive integer, got {cap!r}")
        classes.append(ImageNetClass(row["wnid"], row.get("name") or fallback, int(cap) if cap else None))
    names = [cls.name for cls in classes]
    if len(set(names)) != len(names):
        repeated = sorted({name for name in names if names.count(name) > 1})
        raise ImageNetError(f"{path}: label names repeat: {repeated[:5]}")
    return classes


def _split_dir(root: Path, split: str) -> Path:
    """``<root>/<split>`` if it exists; else ``<root>`` itself when it holds wnid folders (21k layout)."""
    if (root / split).is_dir():
        return root / split
    if root.is_dir() and any(_WNID.match(entry.name) and entry.is_dir() for entry in os.scandir(root)):
        logger.info("ImageNet: %s has no %s/ folder; reading the wnid folders directly under it", root, split)
        return root
    raise ImageNetError(f"no ImageNet {split} folder: expected {root / split}/<wnid>/ or wnid folders in {root}")


def _list_images(folder: Path) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(entry.name for entry in entries
                      if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS))


def read_imagenet(config: DatasetConfig) -> MultiLabelDataset:
    """Read ``config.root``'s ``config.split`` ImageFolder with the ``config.labels`` classes (``"1k"`` default).

    Records are in class order, file names sorted within a class. With ``config.limit`` the first records of a
    round-robin over classes are kept, so a small debug set still spans many classes.
    """
    root = Path(config.root)
    if not root.is_dir():
        raise FileNotFoundError(f"ImageNet root is not a directory: {root}")
    variant = config.labels or "1k"
    classes = imagenet_classes(variant) if variant in ("1k", "21k") else read_class_list(variant)
    split_dir = _split_dir(root, config.split)
    present = {entry.name for entry in os.scandir(split_dir) if entry.is_dir()}
    wanted = {cls.wnid for cls in classes}
    extra = sorted(present - wanted)
    if extra:
        logger.info("ImageNet %s: %d folder(s) not in the class list are ignored, e.g. %s", split_dir, len(extra),
                    ", ".join(extra[:5]))
    per_class: list[list[Record]] = []
    missing = []
    prefix = os.path.relpath(split_dir, root)
    for index, cls in enumerate(tqdm(classes, desc=f"listing {split_dir.name}", unit="class", leave=False)):
        if cls.wnid not in present:
            missing.append(cls.wnid)
            per_class.append([])
            continue
        files = _list_images(split_dir / cls.wnid)[: cls.max_images]
        per_class.append([Record(path=os.path.normpath(os.path.join(prefix, cls.wnid, name)), positives=(index,))
                          for name in files])
    if missing:
        logger.warning("ImageNet %s: %d class folder(s) missing (no images for them), e.g. %s", split_dir,
                       len(missing), ", ".join(missing[:5]))
    if config.limit is None:
        records = [record for group in per_class for record in group]
    else:
        records = _round_robin(per_class, config.limit)
    if not records:
        raise ImageNetError(f"no images found under {split_dir} for the {len(classes)} classes of {variant!r}")
    label = variant if variant in ("1k", "21k") else Path(variant).stem
    name = f"imagenet{label}-{config.split}" if variant in ("1k", "21k") else f"imagenet-{label}-{config.split}"
    return MultiLabelDataset(records, [cls.name for cls in classes], name=name, root=root)


def _round_robin(groups: Sequence[Sequence[Record]], limit: int) -> list[Record]:
    chosen: list[Record] = []
    depth = 0
    while len(chosen) < limit and any(depth < len(group) for group in groups):
        for group in groups:
            if depth < len(group):
                chosen.append(group[depth])
                if len(chosen) == limit:
                    break
        depth += 1
    return chosen


@dataclass(frozen=True)
class ImageNetSubsetConfig:
    """A class subset of ImageNet for single-to-multi training (Table 8).

    Attributes:
        num_classes: how many classes to take, in the source's order (15,000 in Table 8); ``None`` = all eligible.
        images_per_class: cap on images per class (100 in Table 8); ``None`` = all.
        exclude_target: leave out classes that overlap this target vocabulary (``"nuswide81"`` or ``"coco80"``,
            the WordNet rules of :mod:`adds.data.overlap`); ``None`` keeps every class.
        source: ``"21k"`` (the 21,843 fall11 classes in their published order) or ``"1k"`` (Table 8's first line:
            ImageNet-1k without the classes overlapping NUS-WIDE).
        split: folder to check on disk (``<root>/<split>`` or wnid folders directly under ``root``).
        rule: ``"broad"`` (leave out every class that is a target label or a kind of one: 9,752 21k classes
            remain without NUS-WIDE, 470 of ImageNet-1k) or ``"narrow"`` (leave out only the classes that are a
            target label: 21,756 and 994 remain, so the paper's "first 15k" exist).
    """

    num_classes: int | None = 15000
    images_per_class: int | None = 100
    exclude_target: str | None = "nuswide81"
    source: str = "21k"
    split: str = "train"
    rule: str = "broad"

    def __post_init__(self) -> None:
        from adds.data.overlap import OVERLAP_RULES

        if self.source not in ("1k", "21k"):
            raise ValueError(f"source must be '1k' or '21k', got {self.source!r}")
        if self.rule not in OVERLAP_RULES:
            raise ValueError(f"rule must be one of {list(OVERLAP_RULES)}, got {self.rule!r}")
        for field, value in (("num_classes", self.num_classes), ("images_per_class", self.images_per_class)):
            if value is not None and value < 1:
                raise ValueError(f"{field} must be >= 1 or None, got {value}")


def build_imagenet_subset(root: str | os.PathLike | None, config: ImageNetSubsetConfig,
                          out_file: str | os.PathLike, exclude: Iterable[str] = (),
                          command: str | None = None) -> list[ImageNetClass]:
    """Pick classes as ``config`` says and write their list to ``out_file`` (TSV: wnid, name, max_images).

    Classes are taken in the source order, skipping those overlapping ``config.exclude_target``, those in
    ``exclude`` and, when ``root`` is given, those without any image on disk, until ``config.num_classes``
    are found (fewer, with a warning, if the source runs out). ``command`` (the line that asked for the list) is
    written into the file's header comment, so a published list says how to rebuild it.
    """
    from adds.data.overlap import classes_overlapping

    candidates = imagenet_classes(config.source)
    excluded = set(exclude)
    if config.exclude_target is not None:
        excluded |= classes_overlapping(config.exclude_target, (cls.wnid for cls in candidates), config.rule)
    split_dir = None if root is None else _split_dir(Path(root), config.split)
    present = None if split_dir is None else {entry.name for entry in os.scandir(split_dir) if entry.is_dir()}
    chosen: list[ImageNetClass] = []
    skipped_overlap = skipped_missing = short = 0
    for cls in candidates:
        if config.num_classes is not None and len(chosen) >= config.num_classes:
            break
        if cls.wnid in excluded:
            skipped_overlap += 1
            continue
        if split_dir is not None:
            count = len(_list_images(split_dir / cls.wnid)) if cls.wnid in present else 0
            if count == 0:
                skipped_missing += 1
                continue
            short += config.images_per_class is not None and count < config.images_per_class
        chosen.append(ImageNetClass(cls.wnid, cls.name, config.images_per_class))
    if config.num_classes is not None and len(chosen) < config.num_classes:
        logger.warning("ImageNet-%s subset: only %d classes qualify (asked for %d); %d overlap %s, %d have no "
                       "images on disk", config.source, len(chosen), config.num_classes, skipped_overlap,
                       f"{config.exclude_target} ({config.rule} rule)", skipped_missing)
    if short:
        logger.info("ImageNet-%s subset: %d class(es) have fewer than %d images (all of theirs are used)",
                    config.source, short, config.images_per_class)
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8", newline="") as handle:
        handle.write(f"# ImageNet-{config.source} subset: {len(chosen)} classes in source order, "
                     f"excluding classes overlapping {config.exclude_target} ({config.rule} WordNet rule, "
                     f"adds.data.overlap), "
                     + ("all images of each class" if config.images_per_class is None else
                        f"at most {config.images_per_class} images per class (first in file-name order)") + "\n")
        if command:
            handle.write(f"# built by: {command}\n")
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["wnid", "name", "max_images"])
        for cls in chosen:
            writer.writerow([cls.wnid, cls.name, "" if cls.max_images is None else cls.max_images])
    logger.info("wrote %d classes to %s", len(chosen), out)
    return chosen


def build_imagenet21k_subset(root: str | os.PathLike | None, target_vocabulary_overlap: str | Iterable[str] | None,
                             num_classes: int | None, images_per_class: int | None,
                             out_file: str | os.PathLike, rule: str = "broad") -> list[ImageNetClass]:
    """Table 8's ImageNet-21k training set: the first ``num_classes`` 21k classes not overlapping the target
    vocabulary, ``images_per_class`` images each; writes the class list to ``out_file`` and returns it.

    ``target_vocabulary_overlap`` is a target name (``"nuswide81"``, ``"coco80"``), an iterable of wnids to leave
    out, or ``None``. ``root`` (the 21k image tree) may be ``None`` to build the list without checking the disk.
    ``rule`` is the overlap rule (``"broad"`` or ``"narrow"``, see :class:`ImageNetSubsetConfig`).
    """
    if isinstance(target_vocabulary_overlap, str) or target_vocabulary_overlap is None:
        config = ImageNetSubsetConfig(num_classes, images_per_class, target_vocabulary_overlap, "21k", rule=rule)
        return build_imagenet_subset(root, config, out_file)
    config = ImageNetSubsetConfig(num_classes, images_per_class, None, "21k", rule=rule)
    return build_imagenet_subset(root, config, out_file, exclude=target_vocabulary_overlap)
