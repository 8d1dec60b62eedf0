"""Helpers shared by the benchmark scripts: where the numbers come from, and FLOP counting."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import open_clip
import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

__all__ = ["environment", "count_flops", "interleaved_times", "median_ratio", "write_result"]


def environment() -> dict:
    """Where the numbers come from (the ratios matter, absolute times on shared cores do not)."""
    return {
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def count_flops(fn: Callable[[], object]) -> float:
    """FLOPs counted by ``FlopCounterMode`` while ``fn`` runs (use meta tensors: every matmul is visible there)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())

def interleaved_times(cases: dict[str, Callable[[], object]], repeats: int, warmup: int, desc: str) -> dict:
    """Seconds per call of each case: ``warmup`` untimed rounds, then ``repeats`` rounds, case order rotated."""
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in tqdm(range(repeats), desc=desc, file=sys.stderr, leave=False):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            cases[name]()
            times[name].append(time.perf_counter() - start)
    return times


def median_ratio(times: dict[str, list[float]], numerator: str, denominator: str) -> float:
    """Median over rounds of ``time(numerator) / time(denominator)`` measured in the same round."""
    return statistics.median(a / b for a, b in zip(times[numerator], times[denominator], strict=True))


def write_result(result: dict, table: str, out: Path) -> None:
    """Print the table and write the result as JSON to ``out``."""
    print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
