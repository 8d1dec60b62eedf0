"""Single-to-multi overlapped classes: the committed WordNet data and the script that rebuilds it."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

from adds.data.overlap import (
    classes_overlapping,
    imagenet_wnids,
    label_synsets,
    overlap_indices,
    overlapped_labels,
    sense_fixes,
)
from adds.data.registry import resource_lines, resource_table

REPO = Path(__file__).resolve().parent.parent
CHIHUAHUA, TABBY, GIRAFFE_21K = "n02085620", "n02123045", "n02439033"


def _load_script():
    spec = importlib.util.spec_from_file_location("build_overlap", REPO / "scripts" / "build_overlap.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up while the script runs
    spec.loader.exec_module(module)
    return module


def test_every_target_label_has_one_synset_in_official_order():
    coco = [row["name"] for row in resource_table("coco80_categories.tsv")]
    assert [row.label for row in label_synsets("coco80")] == coco
    assert [row.label for row in label_synsets("nuswide81")] == resource_lines("nuswide_concepts81.txt")
    for target in ("coco80", "nuswide81"):
        for row in label_synsets(target):
            assert re.fullmatch(r"[a-z0-9_'.-]+\.n\.\d\d", row.synset), row
            assert re.fullmatch(r"n\d{8}", row.wnid) and row.definition


def test_hand_chosen_senses():
    coco = {row.label: row for row in label_synsets("coco80")}
    nus = {row.label: row for row in label_synsets("nuswide81")}
    assert (coco["kite"].synset, coco["kite"].wnid) == ("kite.n.03", "n03621473")  # the toy, not the bird
    assert "plaything" in coco["kite"].definition
    assert coco["mouse"].synset == "mouse.n.04" and "cursor" in coco["mouse"].definition
    assert nus["plane"].synset == "airplane.n.01"


def test_hyponym_overlap_dog_breeds_and_non_overlapped_labels():
    overlapped, non_overlapped = overlapped_labels("coco80", "imagenet1k")
    assert len(overlapped) + len(non_overlapped) == 80 and not set(overlapped) & set(non_overlapped)
    assert "dog" in overlapped  # no ImageNet-1k class is "dog": it overlaps through the breeds
    assert "kite" in non_overlapped  # ImageNet-1k's kite is the bird of prey, a different synset
    assert "giraffe" in non_overlapped
    assert {"dog", "cat"} <= set(overlapped)
    coco = {row.label: row for row in label_synsets("coco80")}
    assert coco["giraffe"].overlapped_imagenet21k and not coco["giraffe"].overlapped_imagenet1k


@pytest.mark.parametrize("target", ["coco80", "nuswide81"])
@pytest.mark.parametrize("train", ["imagenet1k", "imagenet21k"])
def test_class_table_agrees_with_the_per_label_flags(target, train):
    overlapped, _ = overlapped_labels(target, train)
    flag = "overlapped_imagenet1k" if train == "imagenet1k" else "overlapped_imagenet21k"
    assert overlapped == [row.label for row in label_synsets(target) if getattr(row, flag)]


def test_overlap_with_an_arbitrary_class_list_and_vocabulary_indices():
    overlapped, _ = overlapped_labels("nuswide81", [CHIHUAHUA])
    assert overlapped == ["animal", "dog"]
    overlapped, _ = overlapped_labels("coco80", [CHIHUAHUA, TABBY])
    assert overlapped == ["cat", "dog"]
    assert overlapped_labels("coco80", [])[0] == []
    assert classes_overlapping("coco80", [CHIHUAHUA, GIRAFFE_21K, "n00004475"]) == {CHIHUAHUA, GIRAFFE_21K}
    assert classes_overlapping("coco80") >= set(classes_overlapping("coco80", imagenet_wnids("imagenet1k")))
    assert overlap_indices(["zebra", "kite", "dog"], "coco80", "imagenet1k") == ([0, 2], [1])
    with pytest.raises(ValueError, match=r"\['plane'\] are not coco80 labels"):
        overlap_indices(["dog", "plane"], "coco80")
    with pytest.raises(ValueError, match="no overlap data"):
        overlapped_labels("voc20")


def test_build_script_choices_match_the_committed_file():
    script = _load_script()
    for target, choices in script.CHOICES.items():
        assert {row.label: row.synset for row in label_synsets(target)} == choices


# A tiny WordNet database in the real data.noun / index.noun formats:
# entity <- animal <- dog <- chihuahua (instance-free); animal <- bird <- kite(bird); plaything <- kite(toy)
_SYNSETS = {
    1: ("entity", []), 10: ("animal", [1]), 20: ("dog", [10]), 21: ("chihuahua", [20]),
    30: ("bird", [10]), 31: ("kite", [30]), 40: ("plaything toy", [1]), 41: ("kite", [40]),
}


def _tiny_wordnet(folder: Path) -> None:
    folder.mkdir()
    lines = ["  1 This software and database is being provided to you, the LICENSEE, by Princeton University\n"]
    for offset, (words, parents) in _SYNSETS.items():
        lemmas = words.split()
        pointers = " ".join(f"@ {p:08d} n 0000" for p in parents)
        lines.append(f"{offset:08d} 05 n {len(lemmas):02x} {' '.join(f'{w} 0' for w in lemmas)} "
                     f"{len(parents):03d} {pointers} | gloss of {lemmas[0]}  \n")
    (folder / "data.noun").write_text("".join(lines))
    index = {"entity": [1], "animal": [10], "dog": [20], "chihuahua": [21], "bird": [30], "kite": [31, 41],
             "plaything": [40], "toy": [40]}
    (folder / "index.noun").write_text("  1 licence header\n" + "".join(
        f"{lemma} n {len(offsets)} 1 @ {len(offsets)} 0 {' '.join(f'{o:08d}' for o in offsets)}  \n"
        for lemma, offsets in sorted(index.items())))


def test_wordnet_reader_names_senses_and_walks_hyponyms(tmp_path):
    script = _load_script()
    _tiny_wordnet(tmp_path / "dict")
    wordnet = script.WordNet(tmp_path / "dict")
    assert wordnet.name(41) == "kite.n.02" and wordnet.name(40) == "plaything.n.01"
    assert wordnet.by_name("kite.n.02").offset == 41 and wordnet.by_name("kite.n.02").wnid == "n00000041"
    with pytest.raises(ValueError, match="resolves to 'plaything.n.01'"):
        wordnet.by_name("toy.n.01")
    assert wordnet.subtree(10) == {10, 20, 21, 30, 31}
    assert wordnet.subtree(40) == {40, 41}
    assert wordnet.synsets[20].gloss == "gloss of dog"


def test_sense_fixes_follow_the_prompt_names():
    """ImageNet-1k 'tea cup' (wnid: a punch) and 'television' (wnid: the broadcasting system) overlap COCO cup/tv."""
    fixes = {fix.wnid: fix for fix in sense_fixes()}
    assert fixes["n07930864"].prompt_name == "tea cup" and fixes["n07930864"].wordnet_synset == "cup.n.06"
    assert fixes["n04404412"].meant_synset == "television_receiver.n.01"
    coco = {row.label: row for row in label_synsets("coco80")}
    assert fixes["n04404412"].meant_wnid == coco["tv"].wnid
    assert overlapped_labels("coco80", ["n07930864"])[0] == ["cup"]
    assert overlapped_labels("coco80", ["n04404412"])[0] == ["tv"]
    assert overlapped_labels("coco80", ["n04553703"])[0] == ["sink"]
    assert overlapped_labels("nuswide81", ["n09428293"])[0] == ["beach"]
    overlapped, _ = overlapped_labels("coco80", "imagenet1k")
    assert {"cup", "tv", "sink"} <= set(overlapped) and len(overlapped) == 58
    assert len(overlapped_labels("nuswide81", "imagenet1k")[0]) == 33
    # the bird stays a bird: a sense is fixed only where the images show the label's sense
    assert "kite" not in overlapped and "n01608432" not in fixes


def test_every_imagenet1k_class_named_after_a_target_label_overlaps_it():
    """Prompt-name consistency: an ImageNet-1k class whose prompt name *is* a COCO / NUS-WIDE label name overlaps it."""
    table = resource_table("imagenet1k_index_wnid_name_lemmas.tsv")
    names = {row["wnid"]: row["openclip_name"].lower() for row in table}
    for target in ("coco80", "nuswide81"):
        labels = [row.label for row in label_synsets(target)]
        for wnid, name in names.items():
            matching = [label for label in labels if name in {label, label.rstrip("s"), label + "s"}]
            if matching:
                assert set(matching) <= set(overlapped_labels(target, [wnid])[0]), (target, wnid, name)


def test_narrow_rule_counts_only_classes_that_are_the_label():
    # a dog breed is a kind of dog (broad) but not a dog (narrow); the 21k class "dog" is
    assert overlapped_labels("coco80", [CHIHUAHUA], rule="narrow")[0] == []
    assert overlapped_labels("coco80", ["n02084071"], rule="narrow")[0] == ["dog"]
    # same prompt name counts under the narrow rule: the rodent "mouse" leaves the same text as COCO's mouse
    assert "n02330245" in classes_overlapping("coco80", rule="narrow")
    assert "n02330245" not in classes_overlapping("coco80")
    # 'television' is fixed to COCO tv's own synset, so even the narrow rule sees it; 'tea cup' is only a kind of cup
    assert overlapped_labels("coco80", ["n04404412"], rule="narrow")[0] == ["tv"]
    assert overlapped_labels("coco80", ["n07930864"], rule="narrow")[0] == []
    all21k = imagenet_wnids("imagenet21k")
    broad = classes_overlapping("nuswide81", all21k)
    narrow = classes_overlapping("nuswide81", all21k, rule="narrow")
    assert len(all21k) - len(broad) == 9752  # broad: fewer than the paper's 15,000 remain
    assert len(all21k) - len(narrow) >= 15000 and len(narrow) == 87
    assert [len(overlapped_labels(t, "imagenet1k", "narrow")[0]) for t in ("coco80", "nuswide81")] == [27, 6]
    for target in ("coco80", "nuswide81"):
        for train in ("imagenet1k", "imagenet21k"):
            flag = ("narrow_overlapped_" + train)
            assert overlapped_labels(target, train, "narrow")[0] == [
                row.label for row in label_synsets(target) if getattr(row, flag)]
    with pytest.raises(ValueError, match="unknown overlap rule"):
        overlapped_labels("coco80", "imagenet1k", rule="loose")


def test_build_script_sense_fixes_match_the_committed_file():
    script = _load_script()
    assert {fix.wnid: fix.meant_synset for fix in sense_fixes()} == {
        wnid: name for wnid, (name, _) in script.SENSE_FIXES.items()}
