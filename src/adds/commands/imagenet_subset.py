"""``adds imagenet-subset``: write the class list of an ImageNet training subset (Table 8's setup)."""

from __future__ import annotations

import argparse
import sys


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "imagenet-subset",
        help="write the class list of an ImageNet-1k/21k subset without a target vocabulary's classes (Table 8)",
        description="Build the class list of an ImageNet training subset: the first N classes (in the published "
        "order) that do not overlap a target vocabulary under a WordNet rule of docs/datasets.md, with at most M "
        "images each. Table 8: --source 21k --exclude nuswide81 --rule narrow --classes 15000 --images-per-class "
        "100 (the broad rule leaves only 9,752 classes). Train on it with a data config {kind: imagenet, root: "
        "ROOT, labels: OUT}. The lists of both rules are published in configs/imagenet_classes/.",
    )
    parser.add_argument("--root", help="ImageFolder root with WordNet-id folders; omit to build the list without "
                        "checking which classes have images on disk")
    parser.add_argument("--source", choices=("1k", "21k"), default="21k", help="class list to start from "
                        "(default: %(default)s)")
    parser.add_argument("--exclude", choices=("nuswide81", "coco80", "none"), default="nuswide81",
                        help="target vocabulary whose overlapping classes are left out (default: %(default)s)")
    parser.add_argument("--rule", choices=("broad", "narrow"), default="broad",
                        help="overlap rule: 'broad' leaves out every class that is a target label or a kind of one "
                        "(a dog breed for 'dog'); 'narrow' only the classes that are a target label (the same WordNet "
                        "synset or the same name) (default: %(default)s)")
    parser.add_argument("--classes", type=int, default=None, help="keep the first N remaining classes (default: all)")
    parser.add_argument("--images-per-class", type=int, default=None, help="at most M images per class (default: all)")
    parser.add_argument("--out", required=True, help="class-list file to write (TSV: wnid, name, max_images)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from adds.data.imagenet import ImageNetSubsetConfig, build_imagenet_subset

    exclude = None if args.exclude == "none" else args.exclude
    command = " ".join(["adds imagenet-subset", f"--source {args.source}", f"--exclude {args.exclude}",
                        f"--rule {args.rule}", *([f"--classes {args.classes}"] if args.classes else []),
                        *([f"--images-per-class {args.images_per_class}"] if args.images_per_class else []),
                        *(["--root ROOT"] if args.root else []), "--out OUT"])
    try:
        config = ImageNetSubsetConfig(args.classes, args.images_per_class, exclude, args.source, rule=args.rule)
        classes = build_imagenet_subset(args.root, config, args.out, command=command)
    except (ValueError, OSError) as error:
        print(f"adds imagenet-subset: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(classes)} classes to {args.out}")
    return 0
