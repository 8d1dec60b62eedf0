from __future__ import annotations

from pathlib import Path

import pytest

from adds.cli import main
from adds.data.imagenet import read_class_list
from adds.data.overlap import classes_overlapping, imagenet_wnids, overlapped_labels


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


PUBLISHED = Path(__file__).resolve().parents[1] / "configs" / "imagenet_classes"


@pytest.mark.parametrize("rule", ["broad", "narrow"])
@pytest.mark.parametrize("source", ["1k", "21k"])
def test_published_class_lists_are_what_the_command_writes(tmp_path, rule, source):
    name = f"imagenet{source}_minus_nuswide81_{rule}.tsv"
    extra = ["--classes", "15000", "--images-per-class", "100"] if source == "21k" else []
    assert main(["imagenet-subset", "--source", source, "--exclude", "nuswide81", "--rule", rule, *extra,
                 "--out", str(tmp_path / name)]) == 0
    written = (tmp_path / name).read_text()
    assert written == (PUBLISHED / name).read_text()
    assert f"# built by: adds imagenet-subset --source {source} --exclude nuswide81 --rule {rule}" in written
    classes = read_class_list(PUBLISHED / name)
    kept = {c.wnid for c in classes}
    # nothing kept is a NUS-WIDE concept (narrow) / a concept or a kind of one (broad)
    assert not classes_overlapping("nuswide81", kept, rule=rule)
    expected = {("21k", "narrow"): 15000, ("21k", "broad"): 9752, ("1k", "narrow"): 994, ("1k", "broad"): 470}
    assert len(classes) == expected[source, rule]
    if (source, rule) == ("21k", "narrow"):  # the first 15,000 eligible classes end at fall11 index 15,076
        assert imagenet_wnids("imagenet21k").index(classes[-1].wnid) == 15076


def test_the_table8_configs_name_the_narrow_published_lists():
    import yaml

    configs = Path(__file__).resolve().parents[1] / "configs"
    for config, listed in (("imagenet21k-subset_to_nuswide_vitl14-336.yaml", "imagenet21k_minus_nuswide81_narrow.tsv"),
                           ("imagenet1k-minus-nuswide_to_nuswide_vitl14-336.yaml",
                            "imagenet1k_minus_nuswide81_narrow.tsv")):
        data = yaml.safe_load((configs / config).read_text())
        assert data["data"]["train"]["labels"] == f"configs/imagenet_classes/{listed}"
        assert (PUBLISHED / listed).is_file()


def test_narrow_rule_keeps_the_dog_breeds_the_broad_rule_drops(tmp_path):
    broad, narrow = tmp_path / "broad.tsv", tmp_path / "narrow.tsv"
    assert main(["imagenet-subset", "--source", "1k", "--exclude", "coco80", "--out", str(broad)]) == 0
    assert main(["imagenet-subset", "--source", "1k", "--exclude", "coco80", "--rule", "narrow",
                 "--out", str(narrow)]) == 0
    chihuahua = "n02085620"
    assert chihuahua in {c.wnid for c in read_class_list(narrow)}
    assert chihuahua not in {c.wnid for c in read_class_list(broad)}
