"""ONNX export: onnxruntime (CPU) throughput vs PyTorch eager, and their logit difference (issue 12.7).

For each input plan (default: 224 px = one crop, and 448 px with levels 0, 1 = five crops on ViT-B-32) this script
exports ADDS (random tower weights, the paper's six-layer DM-decoder) with :func:`adds.export.export_onnx` and then,
in one run and interleaved (:func:`_common.interleaved_times`), times:

* **torch**: PyTorch eager, the path ``adds tag`` runs -- ``forward_head(forward_features(images), labels)`` under
  ``torch.inference_mode()`` (the decoder's blocked inference path);
* **onnxruntime**: ``InferenceSession.run`` on the exported file, CPU execution provider, all graph optimisations,
  ``intra_op_num_threads`` = torch's thread count, so both use the same cores.

Reported: images/s of each, the ratio onnxruntime / torch (median of per-round ratios), the max abs logit difference
on the benchmark's own inputs, the export time and the file size. Random weights cost the same as CLIP's; the label
embeddings are random unit vectors.

Examples::

    OMP_NUM_THREADS=1 python benchmarks/onnx_export.py --threads 1
    python benchmarks/onnx_export.py --quick      # tiny towers, seconds (what the smoke test runs)
    OMP_NUM_THREADS=1 python benchmarks/onnx_export.py --threads 1 --sizes 448 --repeats 1 --profile \
        --out benchmarks/results/onnx_export_profile.json   # where onnxruntime's time goes
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import environment, interleaved_times, median_ratio, write_result  # benchmarks/ is on sys.path

from adds.decoder import DecoderConfig
from adds.export import ExportConfig, export_onnx
from adds.model import ADDS, ADDSConfig
from adds.towers import TINY_MODEL, TowerConfig, load_towers

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path(__file__).parent / "results" / "onnx_export.json"


@dataclass(frozen=True)
class BenchConfig:
    """What to measure.

    Attributes:
        model: open_clip ViT (random weights).
        decoder: the head (default: the paper's six DM-decoder layers).
        plans: ``(input_size, levels)`` pairs; ``levels=None`` = every level the size allows.
        labels: ``k``, the number of label embeddings fed.
        batch: images per call.
        repeats / warmup: timed and untimed rounds.
    """

    model: str = "ViT-B-32-quickgelu"
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    plans: tuple[tuple[int, tuple[int, ...] | None], ...] = ((224, None), (448, None))
    labels: int = 80
    batch: int = 4
    repeats: int = 5
    warmup: int = 1

    @classmethod
    def quick(cls) -> BenchConfig:
        return cls(model=TINY_MODEL, decoder=DecoderConfig(num_layers=2, num_heads=2, ffn_dim=64),
                   plans=((32, None), (64, None)), labels=7, batch=2, repeats=2, warmup=1)


def run(config: BenchConfig, workdir: Path, profile: bool = False) -> dict:
    """Export and time every plan of ``config`` (files go to ``workdir``) -> the JSON record; ``profile`` adds
    onnxruntime's own profile of one call per plan (:func:`ort_profile`)."""
    import onnxruntime

    towers = load_towers(TowerConfig(model=config.model, pretrained=None, seed=0))
    model = ADDS(ADDSConfig(towers=towers.config, decoder=config.decoder), towers=towers).eval()
    generator = torch.Generator().manual_seed(0)
    labels = F.normalize(torch.randn(config.labels, towers.embed_dim, generator=generator), dim=-1)  # (k, D)
    rows = []
    for size, levels in config.plans:
        path = workdir / f"adds-{size}.onnx"
        exported = export_onnx(model, path, ExportConfig(input_size=size, levels=levels))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        images = torch.rand(config.batch, 3, size, size, generator=generator)  # (B, 3, s, s)
        feed = {"images": images.numpy(), "label_embeddings": labels.numpy()}
        pyramid = exported_pyramid(model, exported.levels)

        def torch_call(images=images, pyramid=pyramid):
            with torch.inference_mode():
                return model.forward_head(pyramid(images, towers.encode_image_tokens), labels)  # (B, k)

        def ort_call(feed=feed, session=session):
            return session.run(["logits"], feed)[0]  # (B, k)

        diff = float((torch.from_numpy(ort_call()) - torch_call()).abs().max())
        times = interleaved_times({"torch": torch_call, "onnxruntime": ort_call}, config.repeats, config.warmup,
                                  desc=f"{size}px")
        ratio = 1.0 / median_ratio(times, "onnxruntime", "torch")  # throughput ratio = time(torch) / time(ort)
        if profile:
            rows_profile = ort_profile(path, feed)
        rows.append({
            "input_size": size,
            "levels": list(exported.levels),
            "crops": exported.crops,
            "batch": config.batch,
            "labels": config.labels,
            "torch_images_per_s": config.batch / statistics.median(times["torch"]),
            "onnxruntime_images_per_s": config.batch / statistics.median(times["onnxruntime"]),
            "onnxruntime_over_torch_throughput": ratio,
            "max_abs_logit_diff": diff,
            "export_verify_max_abs_diff": exported.max_abs_diff,
            "export_seconds": exported.seconds,
            "file_mb": path.stat().st_size / 2**20,
            "times": times,
            **({"ort_profile": rows_profile} if profile else {}),
        })
    return {"environment": environment(), "onnxruntime": onnxruntime.__version__, "config": asdict(config),
            "rows": rows}


def ort_profile(path: Path, feed: dict) -> dict:
    """Share of kernel time per ONNX op type, and the five slowest nodes, in one profiled onnxruntime call."""
    import json

    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix(""))
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(["logits"], feed)  # warm-up, also profiled: both calls are summed, shares are what matters
    session.run(["logits"], feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    by_op: dict[str, float] = {}
    by_node: dict[str, float] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"]["op_name"]] = by_op.get(event["args"]["op_name"], 0.0) + event["dur"]
            by_node[event["name"]] = by_node.get(event["name"], 0.0) + event["dur"]
    total = sum(by_op.values()) or 1.0
    shares = {op: t / total for op, t in sorted(by_op.items(), key=lambda item: -item[1])}
    slowest = [name.removesuffix("_kernel_time") for name, _ in sorted(by_node.items(), key=lambda x: -x[1])[:5]]
    return {"op_share": shares, "slowest_nodes": slowest}


def exported_pyramid(model: ADDS, levels: tuple[int, ...]):
    from adds.pyramid import PyramidConfig, PyramidForwarding

    towers = model.towers
    return PyramidForwarding(towers.image_size, towers.mean, towers.std,
                             PyramidConfig(levels=levels, antialias=model.config.pyramid.antialias))


def table(result: dict) -> str:
    lines = [
        "| input | crops | batch | k | PyTorch eager img/s | onnxruntime img/s | onnxruntime / PyTorch "
        "| max abs logit diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['input_size']} px, levels {','.join(map(str, row['levels']))} | {row['crops']} | {row['batch']} "
            f"| {row['labels']} | {row['torch_images_per_s']:.2f} | {row['onnxruntime_images_per_s']:.2f} "
            f"| {row['onnxruntime_over_torch_throughput']:.2f}x | {row['max_abs_logit_diff']:.1e} |"
        )
    for row in result["rows"]:
        if "ort_profile" in row:
            shares = list(row["ort_profile"]["op_share"].items())[:4]
            top = ", ".join(f"{op} {100 * share:.0f} %" for op, share in shares)
            lines.append(f"\nonnxruntime profile, {row['input_size']} px: {top}; slowest nodes: "
                         + ", ".join(row["ort_profile"]["slowest_nodes"]))
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = BenchConfig()
    parser.add_argument("--model", default=defaults.model, help="open_clip ViT (random weights)")
    parser.add_argument("--sizes", nargs="+", type=int, default=[size for size, _ in defaults.plans],
                        help="input sizes (every pyramid level each allows)")
    parser.add_argument("--labels", type=int, default=defaults.labels, help="label embeddings fed (k)")
    parser.add_argument("--batch", type=int, default=defaults.batch, help="images per call")
    parser.add_argument("--layers", type=int, default=defaults.decoder.num_layers, help="decoder layers (paper: 6)")
    parser.add_argument("--repeats", type=int, default=defaults.repeats, help="timed rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=defaults.warmup, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads and onnxruntime's threads")
    parser.add_argument("--quick", action="store_true", help="tiny towers and head, 2 rounds (seconds)")
    parser.add_argument("--profile", action="store_true", help="add onnxruntime's per-op profile of each plan")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default: {DEFAULT_OUT})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        config = BenchConfig.quick()
    else:
        config = BenchConfig(model=args.model, decoder=DecoderConfig(num_layers=args.layers),
                             plans=tuple((size, None) for size in args.sizes), labels=args.labels, batch=args.batch,
                             repeats=args.repeats, warmup=args.warmup)
    with tempfile.TemporaryDirectory(prefix="adds-onnx-") as workdir:
        result = run(config, Path(workdir), profile=args.profile)
    write_result(result, table(result), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
