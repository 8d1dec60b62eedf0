"""Head overhead and label scale: ADDS forward vs the bare image tower (issue 6, item 3).

For ``k`` labels (default 80 = MS-COCO, 1006 = NUS-WIDE, 4585 = the RAM tag list, 21843 = ImageNet-21k) this script
compares, in one run and interleaved:

* **bare**: ``towers.clip.encode_image`` -- what a plain CLIP zero-shot pipeline pays per image;
* **full**: ``ADDS(images, label_embeddings)`` -- the same tower with every token projected, the DM-decoder stack
  (six layers, Eq. 5) and the shared ``Linear(D, 1)`` (paper Fig. 2);
* **head dm / head ml**: ``forward_head`` alone on precomputed tokens, DM-decoder vs the ML-Decoder baseline layer
  (Table 5) with the same sizes.

The label embeddings are random unit vectors of the joint dimension ``D`` (the head's cost does not depend on
their values; the text side is measured in ``text_cache.py``). Towers have random weights (same cost as CLIP's).

Reported per ``k``: the head overhead ``full / bare - 1`` (median of per-round ratios), the DM/ML head time ratio,
FLOPs of each (counted with :class:`torch.utils.flop_counter.FlopCounterMode` on meta tensors -- on real CPU tensors
the counter misses ``nn.MultiheadAttention``'s fast path and ``scaled_dot_product_attention``), and the peak
resident memory of a fresh process that runs the bare tower and then the full model at that ``k``
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``; one subprocess per ``k`` so that peaks do not mix).

Large vocabularies run at ``--large-k-batch`` images (default 1): the head's cost grows with ``batch x k``.

Examples::

    python benchmarks/head_overhead.py --quick
    python benchmarks/head_overhead.py --labels 80 1006 4585 21843 --batch 8 --repeats 3 --profile-k 1006
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import (  # benchmarks/ is on sys.path when run
    count_flops,
    environment,
    interleaved_times,
    median_ratio,
    write_result,
)

from adds.config import config_to_dict
from adds.decoder import DecoderConfig
from adds.model import ADDS, ADDSConfig
from adds.towers import TowerConfig, Towers, load_towers

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path(__file__).parent / "results" / "head_overhead.json"
#: The issue's goals: overhead at most 10 % for every k up to 1006 labels.
OVERHEAD_GOAL = 0.10
OVERHEAD_GOAL_MAX_K = 1006


@dataclass(frozen=True)
class HeadBenchConfig:
    """What to measure.

    Attributes:
        model: open_clip ViT (random weights) at its own input size.
        labels: vocabulary sizes ``k``.
        batch: images per forward for ``k <= large_k``.
        large_k: vocabularies larger than this run with ``large_k_batch`` images.
        large_k_batch: images per forward for large vocabularies (the goal: 21k labels at batch 1).
        decoder: the DM-decoder stack (paper: 6 layers); the ML-Decoder comparison uses the same sizes.
        compare_ml: also time and count the ML-Decoder head.
        memory: measure the peak RSS of a fresh subprocess per ``k``.
        profile_k: if set, profile one full forward at this ``k`` with ``torch.profiler`` (top operators).
        repeats, warmup: timed and untimed rounds; medians are reported.
        threads: ``torch.set_num_threads`` (``None``: torch's default).
        seed: seed of towers, head and inputs.
    """

    model: str = "ViT-B-32"
    labels: tuple[int, ...] = (80, 1006, 4585, 21843)
    batch: int = 8
    large_k: int = 1006
    large_k_batch: int = 1
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    compare_ml: bool = True
    memory: bool = True
    profile_k: int | None = None
    repeats: int = 3
    warmup: int = 1
    threads: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.labels or min(self.labels) < 1:
            raise ValueError(f"labels must be positive vocabulary sizes, got {self.labels}")
        if self.batch < 1 or self.large_k_batch < 1 or self.repeats < 1 or self.warmup < 0:
            raise ValueError("batch, large_k_batch and repeats must be >= 1 and warmup >= 0")

    def batch_for(self, k: int) -> int:
        return self.batch if k <= self.large_k else self.large_k_batch






def random_label_embeddings(k: int, dim: int, seed: int) -> torch.Tensor:
    """``(k, dim)`` random unit vectors standing in for prompt-ensembled label embeddings."""
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(k, dim, generator=generator), dim=-1)


def build(config: HeadBenchConfig, towers: Towers | None = None) -> tuple[ADDS, ADDS | None]:
    """The DM-decoder model (and the ML-Decoder one, sharing the towers), in eval mode."""
    towers = towers or load_towers(TowerConfig(model=config.model, pretrained=None, seed=config.seed))
    torch.manual_seed(config.seed)
    dm = ADDS(ADDSConfig(decoder=config.decoder), towers=towers).eval()
    ml = None
    if config.compare_ml:
        ml = ADDS(ADDSConfig(decoder=replace(config.decoder, kind="ml")), towers=towers).eval()
    return dm, ml


def _bare(towers: Towers, images: torch.Tensor) -> torch.Tensor:
    """Plain CLIP: normalise and ``encode_image`` (what a zero-shot CLIP pipeline runs per image)."""
    mean = torch.tensor(towers.mean, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(towers.std, device=images.device).view(1, 3, 1, 1)
    return towers.clip.encode_image((images - mean) / std)  # (B, D)




def meta_copy(model: ADDS | None) -> ADDS | None:
    """A copy of ``model`` on the meta device: FLOPs can be counted on it without memory or compute."""
    return None if model is None else copy.deepcopy(model).to("meta")


def flops_for(meta_dm: ADDS, meta_ml: ADDS | None, k: int, batch: int) -> dict[str, float]:
    """FLOPs of bare tower, full model and the heads at ``k`` labels, counted on meta copies (see :func:`meta_copy`).

    On real CPU tensors ``FlopCounterMode`` misses ``nn.MultiheadAttention``'s fast path, so counting is done here.
    """
    size, dim = meta_dm.towers.image_size, meta_dm.towers.embed_dim
    images = torch.empty(batch, 3, size, size, device="meta")
    tokens = torch.empty(batch, meta_dm.towers.tokens_per_image, meta_dm.towers.token_dim, device="meta")
    labels = torch.empty(k, dim, device="meta")
    with torch.no_grad():
        out = {
            "bare": count_flops(lambda: _bare(meta_dm.towers, images)),
            "full": count_flops(lambda: meta_dm(images, labels)),
            "head_dm": count_flops(lambda: meta_dm.forward_head(tokens, labels)),
        }
        if meta_ml is not None:
            out["head_ml"] = count_flops(lambda: meta_ml.forward_head(tokens, labels))
    return out


def depth_table(dm: ADDS, config: HeadBenchConfig, depths: tuple[int, ...] = (1, 3, 6)) -> list[dict]:
    """FLOP overhead of the full model over the bare tower per decoder depth (Table 5 compares 1, 3, 6 layers)."""
    meta_towers = meta_copy(dm).towers
    rows = []
    for layers in depths:
        head_config = replace(config, decoder=replace(config.decoder, num_layers=layers), compare_ml=False)
        model = meta_copy(build(head_config, meta_towers)[0])
        for k in config.labels:
            flops = flops_for(model, None, k, 1)
            rows.append({"layers": layers, "k": k, "flop_overhead": flops["full"] / flops["bare"] - 1.0})
    return rows


def _status_mib(field_name: str) -> float | None:
    """A ``VmRSS``/``VmHWM`` line of ``/proc/self/status`` in MiB (``None`` off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024.0  # kB -> MiB
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (``VmHWM``) to the current RSS; False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory_probe(config: HeadBenchConfig, k: int, batch: int) -> dict[str, float]:
    """Run in a fresh process: resident memory (MiB) after loading, and the peak of the bare tower and of the full
    model at ``k`` labels, each measured from a reset peak mark (Linux ``clear_refs``), so that the transient peak of
    building the model does not hide them. Without ``clear_refs`` only the process-wide ``ru_maxrss`` is reported.
    """
    dm, _ = build(replace(config, compare_ml=False))
    labels = random_label_embeddings(k, dm.towers.embed_dim, config.seed)
    size = dm.towers.image_size
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(config.seed))
    out: dict[str, float] = {"loaded_mib": _status_mib("VmRSS") or 0.0}
    resettable = _reset_peak()
    with torch.no_grad():
        _bare(dm.towers, images)
        if resettable:
            out["bare_peak_mib"] = _status_mib("VmHWM") or 0.0
            _reset_peak()
        logits = dm(images, labels)
        if resettable:
            out["full_peak_mib"] = _status_mib("VmHWM") or 0.0
            out["head_extra_mib"] = out["full_peak_mib"] - out["bare_peak_mib"]
    out["process_max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB
    if not torch.isfinite(logits).all():
        raise RuntimeError(f"non-finite logits at k={k}")
    return out


def _memory_in_subprocess(config: HeadBenchConfig, k: int, batch: int) -> dict[str, float]:
    """Start this script with ``--memory-probe`` so that each ``k`` gets its own peak-RSS counter."""
    command = [
        sys.executable, str(Path(__file__).resolve()), "--memory-probe", str(k), str(batch),
        "--probe-config", json.dumps(config_to_dict(config)),
    ]
    env = dict(os.environ)
    if config.threads is not None:
        env["OMP_NUM_THREADS"] = str(config.threads)
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        return {"error": f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:] or ''}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def profile_forward(dm: ADDS, k: int, batch: int, seed: int, rows: int = 12) -> dict:
    """Top operators (self CPU time) of one full forward at ``k`` labels, from ``torch.profiler``."""
    labels = random_label_embeddings(k, dm.towers.embed_dim, seed)
    size = dm.towers.image_size
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        dm(images, labels)  # warm-up
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            dm(images, labels)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    top = [{"op": e.key, "self_cpu_share": e.self_cpu_time_total / total, "calls": e.count} for e in events[:rows]]
    return {"k": k, "batch": batch, "top_ops": top}


def run(config: HeadBenchConfig) -> dict:
    """Time, count and (optionally) memory-probe every ``k``; returns the JSON-able result."""
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    dm, ml = build(config)
    meta_dm, meta_ml = meta_copy(dm), meta_copy(ml)
    towers = dm.towers
    size, dim = towers.image_size, towers.embed_dim
    rows = []
    for k in config.labels:
        batch = config.batch_for(k)
        generator = torch.Generator().manual_seed(config.seed)
        images = torch.rand(batch, 3, size, size, generator=generator)  # (B, 3, S, S) in [0, 1]
        labels = random_label_embeddings(k, dim, config.seed)  # (k, D)
        with torch.no_grad():
            tokens = dm.forward_features(images)  # (B, T, D)
            cases = {
                "bare": lambda: _bare(towers, images),  # noqa: B023 -- used inside this iteration only
                "full": lambda: dm(images, labels),  # noqa: B023
                "head_dm": lambda: dm.forward_head(tokens, labels),  # noqa: B023
            }
            if ml is not None:
                cases["head_ml"] = lambda: ml.forward_head(tokens, labels)  # noqa: B023
            times = interleaved_times(cases, config.repeats, config.warmup, f"k={k} batch={batch}")
        flops = flops_for(meta_dm, meta_ml, k, batch)
        median = {name: statistics.median(values) for name, values in times.items()}
        row = {
            "k": k,
            "batch": batch,
            "seconds": times,
            "median_seconds": median,
            "images_per_second": {name: batch / value for name, value in median.items() if name in ("bare", "full")},
            "overhead": median_ratio(times, "full", "bare") - 1.0,
            "flops": flops,
            "flop_overhead": flops["full"] / flops["bare"] - 1.0,
        }
        if ml is not None:
            row["time_ratio_dm_over_ml"] = median_ratio(times, "head_dm", "head_ml")
            row["flop_ratio_dm_over_ml"] = flops["head_dm"] / flops["head_ml"]
        if config.memory:
            row["memory"] = _memory_in_subprocess(config, k, batch)
        logger.info("k=%d batch=%d overhead %.2f (FLOPs %.2f)", k, batch, row["overhead"], row["flop_overhead"])
        rows.append(row)
    result = {
        "benchmark": "head_overhead",
        "config": config_to_dict(config),
        "environment": environment(),
        "tower": {"model": config.model, "image_size": size, "embed_dim": dim, "tokens": towers.tokens_per_image},
        "label_embeddings": "random unit vectors (cost does not depend on their values)",
        "rows": rows,
        "head_flops_per_label_per_image": _per_label_flops(rows),
    }
    result["labels_for_10_percent_overhead"] = (
        0.1 * rows[0]["flops"]["bare"] / rows[0]["batch"] / result["head_flops_per_label_per_image"]
        if result["head_flops_per_label_per_image"] else None
    )
    result["flop_overhead_by_layers"] = depth_table(dm, config)
    result["goals"] = _goals(rows)
    if config.profile_k is not None:
        result["profile"] = profile_forward(dm, config.profile_k, config.batch_for(config.profile_k), config.seed)
    return result


def _per_label_flops(rows: list[dict]) -> float | None:
    """Slope of head FLOPs per image over ``k`` (what one more label costs for one image)."""
    points = sorted({(r["k"], r["flops"]["head_dm"] / r["batch"]) for r in rows})
    if len(points) < 2:
        return None
    (k0, f0), (k1, f1) = points[0], points[-1]
    return (f1 - f0) / (k1 - k0)


def _goals(rows: list[dict]) -> dict:
    small = [r for r in rows if r["k"] <= OVERHEAD_GOAL_MAX_K]
    out: dict = {}
    if small:
        out["overhead_le_10_percent_up_to_1006_labels"] = all(r["overhead"] <= OVERHEAD_GOAL for r in small)
    big = [r for r in rows if r["k"] >= 21843 and r["batch"] == 1 and "memory" in r]
    if big:
        out["21k_labels_batch_1_fits"] = all("error" not in r["memory"] for r in big)
    return out




def format_table(result: dict) -> str:
    """The ratios as a Markdown table (one row per vocabulary size)."""
    lines = [
        "| k | batch | overhead full/bare - 1 | FLOP overhead | head DM / ML time | DM / ML FLOPs "
        "| peak RSS bare -> full |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        memory = row.get("memory", {})
        if "error" in memory:
            mem = f"failed: {memory['error']}"
        elif "full_peak_mib" in memory:
            mem = f"{memory['bare_peak_mib']:.0f} -> {memory['full_peak_mib']:.0f} MiB"
        elif memory:
            mem = f"process max {memory['process_max_rss_mib']:.0f} MiB"
        else:
            mem = "-"
        dm_ml = row.get("time_ratio_dm_over_ml")
        dm_ml_flops = row.get("flop_ratio_dm_over_ml")
        lines.append(
            f"| {row['k']} | {row['batch']} | {row['overhead']:+.0%} | {row['flop_overhead']:+.0%} "
            f"| {'-' if dm_ml is None else f'{dm_ml:.2f}'} | {'-' if dm_ml_flops is None else f'{dm_ml_flops:.2f}'} "
            f"| {mem} |"
        )
    per_label = result["head_flops_per_label_per_image"]
    if per_label:
        lines.append("")
        lines.append(f"head: {per_label / 1e6:.1f} MFLOP per label per image; the bare tower is "
                     f"{result['rows'][0]['flops']['bare'] / result['rows'][0]['batch'] / 1e9:.2f} GFLOP per image, "
                     f"so the head alone reaches 10 % of it at k = {result['labels_for_10_percent_overhead']:.0f}")
    by_layers = result.get("flop_overhead_by_layers", [])
    if by_layers:
        ks = sorted({row["k"] for row in by_layers})
        lines += ["", "FLOP overhead by decoder depth (Table 5: 1, 3, 6 layers):",
                  "| layers | " + " | ".join(f"k={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
        for layers in sorted({row["layers"] for row in by_layers}):
            cells = {row["k"]: row["flop_overhead"] for row in by_layers if row["layers"] == layers}
            lines.append(f"| {layers} | " + " | ".join(f"{cells[k]:+.0%}" for k in ks) + " |")
    lines.append(f"goals: {result['goals']}")
    if "profile" in result:
        lines.append(f"profile of one full forward at k={result['profile']['k']}:")
        for op in result["profile"]["top_ops"]:
            lines.append(f"  {op['self_cpu_share']:6.1%}  {op['op']} (x{op['calls']})")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " Prints a table of ratios and writes JSON.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = HeadBenchConfig()
    parser.add_argument("--model", default=defaults.model, help="open_clip ViT (random weights)")
    parser.add_argument("--labels", nargs="+", type=int, default=list(defaults.labels), help="vocabulary sizes k")
    parser.add_argument("--batch", type=int, default=defaults.batch, help="images per forward for k <= --large-k")
    parser.add_argument("--large-k", type=int, default=defaults.large_k, help="k above this uses --large-k-batch")
    parser.add_argument("--large-k-batch", type=int, default=defaults.large_k_batch,
                        help="images per forward for large vocabularies")
    parser.add_argument("--layers", type=int, default=defaults.decoder.num_layers, help="decoder layers (paper: 6)")
    parser.add_argument("--no-ml", action="store_true", help="skip the ML-Decoder comparison")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--profile-k", type=int, default=None, help="profile one full forward at this k")
    parser.add_argument("--repeats", type=int, default=defaults.repeats, help="timed rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=defaults.warmup, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="k = 80 and 1006 at batch 2, 2 rounds, no profile")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default: {DEFAULT_OUT})")
    parser.add_argument("--memory-probe", nargs=2, type=int, metavar=("K", "BATCH"),
                        help="internal: print the peak-RSS probe of one setting as JSON and exit")
    parser.add_argument("--probe-config", default=None, help="internal: the config of --memory-probe as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    if args.memory_probe:
        from adds.config import config_from_dict

        config = config_from_dict(HeadBenchConfig, json.loads(args.probe_config)) if args.probe_config else \
            HeadBenchConfig()
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        print(json.dumps(memory_probe(config, *args.memory_probe)))
        return 0
    decoder = replace(HeadBenchConfig().decoder, num_layers=args.layers)
    if args.quick:
        config = HeadBenchConfig(model=args.model, labels=(80, 1006), batch=2, decoder=decoder, repeats=2,
                                 warmup=1, threads=args.threads, memory=not args.no_memory, compare_ml=not args.no_ml)
    else:
        config = HeadBenchConfig(
            model=args.model, labels=tuple(args.labels), batch=args.batch, large_k=args.large_k,
            large_k_batch=args.large_k_batch, decoder=decoder, compare_ml=not args.no_ml, memory=not args.no_memory,
            profile_k=args.profile_k, repeats=args.repeats, warmup=args.warmup, threads=args.threads,
        )
    result = run(config)
    write_result(result, format_table(result), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
