"""What a run writes besides its training state: ``metrics.csv``, TensorBoard scalars, the log line of each epoch and
the ``best/`` / ``last/`` / ``last-ema/`` checkpoints (``ADDS.save_pretrained`` + ``labels.txt`` + ``training.json``).
"""

from __future__ import annotations

import csv
import logging
import math
import os
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adds import __version__
from adds.train.checkpoint import write_json

if TYPE_CHECKING:
    from adds.train.loop import Trainer

__all__ = ["METRIC_COLUMNS", "save_pretrained", "write_metrics", "log_epoch", "open_tensorboard"]

logger = logging.getLogger(__name__)

METRIC_COLUMNS = ("epoch", "steps", "skipped_batches", "lr", "train_loss", "val_mAP", "val_mAP_ema", "selected",
                  "best_val_mAP", "seconds")


def save_pretrained(trainer: Trainer, directory: Path, use_ema: bool, note: str) -> None:
    """``directory``: the head (raw or EMA weights), its labels and ``training.json`` (input size, epoch, selection)."""
    context = trainer.ema.swapped_into(trainer.model) if use_ema else nullcontext()
    with context:
        trainer.model.save_pretrained(directory)
    (directory / "labels.txt").write_text("".join(f"{label}\n" for label in trainer.vocabulary), encoding="utf-8")
    write_json(directory / "training.json", {
        "run": trainer.config.name, "checkpoint": note, "epoch": trainer.epoch,
        "weights": "ema" if use_ema else "model",
        "input_size": trainer.input_size, "vocabulary_size": len(trainer.vocabulary),
        "best": trainer.best, "adds_version": __version__,
    })


def write_metrics(run_dir: Path, history: list[dict[str, Any]], tensorboard=None) -> None:
    """Rewrite ``metrics.csv`` (one row per epoch) and add the last epoch's scalars to TensorBoard."""
    path = run_dir / "metrics.csv"
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow({key: "" if row.get(key) is None else row.get(key) for key in METRIC_COLUMNS})
    os.replace(temporary, path)
    if tensorboard is not None and history:
        row = history[-1]
        for key in ("train_loss", "val_mAP", "val_mAP_ema"):
            if isinstance(row.get(key), float) and not math.isnan(row[key]):
                tensorboard.add_scalar(f"epoch/{key}", row[key], row["epoch"])
        tensorboard.flush()


def log_epoch(row: dict[str, Any], epochs: int, best: dict[str, Any] | None) -> None:
    def pct(value: Any) -> str:
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"

    best = best or {}
    loss = "-" if row["train_loss"] is None else f"{row['train_loss']:.4f}"
    logger.info("epoch %d/%d: loss %s, val mAP %s (EMA %s), best %s (%s, epoch %s), %.1fs", row["epoch"], epochs,
                loss, pct(row["val_mAP"]), pct(row["val_mAP_ema"]), pct(best.get("val_mAP")), best.get("source", "-"),
                best.get("epoch", "-"), row["seconds"])


def open_tensorboard(run_dir: Path):
    """A ``SummaryWriter`` on ``run_dir/tb``, or ``None`` when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(log_dir=str(run_dir / "tb"))
