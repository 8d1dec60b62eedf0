"""MS-COCO 2014 as a multi-label dataset (the ASL / ML-Decoder protocol, ``protocols.md``).

Expected layout under the dataset root (the official zips unpacked; see ``docs/datasets.md``)::

    annotations/instances_train2014.json
    annotations/instances_val2014.json
    train2014/COCO_train2014_000000000009.jpg ...
    val2014/COCO_val2014_000000000042.jpg ...

* Labels: the annotation file's categories in category-id order (80 for the official files; ids skip 12, 26, ...).
* A label is positive if any instance of it is annotated in the image, whatever its size (crowd regions included).
* Images without any instance annotation are dropped (about 82k train / 40k val images remain).
* Plain ``json`` is used (no pycocotools needed). Missing image files are skipped and counted.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from adds.data.base import MultiLabelDataset, Record
from adds.data.registry import DatasetConfig, keep_existing, resource_table

__all__ = ["CocoError", "read_coco", "read_coco_annotations"]

logger = logging.getLogger(__name__)


class CocoError(ValueError):
    """An MS-COCO annotation file that is missing or malformed; the message names the file."""


def read_coco_annotations(path: str | os.PathLike) -> tuple[list[str], list[tuple[str, tuple[int, ...]]], int]:
    """Parse an ``instances_*.json``: (label names in category-id order, [(file_name, positives)], images dropped).

    Images are in image-id order; those without annotations are dropped and counted.
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as error:
        raise CocoError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise CocoError(f"{path}: missing the '{key}' list of an instances annotation file")
    categories = sorted(data["categories"], key=lambda category: category["id"])
    label_of = {category["id"]: index for index, category in enumerate(categories)}
    labels_of_image: dict[int, set[int]] = {}
    for annotation in data["annotations"]:
        category = annotation.get("category_id")
        if category not in label_of:
            raise CocoError(f"{path}: annotation {annotation.get('id')} has category_id {category!r}, which is not "
                            "among the file's categories")
        labels_of_image.setdefault(annotation["image_id"], set()).add(label_of[category])
    images = sorted(data["images"], key=lambda image: image["id"])
    entries = [(image["file_name"], tuple(sorted(labels_of_image[image["id"]])))
               for image in images if image["id"] in labels_of_image]
    return [category["name"] for category in categories], entries, len(images) - len(entries)


def read_coco(config: DatasetConfig) -> MultiLabelDataset:
    """Read MS-COCO 2014 ``config.split`` (``"train"`` or ``"val"``) under ``config.root``."""
    root = Path(config.root)
    if not root.is_dir():
        raise FileNotFoundError(f"MS-COCO root is not a directory: {root}")
    filename = f"instances_{config.split}2014.json"
    candidates = [root / "annotations" / filename, root / filename]
    annotation_file = next((path for path in candidates if path.is_file()), None)
    if annotation_file is None:
        raise CocoError(f"{filename} not found; looked for {', '.join(str(path) for path in candidates)}")
    image_dir = f"{config.split}2014"
    if not (root / image_dir).is_dir():
        raise CocoError(f"image folder {root / image_dir} not found (unpack {image_dir}.zip under {root})")

    vocabulary, entries, dropped = read_coco_annotations(annotation_file)
    official = [row["name"] for row in resource_table("coco80_categories.tsv")]
    if vocabulary != official:
        logger.warning("%s has %d categories that differ from the official 80: results are not comparable with "
                       "published numbers", annotation_file, len(vocabulary))
    name = f"coco2014-{config.split}"  # every kept image has a positive: require_positive changes nothing
    if dropped:
        logger.info("%s: dropped %d image(s) without instance annotations (ASL/ML-Decoder protocol)", name, dropped)
    records = (Record(path=f"{image_dir}/{file_name}", positives=positives) for file_name, positives in entries)
    kept = keep_existing(records, root, name, limit=config.limit)
    return MultiLabelDataset(kept, vocabulary, name=name, root=root)
