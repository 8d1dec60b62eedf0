"""Dataset readers on tiny fixture datasets written in each real on-disk format."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from PIL import Image

from adds.data.base import SquashResize, collate_skip_failures
from adds.data.coco import CocoError
from adds.data.imagenet import ImageNetError, build_imagenet21k_subset, read_class_list
from adds.data.manifest import ManifestError
from adds.data.nuswide import NusWideError
from adds.data.registry import DatasetConfig, load_dataset


def _image(path: Path, color=(200, 30, 30), size=(12, 9)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _positive_names(dataset) -> dict[str, set[str]]:
    return {Path(record.path).name: {dataset.vocabulary[i] for i in record.positives} for record in dataset.records}


# --------------------------------------------------------------------------------------------------- registry


def test_dataset_config_rejects_unknown_kind_split_and_limit():
    with pytest.raises(ValueError, match="unknown dataset kind"):
        DatasetConfig(kind="voc", root="x")
    with pytest.raises(ValueError, match="no split 'test'"):
        DatasetConfig(kind="coco", root="x", split="test")
    with pytest.raises(ValueError, match="limit"):
        DatasetConfig(kind="manifest", root="x.csv", limit=0)
    DatasetConfig(kind="manifest", root="x.csv", split="anything")  # manifests ignore the split


# ------------------------------------------------------------------------------------------------------ COCO

# categories deliberately out of id order in the file: the vocabulary must follow category ids
_COCO_CATEGORIES = [{"id": 18, "name": "dog", "supercategory": "animal"},
                    {"id": 1, "name": "person", "supercategory": "person"},
                    {"id": 3, "name": "car", "supercategory": "vehicle"}]
# image id -> (file, category ids annotated); None = no annotation at all
_COCO_IMAGES = {
    42: ("COCO_val2014_000000000042.jpg", [18, 1, 18]),
    7: ("COCO_val2014_000000000007.jpg", [3]),
    9: ("COCO_val2014_000000000009.jpg", None),
    100: ("COCO_val2014_000000000100.jpg", [1]),  # annotated but the file is missing
}


def _coco_fixture(root: Path) -> Path:
    images, annotations = [], []
    for image_id, (file_name, categories) in _COCO_IMAGES.items():
        images.append({"id": image_id, "file_name": file_name, "width": 12, "height": 9, "license": 1,
                       "coco_url": "", "date_captured": "", "flickr_url": ""})
        if image_id != 100:
            _image(root / "val2014" / file_name)
        for category in categories or []:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "iscrowd": int(category == 3), "area": 10.0, "bbox": [0, 0, 2, 2],
                                "segmentation": [[0, 0, 2, 0, 2, 2]]})
    data = {"info": {"year": 2014}, "licenses": [], "images": images, "annotations": annotations,
            "categories": _COCO_CATEGORIES}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "instances_val2014.json").write_text(json.dumps(data))
    return root


def test_coco_labels_in_category_id_order_and_unannotated_images_dropped(tmp_path, caplog):
    root = _coco_fixture(tmp_path / "coco")
    with caplog.at_level(logging.INFO):
        dataset = load_dataset(DatasetConfig(kind="coco", root=str(root), split="val"))
    assert dataset.vocabulary == ["person", "car", "dog"]
    assert dataset.name == "coco2014-val"
    # image 9 (no annotations) dropped, image 100 (missing file) skipped; sorted by image id
    assert [Path(r.path).name for r in dataset.records] == [_COCO_IMAGES[7][0], _COCO_IMAGES[42][0]]
    assert _positive_names(dataset) == {_COCO_IMAGES[7][0]: {"car"}, _COCO_IMAGES[42][0]: {"person", "dog"}}
    assert "dropped 1 image(s) without instance annotations" in caplog.text
    assert "skipped 1 missing image file(s)" in caplog.text and _COCO_IMAGES[100][0] in caplog.text
    item = dataset[1]
    assert item["image"] is not None and item["target"].tolist() == [1.0, 0.0, 1.0]


def test_coco_errors_name_the_file(tmp_path):
    root = _coco_fixture(tmp_path / "coco")
    with pytest.raises(CocoError, match="instances_train2014.json not found"):
        load_dataset(DatasetConfig(kind="coco", root=str(root), split="train"))
    path = root / "annotations" / "instances_val2014.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["category_id"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(CocoError, match="category_id 99"):
        load_dataset(DatasetConfig(kind="coco", root=str(root), split="val"))


# -------------------------------------------------------------------------------------------------- NUS-WIDE

_CONCEPTS = ["animal", "beach", "dog"]
_TAGS = ["nature", "dog", "sky", "animal", "water"]  # TagList1k order; seen = nature, sky, water
_SEEN = ["nature", "sky", "water"]
# Imagelist order: (path, split, Flickr tags, human concepts, file state)
_NUS = [
    ("actor/0001_11.jpg", "train", {"nature", "dog"}, {"dog"}, "ok"),
    ("beach/0002_22.jpg", "test", {"water", "sky"}, {"beach"}, "ok"),
    ("dog/0003_33.jpg", "test", {"dog", "animal"}, {"dog", "animal"}, "missing"),
    ("actor/0004_44.jpg", "train", {"sky"}, set(), "ok"),
    ("dog/0005_55.jpg", "test", {"nature"}, set(), "ok"),  # no concept: kept unless require_positive
    ("beach/0006_66.jpg", "test", {"animal"}, {"animal", "beach"}, "corrupt"),
]


def _nus_fixture(root: Path) -> Path:
    (root / "ImageList").mkdir(parents=True)
    (root / "ConceptsList").mkdir()
    (root / "NUS_WID_Tags").mkdir()
    for sub in ("AllLabels", "TrainTestLabels"):
        (root / "Groundtruth" / sub).mkdir(parents=True)
    (root / "ConceptsList" / "Concepts81.txt").write_text("\n".join(_CONCEPTS) + "\n")
    (root / "NUS_WID_Tags" / "TagList1k.txt").write_text("\n".join(_TAGS) + "\n")
    windows = [path.replace("/", "\\") for path, *_ in _NUS]
    (root / "ImageList" / "Imagelist.txt").write_text("".join(f"C:\\ImageData\\Flickr\\{p}\r\n" for p in windows))
    split_rows = {"train": [], "test": []}
    for row in _NUS:
        split_rows[row[1]].append(row)
    split_rows["test"].reverse()  # split lists need not follow Imagelist order

    def tag_line(tags):  # the official files are tab-separated with a trailing tab
        return "".join(f"{int(tag in tags)}\t" for tag in _TAGS) + "\n"

    (root / "NUS_WID_Tags" / "AllTags1k.txt").write_text("".join(tag_line(tags) for _, _, tags, _, _ in _NUS))
    for concept in _CONCEPTS:
        lines = "".join(f"{int(concept in concepts)}\n" for _, _, _, concepts, _ in _NUS)
        (root / "Groundtruth" / "AllLabels" / f"Labels_{concept}.txt").write_text(lines)
    for split, name in (("train", "Train"), ("test", "Test")):
        rows = split_rows[split]
        (root / "ImageList" / f"{name}Imagelist.txt").write_text(
            "".join(path.replace("/", "\\") + "\n" for path, *_ in rows))
        (root / "NUS_WID_Tags" / f"{name}_Tags1k.dat").write_text("".join(tag_line(r[2]) for r in rows))
        for concept in _CONCEPTS:
            (root / "Groundtruth" / "TrainTestLabels" / f"Labels_{concept}_{name}.txt").write_text(
                "".join(f"{int(concept in r[3])}\n" for r in rows))
    for path, _, _, _, state in _NUS:
        if state == "ok":
            _image(root / "Flickr" / path)
        elif state == "corrupt":
            (root / "Flickr" / path).parent.mkdir(parents=True, exist_ok=True)
            (root / "Flickr" / path).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def _expected(split: str, labels: str) -> dict[str, set[str]]:
    expected = {}
    for path, row_split, tags, concepts, state in _NUS:
        if row_split != split or state == "missing":
            continue
        seen = tags & set(_SEEN)
        expected[Path(path).name] = {"seen925": seen, "unseen81": concepts, "all1006": seen | concepts}[labels]
    return expected


@pytest.mark.parametrize("split,labels", [("train", None), ("test", None), ("test", "all1006"),
                                          ("train", "unseen81")])
def test_nuswide_label_sets_from_tags_and_human_annotations(tmp_path, split, labels, caplog):
    root = _nus_fixture(tmp_path / "nus")
    with caplog.at_level(logging.WARNING):
        dataset = load_dataset(DatasetConfig(kind="nuswide", root=str(root), split=split, labels=labels))
    variant = labels or {"train": "seen925", "test": "unseen81"}[split]
    assert dataset.name == f"nuswide-{split}-{variant}"
    assert dataset.vocabulary == {"seen925": _SEEN, "unseen81": _CONCEPTS, "all1006": _SEEN + _CONCEPTS}[variant]
    assert _positive_names(dataset) == _expected(split, variant)
    assert "differs from the official one" in caplog.text  # the fixture's tiny vocabularies are not the official ones
    if split == "test":
        assert "skipped 1 missing image file(s)" in caplog.text and "0003_33.jpg" in caplog.text


def test_nuswide_missing_skipped_corrupt_fails_at_load_and_unlabelled_kept(tmp_path):
    root = _nus_fixture(tmp_path / "nus")
    dataset = load_dataset(DatasetConfig(kind="nuswide", root=str(root), split="test"), transform=SquashResize(8))
    names = [Path(r.path).name for r in dataset.records]
    assert sorted(names) == ["0002_22.jpg", "0005_55.jpg", "0006_66.jpg"]  # test-list order is reversed Imagelist
    assert names == ["0006_66.jpg", "0005_55.jpg", "0002_22.jpg"]
    batch = collate_skip_failures([dataset[i] for i in range(len(dataset))])
    assert batch["image"].shape == (2, 3, 8, 8)
    assert [Path(path).name for path, _ in batch["failed"]] == ["0006_66.jpg"]
    filtered = load_dataset(DatasetConfig(kind="nuswide", root=str(root), split="test", require_positive=True))
    assert filtered.name == "nuswide-test-unseen81-filtered"
    assert sorted(Path(r.path).name for r in filtered.records) == ["0002_22.jpg", "0006_66.jpg"]


def test_nuswide_per_split_files_give_the_same_labels(tmp_path):
    root = _nus_fixture(tmp_path / "nus")
    reference = {split: _positive_names(load_dataset(DatasetConfig("nuswide", str(root), split, "all1006")))
                 for split in ("train", "test")}
    (root / "NUS_WID_Tags" / "AllTags1k.txt").unlink()
    for path in (root / "Groundtruth" / "AllLabels").iterdir():
        path.unlink()
    (root / "Groundtruth" / "AllLabels").rmdir()
    (root / "ImageList" / "Imagelist.txt").unlink()
    for split in ("train", "test"):
        assert _positive_names(load_dataset(DatasetConfig("nuswide", str(root), split, "all1006"))) == reference[split]


def test_nuswide_malformed_files_are_named(tmp_path):
    root = _nus_fixture(tmp_path / "nus")
    tags = root / "NUS_WID_Tags" / "AllTags1k.txt"
    lines = tags.read_text().splitlines(keepends=True)
    lines[2] = "0\t1\t2\n"
    tags.write_text("".join(lines))
    with pytest.raises(NusWideError, match=r"AllTags1k.txt:3: expected 5 values"):
        load_dataset(DatasetConfig(kind="nuswide", root=str(root), split="train"))
    with pytest.raises(ValueError, match="unknown NUS-WIDE label set"):
        load_dataset(DatasetConfig(kind="nuswide", root=str(root), split="test", labels="seen"))
    (root / "Groundtruth" / "AllLabels" / "Labels_beach.txt").write_text("1\n0\n")
    with pytest.raises(NusWideError, match="Labels_beach.txt: 2 rows, expected 6"):
        load_dataset(DatasetConfig(kind="nuswide", root=str(root), split="test"))


# -------------------------------------------------------------------------------------------------- ImageNet

_TENCH, _GOLDFISH, _SHARK = "n01440764", "n01443537", "n01484850"


def _imagenet_fixture(root: Path) -> Path:
    for split, files in (("train", {_TENCH: 3, _GOLDFISH: 2, "n99999999": 1}), ("val", {_TENCH: 1})):
        for wnid, count in files.items():
            for i in range(count):
                _image(root / split / wnid / f"{wnid}_{i}.JPEG")
    (root / "train" / _GOLDFISH / "notes.txt").write_text("not an image")
    return root


def test_imagenet_1k_folders_with_clean_names(tmp_path, caplog):
    root = _imagenet_fixture(tmp_path / "imagenet")
    with caplog.at_level(logging.INFO):
        dataset = load_dataset(DatasetConfig(kind="imagenet", root=str(root), split="train"))
    assert dataset.name == "imagenet1k-train"
    assert len(dataset.vocabulary) == 1000 and len(set(dataset.vocabulary)) == 1000
    assert dataset.vocabulary[:3] == ["tench", "goldfish", "great white shark"]
    assert [(Path(r.path).parent.name, r.positives) for r in dataset.records] == \
        [(_TENCH, (0,))] * 3 + [(_GOLDFISH, (1,))] * 2
    assert "n99999999" in caplog.text and "998 class folder(s) missing" in caplog.text
    assert dataset[0]["image"] is not None
    limited = load_dataset(DatasetConfig(kind="imagenet", root=str(root), split="train", limit=3))
    assert [r.positives for r in limited.records] == [(0,), (1,), (0,)]  # round-robin over classes


def test_imagenet_class_list_file_and_21k_subset_builder(tmp_path):
    # a 21k-style tree: wnid folders directly under the root, first classes of the 21k order
    root = tmp_path / "in21k"
    organism, benthos, heterotroph, cell, person = "n00004475", "n00005787", "n00006024", "n00006484", "n00007846"
    for wnid, count in ((organism, 3), (benthos, 1), (cell, 2), (person, 2)):
        for i in range(count):
            _image(root / wnid / f"{i}.JPEG")
    (root / heterotroph).mkdir()
    (root / heterotroph / "README.txt").write_text("a folder without images")
    out = tmp_path / "subset.tsv"
    chosen = build_imagenet21k_subset(root, "nuswide81", num_classes=3, images_per_class=2, out_file=out)
    # person overlaps NUS-WIDE "person"; heterotroph has no images on disk
    assert [cls.wnid for cls in chosen] == [organism, benthos, cell]
    assert [cls.wnid for cls in read_class_list(out)] == [organism, benthos, cell]
    dataset = load_dataset(DatasetConfig(kind="imagenet", root=str(root), split="train", labels=str(out)))
    assert dataset.vocabulary == ["organism", "benthos", "cell"]
    assert [r.positives for r in dataset.records] == [(0,), (0,), (1,), (2,), (2,)]  # organism capped at 2
    assert dataset.name == "imagenet-subset-train"

    plain = tmp_path / "classes.txt"
    plain.write_text(f"# my classes\n{cell}\n{organism}\n")
    dataset = load_dataset(DatasetConfig(kind="imagenet", root=str(root), labels=str(plain)))
    assert dataset.vocabulary == ["cell", "organism"] and len(dataset) == 5
    plain.write_text(f"{cell}\nfish\n")
    with pytest.raises(ImageNetError, match=r"classes.txt:2: 'fish' is not a WordNet id"):
        load_dataset(DatasetConfig(kind="imagenet", root=str(root), labels=str(plain)))


def test_imagenet_subset_without_disk_check_excludes_every_overlapping_class(tmp_path):
    from adds.data.overlap import classes_overlapping

    chosen = build_imagenet21k_subset(None, "coco80", num_classes=500, images_per_class=100,
                                      out_file=tmp_path / "s.tsv")
    assert len(chosen) == 500 and not classes_overlapping("coco80", [cls.wnid for cls in chosen])
    assert all(cls.max_images == 100 for cls in chosen)


# -------------------------------------------------------------------------------------------------- manifest


def _manifest_images(folder: Path) -> None:
    for name in ("a.jpg", "b.png", "sub/c.jpg"):
        _image(folder / name)


def test_csv_manifest_relative_paths_and_sorted_vocabulary(tmp_path, monkeypatch, caplog):
    folder = tmp_path / "mydata"
    _manifest_images(folder)
    manifest = folder / "train.csv"
    manifest.write_text('image,labels,source\na.jpg,cat|dog,x\nb.png,,y\n"sub/c.jpg","sofa bed | cat",z\n'
                        "gone.jpg,dog,w\n")
    monkeypatch.chdir(tmp_path)  # relative paths resolve against the manifest's folder, not the cwd
    with caplog.at_level(logging.WARNING):
        dataset = load_dataset(DatasetConfig(kind="manifest", root=str(manifest)))
    assert dataset.vocabulary == ["cat", "dog", "sofa bed"]
    assert dataset.name == "manifest-train"
    assert _positive_names(dataset) == {"a.jpg": {"cat", "dog"}, "b.png": set(), "c.jpg": {"sofa bed", "cat"}}
    assert os.path.isfile(dataset.path(2)) and "skipped 1 missing" in caplog.text
    assert all(dataset[i]["image"] is not None for i in range(len(dataset)))


def test_jsonl_manifest_with_vocabulary_and_unknown_labels(tmp_path):
    _manifest_images(tmp_path)
    manifest = tmp_path / "data.jsonl"
    manifest.write_text(json.dumps({"image": "a.jpg", "labels": ["dog"], "unknown": ["cat"]}) + "\n\n"
                        + json.dumps({"image": str(tmp_path / "b.png"), "labels": []}) + "\n")
    vocabulary = tmp_path / "vocab.txt"
    vocabulary.write_text("dog\ncat\nbird\n")
    dataset = load_dataset(DatasetConfig(kind="manifest", root=str(manifest), labels=str(vocabulary)))
    assert dataset.vocabulary == ["dog", "cat", "bird"]
    item = dataset[0]
    assert item["target"].tolist() == [1.0, 0.0, 0.0] and item["mask"].tolist() == [True, False, True]
    assert dataset.path(1) == str(tmp_path / "b.png")
    manifest.write_text(json.dumps({"image": "a.jpg", "labels": ["dog"]}) + "\n"
                        + json.dumps({"image": "b.png", "labels": ["horse"]}) + "\n")
    with pytest.raises(ManifestError, match=r"data.jsonl:2: unknown label\(s\) \['horse'\] \(not in the voc"):
        load_dataset(DatasetConfig(kind="manifest", root=str(manifest), labels=str(vocabulary)))


@pytest.mark.parametrize("name,text,message", [
    ("m.csv", "path,tags\na.jpg,dog\n", r"m.csv:1: CSV header must have columns 'image' and 'labels'"),
    ("m.jsonl", '{"image": "a.jpg", "labels": ["dog"]}\n{"image": "b.png", "labels": "dog"}\n',
     r"m.jsonl:2: 'labels' must be a list of strings"),
    ("m.jsonl", '{"image": "a.jpg", "labels": []}\n{oops\n', r"m.jsonl:2: not valid JSON"),
    ("m.txt", "a.jpg dog\n", "must end in .csv or .jsonl"),
])
def test_manifest_errors_name_file_and_line(tmp_path, name, text, message):
    _manifest_images(tmp_path)
    (tmp_path / name).write_text(text)
    with pytest.raises(ManifestError, match=message):
        load_dataset(DatasetConfig(kind="manifest", root=str(tmp_path / name)))


def test_vocabulary_file_with_a_repeated_label_is_refused(tmp_path):
    _manifest_images(tmp_path)
    (tmp_path / "m.csv").write_text("image,labels\na.jpg,dog\n")
    (tmp_path / "v.txt").write_text("dog\ncat\ndog\n")
    with pytest.raises(ManifestError, match=r"v.txt:3: label 'dog' repeats line 1"):
        load_dataset(DatasetConfig(kind="manifest", root=str(tmp_path / "m.csv"), labels=str(tmp_path / "v.txt")))
