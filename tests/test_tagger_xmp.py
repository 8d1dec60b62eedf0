"""XMP sidecars and embedded XMP (adds.tagger.xmp, ``adds tag --write``): written with pyexiv2, read back by pyexiv2
and by exiftool (an independent reader: Debian's libimage-exiftool-perl), existing keywords and fields kept."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adds.cli import main
from adds.tagger.xmp import XmpError, read_xmp_tags, sidecar_path, write_embedded, write_sidecar
from adds.towers import TINY_MODEL

EXIFTOOL = shutil.which("exiftool")
TAGS = [{"label": "cat", "score": 0.91}, {"label": "red car", "score": 0.62}]


def _exiftool(path: Path) -> dict:
    assert EXIFTOOL, "exiftool is needed as the independent XMP reader: apt-get install libimage-exiftool-perl"
    out = subprocess.run([EXIFTOOL, "-j", "-struct", "-XMP:all", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)[0]


def _photo(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(path)
    return path


def test_sidecar_names():
    assert sidecar_path("a/photo.jpg") == Path("a/photo.jpg.xmp")
    assert sidecar_path("a/photo.jpg", "stem") == Path("a/photo.xmp")
    with pytest.raises(ValueError, match="naming"):
        sidecar_path("x.jpg", "other")


def test_a_new_sidecar_round_trips_and_exiftool_reads_it(tmp_path):
    photo = _photo(tmp_path / "photo.jpg")
    path = write_sidecar(photo, TAGS, "adds test")
    assert path == tmp_path / "photo.jpg.xmp"
    back = read_xmp_tags(path)
    assert back.keywords == ["cat", "red car"] and back.added == ["cat", "red car"]
    assert back.scores == {"cat": 0.91, "red car": 0.62} and back.scorer == "adds test"
    seen = _exiftool(path)
    assert seen["Subject"] == ["cat", "red car"] and seen["Scorer"] == "adds test"
    assert seen["Tags"] == [{"Label": "cat", "Score": 0.91}, {"Label": "red car", "Score": 0.62}]
    assert "<rdf:Bag>" in path.read_text(encoding="utf-8").split("dc:subject")[1]  # dc:subject is a Bag, per spec


def test_updating_keeps_the_users_keywords_and_fields_and_replaces_only_our_own(tmp_path):
    photo = _photo(tmp_path / "photo.jpg")
    sidecar = tmp_path / "photo.jpg.xmp"
    assert EXIFTOOL, "exiftool is needed: apt-get install libimage-exiftool-perl"
    subprocess.run([EXIFTOOL, "-q", "-o", str(sidecar), "-XMP-dc:Subject=holiday", "-XMP-dc:Subject=cat",
                    "-XMP-xmp:Rating=4", "-XMP-dc:Title=At the lake", str(photo)], check=True)  # another tool's
    write_sidecar(photo, TAGS, "first run")
    seen = _exiftool(sidecar)
    assert seen["Subject"] == ["holiday", "cat", "red car"] and seen["Rating"] == 4 and seen["Title"] == "At the lake"
    assert read_xmp_tags(sidecar).added == ["red car"]  # "cat" was the user's: never ours to remove
    write_sidecar(photo, [{"label": "sky", "score": 0.7}], "second run")  # re-tagging: red car no longer passes
    seen = _exiftool(sidecar)
    assert seen["Subject"] == ["holiday", "cat", "sky"] and seen["Rating"] == 4 and seen["Title"] == "At the lake"
    assert seen["Tags"] == [{"Label": "sky", "Score": 0.7}] and seen["Scorer"] == "second run"


def test_a_sidecar_that_is_not_xmp_is_never_overwritten(tmp_path):
    photo = _photo(tmp_path / "photo.jpg")
    sidecar = tmp_path / "photo.jpg.xmp"
    sidecar.write_text("my notes, not XMP", encoding="utf-8")
    with pytest.raises(XmpError, match="photo.jpg.xmp"):
        write_sidecar(photo, TAGS)
    assert sidecar.read_text(encoding="utf-8") == "my notes, not XMP"


def test_embedded_xmp_changes_metadata_not_pixels(tmp_path):
    photo = _photo(tmp_path / "photo.png")
    pixels = np.asarray(Image.open(photo)).copy()
    write_embedded(photo, TAGS, "embedded")
    assert np.array_equal(np.asarray(Image.open(photo)), pixels)
    assert _exiftool(photo)["Subject"] == ["cat", "red car"] and read_xmp_tags(photo).keywords == ["cat", "red car"]


def test_tag_write_xmp_from_the_cli(capsys, tmp_path):
    photos = [_photo(tmp_path / "lib" / f"{name}.jpg", seed) for seed, name in enumerate("ab")]
    (tmp_path / "lib" / "broken.jpg").write_text("no")
    code = main(["tag", str(tmp_path / "lib"), "--model", TINY_MODEL, "--pretrained", "none", "--labels",
                 "red,green,blue", "--threshold", "0", "--top-k", "2", "--write", "xmp", "--format", "jsonl"])
    out = capsys.readouterr().out
    assert code == 1  # the broken file
    records = {json.loads(line)["path"]: json.loads(line) for line in out.splitlines()}
    for photo in photos:
        seen = _exiftool(photo.with_name(photo.name + ".xmp"))
        expected = records[str(photo)]["tags"]
        assert seen["Subject"] == [t["label"] for t in expected]
        assert [t["Score"] for t in seen["Tags"]] == pytest.approx([t["score"] for t in expected], abs=1e-6)
        assert "adds" in seen["Scorer"] and TINY_MODEL in seen["Scorer"]
    assert not (tmp_path / "lib" / "broken.jpg.xmp").exists()
    code = main(["tag", str(photos[0]), "--model", TINY_MODEL, "--pretrained", "none", "--labels", "red",
                 "--write", "xmp", "--sidecar-name", "stem", "--threshold", "0"])
    assert code == 0 and _exiftool(tmp_path / "lib" / "a.xmp")["Subject"] == ["red"]


def test_a_sidecar_that_cannot_be_written_fails_that_image_in_the_output(capsys, tmp_path):
    photo = _photo(tmp_path / "a.jpg")
    (tmp_path / "a.jpg.xmp").write_text("not XMP", encoding="utf-8")
    code = main(["tag", str(photo), "--model", TINY_MODEL, "--pretrained", "none", "--labels", "red",
                 "--threshold", "0", "--write", "xmp", "--format", "jsonl"])
    captured = capsys.readouterr()
    record = json.loads(captured.out)
    assert code == 1 and "a.jpg.xmp" in record["error"] and record["tags"][0]["label"] == "red"
    assert "Traceback" not in captured.err and (tmp_path / "a.jpg.xmp").read_text(encoding="utf-8") == "not XMP"


def test_a_symlinked_photo_gets_its_sidecar_beside_the_real_file_and_the_link_survives(capsys, tmp_path):
    real = _photo(tmp_path / "real" / "a.jpg")
    (tmp_path / "view").mkdir()
    link = tmp_path / "view" / "a.jpg"
    link.symlink_to(real)
    code = main(["tag", str(link), "--model", TINY_MODEL, "--pretrained", "none", "--labels", "red",
                 "--threshold", "0", "--write", "xmp", "--write", "embedded"])
    assert code == 0 and (tmp_path / "real" / "a.jpg.xmp").exists() and not (tmp_path / "view" / "a.jpg.xmp").exists()
    assert link.is_symlink() and _exiftool(real)["Subject"] == ["red"]
