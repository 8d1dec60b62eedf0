"""Overlapped decoding in ``adds tag``: the tagging path vs the model alone, and vs a hand-written CLIP loop (issue 12,
item 5).

200 generated JPEGs of mixed sizes (320x240 ... 1920x1080, portrait and landscape) are tagged, in one run with the
cases interleaved (:func:`_common.interleaved_times`), on an open_clip tower with random weights (nothing can be
downloaded here; random weights cost the same):

* **model only**: an ADDS head (the paper's six DM-decoder layers, k labels) on the images *pre-decoded* by
  :meth:`Tagger.prepare` outside the timing: :meth:`Tagger.score_prepared` + :meth:`Tagger.select`;
* **tag path**: :meth:`Tagger.tag_files` on the files -- what ``adds tag`` runs per batch (decode + squash in
  ``--workers`` threads, overlapping the model; bad files reported, order kept), without writing the output;
* **baseline tag path**: the same with the training-free CLIP baseline (:class:`adds.tagger.CLIPBaseline`);
* **..., fast decode**: both with ``TaggerConfig(fast_decode=True)`` (``adds tag --fast-decode``: 8-bit squash, pixels
  within ~2/255 of the exact path, :mod:`adds.tagger.decode`);
* **hand-written loop**: what a user would write instead: open_clip's own preprocessing in a ``DataLoader`` with
  the same number of worker processes and the same batch size, ``encode_image``, cosine with prompt embeddings
  computed once, a sigmoid -- no error handling, no thresholds.
* **decode only, threads / processes**: :meth:`Tagger.prepare` of every file, no model, in ``--workers`` threads
  (how ``tag_files`` decodes) and in as many ``DataLoader`` worker processes: whether the GIL limits the threads;
  **hand-written decode only**: the user's ``DataLoader`` of open_clip preprocessing alone (what its decode costs).

Goals: tag path >= 90 % of the model-only throughput; baseline tag path >= 95 % of the hand-written loop.

Examples::

    python benchmarks/decode_overlap.py --quick
    python benchmarks/decode_overlap.py --images 200 --repeats 2 --workers 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from _common import environment, interleaved_times, median_ratio, write_result  # benchmarks/ is on sys.path
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from adds.data.base import SquashResize
from adds.data.images import image_to_tensor, open_image
from adds.model import ADDS, ADDSConfig
from adds.pyramid import PyramidConfig
from adds.tagger import CLIPBaseline, Tagger, TaggerConfig
from adds.tagger.decode import pixels_of, squash_image
from adds.towers import TowerConfig, load_towers

DEFAULT_OUT = Path(__file__).parent / "results" / "decode_overlap.json"
SIZES = ((320, 240), (640, 480), (800, 600), (1024, 768), (1280, 960), (1600, 1200), (600, 900), (1920, 1080))
WORDS = ("cat dog car tree house beach mountain river city road person bicycle boat bird flower sky cloud snow "
         "forest street bridge train bus horse cow sheep chair table window door book cup bottle phone laptop "
         "clock lamp sofa bed kitchen garden park lake ocean sunset night rain grass sand rock wall fence sign "
         "light shadow red blue green yellow white black orange purple pink brown gray wood metal glass paper "
         "food pizza cake fruit apple banana bread coffee tea music guitar piano sport ball").split()


def make_jpegs(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` JPEGs of the mixed ``SIZES`` (gradients, blocks and noise, quality 90) -> their paths."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        width, height = SIZES[index % len(SIZES)]
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        base = np.stack([x * 255 / width, y * 255 / height, 128 + 100 * np.sin((x + y) / (20 + index % 7))], -1)
        for _ in range(6):  # a few flat blocks, like objects
            x0, y0 = rng.integers(0, width - 20), rng.integers(0, height - 20)
            base[y0:y0 + height // 4, x0:x0 + width // 5] = rng.integers(0, 256, 3)
        pixels = (base + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8)
        path = folder / f"img{index:03d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


class _OpenClipFiles(Dataset):
    """The user's dataset: open_clip's preprocessing (resize shortest side, centre crop, normalise) of each file."""

    def __init__(self, paths: list[Path], preprocess) -> None:
        self.paths, self.preprocess = paths, preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        with Image.open(self.paths[index]) as image:
            return self.preprocess(image.convert("RGB"))  # (3, S, S)


def hand_written_loop(clip, preprocess, text: torch.Tensor, paths: list[Path], batch: int, workers: int):
    """A plain open_clip zero-shot loop at ``batch`` images per step -> sigmoid scores ``(N, k)``."""
    loader = DataLoader(_OpenClipFiles(paths, preprocess), batch_size=batch, num_workers=workers)
    out = []
    with torch.no_grad():
        for images in loader:
            features = F.normalize(clip.encode_image(images), dim=-1)  # (b, D)
            out.append((100.0 * features @ text.T).sigmoid())  # (b, k)
    return torch.cat(out)


class _Prepared(Dataset):
    """``Tagger.prepare`` of each file, for the decode-only case in worker processes."""

    def __init__(self, tagger: Tagger, paths: list[Path]) -> None:
        self.size, self.paths = tagger.plan.input_size, paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return squash_image(self.paths[index], self.size)[0]


def decode_threads(tagger: Tagger, paths: list[Path], workers: int) -> int:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return sum(1 for _ in pool.map(tagger.prepare, paths))


def decode_processes(tagger: Tagger, paths: list[Path], workers: int, batch: int) -> int:
    loader = DataLoader(_Prepared(tagger, paths), batch_size=batch, num_workers=workers, collate_fn=list)
    return sum(len(items) for items in loader)


def _pixel_count(path: Path) -> int:
    with Image.open(path) as image:
        return image.size[0] * image.size[1]


def stage_times(path: Path, size: int, repeats: int = 5) -> dict:
    """Milliseconds of each step of squashing one image: decode, float conversion (NumPy's, the tagger's), float
    resize (the exact path), and the 8-bit resize of ``--fast-decode`` (median of ``repeats``)."""
    image = open_image(path)
    pixels = image_to_tensor(image)
    values = torch.from_numpy(np.array(image)).permute(2, 0, 1).unsqueeze(0)  # (1, 3, H, W) uint8, channels-last
    steps = {
        "PIL decode": lambda: open_image(path),
        "float conversion, NumPy (image_to_tensor)": lambda: image_to_tensor(image),
        "float conversion, tagger (pixels_of)": lambda: pixels_of(image),
        "float resize (SquashResize)": lambda: SquashResize(size)(pixels),
        "8-bit resize (--fast-decode)": lambda: F.interpolate(values, size=(size, size), mode="bicubic",
                                                               antialias=True),
    }
    out = {}
    for name, step in steps.items():
        step()
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            samples.append(1e3 * (time.perf_counter() - start))
        out[name] = statistics.median(samples)
    return {"image": list(image.size), "ms": out}


def run(args: argparse.Namespace, folder: Path) -> dict:
    paths = make_jpegs(folder, args.images)
    towers = load_towers(TowerConfig(model=args.model, pretrained=None))
    labels = list(WORDS[:args.labels])
    config = TaggerConfig(threshold=0.5, batch_size=args.batch, label_cache=False)
    model = ADDS(ADDSConfig(pyramid=PyramidConfig(levels=(0,))), towers=towers).eval()  # six DM-decoder layers
    adds = Tagger(model, config, labels=labels)
    baseline = Tagger(CLIPBaseline(towers), config, labels=labels)
    fast_config = replace(config, fast_decode=True)
    adds_fast = Tagger(model, fast_config, labels=labels)
    baseline_fast = Tagger(CLIPBaseline(towers), fast_config, labels=labels)
    prepared = [adds.prepare(path) for path in paths]  # pre-decoded once, outside the timing
    clip = towers.clip
    preprocess = open_clip.image_transform(towers.image_size, is_train=False, mean=towers.mean, std=towers.std)
    with torch.no_grad():
        text = F.normalize(clip.encode_text(towers.tokenizer([f"a photo of a {w}." for w in labels])), dim=-1)
    for tagger in (adds, baseline, adds_fast, baseline_fast):
        tagger.set_labels(labels)

    cases = {
        "model only": lambda: adds.select(adds.score_prepared(prepared, labels), labels),
        "tag path": lambda: list(adds.tag_files(paths, labels, workers=args.workers)),
        "baseline tag path": lambda: list(baseline.tag_files(paths, labels, workers=args.workers)),
        "tag path, fast decode": lambda: list(adds_fast.tag_files(paths, labels, workers=args.workers)),
        "baseline tag path, fast decode": lambda: list(baseline_fast.tag_files(paths, labels, workers=args.workers)),
        "hand-written loop": lambda: hand_written_loop(clip, preprocess, text, paths, args.batch, args.workers),
        "decode only, threads": lambda: decode_threads(adds, paths, args.workers),
        "decode only, threads, fast decode": lambda: decode_threads(adds_fast, paths, args.workers),
        "decode only, processes": lambda: decode_processes(adds, paths, args.workers, args.batch),
        "hand-written decode only": lambda: sum(len(b) for b in DataLoader(
            _OpenClipFiles(paths, preprocess), batch_size=args.batch, num_workers=args.workers)),
    }
    if args.decode_only:
        cases = {name: case for name, case in cases.items() if "decode only" in name}
    times = interleaved_times(cases, repeats=args.repeats, warmup=0, desc="decode overlap")
    records = list(adds.tag_files(paths, labels, workers=args.workers))
    assert [r.path for r in records] == [str(p) for p in paths] and all(r.ok for r in records)
    rates = {name: args.images / statistics.median(t) for name, t in times.items()}
    result = {
        "images": args.images, "sizes": [list(s) for s in SIZES], "model": args.model, "labels": len(labels),
        "batch": args.batch, "workers": args.workers, "seconds": times, "images_per_s": rates,
        "decode_threads_vs_processes": median_ratio(times, "decode only, processes", "decode only, threads"),
        "decode_fast_vs_exact": median_ratio(times, "decode only, threads", "decode only, threads, fast decode"),
        "decode_tagger_vs_hand_written": median_ratio(times, "hand-written decode only", "decode only, processes"),
    }
    sample = paths[:16]  # scores of the exact vs the --fast-decode pixels (ADDS head and CLIP baseline)
    result["fast_decode_max_score_diff"] = {
        "adds": float((adds.scores(sample) - adds_fast.scores(sample)).abs().max()),
        "baseline": float((baseline.scores(sample) - baseline_fast.scores(sample)).abs().max()),
    }
    if args.decode_only:
        largest = max(paths, key=_pixel_count)
        return result | {"stages": stage_times(largest, adds.plan.input_size)}
    return result | {
        "tag_vs_model_only": median_ratio(times, "model only", "tag path"),
        "baseline_vs_hand_written": median_ratio(times, "hand-written loop", "baseline tag path"),
        "tag_fast_vs_model_only": median_ratio(times, "model only", "tag path, fast decode"),
        "baseline_fast_vs_hand_written": median_ratio(times, "hand-written loop", "baseline tag path, fast decode"),
    }


def table(result: dict) -> str:
    part = result["run"]
    rates = part["images_per_s"]
    lines = [f"{part['images']} JPEGs, {part['model']} (random weights), batch {part['batch']}, {part['workers']} "
             f"decode workers, {result['environment']['torch_threads']} torch thread(s)", "",
             "| case | images/s |", "|---|---|"]
    lines += [f"| {name} | {rate:.2f} |" for name, rate in rates.items()]
    lines += ["", "| ratio | measured | goal |", "|---|---|---|",
              f"| decode only: threads / processes (throughput) | {100 * part['decode_threads_vs_processes']:.1f} % "
              "| (GIL check) |",
              f"| decode only: fast / exact decode, threads (throughput) | {part['decode_fast_vs_exact']:.2f}x | |",
              f"| decode only: tagger / open_clip preprocessing, processes (throughput) | "
              f"{100 * part['decode_tagger_vs_hand_written']:.1f} % | |"]
    if "fast_decode_max_score_diff" in part:
        lines += ["", "largest score difference, --fast-decode vs exact (16 images): "
                  + ", ".join(f"{name} {diff:.1e}" for name, diff in part["fast_decode_max_score_diff"].items())]
    if "stages" in part:
        stages = part["stages"]
        lines += ["", f"one {stages['image'][0]}x{stages['image'][1]} JPEG, ms: "
                  + ", ".join(f"{name} {ms:.1f}" for name, ms in stages["ms"].items())]
    if "tag_vs_model_only" not in part:
        return "\n".join(lines)
    lines += [f"| tag path / model only (throughput) | {100 * part['tag_vs_model_only']:.1f} % | >= 90 % |",
              f"| baseline tag path / hand-written open_clip loop | {100 * part['baseline_vs_hand_written']:.1f} % "
              "| >= 95 % |",
              f"| tag path, --fast-decode / model only | {100 * part['tag_fast_vs_model_only']:.1f} % | >= 90 % |",
              f"| baseline tag path, --fast-decode / hand-written loop | "
              f"{100 * part['baseline_fast_vs_hand_written']:.1f} % | >= 95 % |"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--model", default="ViT-B-32-quickgelu")
    parser.add_argument("--labels", type=int, default=80)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="40 images, 1 round")
    parser.add_argument("--decode-only", action="store_true", help="only the decode-only cases (no model runs)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.repeats = 40, 1
    if args.decode_only and args.out == DEFAULT_OUT:
        args.out = DEFAULT_OUT.with_name("decode_overlap_decode_only.json")
    torch.set_num_threads(args.threads)
    result = {"environment": environment(), "settings": vars(args) | {"out": str(args.out)}}
    with tempfile.TemporaryDirectory(prefix="adds-decode-") as folder:
        result["run"] = run(args, Path(folder))
    write_result(result, table(result), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
