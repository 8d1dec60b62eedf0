#!/usr/bin/env python
"""Rebuild ``src/adds/resources/overlap_wordnet.tsv`` and ``overlap_imagenet_classes.tsv`` from WordNet 3.0.

The paper reports single-to-multi results "with" and "without overlapped classes" (Tables 3, 4, 8) without a
definition; ``protocols.md`` fixes one:

1. every target label (COCO-80, NUS-WIDE-81) gets one WordNet 3.0 noun synset, chosen by hand (``CHOICES`` below);
2. an ImageNet class's WordNet id is ``'n'`` + its 8-digit WordNet 3.0 noun offset;
3. a target label is *overlapped* with a training set if its synset is one of the training classes or a hypernym
   of one (COCO "dog" overlaps ImageNet-1k through its 118 dog breeds): the **broad** rule;
4. a handful of ImageNet classes are photographed and prompted as another sense than their WordNet id says
   (ImageNet-1k's "tea cup" is ``cup.n.06``, a punch; "television" is ``television.n.02``, the broadcasting
   system): ``SENSE_FIXES`` below gives each the synset its prompt name and images mean, and both rules use it.

The **narrow** rule (for Table 8's "first 15k ImageNet-21k classes not overlapping NUS-WIDE", which the broad
rule cannot give: it leaves 9.7k) counts a class as overlapping a label only when it *is* the label: the same
(fixed) synset, or a prompt name equal to the label's name up to case and a plural "s".

WordNet is read straight from the database files of Debian's ``wordnet-base`` package (``apt-get install
wordnet-base`` puts WordNet 3.0 in ``/usr/share/wordnet``; any WordNet 3.0 ``dict/`` folder works, e.g. nltk's
``corpora/wordnet``). Nothing is downloaded and nothing here is needed at run time: the library reads the two
TSV files this script writes (:mod:`adds.data.overlap`). Synset names follow nltk's convention
(``lemma.n.NN``, NN = the sense number of the synset's first lemma).

Usage::

    python scripts/build_overlap.py                       # write the two files
    python scripts/build_overlap.py --senses kite mouse   # list the noun senses of words, to review a choice
    python scripts/build_overlap.py --wordnet /path/to/dict --out src/adds/resources
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESOURCES = REPO / "src" / "adds" / "resources"

# One noun synset per target label. Comments say why where the first sense is not the one meant.
CHOICES: dict[str, dict[str, str]] = {
    "coco80": {
        "person": "person.n.01",
        "bicycle": "bicycle.n.01",
        "car": "car.n.01",  # the motor car, not a railway car
        "motorcycle": "motorcycle.n.01",
        "airplane": "airplane.n.01",
        "bus": "bus.n.01",
        "train": "train.n.01",  # the railway train
        "truck": "truck.n.01",
        "boat": "boat.n.01",
        "traffic light": "traffic_light.n.01",
        "fire hydrant": "fireplug.n.01",
        "stop sign": "street_sign.n.01",  # no synset of its own; its nearest hypernym
        "parking meter": "parking_meter.n.01",
        "bench": "bench.n.01",
        "bird": "bird.n.01",
        "cat": "cat.n.01",  # true cats: domestic cats and wildcats (lynx, cougar); big cats are not hyponyms
        "dog": "dog.n.01",
        "horse": "horse.n.01",
        "sheep": "sheep.n.01",
        "cow": "cattle.n.01",  # COCO's cows are cattle of either sex; cow.n.01 is the mature female only
        "elephant": "elephant.n.01",
        "bear": "bear.n.01",
        "zebra": "zebra.n.01",
        "giraffe": "giraffe.n.01",
        "backpack": "backpack.n.01",
        "umbrella": "umbrella.n.01",
        "handbag": "bag.n.04",  # the woman's handbag / purse
        "tie": "necktie.n.01",
        "suitcase": "bag.n.06",  # suitcase, traveling bag
        "frisbee": "frisbee.n.01",
        "skis": "ski.n.01",
        "snowboard": "snowboard.n.01",
        "sports ball": "ball.n.01",  # the game equipment
        "kite": "kite.n.03",  # the toy, not the bird of prey
        "baseball bat": "baseball_bat.n.01",
        "baseball glove": "baseball_glove.n.01",
        "skateboard": "skateboard.n.01",
        "surfboard": "surfboard.n.01",
        "tennis racket": "tennis_racket.n.01",
        "bottle": "bottle.n.01",
        "wine glass": "wineglass.n.01",
        "cup": "cup.n.01",  # the drinking vessel
        "fork": "fork.n.01",  # cutlery
        "knife": "knife.n.01",  # edge tool
        "spoon": "spoon.n.01",
        "bowl": "bowl.n.03",  # the dish, not its contents (bowl.n.01) or the bowling ball
        "banana": "banana.n.02",  # the fruit, not the plant
        "apple": "apple.n.01",  # the fruit
        "sandwich": "sandwich.n.01",
        "orange": "orange.n.01",  # the fruit
        "broccoli": "broccoli.n.02",  # the vegetable (food), as photographed on plates
        "carrot": "carrot.n.03",  # the root eaten as a vegetable
        "hot dog": "hotdog.n.02",  # the sandwich, not the frankfurter or the show-off
        "pizza": "pizza.n.01",
        "donut": "doughnut.n.02",
        "cake": "cake.n.03",  # the baked dessert
        "chair": "chair.n.01",
        "couch": "sofa.n.01",
        "potted plant": "pot_plant.n.01",
        "bed": "bed.n.01",  # the furniture
        "dining table": "dining_table.n.01",
        "toilet": "toilet.n.02",  # the bowl fixture, not the room
        "tv": "television_receiver.n.01",
        "laptop": "laptop.n.01",
        "mouse": "mouse.n.04",  # the computer mouse
        "remote": "remote_control.n.01",
        "keyboard": "computer_keyboard.n.01",
        "cell phone": "cellular_telephone.n.01",
        "microwave": "microwave.n.02",  # the oven
        "oven": "oven.n.01",
        "toaster": "toaster.n.02",  # the appliance
        "sink": "sink.n.01",
        "refrigerator": "refrigerator.n.01",
        "book": "book.n.02",  # the physical volume
        "clock": "clock.n.01",
        "vase": "vase.n.01",
        "scissors": "scissors.n.01",
        "teddy bear": "teddy.n.01",
        "hair drier": "hand_blower.n.01",  # blow dryer
        "toothbrush": "toothbrush.n.01",
    },
    "nuswide81": {
        "airport": "airport.n.01",
        "animal": "animal.n.01",
        "beach": "beach.n.01",
        "bear": "bear.n.01",
        "birds": "bird.n.01",
        "boats": "boat.n.01",
        "book": "book.n.02",
        "bridge": "bridge.n.01",  # the structure
        "buildings": "building.n.01",
        "cars": "car.n.01",
        "castle": "castle.n.02",  # the fortified building
        "cat": "cat.n.01",
        "cityscape": "cityscape.n.01",
        "clouds": "cloud.n.02",  # the visible mass of water in the sky
        "computer": "computer.n.01",
        "coral": "coral.n.04",  # the marine animal (reefs are photographed)
        "cow": "cattle.n.01",
        "dancing": "dancing.n.01",
        "dog": "dog.n.01",
        "earthquake": "earthquake.n.01",
        "elk": "wapiti.n.01",  # the American elk (Flickr usage); elk.n.01 is the European elk, i.e. the moose
        "fire": "fire.n.01",  # the combustion
        "fish": "fish.n.01",  # the animal
        "flags": "flag.n.01",  # the emblem
        "flowers": "flower.n.01",  # the plant
        "food": "food.n.02",  # solid food
        "fox": "fox.n.01",  # the animal
        "frost": "frost.n.01",  # ice crystals
        "garden": "garden.n.01",
        "glacier": "glacier.n.01",
        "grass": "grass.n.01",
        "harbor": "seaport.n.01",  # harbour town / port; harbor.n.01 (sheltered water) is its part
        "horses": "horse.n.01",
        "house": "house.n.01",  # the dwelling
        "lake": "lake.n.01",
        "leaf": "leaf.n.01",
        "map": "map.n.01",
        "military": "military.n.01",  # the armed forces
        "moon": "moon.n.01",  # the Earth's natural satellite
        "mountain": "mountain.n.01",
        "nighttime": "night.n.01",  # nighttime is a lemma of night.n.01
        "ocean": "ocean.n.01",
        "person": "person.n.01",
        "plane": "airplane.n.01",  # aircraft, not the geometric plane or the tool
        "plants": "plant.n.02",  # the organism
        "police": "police.n.01",
        "protest": "protest.n.02",  # a public demonstration
        "railroad": "railroad_track.n.01",  # the track, as photographed
        "rainbow": "rainbow.n.01",
        "reflection": "reflection.n.05",  # the image reflected (e.g. in water)
        "road": "road.n.01",
        "rocks": "rock.n.01",  # a lump of stone
        "running": "run.n.07",  # the act of running (lemmas run, running)
        "sand": "sand.n.01",
        "sign": "sign.n.02",  # a public display of a message (street signs are hyponyms)
        "sky": "sky.n.01",
        "snow": "snow.n.02",  # the precipitation lying on the ground
        "soccer": "soccer.n.01",
        "sports": "sport.n.01",
        "statue": "statue.n.01",
        "street": "street.n.01",
        "sun": "sun.n.01",  # the star
        "sunset": "sunset.n.01",  # the time of day (sundown)
        "surf": "surf.n.01",  # breaking waves
        "swimmers": "swimmer.n.02",  # anyone swimming (swimmer.n.01 is the competitive athlete)
        "tattoo": "tattoo.n.02",  # the skin design
        "temple": "temple.n.01",  # the place of worship
        "tiger": "tiger.n.02",  # the big cat
        "tower": "tower.n.01",
        "town": "town.n.01",
        "toy": "plaything.n.01",  # lemmas plaything, toy
        "train": "train.n.01",
        "tree": "tree.n.01",
        "valley": "valley.n.01",
        "vehicle": "vehicle.n.01",
        "water": "body_of_water.n.01",  # water as photographed: seas, lakes, rivers (water.n.01 is the substance)
        "waterfall": "waterfall.n.01",
        "wedding": "wedding.n.01",  # the ceremony
        "whales": "whale.n.02",  # the sea mammal
        "window": "window.n.01",  # the framework of glass
        "zebra": "zebra.n.01",
    },
}

# ImageNet classes whose WordNet id names another sense than the one their images and prompt name show.
# wnid -> (the synset meant, why). Found by listing every class whose prompt name contains a target label's name
# (or equals it) without falling under that label, and reading the glosses (docs/datasets.md, "Sense fixes").
SENSE_FIXES: dict[str, tuple[str, str]] = {
    "n07930864": ("teacup.n.02", "ImageNet-1k 'tea cup': the wnid is cup.n.06 (a punch served in a pitcher)"),
    "n04404412": ("television_receiver.n.01", "ImageNet-1k 'television': the wnid is television.n.02, the "
                  "telecommunication system; the images are TV sets"),
    "n04553703": ("sink.n.01", "ImageNet-1k 'sink': the wnid is washbasin.n.02 (a basin for washing the hands, "
                  "under basin.n.01); the images are sinks"),
    "n09428293": ("beach.n.01", "ImageNet-1k 'beach': the wnid is seashore.n.01 (under shore.n.01); the images "
                  "and the prompt are beaches"),
    "n01887787": ("cattle.n.01", "ImageNet-21k 'cow': the wnid is cow.n.02 (mature female of any mammal with "
                  "bulls); prompted 'cow', as COCO's and NUS-WIDE's cattle"),
    "n00021265": ("food.n.02", "ImageNet-21k 'food': the wnid is food.n.01 (any nutrient substance, a hypernym of "
                  "NUS-WIDE's solid food); prompted 'food'"),
    "n11508382": ("snow.n.02", "ImageNet-21k 'snow': the wnid is snow.n.01 (falling snow); prompted 'snow', as "
                  "NUS-WIDE's snow"),
}


@dataclass
class Synset:
    offset: int
    lemmas: list[str]
    hypernyms: list[int]  # '@' and '@i' pointers to noun synsets
    gloss: str

    @property
    def wnid(self) -> str:
        return f"n{self.offset:08d}"


class WordNet:
    """The noun part of a WordNet 3.0 database folder (``data.noun`` + ``index.noun``)."""

    def __init__(self, folder: Path) -> None:
        self.synsets: dict[int, Synset] = {}
        self.senses: dict[str, list[int]] = {}
        with open(folder / "data.noun", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(" "):  # licence header
                    continue
                body, _, gloss = line.partition(" | ")
                fields = body.split()
                offset, count = int(fields[0]), int(fields[3], 16)
                lemmas = [fields[4 + 2 * i] for i in range(count)]
                position = 4 + 2 * count
                pointers = int(fields[position])
                hypernyms = []
                for i in range(pointers):
                    symbol, target, pos = fields[position + 1 + 4 * i: position + 4 + 4 * i]
                    if symbol in ("@", "@i") and pos == "n":
                        hypernyms.append(int(target))
                self.synsets[offset] = Synset(offset, lemmas, hypernyms, gloss.strip())
        with open(folder / "index.noun", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(" "):
                    continue
                fields = line.split()
                lemma, synset_count = fields[0], int(fields[2])
                self.senses[lemma] = [int(offset) for offset in fields[-synset_count:]]
        self.hyponyms: dict[int, list[int]] = defaultdict(list)
        for synset in self.synsets.values():
            for parent in synset.hypernyms:
                self.hyponyms[parent].append(synset.offset)

    def name(self, offset: int) -> str:
        """nltk-style name: first lemma (lower-cased), ``n``, its sense number."""
        lemma = self.synsets[offset].lemmas[0].lower()
        lemma = lemma.split("(")[0]  # adjective markers never occur in nouns; kept for safety
        return f"{lemma}.n.{self.senses[lemma].index(offset) + 1:02d}"

    def by_name(self, name: str) -> Synset:
        lemma, pos, number = name.rsplit(".", 2)
        if pos != "n" or lemma not in self.senses or not 1 <= int(number) <= len(self.senses[lemma]):
            raise ValueError(f"no WordNet 3.0 noun synset {name!r}")
        synset = self.synsets[self.senses[lemma][int(number) - 1]]
        if self.name(synset.offset) != name:
            raise ValueError(f"{name!r} resolves to {self.name(synset.offset)!r}; use that name")
        return synset

    def subtree(self, offset: int) -> set[int]:
        """The synset and all its hyponyms (including instances), transitively."""
        seen, stack = {offset}, [offset]
        while stack:
            for child in self.hyponyms.get(stack.pop(), ()):
                if child not in seen:
                    seen.add(child)
                    stack.append(child)
        return seen


def read_wnids(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return [row["wnid"] for row in csv.DictReader(handle, delimiter="\t")]


def prompt_names() -> dict[str, str]:
    """wnid -> the name the text tower is prompted with before de-duplication (``adds.data.imagenet``): the
    open_clip clean name for ImageNet-1k classes, else the first WordNet lemma."""
    names = {}
    with open(RESOURCES / "imagenet21k_goog_21843_wnid_lemmas.tsv", encoding="utf-8") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            names[row["wnid"]] = row["wordnet_lemmas"].split(",")[0].strip().replace("_", " ")
    with open(RESOURCES / "imagenet1k_index_wnid_name_lemmas.tsv", encoding="utf-8") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            names[row["wnid"]] = row["openclip_name"]
    return names


def name_forms(label: str) -> set[str]:
    """A label's name, lower-cased, with and without a plural "s" (NUS-WIDE's "birds", COCO's "skis")."""
    name = label.lower()
    return {name, name[:-1] if name.endswith("s") else name + "s"}


def class_synsets(wordnet: WordNet, wnids: list[str]) -> dict[str, int]:
    """wnid -> the offset of the synset the class means: its own, or its ``SENSE_FIXES`` entry."""
    meant = {wnid: int(wnid[1:]) for wnid in wnids}
    for wnid, (name, _) in SENSE_FIXES.items():
        if wnid in meant:
            meant[wnid] = wordnet.by_name(name).offset
    return meant


def ancestors(wordnet: WordNet, offset: int) -> set[int]:
    """The synset and all its hypernyms (including instance hypernyms), transitively."""
    seen, stack = {offset}, [offset]
    while stack:
        for parent in wordnet.synsets[stack.pop()].hypernyms:
            if parent not in seen:
                seen.add(parent)
                stack.append(parent)
    return seen


def build(wordnet: WordNet, out: Path) -> None:
    in1k = read_wnids(RESOURCES / "imagenet1k_index_wnid_name_lemmas.tsv")
    in21k = read_wnids(RESOURCES / "imagenet21k_goog_21843_wnid_lemmas.tsv")
    for wnid in [*in1k, *in21k]:
        if int(wnid[1:]) not in wordnet.synsets:
            raise SystemExit(f"ImageNet class {wnid} is not a WordNet 3.0 noun synset: wrong WordNet version?")
    in1k_set, in21k_set = set(in1k), set(in21k)
    every = list(dict.fromkeys([*in21k, *in1k]))
    meant = class_synsets(wordnet, every)
    above = {wnid: ancestors(wordnet, offset) for wnid, offset in meant.items()}
    names = prompt_names()
    label_rows = []
    # wnid -> target -> rule -> labels
    classes: dict[str, dict[str, dict[str, list[str]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for target, choices in CHOICES.items():
        for label, name in choices.items():
            synset = wordnet.by_name(name)
            forms = name_forms(label)
            hits = {"broad": set(), "narrow": set()}
            for wnid in every:
                if synset.offset in above[wnid]:
                    hits["broad"].add(wnid)
                if meant[wnid] == synset.offset or names[wnid].lower() in forms:
                    hits["narrow"].add(wnid)
            for rule, wnids in hits.items():
                for wnid in wnids:
                    classes[wnid][target][rule].append(label)
            counts = []
            for rule in ("broad", "narrow"):
                n1k, n21k = len(hits[rule] & in1k_set), len(hits[rule] & in21k_set)
                counts += [str(int(n1k > 0)), str(n1k), str(int(n21k > 0)), str(n21k)]
            label_rows.append([target, label, name, synset.wnid, *counts, synset.gloss.replace("\t", " ")])
    with open(out / "overlap_wordnet.tsv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["target", "label", "synset", "wnid", "overlapped_imagenet1k", "n_imagenet1k_classes",
                         "overlapped_imagenet21k", "n_imagenet21k_classes", "narrow_overlapped_imagenet1k",
                         "narrow_n_imagenet1k_classes", "narrow_overlapped_imagenet21k", "narrow_n_imagenet21k_classes",
                         "definition"])
        writer.writerows(label_rows)
    order = {wnid: i for i, wnid in enumerate(in21k)}
    with open(out / "overlap_imagenet_classes.tsv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["wnid", "in_imagenet1k", *CHOICES, *(f"{target}_narrow" for target in CHOICES)])
        for wnid in sorted(classes, key=lambda w: (order.get(w, len(order)), w)):
            writer.writerow([wnid, str(int(wnid in in1k_set)),
                             *("|".join(classes[wnid][t]["broad"]) for t in CHOICES),
                             *("|".join(classes[wnid][t]["narrow"]) for t in CHOICES)])
    with open(out / "imagenet_sense_fixes.tsv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["wnid", "prompt_name", "wordnet_synset", "meant_synset", "meant_wnid", "reason"])
        for wnid, (name, reason) in SENSE_FIXES.items():
            writer.writerow([wnid, names[wnid], wordnet.name(int(wnid[1:])), name,
                             wordnet.by_name(name).wnid, reason])
    for target in CHOICES:
        rows = [row for row in label_rows if row[0] == target]
        for rule, column in (("broad", 4), ("narrow", 8)):
            under = sum(1 for w in classes if classes[w][target][rule] and w in in21k_set)
            print(f"{target} ({rule}): {sum(row[column] == '1' for row in rows)}/{len(rows)} overlapped with "
                  f"ImageNet-1k, {sum(row[column + 2] == '1' for row in rows)}/{len(rows)} with ImageNet-21k; "
                  f"{under} ImageNet-21k classes overlap its labels")
    print(f"wrote {out / 'overlap_wordnet.tsv'}, {out / 'overlap_imagenet_classes.tsv'} and "
          f"{out / 'imagenet_sense_fixes.tsv'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--wordnet", type=Path, default=Path("/usr/share/wordnet"),
                        help="WordNet 3.0 database folder with data.noun and index.noun (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=RESOURCES, help="output folder (default: %(default)s)")
    parser.add_argument("--senses", nargs="+", metavar="WORD", help="print the noun senses of WORDs and exit")
    args = parser.parse_args(argv)
    if not (args.wordnet / "data.noun").is_file():
        print(f"{args.wordnet}/data.noun not found: install WordNet 3.0 (apt-get install wordnet-base) or pass "
              "--wordnet", file=sys.stderr)
        return 2
    wordnet = WordNet(args.wordnet)
    if args.senses:
        for word in args.senses:
            for offset in wordnet.senses.get(word.lower().replace(" ", "_"), []):
                synset = wordnet.synsets[offset]
                print(f"{wordnet.name(offset):32s} {synset.wnid}  {', '.join(synset.lemmas)}: {synset.gloss[:100]}")
        return 0
    build(wordnet, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
