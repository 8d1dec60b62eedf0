"""Manifest reading mistakes (issue 11, defect 8): encodings, a missing ``labels`` key, repeated labels."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from adds.data.manifest import ManifestError
from adds.data.registry import DatasetConfig, load_dataset


def _images(folder: Path) -> None:
    for name in ("a.jpg", "b.png"):
        Image.new("RGB", (8, 8), (10, 200, 30)).save(folder / name)


def _load(path: Path, labels: Path | None = None):
    return load_dataset(DatasetConfig(kind="manifest", root=str(path), labels=None if labels is None else str(labels)))


def _names(dataset) -> dict[str, set[str]]:
    return {Path(dataset.path(i)).name: {dataset.vocabulary[j] for j in dataset.records[i].positives}
            for i in range(len(dataset))}


def test_excel_utf8_bom_csv_reads_its_header(tmp_path):
    _images(tmp_path)
    manifest = tmp_path / "excel.csv"
    manifest.write_bytes("image,labels\r\na.jpg,café|dog\r\nb.png,\r\n".encode("utf-8-sig"))
    dataset = _load(manifest)
    assert dataset.vocabulary == ["café", "dog"]
    assert _names(dataset) == {"a.jpg": {"café", "dog"}, "b.png": set()}


def test_bom_in_jsonl_and_vocabulary_files_is_accepted(tmp_path):
    _images(tmp_path)
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes('{"image": "a.jpg", "labels": ["dog"]}\n{"image": "b.png", "labels": []}\n'
                         .encode("utf-8-sig"))
    vocabulary = tmp_path / "v.txt"
    vocabulary.write_bytes("dog\ncat\n".encode("utf-8-sig"))
    dataset = _load(manifest, vocabulary)
    assert dataset.vocabulary == ["dog", "cat"]
    assert _names(dataset) == {"a.jpg": {"dog"}, "b.png": set()}


@pytest.mark.parametrize("name,content,line", [
    ("latin1.csv", "image,labels\na.jpg,dog\nb.png,caf\xe9\n".encode("latin-1"), 3),
    ("latin1.jsonl", '{"image": "a.jpg", "labels": []}\n{"image": "b.png", "labels": ["caf\xe9"]}\n'
     .encode("latin-1"), 2),
])
def test_non_utf8_manifest_names_file_and_line(tmp_path, name, content, line):
    _images(tmp_path)
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ManifestError, match=rf"{name}:{line}: not UTF-8 text \(byte 0xe9\); save the file as UTF-8"):
        _load(tmp_path / name)


def test_non_utf8_vocabulary_names_the_file(tmp_path):
    _images(tmp_path)
    (tmp_path / "m.csv").write_text("image,labels\na.jpg,dog\n")
    (tmp_path / "v.txt").write_bytes("dog\n\xe9t\xe9\n".encode("cp1252"))
    with pytest.raises(ManifestError, match=r"v.txt:2: not UTF-8 text"):
        _load(tmp_path / "m.csv", tmp_path / "v.txt")


def test_jsonl_row_without_labels_is_an_error_naming_file_and_line(tmp_path):
    _images(tmp_path)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"image": "a.jpg", "labels": ["dog"]}\n\n{"image": "b.png", "tags": ["dog"]}\n')
    with pytest.raises(ManifestError, match=r"m.jsonl:3: no 'labels' key \(write \"labels\": \[\]"):
        _load(manifest)
    manifest.write_text('{"image": "a.jpg", "labels": ["dog"]}\n{"image": "b.png", "labels": []}\n')
    assert _names(_load(manifest)) == {"a.jpg": {"dog"}, "b.png": set()}  # an explicit [] is fine


@pytest.mark.parametrize("name,text,message", [
    ("m.csv", "image,labels\na.jpg,dog\nb.png,cat| dog |cat\n", r"m.csv:3: label 'cat' appears twice in 'labels'"),
    ("m.csv", "image,labels,unknown\na.jpg,dog,dog\n", r"m.csv:2: label 'dog' appears twice in both 'labels' and"),
    ("m.jsonl", '{"image": "a.jpg", "labels": ["dog", "dog "]}\n', r"m.jsonl:1: label 'dog' appears twice in 'lab"),
    ("m.jsonl", '{"image": "a.jpg", "labels": [], "unknown": ["cat", "cat"]}\n',
     r"m.jsonl:1: label 'cat' appears twice in 'unknown'"),
])
def test_repeated_label_in_a_row_is_an_error(tmp_path, name, text, message):
    _images(tmp_path)
    (tmp_path / name).write_text(text)
    with pytest.raises(ManifestError, match=message):
        _load(tmp_path / name)
