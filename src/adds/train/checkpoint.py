"""The training state that ``--resume`` needs, written as safetensors + JSON (never pickle).

A checkpoint is taken after every epoch, every ``checkpoint_every`` optimiser steps and when the run is stopped
by SIGINT / SIGTERM (:mod:`adds.train.interrupt`). It records where in the epoch the run stands
(``batch_in_epoch``: batches of the epoch already consumed) and that epoch's running sums, so a run resumed
mid-epoch continues with batch ``batch_in_epoch`` of the same ``(seed, epoch)`` order and ends with bit-identical
weights::

    checkpoint/state.json                           meta data, replaced last (names its tensor file + SHA-256)
    checkpoint/state-epochEEEE-stepSSSSSSSS.safetensors   weights, optimiser moments, EMA, RNG states

The JSON names its tensor file, so a run killed while saving keeps the previous consistent checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

if TYPE_CHECKING:
    from adds.train.loop import Trainer

logger = logging.getLogger(__name__)

__all__ = ["TrainingStateError", "save_state", "load_state", "write_json", "STATE_FORMAT", "STATE_VERSION"]

STATE_FORMAT = "adds-train-state"
#: 2 adds ``batch_in_epoch`` / ``partial`` (step-level checkpoints); version 1 files (epoch ends) still load.
STATE_VERSION = 2


class TrainingStateError(RuntimeError):
    """A training checkpoint is missing, incomplete, or does not belong to this run (the message says which)."""


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically (temporary file, then rename)."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _scheduler_state(scheduler) -> dict[str, Any]:
    state = scheduler.state_dict()  # LambdaLR stores _CosineFactor's attributes, not the object
    json.dumps(state)  # fail here, not at load time, if a future torch puts objects in it
    return state


def save_state(trainer: Trainer, directory: Path) -> None:
    """Write ``trainer``'s complete state into ``directory`` (main process only)."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for name, value in trainer.model.trainable_state_dict().items():
        tensors[f"model/{name}"] = value.detach().cpu().contiguous()
    optimizer_state = trainer.optimizer.state_dict()
    other_state: dict[str, dict[str, Any]] = {}
    for param_id, entries in optimizer_state["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optim/{param_id}/{key}"] = value.detach().cpu().contiguous()
            else:
                other_state.setdefault(str(param_id), {})[key] = value
    if trainer.ema is not None:
        for name, value in trainer.ema.state_tensors().items():
            tensors[f"ema/{name}"] = value
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{index}"] = state
    if trainer.sls is not None:
        tensors["rng/sls"] = trainer.sls.generator.get_state()
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    tensor_file = f"state-epoch{trainer.epoch:04d}-step{trainer.global_step:08d}.safetensors"
    temporary = directory / (tensor_file + ".tmp")
    save_file(tensors, str(temporary))
    os.replace(temporary, directory / tensor_file)
    meta = {
        "format": STATE_FORMAT,
        "format_version": STATE_VERSION,
        "epoch": trainer.epoch,
        "batch_in_epoch": trainer.batch_in_epoch,
        "partial": dict(trainer.partial),
        "global_step": trainer.global_step,
        "tensors": tensor_file,
        "tensors_sha256": file_sha256(directory / tensor_file),
        "optimizer": {"param_groups": optimizer_state["param_groups"], "state": other_state,
                      "param_ids": sorted(int(i) for i in optimizer_state["state"])},
        "scheduler": None if trainer.scheduler is None else _scheduler_state(trainer.scheduler),
        "scaler": trainer.scaler.state_dict() if trainer.scaler.is_enabled() else None,
        "ema_updates": None if trainer.ema is None else trainer.ema.updates,
        "rng": {
            "python": [python_state[0], list(python_state[1]), python_state[2]],
            "numpy": [numpy_state[0], numpy_state[1].tolist(), *(_plain(v) for v in numpy_state[2:])],
            "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        },
        "sls_seed": None if trainer.sls is None else trainer.sls.seed,
        "best": trainer.best,
        "history": trainer.history,
        "world_size": trainer.context.world_size,
        "plan": trainer.plan(),
    }
    write_json(directory / "state.json", meta)
    for old in directory.glob("state-epoch*.safetensors"):
        if old.name != tensor_file:
            old.unlink()


def _read_meta(directory: Path) -> dict[str, Any]:
    meta_path = directory / "state.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise TrainingStateError(f"cannot read {meta_path}: {error}") from error
    if meta.get("format") != STATE_FORMAT or meta.get("format_version") not in (1, STATE_VERSION):
        raise TrainingStateError(f"{meta_path} is not an adds training state (format {STATE_FORMAT} "
                                 f"v{STATE_VERSION})")
    return meta


def load_state(trainer: Trainer, directory: Path) -> None:
    """Restore a checkpoint written by :func:`save_state` (raises :class:`TrainingStateError` naming the file)."""
    meta_path = directory / "state.json"
    meta = _read_meta(directory)
    plan = trainer.plan()
    changed = [f"{key}: {meta.get('plan', {}).get(key)!r} -> {value!r}" for key, value in plan.items()
               if meta.get("plan", {}).get(key) != value]
    if changed:
        raise TrainingStateError(f"cannot resume from {meta_path}: the run was planned differently ("
                                 + "; ".join(changed) + "); start a new run directory instead")
    tensor_path = directory / meta["tensors"]
    if not tensor_path.is_file():
        raise TrainingStateError(f"{tensor_path} (named by {meta_path}) is missing")
    if file_sha256(tensor_path) != meta["tensors_sha256"]:
        raise TrainingStateError(f"{tensor_path} does not match the SHA-256 recorded in {meta_path}: the file "
                                 f"is corrupt or was replaced")
    tensors = load_file(str(tensor_path))
    model_state = {key[len("model/"):]: value for key, value in tensors.items() if key.startswith("model/")}
    expected = trainer.model.trainable_state_dict()
    if set(model_state) != set(expected):
        raise TrainingStateError(f"{tensor_path} holds other trainable weights than this model "
                                 f"(differences: {sorted(set(model_state) ^ set(expected))[:5]})")
    trainer.model.load_state_dict(model_state, strict=False)
    optimizer_state: dict[str, Any] = {"state": {}, "param_groups": meta["optimizer"]["param_groups"]}
    for group in optimizer_state["param_groups"]:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    for param_id in meta["optimizer"]["param_ids"]:
        entry = {key.split("/", 2)[2]: value for key, value in tensors.items()
                 if key.startswith(f"optim/{param_id}/")}
        entry.update(meta["optimizer"]["state"].get(str(param_id), {}))
        optimizer_state["state"][param_id] = entry
    trainer.optimizer.load_state_dict(optimizer_state)
    if trainer.scheduler is not None:
        if meta["scheduler"] is None:
            raise TrainingStateError(f"{meta_path} has no scheduler state but the config uses one")
        trainer.scheduler.load_state_dict(meta["scheduler"])
    if meta.get("scaler") and trainer.scaler.is_enabled():
        trainer.scaler.load_state_dict(meta["scaler"])
    if trainer.ema is not None:
        ema_state = {key[len("ema/"):]: value for key, value in tensors.items() if key.startswith("ema/")}
        if not ema_state:
            raise TrainingStateError(f"{tensor_path} has no EMA weights but the config enables EMA")
        trainer.ema.load_state_tensors({k: v.to(trainer.device) for k, v in ema_state.items()}, meta["ema_updates"])
    if trainer.sls is not None:
        if "rng/sls" not in tensors:
            raise TrainingStateError(f"{tensor_path} has no SLS generator state but SLS is on")
        trainer.sls.generator.set_state(tensors["rng/sls"])
    torch.set_rng_state(tensors["rng/torch"])
    cuda_states = [tensors[f"rng/cuda/{i}"] for i in range(meta["rng"]["cuda_devices"])]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    python = meta["rng"]["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    numpy_state = meta["rng"]["numpy"]
    np.random.set_state((numpy_state[0], np.asarray(numpy_state[1], dtype=np.uint32), *numpy_state[2:]))
    if meta.get("world_size", 1) != trainer.context.world_size:
        logger.warning("resuming a %d-process run with %d processes: the data order is the same, but RNG streams "
                       "of dropout differ", meta.get("world_size", 1), trainer.context.world_size)
    trainer.epoch = int(meta["epoch"])
    trainer.batch_in_epoch = int(meta.get("batch_in_epoch", 0))
    trainer.partial = dict(meta.get("partial") or trainer.empty_partial())
    trainer.global_step = int(meta["global_step"])
    trainer.best = meta["best"]
    trainer.history = list(meta["history"])
