"""Sharding a tagging run over processes with ``torchrun`` (PyTorch's launcher; no scheduler of our own).

Launched by ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` in the environment), every process finds the same
sorted file list, takes every ``WORLD_SIZE``-th file starting at its ``RANK`` (:meth:`Shard.take`), and tags it on
its own device (``cuda:LOCAL_RANK`` when CUDA is used). The processes coordinate through a gloo process group --
CPU only, a barrier and one gather of small Python objects, so it works the same on CPUs and GPUs:

* with ``--output FILE`` each rank writes its records to its own part file ``FILE.part<R>-of-<W>.jsonl``
  (appended to on ``--resume``); after a barrier rank 0 merges every part into ``FILE`` in input order and removes
  the parts;
* without it, the records are gathered on rank 0, which prints them in input order.

Either way the merged output equals a one-process run's (same records, same order).
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["Shard", "in_input_order", "join_torchrun", "part_files", "part_path"]

logger = logging.getLogger("adds.tagger")

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """This process's place in a (possibly one-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def take(self, items: Sequence[T]) -> list[T]:
        """This rank's share: items ``rank, rank + W, rank + 2W, ...`` (deterministic, balanced within one)."""
        return list(items[self.rank::self.world_size])

    def barrier(self) -> None:
        if self.is_distributed:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, value: Any) -> list[Any] | None:
        """Every rank's ``value`` on rank 0 (rank order), ``None`` on the others; ``[value]`` in one process."""
        if not self.is_distributed:
            return [value]
        import torch.distributed as dist

        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(value, out, dst=0)
        return out

    def leave(self) -> None:
        if self.is_distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def join_torchrun(timeout_minutes: float = 24 * 60.0) -> Shard:
    """This process's :class:`Shard`: from torchrun's environment (joining a gloo group), else the only one.

    The timeout is long because ranks wait at the final barrier for the slowest shard.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Shard()
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    try:
        shard = Shard(*(int(os.environ.get(name, "0")) for name in names))
    except ValueError:
        values = ", ".join(f"{name}={os.environ.get(name)!r}" for name in names)
        raise ValueError(f"torchrun's {', '.join(names)} must be integers, got {values}") from None
    if not 0 <= shard.rank < shard.world_size:
        raise ValueError(f"RANK={shard.rank} is outside WORLD_SIZE={shard.world_size}")
    if shard.is_distributed:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="gloo", timeout=timedelta(minutes=timeout_minutes))
        logger.debug("tagging shard %d of %d", shard.rank, shard.world_size)
    return shard


def part_path(output: str | os.PathLike, shard: Shard) -> Path:
    """The part file of ``shard`` for the output ``FILE``: ``FILE.part<R>-of-<W>.jsonl``."""
    return Path(f"{os.fspath(output)}.part{shard.rank}-of-{shard.world_size}.jsonl")


def part_files(output: str | os.PathLike) -> list[Path]:
    """Every part file of ``output`` left by sharded runs (any world size), sorted."""
    pattern = glob.escape(os.fspath(output)) + ".part*-of-*.jsonl"
    return sorted(Path(p) for p in glob.glob(pattern))


def in_input_order(records: Sequence[Any], order: Sequence[str]) -> list[Any]:
    """``records`` (with a ``path``) sorted by the position of their path in ``order``; records of paths not in
    ``order`` keep their relative order at the end (a stable sort)."""
    position = {path: index for index, path in enumerate(order)}
    return sorted(records, key=lambda record: position.get(record.path, len(position)))
