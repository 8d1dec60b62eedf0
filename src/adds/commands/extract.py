"""``adds extract``: run the frozen image tower once per image and store its tokens (see :mod:`adds.features`)."""

from __future__ import annotations

import argparse
import os
import sys

from adds.commands._options import UsageError, parse_levels

_EPILOG = """\
examples:
  # MS-COCO 2014 val at 448 px on ViT-B-32 (levels 0 and 1: 1 + 4 crops per image)
  adds extract --data-kind coco --data-root /data/coco2014 --split val \\
      --model ViT-B-32-quickgelu --pretrained openai --input-size 448 --out cache/coco-val-448

  # your own data, with the towers and pyramid of a trained checkpoint
  adds extract --data-kind manifest --data-root my_images.csv --checkpoint runs/my-run/best \\
      --input-size 448 --out cache/mine-448

  # training cache with 4 views per image: the plain image + 3 augmented copies (flip, RandAugment, Cutout);
  # training draws one view per image per epoch (data.views: 4 in the train config)
  adds extract --data-kind coco --data-root /data/coco2014 --split train \
      --model ViT-B-32-quickgelu --pretrained openai --input-size 224 --views 4 --out cache/coco-train-224-v4

  # 8 GPUs on one node: each rank extracts every 8th shard; re-running resumes unfinished shards
  torchrun --nproc_per_node 8 -m adds extract --data-kind nuswide --data-root /data/nuswide --split train \\
      --model ViT-L-14-336-quickgelu --pretrained openai --input-size 672 --out cache/nus-train-672

The cache directory holds manifest.json, images.json and shard-XXXXX.bin/.json pairs (docs/feature-cache.md).
"""


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "extract",
        help="cache the frozen image tower's tokens of a dataset (run once, train many times)",
        description=(
            "Squash-resize every image of a dataset to --input-size, run the frozen CLIP image tower on its\n"
            "Pyramid-Forwarding crops and store the tokens (fp16, memory-mapped shards with a manifest) for\n"
            "`adds train` / `adds eval`. Images that cannot be loaded are skipped and counted. Re-running with\n"
            "the same arguments skips finished shards; other settings on an existing cache are refused unless\n"
            "--overwrite. Under torchrun, RANK / WORLD_SIZE split the shards and LOCAL_RANK picks the GPU."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = parser.add_argument_group("dataset (see docs/datasets.md)")
    data.add_argument("--data-kind", required=True, metavar="KIND",
                      help="coco | nuswide | imagenet | manifest (your own CSV/JSONL of image,labels)")
    data.add_argument("--data-root", required=True, metavar="PATH",
                      help="dataset root directory; for --data-kind manifest the .csv/.jsonl file")
    data.add_argument("--split", default="train",
                      help="coco: train|val; nuswide: train|test; imagenet: train|val; ignored for manifests "
                      "(default: %(default)s)")
    data.add_argument("--labels", default=None,
                      help="label-set variant: nuswide seen925|unseen81|all1006, imagenet 1k or a class-list file, "
                      "manifest: a vocabulary file. The cache does not depend on it: the same images with another "
                      "label set reuse the cache")
    data.add_argument("--limit", type=int, default=None, help="only the first N images (debugging)")

    model = parser.add_argument_group("towers and Pyramid-Forwarding")
    model.add_argument("--model", default="ViT-B-32-quickgelu",
                       help="open_clip model name (default: %(default)s; ignored with --checkpoint)")
    model.add_argument("--pretrained", default=None, metavar="TAG|FILE|none",
                       help="open_clip pretrained tag, a local weights file, or 'none' for random weights "
                       "(default: openai; with --checkpoint: replaces the recorded tower weights, e.g. a local file)")
    model.add_argument("--checkpoint", default=None, metavar="DIR",
                       help="take towers and pyramid levels from an ADDS checkpoint directory")
    model.add_argument("--tower-cache-dir", default=None, metavar="DIR",
                       help="where open_clip looks for / stores downloaded weights")
    model.add_argument("--unaligned", action="store_true",
                       help="store raw-width tokens instead of tokens in the joint space (ablation, Tables 6/9)")
    model.add_argument("--input-size", type=int, required=True, metavar="PX",
                       help="images are resized to PX x PX before Pyramid-Forwarding (paper: 224, 448, 640, 1344)")
    model.add_argument("--levels", default=None, metavar="0,1,...",
                       help="pyramid levels to keep (Table 7), e.g. '0' or '0,1,2'; default: every level the input "
                       "size allows (or the checkpoint's)")

    views = parser.add_argument_group("augmented views (docs/feature-cache.md)")
    views.add_argument("--views", type=int, default=1, metavar="K",
                       help="store K views per image: view 0 the plain image, views 1..K-1 augmented with "
                       "horizontal flip, RandAugment (2 ops, magnitude 9) and Cutout (RandomErasing); training "
                       "with data.views: K draws one view per image per epoch. The towers run K times per image and "
                       "the cache is K times larger (default: %(default)s, no augmentation)")
    views.add_argument("--augment-seed", type=int, default=0, metavar="S",
                       help="seed of the augmented views: the same seed gives the same views (default: %(default)s)")
    views.add_argument("--no-flip", action="store_true", help="augmented views without the horizontal flip")
    views.add_argument("--no-randaugment", action="store_true", help="augmented views without RandAugment")
    views.add_argument("--no-cutout", action="store_true", help="augmented views without Cutout")

    run = parser.add_argument_group("run")
    run.add_argument("--out", required=True, metavar="DIR", help="cache directory (created)")
    run.add_argument("--batch-size", type=int, default=32,
                     help="images per tower batch; each is crops x views tower inputs (default: %(default)s)")
    run.add_argument("--workers", type=int, default=0, help="image-decoding worker processes (default: %(default)s)")
    run.add_argument("--shard-size", type=int, default=1024,
                     help="images per shard, the unit of resumption (default: %(default)s)")
    run.add_argument("--dtype", choices=("float16", "float32"), default="float16",
                     help="stored dtype (default: %(default)s)")
    run.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto: cuda if available; under "
                     "torchrun cuda:LOCAL_RANK)")
    run.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                     help="fp16 autocast for the towers on CUDA (default: on)")
    run.add_argument("--overwrite", action="store_true",
                     help="replace an existing cache made with other settings instead of refusing")
    run.add_argument("--verify", choices=("size", "full"), default="size",
                     help="check of the finished cache: 'size' (fast: sidecars and byte sizes) or 'full' "
                     "(also SHA-256 of every shard) (default: %(default)s)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run_extract)


def _device(choice: str, local_rank: int):
    import torch

    if choice == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(choice)
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {choice}: CUDA is not available on this machine")
    return device


def _build_model(args: argparse.Namespace, levels: tuple[int, ...] | None):
    from dataclasses import replace

    from adds.decoder import DecoderConfig
    from adds.model import ADDS, ADDSConfig
    from adds.pyramid import PyramidConfig
    from adds.towers import TowerConfig

    pretrained = args.pretrained
    if pretrained is not None and pretrained.lower() == "none":
        pretrained = None
    if args.checkpoint is not None:
        weights = None if args.pretrained is None else pretrained
        model = ADDS.from_pretrained(args.checkpoint, tower_weights=weights)
        if args.levels is not None:
            config = replace(model.config, pyramid=replace(model.config.pyramid, levels=levels))
            model = ADDS(config, towers=model.towers)
        return model
    towers = TowerConfig(model=args.model, pretrained="openai" if args.pretrained is None else pretrained,
                         cache_dir=args.tower_cache_dir, aligned=not args.unaligned)
    # Only forward_features is used: the smallest decoder keeps construction cheap.
    decoder = DecoderConfig(num_layers=1, ffn_dim=8)
    return ADDS(ADDSConfig(towers=towers, decoder=decoder, pyramid=PyramidConfig(levels)))


def _augment_summary(settings: dict) -> str:
    parts = [name for name in ("flip", "randaugment", "cutout") if settings.get(name)]
    return (", ".join(parts) or "none") + f", seed {settings.get('seed')}"


def _summary(store, dataset, seconds: float) -> str:
    manifest = store.manifest
    size = sum(path.stat().st_size for path in store.path.glob("shard-*.bin"))
    lines = [
        f"feature cache   {store.path}",
        f"dataset         {dataset.name}: {len(dataset)} images, {len(dataset.vocabulary)} labels",
        f"stored          {len(store)} images",
        f"failed          {len(store.failed)} images (unreadable files, listed in the shard sidecars)",
        f"tokens / image  {manifest['num_tokens']} = {manifest['crops']} crops "
        f"(levels {manifest['pyramid']['levels']}) "
        f"x {manifest['tokens_per_crop']} tokens, dim {manifest['token_dim']}, {manifest['dtype']}",
        f"views / image   {store.views}" + (" (view 0 plain, the others augmented: "
                                                 f"{_augment_summary(manifest.get('augment') or {})})"
                                                 if store.views > 1 else ""),
        f"size on disk    {size / 2**20:.1f} MiB in {len(manifest['shards'])} shard(s)",
        f"time            {seconds:.1f} s",
    ]
    for path, reason in store.failed[:5]:
        lines.append(f"  failed: {path}: {reason}")
    return "\n".join(lines)


def run_extract(args: argparse.Namespace) -> int:
    import time

    from adds.data.base import SquashResize
    from adds.data.registry import DatasetConfig, load_dataset
    from adds.features import ExtractConfig, FeatureCacheError, FeatureStore, extract_features
    from adds.towers import WeightsUnavailableError

    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    started = time.perf_counter()
    try:
        if args.checkpoint is not None and args.unaligned:
            raise ValueError("--unaligned cannot be combined with --checkpoint (the checkpoint fixes the towers)")
        from adds.data.augment import AugmentConfig

        augment = AugmentConfig(flip=not args.no_flip, randaugment=not args.no_randaugment, cutout=not args.no_cutout,
                                seed=args.augment_seed)
        config = ExtractConfig(input_size=args.input_size, batch_size=args.batch_size, num_workers=args.workers,
                               shard_size=args.shard_size, dtype=args.dtype, amp=args.amp, views=args.views,
                               augment=augment)
        levels = parse_levels(args.levels, default_word="all")
        device = _device(args.device, local_rank)
        dataset = load_dataset(
            DatasetConfig(kind=args.data_kind, root=args.data_root, split=args.split, labels=args.labels,
                          limit=args.limit),
            transform=SquashResize(args.input_size),
        )
        model = _build_model(args, levels).to(device)
        store = extract_features(model, dataset, args.out, config, rank=rank, world_size=world_size,
                                 progress=rank == 0 and not args.no_progress, overwrite=args.overwrite)
        if store is None:
            print(f"adds extract: rank {rank}/{world_size} finished its shards; the cache in {args.out} is complete "
                  "once every rank has finished")
            return 0
        if args.verify == "full":
            store = FeatureStore.open(args.out, verify="full")
    except UsageError as error:
        print(f"adds extract: error: {error}", file=sys.stderr)
        return 2
    except (FeatureCacheError, ValueError, FileNotFoundError, WeightsUnavailableError) as error:
        print(f"adds extract: error: {error}", file=sys.stderr)
        return 1
    print(_summary(store, dataset, time.perf_counter() - started))
    return 0
