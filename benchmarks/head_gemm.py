"""The ADDS head against this machine's dense GEMM throughput (issue 12, item 4: goal >= 70 % at k >= 1,006).

In one run, interleaved: the head's inference forward (``ADDS.forward_head``: token projection, the paper's six
DM-decoder layers, shared FC; the blocked inference path of :mod:`adds.decoder`) on ViT-B-32-sized tokens
(``B x 50 x 512``) for ``k`` labels, and one float32 GEMM of the head's dominant shape (the FFN's
``(B * k, 512) x (512, 2048)``). The head's FLOPs are counted with ``FlopCounterMode`` on a meta copy; its achieved
FLOP/s divided by the GEMM's is the fraction of the machine's limit. Label embeddings and weights are random.

Examples::

    python benchmarks/head_gemm.py --labels 1006 --batch 8 --repeats 3
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import count_flops, environment, interleaved_times, write_result  # benchmarks/ is on sys.path

from adds.decoder import Decoder, DecoderConfig, SharedClassifier

DEFAULT_OUT = Path(__file__).parent / "results" / "head_gemm.json"


class Head(torch.nn.Module):
    """ADDS's trainable part on aligned tokens: ``token_proj`` (Linear D->D), DM-decoder, shared FC (as in
    ``ADDS.forward_head``, without the towers so that no tower has to be built)."""

    def __init__(self, dim: int, config: DecoderConfig) -> None:
        super().__init__()
        self.token_proj = torch.nn.Linear(dim, dim)
        self.decoder = Decoder(dim, config)
        self.classifier = SharedClassifier(dim)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.decoder(labels, self.token_proj(tokens)))  # (B, k)


def run(args: argparse.Namespace) -> dict:
    head = Head(args.dim, DecoderConfig(num_layers=args.layers)).eval()
    meta = copy.deepcopy(head).to("meta")
    rows = []
    for k in args.labels:
        tokens = torch.randn(args.batch, args.tokens, args.dim)
        labels = F.normalize(torch.randn(k, args.dim), dim=-1)
        flops = count_flops(lambda: meta(torch.empty(args.batch, args.tokens, args.dim, device="meta"),
                                         torch.empty(k, args.dim, device="meta")))  # noqa: B023
        a, b = torch.randn(args.batch * k, args.dim), torch.randn(args.dim, 4 * args.dim)
        gemm_flops = 2.0 * a.shape[0] * a.shape[1] * b.shape[1]

        def head_call():
            with torch.no_grad():
                head(tokens, labels)  # noqa: B023

        cases = {"head": head_call, "gemm": lambda: torch.mm(a, b)}  # noqa: B023
        times = interleaved_times(cases, repeats=args.repeats, warmup=1, desc=f"k={k}")
        fraction = statistics.median((flops / h) / (gemm_flops / g)
                                     for h, g in zip(times["head"], times["gemm"], strict=True))
        rows.append({"k": k, "batch": args.batch, "head_flops": flops, "gemm_shape": [a.shape[0], args.dim, b.shape[1]],
                     "seconds": times, "head_gflops_per_s": flops / statistics.median(times["head"]) / 1e9,
                     "gemm_gflops_per_s": gemm_flops / statistics.median(times["gemm"]) / 1e9,
                     "head_fraction_of_gemm": fraction})
    return {"rows": rows}


def table(result: dict) -> str:
    lines = ["| k | batch | head GFLOP | head GFLOP/s | GEMM GFLOP/s | head / GEMM | goal |",
             "|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        lines.append(f"| {row['k']} | {row['batch']} | {row['head_flops'] / 1e9:.1f} | "
                     f"{row['head_gflops_per_s']:.1f} | {row['gemm_gflops_per_s']:.1f} | "
                     f"{100 * row['head_fraction_of_gemm']:.0f} % | >= 70 % |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=int, nargs="+", default=[1006])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dim", type=int, default=512, help="joint embedding size (ViT-B-32: 512)")
    parser.add_argument("--tokens", type=int, default=50, help="tokens per image (ViT-B-32 at 224 px: 50)")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {"environment": environment(), "settings": vars(args) | {"out": str(args.out)}, **run(args)}
    write_result(result, table(result), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
