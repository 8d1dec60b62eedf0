"""Single-to-multi "overlapped classes" (Tables 3, 4 and 8), read from committed WordNet data.

The paper reports single-to-multi results (train on ImageNet, test on MS-COCO / NUS-WIDE) "with" and "without
overlapped classes" but never defines them. ``protocols.md`` fixes a reproducible definition:

1. every target label (COCO-80, NUS-WIDE-81) has one WordNet 3.0 noun synset, chosen by hand
   (kite -> ``kite.n.03`` the toy, mouse -> ``mouse.n.04`` the computer mouse, NUS plane -> ``airplane.n.01``);
2. an ImageNet class's WordNet id is ``'n'`` + its 8-digit WordNet 3.0 noun offset;
3. a target label is *overlapped* with a training class list if its synset is one of the training classes or a
   hypernym of one (COCO dog overlaps ImageNet-1k through its 118 dog breeds); otherwise *non-overlapped*. This
   is the **broad** rule (``rule="broad"``, the default, used for every evaluation split);
4. an ImageNet class means the synset its prompt name and images show: for 7 classes whose WordNet id names
   another sense (ImageNet-1k "tea cup" is ``cup.n.06``, a punch; "television" is ``television.n.02``, the
   broadcasting system) ``imagenet_sense_fixes.tsv`` gives the synset meant (:func:`sense_fixes`), so "tea cup"
   overlaps COCO cup and "television" COCO tv.

The **narrow** rule (``rule="narrow"``) counts a class as overlapping a label only when the class *is* the label:
the same (fixed) synset, or a prompt name equal to the label's name up to case and a plural "s". It exists for
Table 8's "first 15k ImageNet-21k classes that do not overlap NUS-WIDE": the broad rule leaves only 9,752 of the
21,843 classes (NUS-WIDE's animal, plants, person, food... are broad), the narrow one 21,756.

Evaluation reports all labels, the overlapped subset and the non-overlapped subset (ranking over the subset's
labels only, every test image kept). WordNet is not needed at run time: ``scripts/build_overlap.py`` computed two
files once, which this module reads:

* ``overlap_wordnet.tsv``: per target label, the synset chosen, its wnid and definition, and whether it is
  overlapped with ImageNet-1k / the full ImageNet-21k (and through how many classes);
* ``overlap_imagenet_classes.tsv``: every ImageNet-21k / 1k class that overlaps some target label under either
  rule, with those labels, so that overlap with *any* ImageNet class list (e.g. a 21k subset) can be computed;
* ``imagenet_sense_fixes.tsv``: the classes of step 4.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache

from adds.data.registry import resource_table

__all__ = [
    "OVERLAP_RULES",
    "OVERLAP_TARGETS",
    "LabelSynset",
    "SenseFix",
    "label_synsets",
    "overlapped_labels",
    "overlap_indices",
    "classes_overlapping",
    "imagenet_wnids",
    "sense_fixes",
]

#: target vocabularies with a committed synset choice, in their official label order.
OVERLAP_TARGETS = ("coco80", "nuswide81")
#: ``"broad"``: the class is the label's synset or a hyponym of it; ``"narrow"``: the class is the label.
OVERLAP_RULES = ("broad", "narrow")
_TRAIN_SETS = ("imagenet1k", "imagenet21k")


@dataclass(frozen=True)
class LabelSynset:
    """The WordNet 3.0 noun synset chosen for a target label."""

    label: str
    synset: str  # nltk-style name, e.g. "kite.n.03"
    wnid: str  # "n" + 8-digit offset, e.g. "n03621473"
    definition: str
    overlapped_imagenet1k: bool  # broad rule
    overlapped_imagenet21k: bool
    narrow_overlapped_imagenet1k: bool = False
    narrow_overlapped_imagenet21k: bool = False


@dataclass(frozen=True)
class SenseFix:
    """An ImageNet class whose WordNet id names another sense than its prompt name and images."""

    wnid: str
    prompt_name: str
    wordnet_synset: str  # the sense of the wnid, e.g. "cup.n.06" (a punch)
    meant_synset: str  # the sense the overlap rules use, e.g. "teacup.n.02"
    meant_wnid: str
    reason: str


def _check_target(target: str, rule: str = "broad") -> None:
    if target not in OVERLAP_TARGETS:
        raise ValueError(f"no overlap data for target {target!r}; available: {list(OVERLAP_TARGETS)}")
    if rule not in OVERLAP_RULES:
        raise ValueError(f"unknown overlap rule {rule!r}; expected one of {list(OVERLAP_RULES)}")


@cache
def _label_table() -> dict[str, tuple[LabelSynset, ...]]:
    table: dict[str, list[LabelSynset]] = {target: [] for target in OVERLAP_TARGETS}
    for row in resource_table("overlap_wordnet.tsv"):
        table[row["target"]].append(LabelSynset(
            label=row["label"], synset=row["synset"], wnid=row["wnid"], definition=row["definition"],
            overlapped_imagenet1k=row["overlapped_imagenet1k"] == "1",
            overlapped_imagenet21k=row["overlapped_imagenet21k"] == "1",
            narrow_overlapped_imagenet1k=row["narrow_overlapped_imagenet1k"] == "1",
            narrow_overlapped_imagenet21k=row["narrow_overlapped_imagenet21k"] == "1",
        ))
    return {target: tuple(rows) for target, rows in table.items()}


@cache
def _class_table(rule: str = "broad") -> dict[str, dict[str, frozenset[str]]]:
    """wnid -> target -> the target labels the class overlaps under ``rule`` (broad: the labels whose synset is
    the class or one of its hypernyms; narrow: the labels the class is)."""
    suffix = "" if rule == "broad" else "_narrow"
    table = {}
    for row in resource_table("overlap_imagenet_classes.tsv"):
        labels = {target: frozenset(label for label in row[target + suffix].split("|") if label)
                  for target in OVERLAP_TARGETS}
        if any(labels.values()):
            table[row["wnid"]] = labels
    return table


@cache
def sense_fixes() -> tuple[SenseFix, ...]:
    """The ImageNet classes whose overlap uses the sense of their prompt name, not of their WordNet id."""
    return tuple(SenseFix(**row) for row in resource_table("imagenet_sense_fixes.tsv"))


@cache
def imagenet_wnids(train: str) -> tuple[str, ...]:
    """The WordNet ids of ``"imagenet1k"`` (standard index order) or ``"imagenet21k"`` (fall11 order, 21,843)."""
    if train == "imagenet1k":
        return tuple(row["wnid"] for row in resource_table("imagenet1k_index_wnid_name_lemmas.tsv"))
    if train == "imagenet21k":
        return tuple(row["wnid"] for row in resource_table("imagenet21k_goog_21843_wnid_lemmas.tsv"))
    raise ValueError(f"unknown ImageNet class set {train!r}; expected one of {list(_TRAIN_SETS)}")


def label_synsets(target: str) -> list[LabelSynset]:
    """The per-label synset choice for ``target`` (``"coco80"`` or ``"nuswide81"``), in the official label order."""
    _check_target(target)
    return list(_label_table()[target])


def classes_overlapping(target: str, wnids: Iterable[str] | None = None, rule: str = "broad") -> set[str]:
    """The ImageNet classes (of ``wnids``, default all known) that overlap some ``target`` label under ``rule``."""
    _check_target(target, rule)
    table = _class_table(rule)
    candidates = table if wnids is None else wnids
    return {wnid for wnid in candidates if table.get(wnid, {}).get(target)}


def overlapped_labels(target: str = "coco80", train: str | Iterable[str] = "imagenet1k",
                      rule: str = "broad") -> tuple[list[str], list[str]]:
    """Split ``target``'s labels into (overlapped, non-overlapped) with respect to a training class list.

    Args:
        target: ``"coco80"`` or ``"nuswide81"``.
        train: ``"imagenet1k"``, ``"imagenet21k"`` or an iterable of ImageNet WordNet ids (e.g. the classes of a
            subset written by :func:`adds.data.imagenet.build_imagenet21k_subset`).
        rule: ``"broad"`` (default; a label is overlapped when a training class is it or a kind of it) or
            ``"narrow"`` (only when a training class is it).

    Returns:
        Two lists of label names, each in the target's official order.
    """
    _check_target(target, rule)
    wnids = imagenet_wnids(train) if isinstance(train, str) else tuple(train)
    table = _class_table(rule)
    hit: set[str] = set()
    for wnid in wnids:
        hit.update(table.get(wnid, {}).get(target, ()))
    labels = [row.label for row in _label_table()[target]]
    return [label for label in labels if label in hit], [label for label in labels if label not in hit]


def overlap_indices(vocabulary: Sequence[str], target: str = "coco80", train: str | Iterable[str] = "imagenet1k",
                    rule: str = "broad") -> tuple[list[int], list[int]]:
    """Indices into ``vocabulary`` of the (overlapped, non-overlapped) labels; every vocabulary label must be a
    ``target`` label (a clear error names the ones that are not)."""
    overlapped, non_overlapped = overlapped_labels(target, train, rule)
    known = set(overlapped) | set(non_overlapped)
    unknown = [label for label in vocabulary if label not in known]
    if unknown:
        raise ValueError(f"labels {unknown[:5]}{'...' if len(unknown) > 5 else ''} are not {target} labels; "
                         "overlap is defined only for the official label names")
    chosen = set(overlapped)
    return ([i for i, label in enumerate(vocabulary) if label in chosen],
            [i for i, label in enumerate(vocabulary) if label not in chosen])
