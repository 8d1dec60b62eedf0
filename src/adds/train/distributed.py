"""torchrun / DDP plumbing: one entry point for single-process, multi-GPU and multi-node training.

``adds train`` is the same command in every case. Launched by ``torchrun`` (``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` in the environment) it joins the process group -- NCCL on GPUs, gloo on CPU -- and each process
takes ``cuda:LOCAL_RANK``; otherwise it runs as a single process without a process group::

    adds train --config configs/coco_vitl14-336_640.yaml                                   # one process
    torchrun --nproc_per_node=8 -m adds train --config configs/coco_vitl14-336_640.yaml    # 8 GPUs
    torchrun --nnodes=2 --nproc_per_node=8 --node_rank=$NODE_RANK \\
        --rdzv_backend=c10d --rdzv_endpoint=$MASTER_HOST:29500 -m adds train --config ...  # 2 nodes x 8 GPUs

Only the main process (rank 0) logs progress, writes metrics and checkpoints; the others wait at barriers.
The data order of an epoch is a function of ``(seed, epoch)`` (:func:`epoch_sampler`), split over the processes,
so a run can be resumed exactly and the global batch sequence does not depend on the number of processes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.utils.data.distributed import DistributedSampler

__all__ = [
    "DistributedContext",
    "launched_by_torchrun",
    "setup_distributed",
    "shutdown_distributed",
    "barrier",
    "all_reduce_max",
    "all_reduce_sum",
    "gather_rows",
    "epoch_sampler",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in a (possibly single-process) job.

    Attributes:
        rank: global rank (0 = main process).
        world_size: number of processes.
        local_rank: rank on this node (selects the GPU).
        device: the device this process computes on.
        backend: ``"nccl"`` / ``"gloo"`` when a process group was initialised, else ``None``.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.backend is not None


def launched_by_torchrun() -> bool:
    """True when ``RANK`` and ``WORLD_SIZE`` are set (torchrun / torch.distributed.run)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def setup_distributed(device: str = "auto", timeout_minutes: float = 60.0) -> DistributedContext:
    """Join the torchrun process group if launched by torchrun; pick the device.

    Args:
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        timeout_minutes: collective timeout (feature extraction by other ranks can take long).
    """
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but CUDA is not available")
    if not launched_by_torchrun():
        return DistributedContext(device=torch.device("cuda" if use_cuda else "cpu"))
    rank, world_size = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    if use_cuda:
        torch.cuda.set_device(local_rank)
        torch_device = torch.device("cuda", local_rank)
    else:
        torch_device = torch.device("cpu")
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        kwargs = {"device_id": torch_device} if use_cuda else {}
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes), **kwargs)
    logger.debug("process %d/%d (local %d) on %s with %s", rank, world_size, local_rank, torch_device, backend)
    return DistributedContext(rank, world_size, local_rank, torch_device, backend)


def shutdown_distributed(context: DistributedContext) -> None:
    if context.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: DistributedContext) -> None:
    if context.is_distributed:
        if context.device.type == "cuda":
            dist.barrier(device_ids=[context.device.index])
        else:
            dist.barrier()


def _reduce(tensor: torch.Tensor, context: DistributedContext, op) -> torch.Tensor:
    if not context.is_distributed:
        return tensor
    dtype, device = tensor.dtype, tensor.device
    work = tensor.to(context.device, dtype=torch.int64 if dtype == torch.bool else dtype).clone()
    dist.all_reduce(work, op=op)
    return work.to(device=device, dtype=dtype)


def all_reduce_max(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Elementwise maximum over processes (identity in a single process); bool tensors give a logical OR."""
    return _reduce(tensor, context, dist.ReduceOp.MAX if context.is_distributed else None)


def all_reduce_sum(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Elementwise sum over processes (identity in a single process)."""
    return _reduce(tensor, context, dist.ReduceOp.SUM if context.is_distributed else None)


def gather_rows(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Concatenate each process's ``(n_r, ...)`` tensor along dim 0 on every process (rank order), on the CPU.

    Row counts may differ between processes (they are padded for the collective and trimmed again).
    """
    if not context.is_distributed:
        return tensor
    dtype = tensor.dtype
    work = tensor.to(context.device, dtype=torch.uint8 if dtype == torch.bool else dtype).contiguous()
    count = torch.tensor([work.shape[0]], device=context.device, dtype=torch.long)
    counts = [torch.zeros_like(count) for _ in range(context.world_size)]
    dist.all_gather(counts, count)
    longest = int(max(int(c) for c in counts))
    padded = torch.zeros((longest, *work.shape[1:]), dtype=work.dtype, device=context.device)
    padded[: work.shape[0]] = work
    parts = [torch.empty_like(padded) for _ in range(context.world_size)]
    dist.all_gather(parts, padded)
    rows = [part[: int(n)] for part, n in zip(parts, counts, strict=True)]
    return torch.cat(rows).cpu().to(dtype)


def epoch_sampler(size: int, context: DistributedContext, seed: int, shuffle: bool = True) -> DistributedSampler:
    """A sampler over ``range(size)`` for this process; call ``set_epoch(epoch)`` before each epoch.

    The permutation is ``torch.randperm(size)`` under the seed ``seed + epoch`` (DistributedSampler's rule), and
    process ``r`` takes positions ``r, r + W, r + 2W, ...`` of it (padded by repetition to a multiple of ``W``), so
    the order is a function of ``(seed, epoch)`` only -- what makes ``--resume`` exact.
    """

    class _Range:
        def __len__(self) -> int:
            return size

    return DistributedSampler(_Range(), num_replicas=context.world_size, rank=context.rank, shuffle=shuffle,
                              seed=seed, drop_last=False)
