"""Finding images (adds.tagger.files): symlinked folders and loops, overlapping arguments, hidden files, lists."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from adds.tagger import find_images, read_path_list


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


@pytest.fixture()
def library(tmp_path) -> Path:
    """photos/ with 3 images, a symlink loop (photos/trip/back -> photos) and a symlinked folder elsewhere."""
    root = tmp_path / "photos"
    for name in ("a.png", "trip/b.jpg", "trip/day2/c.png"):
        _touch(root / name)
    _touch(tmp_path / "elsewhere" / "d.png")
    os.symlink(root, root / "trip" / "back")  # a loop: photos/trip/back/trip/back/...
    os.symlink(tmp_path / "elsewhere", root / "linked")  # a symlinked folder outside the tree
    os.symlink(root / "a.png", root / "a-again.png")  # a symlinked file: the same real image
    return root


def _real(files: list[str]) -> list[str]:
    return sorted(os.path.realpath(f) for f in files)


def test_symlink_loop_is_walked_once_and_symlinked_folders_are_followed(library):
    files, unmatched = find_images([library])
    assert unmatched == []
    real = _real(files)
    assert len(real) == len(set(real)) == 4  # a, b, c and the linked d; the loop and a-again add nothing
    assert str((library.parent / "elsewhere" / "d.png").resolve()) in real


def test_recursive_glob_and_folder_walk_agree_through_a_loop(library):
    walked, _ = find_images([library])
    globbed, unmatched = find_images([str(library / "**" / "*.png")])
    assert unmatched == []
    assert _real(globbed) == sorted(os.path.realpath(f) for f in walked if f.endswith(".png"))
    assert len(globbed) == len(set(_real(globbed))) == 3  # a, c, d: each real file once (was 16x through the loop)
    everything, _ = find_images([str(library / "**")])
    assert _real(everything) == _real(walked)


def test_overlapping_arguments_are_not_failures_and_give_each_file_once(library):
    files, unmatched = find_images([str(library / "*.png"), str(library / "a*.png"), library / "a.png",
                                    library, library / "trip"])
    assert unmatched == []
    assert len(files) == len(set(_real(files))) == 4
    assert files[0] == str(library / "a-again.png")  # sorted: the first spelling found of a.png is kept


def test_missing_paths_and_empty_globs_are_unmatched(tmp_path):
    _touch(tmp_path / "x.png")
    files, unmatched = find_images([tmp_path / "missing.jpg", str(tmp_path / "*.none"), str(tmp_path / "x.png")])
    assert files == [str(tmp_path / "x.png")]
    assert unmatched == [str(tmp_path / "missing.jpg"), str(tmp_path / "*.none")]


def test_find_images_recurses_skips_hidden_and_expands_globs(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    for name in ("a/1.jpg", "a/b/2.PNG", "a/b/6.png", "a/notes.txt", ".hidden/3.png", "a/.4.png", "5.webp", "odd.data"):
        (tmp_path / name).write_bytes(b"x")
    files, unmatched = find_images([tmp_path / "a", str(tmp_path / "*.webp"), tmp_path / "odd.data",
                                    tmp_path / "missing.jpg", str(tmp_path / "*.none"), tmp_path / "a" / "1.jpg"])
    assert files == [str(tmp_path / "a" / "1.jpg"), str(tmp_path / "a" / "b" / "2.PNG"),
                     str(tmp_path / "a" / "b" / "6.png"), str(tmp_path / "5.webp"), str(tmp_path / "odd.data")]
    assert unmatched == [str(tmp_path / "missing.jpg"), str(tmp_path / "*.none")]
    recursive, _ = find_images([str(tmp_path / "**" / "*.png")])
    assert recursive == [str(tmp_path / "a" / "b" / "6.png")]  # glob: case-sensitive, no hidden entries
    hidden, _ = find_images([str(tmp_path / ".hidden" / "*.png"), str(tmp_path / "a" / ".*.png")])
    assert hidden == [str(tmp_path / ".hidden" / "3.png"), str(tmp_path / "a" / ".4.png")]  # named explicitly


def test_relative_globs_keep_relative_paths(tmp_path, monkeypatch):
    _touch(tmp_path / "p" / "q" / "r.png")
    _touch(tmp_path / "top.png")
    monkeypatch.chdir(tmp_path)
    files, _ = find_images(["**/*.png"])
    assert files == ["top.png", os.path.join("p", "q", "r.png")]


def test_read_path_list_from_a_file_and_stdin(tmp_path, monkeypatch):
    listing = tmp_path / "list.txt"
    listing.write_text("a.png\n\n  b dir/c.jpg  \n", encoding="utf-8")
    assert read_path_list(str(listing)) == ["a.png", "b dir/c.jpg"]
    monkeypatch.setattr("sys.stdin", io.StringIO("x.png\ny.png\n"))
    assert read_path_list("-") == ["x.png", "y.png"]
    with pytest.raises(ValueError, match="nothing.txt"):
        read_path_list(str(tmp_path / "nothing.txt"))
