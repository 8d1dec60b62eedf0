"""Stopping a training run cleanly on SIGINT (Ctrl+C) / SIGTERM (``kill``, a cluster's time limit).

While :class:`StopSignals` is active, the first SIGINT or SIGTERM only records the request; the trainer finishes
the optimiser step it is in, writes a step-level checkpoint and returns (``TrainResult.interrupted`` names the
signal), and ``adds train`` exits with the shell's convention ``128 + signal``: 130 for SIGINT, 143 for SIGTERM,
without a traceback. A second SIGINT while the checkpoint is being written falls back to Python's default
(``KeyboardInterrupt``), so a stuck run can still be stopped at once.

Under torchrun every process gets the signal (torchrun forwards SIGTERM; Ctrl+C reaches the whole process group)
but not necessarily before the same step, so the trainer reduces the request over processes after each step
(:meth:`StopSignals.requested_anywhere`) and all processes stop after the same one.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import torch

__all__ = ["StopSignals", "exit_code"]

logger = logging.getLogger(__name__)

_HANDLED = (signal.SIGINT, signal.SIGTERM)


def exit_code(signum: int) -> int:
    """The shell's exit status for a process ended by ``signum``: 128 + number (SIGINT 130, SIGTERM 143)."""
    return 128 + int(signum)


class StopSignals:
    """Context manager turning SIGINT / SIGTERM into a stop request checked between optimiser steps.

    Outside the main thread (where Python cannot install handlers) it does nothing and ``requested`` stays
    ``None``.
    """

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in _HANDLED:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.requested = signum
        logger.warning("%s received: stopping after the current step and saving a checkpoint (Ctrl+C again to "
                       "stop at once)", signal.Signals(signum).name)

    def requested_anywhere(self, context) -> int | None:
        """The signal requested on any process of ``context`` (the largest number), or ``None``."""
        if not context.is_distributed:
            return self.requested
        from adds.train.distributed import all_reduce_max

        value = all_reduce_max(torch.tensor([self.requested or 0]), context).item()
        return int(value) or None
