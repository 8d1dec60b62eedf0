"""Helpers shared by the benchmark scripts: where the numbers come from, and FLOP counting."""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import open_clip
import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["environment", "count_flops"]


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
