from __future__ import annotations

from adds.cli import main
from adds.data.imagenet import read_class_list
from adds.data.overlap import overlapped_labels


def test_writes_a_class_list_without_the_target_overlap(tmp_path, capsys):
    out = tmp_path / "in1k_minus_nuswide.tsv"
    assert main(["imagenet-subset", "--source", "1k", "--exclude", "nuswide81", "--classes", "50",
                 "--images-per-class", "7", "--out", str(out)]) == 0
    classes = read_class_list(out)
    assert len(classes) == 50 and "wrote 50 classes" in capsys.readouterr().out
    kept = {c.wnid for c in classes}
    everything = {c.wnid for c in read_class_list(_full_list(tmp_path))}
    assert kept < everything
    # no kept class makes a NUS-WIDE concept "overlapped" when it is the only training class
    overlapped, _ = overlapped_labels("nuswide81", train=sorted(kept))
    assert overlapped == []


def _full_list(tmp_path):
    path = tmp_path / "all.tsv"
    assert main(["imagenet-subset", "--source", "1k", "--exclude", "none", "--out", str(path)]) == 0
    return path


def test_bad_values_are_reported(tmp_path, capsys):
    assert main(["imagenet-subset", "--classes", "0", "--out", str(tmp_path / "x.tsv")]) == 2
    assert "error" in capsys.readouterr().err
