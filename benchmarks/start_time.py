"""Start time of the ``adds`` CLI (issue 12, item 2): ``adds --help`` and an argument error vs the eager imports.

Each case is a fresh interpreter (``python -m adds ...`` with this checkout's ``src`` on ``PYTHONPATH``), timed
wall-clock from spawn to exit; cases run in rounds with the order rotated, and the table reports the median per
case and the median per-round ratio to the eager import. The *eager* case is ``python -c "import adds.model"``:
what ``import adds`` cost before the package became lazy (its ``__init__`` imported ``adds.model`` and with it
torch and open_clip). ``tests/test_cli_start.py`` checks (via ``sys.modules``, not time) that the fast cases import
no torch.

Example::

    python benchmarks/start_time.py --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import environment, write_result  # benchmarks/ is on sys.path when run

SRC = Path(__file__).resolve().parents[1] / "src"
DEFAULT_OUT = Path(__file__).parent / "results" / "start_time.json"
GOAL_S = 1.0

CASES: dict[str, list[str]] = {
    "adds --help": ["-m", "adds", "--help"],
    "adds tag --help": ["-m", "adds", "tag", "--help"],
    "adds tag --batch-size 0 x.jpg (argument error)": ["-m", "adds", "tag", "--batch-size", "0", "x.jpg"],
    "adds serve --port 0 (argument error)": ["-m", "adds", "serve", "--port", "0"],
    "eager: import adds.model (before)": ["-c", "import adds.model"],
}
EAGER = "eager: import adds.model (before)"


def time_case(args: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def measure(repeats: int) -> dict[str, list[float]]:
    names = list(CASES)
    for name in names:  # warm the file cache (a first start reads torch's files from disk)
        time_case(CASES[name])
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(time_case(CASES[name]))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    times = measure(args.repeats)
    rows = ["| case | median s | min-max s | eager / case (median of rounds) | goal < 1 s |", "|---|---|---|---|---|"]
    summary = {}
    for name, values in times.items():
        median = statistics.median(values)
        speedup = statistics.median(e / v for e, v in zip(times[EAGER], values, strict=True))
        summary[name] = {"median_s": median, "speedup_vs_eager": speedup}
        goal = "-" if name == EAGER else ("met" if median < GOAL_S else "missed")
        rows.append(f"| {name} | {median:.3f} | {min(values):.3f}-{max(values):.3f} | {speedup:.1f}x | {goal} |")
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    result = {"environment": environment(), "load_average_1min": load, "repeats": args.repeats, "times": times,
              "summary": summary}
    write_result(result, "\n".join(rows) + f"\n(load average {load})", args.out)


if __name__ == "__main__":
    main()
