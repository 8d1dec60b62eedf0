"""The ADDS trainer: frozen towers, a trained head, exact resume, model selection on held-out data.

What one epoch does (paper, "Implementation Settings"; choices where it is silent in ``docs/training.md``):

1. batches of the global size (paper 56) in an order that is a function of ``(seed, epoch)``, split over torchrun
   processes; each batch's image tokens come from the frozen-feature cache (``adds.features``) or, with
   ``data.cache: null``, from the towers run on the images (``ADDS.forward_features``);
2. with Selective Language Supervision (Eq. 6; on for vocabularies over 1000 labels) the label subset
   ``S' = S_pos U S_slt`` is drawn over the *global* batch -- the union of positives is reduced over processes and
   every process draws the same negatives from a generator seeded identically -- and the head runs on ``S'`` only;
   a batch without positives is skipped;
3. ASL (sum reduction) on the logits, Adam (L2 weight decay on weights, not on biases / norms), the learning-rate
   schedule stepped per optimiser step, EMA of the trainable weights after each step, mixed precision on GPU;
4. after the epoch: mAP on the held-out validation split for the raw and the EMA weights (never the test set);
   the better of the two, if better than before, is saved to ``run_dir/best``; then the training state
   (trainable weights, optimiser, scheduler, EMA, grad scaler, RNG states, SLS generator) is checkpointed.

Run directory::

    config.json / config.yaml   resolved config (+ values resolved at run time)
    run_info.json               git revision, versions, command line, world size
    metrics.csv                 one row per epoch (TensorBoard events in tb/ when installed)
    checkpoint/                 state-epochNNNN.safetensors + state.json: everything --resume needs (no pickle)
    best/  last/  last-ema/     ADDS.save_pretrained checkpoints + labels.txt + training.json
    test_metrics.json           final test evaluation of best/ (when a test set is configured)
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from adds import __version__
from adds.data.base import MultiLabelDataset, SquashResize
from adds.data.registry import DatasetConfig, load_dataset
from adds.evaluate import (
    EvalConfig,
    EvalResult,
    collate_batch,
    eval_batch_size,
    evaluate_model,
    evaluate_scores,
    format_table,
    predict,
    write_json,
)
from adds.losses import AsymmetricLoss
from adds.model import ADDS
from adds.sampling import SelectiveLanguageSupervision
from adds.sampling import SLSConfig as SamplingConfig
from adds.train.config import TrainConfig, config_differences, read_saved_config, save_config
from adds.train.distributed import (
    DistributedContext,
    all_reduce_max,
    all_reduce_sum,
    barrier,
    epoch_sampler,
    gather_rows,
    setup_distributed,
    shutdown_distributed,
)
from adds.train.ema import ModelEMA

__all__ = [
    "Trainer",
    "TrainResult",
    "TrainingStateError",
    "run_training",
    "prepare_split",
    "PreparedSplit",
    "held_out_split",
    "cache_directory",
    "model_description",
    "git_revision",
]

logger = logging.getLogger(__name__)

STATE_FORMAT = "adds-train-state"
STATE_VERSION = 1
_METRIC_COLUMNS = ("epoch", "steps", "skipped_batches", "lr", "train_loss", "val_mAP", "val_mAP_ema", "selected",
                   "best_val_mAP", "seconds")
#: Config keys that may change between a run and its resumption (they do not affect the numbers).
RESUME_MAY_CHANGE = ("run_dir", "data.num_workers", "data.extract", "data.extract_batch_size", "device", "progress",
                     "log_every", "description", "expected", "evaluation.batch_size")


class TrainingStateError(RuntimeError):
    """A training checkpoint is missing, incomplete, or does not belong to this run (the message says which)."""


@dataclass
class TrainResult:
    """Outcome of :meth:`Trainer.fit` / :func:`run_training`.

    Attributes:
        run_dir: the run directory.
        epochs_done: completed epochs (including those of earlier invocations when resumed).
        finished: all ``config.epochs`` epochs are done (``False`` after ``stop_after``).
        best: ``{"epoch", "source" ("model" | "ema"), "val_mAP"}`` of the selected checkpoint, or ``None``.
        history: one dict per epoch (the rows of ``metrics.csv``).
        test: the final test evaluation of ``best/`` (when a test set was configured and training finished).
    """

    run_dir: Path
    epochs_done: int
    finished: bool
    best: dict[str, Any] | None
    history: list[dict[str, Any]]
    test: EvalResult | None = None


# -- helpers --------------------------------------------------------------------------------------------------------
def git_revision() -> tuple[str, bool | None]:
    """``(git rev-parse HEAD, dirty?)`` of the source tree adds is imported from, or ``("unknown", None)``."""
    where = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown", None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                                capture_output=True, text=True, timeout=10)
        return head.stdout.strip(), bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return "unknown", None


def held_out_split(size: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A fixed split of ``range(size)`` into (train, held-out) indices, a function of ``seed`` only (both sorted)."""
    if fraction <= 0:
        return list(range(size)), []
    count = max(1, round(size * fraction))
    if count >= size:
        raise ValueError(f"val_fraction {fraction} leaves no training images out of {size}")
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[count:]), sorted(order[:count])


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-") or "x"


def cache_directory(root: str | Path, dataset: MultiLabelDataset, model: ADDS, input_size: int,
                    source: DatasetConfig | None = None) -> Path:
    """Where the feature cache of ``dataset``'s images for ``model``'s towers and pyramid at ``input_size`` lives.

    ``<root>/<kind>-<split>-<images hash>_<tower model>-<weights>-<tower hash>_<input>px_L<levels>``. The name
    depends on the images, not the labels, so runs that share towers, images and resolution share a cache: NUS-WIDE
    test for ZSL (81 labels) and GZSL (1006), or Table 1's 224 px run and Table 6's ML-Decoder run.
    """
    from adds.features import images_fingerprint

    identity = model.towers.identity()
    pretrained = identity.get("pretrained")
    weights = "random" if pretrained is None else Path(str(pretrained)).stem
    levels = model.config.pyramid.levels
    level_tag = "all" if levels is None else "".join(str(level) for level in levels)
    aligned = "" if model.towers.config.aligned else "_raw"
    what = f"{source.kind}-{source.split}" if source is not None else dataset.name
    name = (f"{what}-{images_fingerprint(dataset)[:10]}_{identity['model']}-{weights}-{identity['fingerprint'][:8]}"
            f"{aligned}_{input_size}px_L{level_tag}")
    return Path(root) / _slug(name)


def model_description(model: ADDS, input_size: int) -> str:
    decoder = model.config.decoder
    kind = "DM" if decoder.kind == "dm" else "ML"
    return f"ADDS {model.towers.config.model} {kind}-Decoder x{decoder.num_layers} {input_size}x{input_size}"


def _resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or mode == "off":
        return None
    if mode == "bf16" or (mode == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _write_json(path: Path, data: Any) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)


class _Head(nn.Module):
    """The trainable part of ADDS as its own module, so DDP sees (and broadcasts) only the head, not the towers."""

    def __init__(self, model: ADDS) -> None:
        super().__init__()
        self.parts = nn.ModuleDict({"token_proj": model.token_proj, "decoder": model.decoder,
                                    "classifier": model.classifier})
        self.__dict__["model"] = model  # plain attribute: not a submodule

    def forward(self, tokens: torch.Tensor, label_embeddings: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(tokens, label_embeddings)  # (B, k)


def _parameter_groups(model: ADDS, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only: biases and normalisation weights (1-D) get none (ML-Decoder's rule)."""
    decay, no_decay = [], []
    for param in model.trainable_parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, lr: float, steps_per_epoch: int):
    optim = config.optim
    total = max(1, config.epochs * steps_per_epoch)
    if optim.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total, pct_start=optim.pct_start)
    if optim.schedule == "cosine":
        warmup = int(round(optim.warmup_epochs * steps_per_epoch))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, _CosineFactor(total, warmup, optim.min_lr_ratio))
    return None


class _CosineFactor:
    """Linear warm-up then cosine decay to ``min_ratio`` (a picklable-free pure function of the step)."""

    def __init__(self, total: int, warmup: int, min_ratio: float) -> None:
        self.total, self.warmup, self.min_ratio = total, warmup, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# -- the trainer ----------------------------------------------------------------------------------------------------
class Trainer:
    """Trains the head of ``model`` on prepared splits (cached tokens or images).

    Args:
        config: the run's configuration.
        model: the ADDS model (towers frozen; its head is trained in place), on ``context.device``.
        train_set: items ``{"index", "tokens" | "image", "target", "mask"}`` (``CachedFeatureDataset``,
            :class:`adds.evaluate.TensorFeatureDataset`, or a ``MultiLabelDataset`` with a resize transform).
        vocabulary: the training labels (columns of the targets).
        val_set, val_vocabulary: held-out validation data for model selection (``None``: no selection, ``best``
            is the last epoch).
        label_embeddings: ``(k, D)`` embeddings of ``vocabulary`` (default: ``model.encode_labels``);
            ``val_label_embeddings`` likewise for the validation vocabulary.
        input_size: the squash-resize size (recorded in checkpoints).
        context: torchrun context (default: single process on the model's device).
        crop_levels: pyramid level of each cached crop (the cache manifest's ``crop_levels``); with
            ``model.pyramid.dispose_ratio > 0`` cached crops of levels >= 1 are randomly disposed in training, as
            Pyramid-Forwarding does on images.
    """

    def __init__(
        self,
        config: TrainConfig,
        model: ADDS,
        train_set: Dataset,
        vocabulary: Sequence[str],
        val_set: Dataset | None = None,
        val_vocabulary: Sequence[str] | None = None,
        label_embeddings: torch.Tensor | None = None,
        val_label_embeddings: torch.Tensor | None = None,
        input_size: int | None = None,
        context: DistributedContext | None = None,
        crop_levels: Sequence[int] | None = None,
    ) -> None:
        self.config = config
        self.crop_levels = list(crop_levels) if crop_levels is not None else None
        self.model = model
        self.context = context or DistributedContext(device=model.classifier.fc.weight.device)
        self.device = self.context.device
        self.train_set = train_set
        self.vocabulary = list(vocabulary)
        self.val_set = val_set
        self.val_vocabulary = list(val_vocabulary) if val_vocabulary is not None else self.vocabulary
        self.input_size = input_size or model.towers.image_size
        self.run_dir = config.resolved_run_dir
        world = self.context.world_size
        if config.batch_size % world:
            raise ValueError(f"batch_size {config.batch_size} is not divisible by the {world} processes; choose a "
                             f"multiple of {world} so every process gets the same share of each batch")
        self.local_batch = config.batch_size // world
        self.lr = config.optim.resolve_lr(self.input_size)
        self.amp_dtype = _resolve_amp(config.amp, self.device)
        if label_embeddings is None:
            label_embeddings = model.encode_labels(self.vocabulary)
        self.label_embeddings = label_embeddings.to(self.device)  # (k, D)
        if val_set is not None:
            if val_label_embeddings is None:
                same = self.val_vocabulary == self.vocabulary
                val_label_embeddings = label_embeddings if same else model.encode_labels(self.val_vocabulary)
            self.val_label_embeddings = val_label_embeddings.to(self.device)
        self.sls_active = config.sls.active(len(self.vocabulary))
        self.sls = SelectiveLanguageSupervision(SamplingConfig(config.sls.alpha), seed=config.seed) \
            if self.sls_active else None
        self.loss_fn = AsymmetricLoss(config.loss)
        self.optimizer = torch.optim.Adam(_parameter_groups(model, config.optim.weight_decay), lr=self.lr,
                                          betas=config.optim.betas, eps=config.optim.eps)
        self.sampler = epoch_sampler(len(train_set), self.context, config.seed, shuffle=True)
        self.steps_per_epoch = max(1, math.ceil(len(self.sampler) / self.local_batch))
        self.scheduler = _make_scheduler(self.optimizer, config, self.lr, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.ema = ModelEMA(model, config.ema) if config.ema.enabled else None
        head = _Head(model)
        if self.context.is_distributed:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            head = DistributedDataParallel(head, device_ids=device_ids)
        self.head = head
        self.epoch = 0
        self.global_step = 0
        self.best: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        self._tensorboard = None

    # -- public ---------------------------------------------------------------------------------------------------
    def fit(self, resume: bool = False, stop_after: int | None = None) -> TrainResult:
        """Train to ``config.epochs`` (checkpointing every epoch), or for ``stop_after`` more epochs at most.

        Args:
            resume: continue from ``run_dir/checkpoint`` (bit-identical to an uninterrupted run on the same
                hardware); a run directory without a checkpoint starts from scratch.
            stop_after: leave after this many epochs in this call (time-limited jobs; resume later).
        """
        checkpoint = self.run_dir / "checkpoint" / "state.json"
        if resume and checkpoint.is_file():
            self.load_state(self.run_dir / "checkpoint")
            logger.info("resumed %s after epoch %d", self.run_dir, self.epoch)
        elif resume:
            logger.warning("--resume: %s has no checkpoint, starting from scratch", self.run_dir)
        elif checkpoint.is_file():
            raise TrainingStateError(f"{self.run_dir} already holds a training checkpoint; pass --resume to continue "
                                     f"it or choose another --run-dir")
        if self.context.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._open_tensorboard()
        if self.sls_active and self.context.is_main:
            logger.info("selective language supervision on (alpha %g, %d labels)", self.config.sls.alpha,
                        len(self.vocabulary))
        done_now = 0
        while self.epoch < self.config.epochs and (stop_after is None or done_now < stop_after):
            self._train_one_epoch()
            done_now += 1
        finished = self.epoch >= self.config.epochs
        if finished and self.context.is_main:
            self._save_final()
        barrier(self.context)
        if self._tensorboard is not None:
            self._tensorboard.close()
        return TrainResult(self.run_dir, self.epoch, finished, self.best, list(self.history))

    # -- one epoch ------------------------------------------------------------------------------------------------
    def _loader(self, dataset: Dataset, sampler, batch_size: int) -> DataLoader:
        workers = self.config.data.num_workers
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                          collate_fn=collate_batch, pin_memory=self.device.type == "cuda",
                          persistent_workers=False)

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _train_one_epoch(self) -> None:
        from tqdm.auto import tqdm

        config, context = self.config, self.context
        start = time.perf_counter()
        epoch = self.epoch  # 0-based index of the epoch being trained
        self.sampler.set_epoch(epoch)
        loader = self._loader(self.train_set, self.sampler, self.local_batch)
        self.model.train()
        loss_sum, steps, skipped = 0.0, 0, 0
        bar = tqdm(loader, total=len(loader), desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
                   disable=not (context.is_main and config.progress), dynamic_ncols=True, file=sys.stderr)
        for batch in bar:
            with self._autocast():
                tokens = self._tokens(batch)  # (B, N, D) or None when every image failed
            targets = batch["target"].to(self.device) if tokens is not None else None  # (B, C)
            mask = batch["mask"].to(self.device) if tokens is not None else None  # (B, C)
            indices, skip = None, tokens is None
            if self.sls is not None:
                indices, skip = self._select_labels(targets, mask, skip)
            if context.is_distributed:
                skip = bool(all_reduce_max(torch.tensor([skip]), context).item())
            if skip:
                skipped += 1
                continue
            embeddings = self.label_embeddings if indices is None else self.label_embeddings[indices]  # (k', D)
            if indices is not None:
                targets, mask = targets[:, indices], mask[:, indices]  # (B, k')
            with self._autocast():
                logits = self.head(tokens, embeddings)  # (B, k')
            # Sum-reduced ASL over this process's share; DDP averages gradients over processes, so scaling by the
            # process count gives the gradient of the loss summed over the global batch, as on one GPU.
            loss = self.loss_fn(logits, targets, mask) * context.world_size
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if config.optim.grad_clip is not None:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.trainable_parameters(), config.optim.grad_clip)
            scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
            self.scaler.step(self.optimizer)
            self.scaler.update()
            stepped = scale is None or self.scaler.get_scale() >= scale  # fp16: a skipped step lowers the scale
            if self.scheduler is not None and stepped:
                self.scheduler.step()
            if self.ema is not None:
                self.ema.update(self.model)
            self.global_step += 1
            steps += 1
            value = float(loss.detach())  # this process's share x processes: an estimate of the global batch loss
            loss_sum += value / context.world_size
            if steps % config.log_every == 0 and context.is_main:
                bar.set_postfix(loss=f"{value:.3f}", lr=f"{self._lr():.2e}")
                if self._tensorboard is not None:
                    self._tensorboard.add_scalar("train/loss", value, self.global_step)
                    self._tensorboard.add_scalar("train/lr", self._lr(), self.global_step)
        bar.close()
        if skipped and context.is_main:
            logger.info("epoch %d: skipped %d batch(es) without any positive label (SLS, Eq. 6) or image",
                        epoch + 1, skipped)
        if context.is_distributed:  # the global batches' loss: sum of every process's share
            loss_sum = float(all_reduce_sum(torch.tensor([loss_sum], dtype=torch.float64), context).item())
        self.epoch = epoch + 1
        row = self._validate_and_select()
        row.update(epoch=self.epoch, steps=steps, skipped_batches=skipped, lr=self._lr(),
                   train_loss=loss_sum / steps if steps else None,
                   seconds=round(time.perf_counter() - start, 3))
        self.history.append(row)
        if context.is_main:
            self.save_state(self.run_dir / "checkpoint")
            self._write_metrics()
            self._log_epoch(row)
        barrier(context)

    def _tokens(self, batch: dict[str, Any]) -> torch.Tensor | None:
        if "tokens" in batch:
            tokens = batch["tokens"]  # (B, N, D)
            ratio = self.model.config.pyramid.dispose_ratio
            if ratio > 0 and self.crop_levels is not None:
                from adds.features import dispose_cached_crops

                tokens = dispose_cached_crops(tokens, self.crop_levels, ratio)  # (B, N', D)
            return tokens.to(self.device, non_blocking=True)
        if batch["image"] is None:
            return None
        return self.model.forward_features(batch["image"].to(self.device, non_blocking=True))

    def _select_labels(self, targets: torch.Tensor | None, mask: torch.Tensor | None,
                       skip: bool) -> tuple[torch.Tensor | None, bool]:
        """Eq. 6 over the global batch: the same ``S'`` on every process, or skip when it is empty."""
        size = len(self.vocabulary)
        if targets is None:
            positive = torch.zeros(1, size, dtype=torch.bool)
        else:
            positive = ((targets > 0.5) & mask).any(dim=0, keepdim=True).cpu()  # (1, C) this process's positives
        union = all_reduce_max(positive, self.context)  # (1, C) positives anywhere in the global batch
        selection = self.sls(union)
        if selection.is_empty:
            return None, True
        return selection.indices.to(self.device), skip

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # -- validation and model selection ---------------------------------------------------------------------------
    def validate(self) -> float:
        """mAP of the current weights on the validation split (all processes take part)."""
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(self.val_set, num_replicas=self.context.world_size, rank=self.context.rank,
                                     shuffle=False) if self.context.is_distributed else None
        loader = self._loader(self.val_set, sampler, eval_batch_size(self.config.evaluation, len(self.val_vocabulary)))
        gather = (lambda tensor: gather_rows(tensor, self.context)) if self.context.is_distributed else None
        preds = predict(self.model, loader, {"all": self.val_label_embeddings}, device=self.device,
                        autocast_dtype=self.amp_dtype, gather=gather, description="validate",
                        progress=self.context.is_main and self.config.progress)
        if preds.indices.numel() == 0:
            return float("nan")
        config = EvalConfig(protocol="conventional", ties=self.config.evaluation.ties)
        return evaluate_scores(preds.scores["all"], preds.targets, preds.mask, self.val_vocabulary, config) \
            .headline["mAP"]

    def _validate_and_select(self) -> dict[str, Any]:
        row: dict[str, Any] = {"val_mAP": None, "val_mAP_ema": None, "selected": ""}
        if self.val_set is None:
            return {**row, "best_val_mAP": None}
        scores = {"model": self.validate()}
        if self.ema is not None:
            with self.ema.swapped_into(self.model):
                scores["ema"] = self.validate()
        scores = {key: None if math.isnan(value) else value for key, value in scores.items()}  # NaN: no images
        row["val_mAP"], row["val_mAP_ema"] = scores["model"], scores.get("ema")
        source = max(scores, key=lambda key: -1.0 if scores[key] is None else scores[key])
        value = scores[source]
        if value is not None and (self.best is None or value > self.best["val_mAP"]):
            self.best = {"epoch": self.epoch, "source": source, "val_mAP": value}
            row["selected"] = source
            if self.context.is_main:
                self._save_pretrained(self.run_dir / "best", use_ema=source == "ema", note="best")
        row["best_val_mAP"] = None if self.best is None else self.best["val_mAP"]
        return row

    # -- outputs ---------------------------------------------------------------------------------------------------
    def _save_pretrained(self, directory: Path, use_ema: bool, note: str) -> None:
        context = self.ema.swapped_into(self.model) if use_ema else nullcontext()
        with context:
            self.model.save_pretrained(directory)
        (directory / "labels.txt").write_text("".join(f"{label}\n" for label in self.vocabulary), encoding="utf-8")
        _write_json(directory / "training.json", {
            "run": self.config.name, "checkpoint": note, "epoch": self.epoch, "weights": "ema" if use_ema else "model",
            "input_size": self.input_size, "vocabulary_size": len(self.vocabulary),
            "best": self.best, "adds_version": __version__,
        })

    def _save_final(self) -> None:
        self._save_pretrained(self.run_dir / "last", use_ema=False, note="last")
        if self.ema is not None:
            self._save_pretrained(self.run_dir / "last-ema", use_ema=True, note="last-ema")
        if self.best is None:
            # No validation data (or none loadable): nothing to select on, so "best" is the last epoch's raw weights.
            self.best = {"epoch": self.epoch, "source": "model", "val_mAP": None,
                         "note": "no validation split: last epoch"}
            self._save_pretrained(self.run_dir / "best", use_ema=False, note="best (last epoch, no validation split)")

    def _write_metrics(self) -> None:
        path = self.run_dir / "metrics.csv"
        temporary = path.with_name(path.name + ".tmp")
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=_METRIC_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            for row in self.history:
                writer.writerow({key: "" if row.get(key) is None else row.get(key) for key in _METRIC_COLUMNS})
        os.replace(temporary, path)
        if self._tensorboard is not None:
            row = self.history[-1]
            for key in ("train_loss", "val_mAP", "val_mAP_ema"):
                if isinstance(row.get(key), float) and not math.isnan(row[key]):
                    self._tensorboard.add_scalar(f"epoch/{key}", row[key], row["epoch"])
            self._tensorboard.flush()

    def _log_epoch(self, row: dict[str, Any]) -> None:
        def pct(value: Any) -> str:
            return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"

        best = self.best or {}
        loss = "-" if row["train_loss"] is None else f"{row['train_loss']:.4f}"
        logger.info("epoch %d/%d: loss %s, val mAP %s (EMA %s), best %s (%s, epoch %s), %.1fs", row["epoch"],
                    self.config.epochs, loss, pct(row["val_mAP"]), pct(row["val_mAP_ema"]),
                    pct(best.get("val_mAP")), best.get("source", "-"), best.get("epoch", "-"), row["seconds"])

    def _open_tensorboard(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return
        self._tensorboard = SummaryWriter(log_dir=str(self.run_dir / "tb"))

    # -- checkpoints -----------------------------------------------------------------------------------------------
    def save_state(self, directory: Path) -> None:
        """Everything ``--resume`` needs: tensors in ``state-epochNNNN.safetensors``, the rest in ``state.json``.

        The JSON is replaced last and names its tensor file (with a SHA-256), so a run killed while saving leaves
        the previous consistent checkpoint behind.
        """
        directory.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, torch.Tensor] = {}
        for name, value in self.model.trainable_state_dict().items():
            tensors[f"model/{name}"] = value.detach().cpu().contiguous()
        optimizer_state = self.optimizer.state_dict()
        other_state: dict[str, dict[str, Any]] = {}
        for param_id, entries in optimizer_state["state"].items():
            for key, value in entries.items():
                if torch.is_tensor(value):
                    tensors[f"optim/{param_id}/{key}"] = value.detach().cpu().contiguous()
                else:
                    other_state.setdefault(str(param_id), {})[key] = value
        if self.ema is not None:
            for name, value in self.ema.state_tensors().items():
                tensors[f"ema/{name}"] = value
        tensors["rng/torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            for index, state in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng/cuda/{index}"] = state
        if self.sls is not None:
            tensors["rng/sls"] = self.sls.generator.get_state()
        numpy_state = np.random.get_state()
        python_state = random.getstate()
        tensor_file = f"state-epoch{self.epoch:04d}.safetensors"
        temporary = directory / (tensor_file + ".tmp")
        save_file(tensors, str(temporary))
        os.replace(temporary, directory / tensor_file)
        meta = {
            "format": STATE_FORMAT,
            "format_version": STATE_VERSION,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "tensors": tensor_file,
            "tensors_sha256": _file_sha256(directory / tensor_file),
            "optimizer": {"param_groups": optimizer_state["param_groups"], "state": other_state,
                          "param_ids": sorted(int(i) for i in optimizer_state["state"])},
            "scheduler": None if self.scheduler is None else _scheduler_state(self.scheduler),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "ema_updates": None if self.ema is None else self.ema.updates,
            "rng": {
                "python": [python_state[0], list(python_state[1]), python_state[2]],
                "numpy": [numpy_state[0], numpy_state[1].tolist(), *(_plain(v) for v in numpy_state[2:])],
                "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
            },
            "sls_seed": None if self.sls is None else self.sls.seed,
            "best": self.best,
            "history": self.history,
            "world_size": self.context.world_size,
            "plan": self._plan(),
        }
        _write_json(directory / "state.json", meta)
        for old in directory.glob("state-epoch*.safetensors"):
            if old.name != tensor_file:
                old.unlink()

    def _plan(self) -> dict[str, Any]:
        """What must not change between a run and its resumption (it shapes the schedule and the data order)."""
        return {"epochs": self.config.epochs, "batch_size": self.config.batch_size, "seed": self.config.seed,
                "train_size": len(self.train_set), "schedule": self.config.optim.schedule,
                "vocabulary_size": len(self.vocabulary)}

    def load_state(self, directory: Path) -> None:
        """Restore a checkpoint written by :meth:`save_state` (raises :class:`TrainingStateError` naming the file)."""
        meta_path = directory / "state.json"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise TrainingStateError(f"cannot read {meta_path}: {error}") from error
        if meta.get("format") != STATE_FORMAT or meta.get("format_version") != STATE_VERSION:
            raise TrainingStateError(f"{meta_path} is not an adds training state (format {STATE_FORMAT} "
                                     f"v{STATE_VERSION})")
        plan = self._plan()
        changed = [f"{key}: {meta.get('plan', {}).get(key)!r} -> {value!r}" for key, value in plan.items()
                   if meta.get("plan", {}).get(key) != value]
        if changed:
            raise TrainingStateError(f"cannot resume from {meta_path}: the run was planned differently ("
                                     + "; ".join(changed) + "); start a new run directory instead")
        tensor_path = directory / meta["tensors"]
        if not tensor_path.is_file():
            raise TrainingStateError(f"{tensor_path} (named by {meta_path}) is missing")
        if _file_sha256(tensor_path) != meta["tensors_sha256"]:
            raise TrainingStateError(f"{tensor_path} does not match the SHA-256 recorded in {meta_path}: the file "
                                     f"is corrupt or was replaced")
        tensors = load_file(str(tensor_path))
        model_state = {key[len("model/"):]: value for key, value in tensors.items() if key.startswith("model/")}
        expected = self.model.trainable_state_dict()
        if set(model_state) != set(expected):
            raise TrainingStateError(f"{tensor_path} holds other trainable weights than this model "
                                     f"(differences: {sorted(set(model_state) ^ set(expected))[:5]})")
        self.model.load_state_dict(model_state, strict=False)
        optimizer_state: dict[str, Any] = {"state": {}, "param_groups": meta["optimizer"]["param_groups"]}
        for group in optimizer_state["param_groups"]:
            if "betas" in group:
                group["betas"] = tuple(group["betas"])
        for param_id in meta["optimizer"]["param_ids"]:
            entry = {key.split("/", 2)[2]: value for key, value in tensors.items()
                     if key.startswith(f"optim/{param_id}/")}
            entry.update(meta["optimizer"]["state"].get(str(param_id), {}))
            optimizer_state["state"][param_id] = entry
        self.optimizer.load_state_dict(optimizer_state)
        if self.scheduler is not None:
            if meta["scheduler"] is None:
                raise TrainingStateError(f"{meta_path} has no scheduler state but the config uses one")
            self.scheduler.load_state_dict(meta["scheduler"])
        if meta.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(meta["scaler"])
        if self.ema is not None:
            ema_state = {key[len("ema/"):]: value for key, value in tensors.items() if key.startswith("ema/")}
            if not ema_state:
                raise TrainingStateError(f"{tensor_path} has no EMA weights but the config enables EMA")
            self.ema.load_state_tensors({k: v.to(self.device) for k, v in ema_state.items()}, meta["ema_updates"])
        if self.sls is not None:
            if "rng/sls" not in tensors:
                raise TrainingStateError(f"{tensor_path} has no SLS generator state but SLS is on")
            self.sls.generator.set_state(tensors["rng/sls"])
        torch.set_rng_state(tensors["rng/torch"])
        cuda_states = [tensors[f"rng/cuda/{i}"] for i in range(meta["rng"]["cuda_devices"])]
        if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        python = meta["rng"]["python"]
        random.setstate((python[0], tuple(python[1]), python[2]))
        numpy_state = meta["rng"]["numpy"]
        np.random.set_state((numpy_state[0], np.asarray(numpy_state[1], dtype=np.uint32), *numpy_state[2:]))
        if meta.get("world_size", 1) != self.context.world_size:
            logger.warning("resuming a %d-process run with %d processes: the data order is the same, but RNG "
                           "streams of dropout differ", meta.get("world_size", 1), self.context.world_size)
        self.epoch = int(meta["epoch"])
        self.global_step = int(meta["global_step"])
        self.best = meta["best"]
        self.history = list(meta["history"])


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _scheduler_state(scheduler) -> dict[str, Any]:
    state = scheduler.state_dict()  # LambdaLR stores _CosineFactor's attributes, not the object
    json.dumps(state)  # fail here, not at load time, if a future torch puts objects in it
    return state


# -- building a run from its config ---------------------------------------------------------------------------------
@dataclass
class PreparedSplit:
    """A prepared split: what the loader iterates, the vocabulary and where it came from."""

    data: Dataset
    dataset: MultiLabelDataset
    failed: int = 0
    cache_dir: Path | None = None
    crop_levels: list[int] | None = None


def _open_or_extract(dataset: MultiLabelDataset, directory: Path, model: ADDS, input_size: int, config: TrainConfig,
                     context: DistributedContext):
    from adds.features import ExtractConfig, FeatureCacheError, FeatureStore, extract_features

    try:
        store = FeatureStore.open(directory)
        error = None
    except FeatureCacheError as failure:
        store, error = None, failure
    need = all_reduce_max(torch.tensor([store is None]), context).item()
    if need:
        if not config.data.extract:
            raise error or FeatureCacheError(f"feature cache {directory} is incomplete on another process")
        if context.is_main:
            logger.info("extracting features of %s into %s", dataset.name, directory)
        extract = ExtractConfig(input_size=input_size, batch_size=config.data.extract_batch_size,
                                num_workers=config.data.num_workers)
        extract_features(model, dataset, directory, extract, rank=context.rank, world_size=context.world_size,
                         progress=context.is_main and config.progress)
        barrier(context)
        store = FeatureStore.open(directory)
    store.check_compatible(model, dataset, input_size)
    return store


def prepare_split(dataset: MultiLabelDataset, model: ADDS, input_size: int, config: TrainConfig,
                  context: DistributedContext, indices: Sequence[int] | None = None,
                  source: DatasetConfig | None = None, cache_dir: str | None = None) -> PreparedSplit:
    """Cached tokens (default) or resized images of ``dataset``, restricted to dataset ``indices`` if given.

    ``cache_dir`` is an explicit cache directory; otherwise ``config.data.cache`` names the root of automatically
    named caches (:func:`cache_directory`), and with neither the split is read from images.
    """
    dataset.transform = SquashResize(input_size)
    if config.data.cache is None and cache_dir is None:
        data: Dataset = dataset if indices is None else Subset(dataset, list(indices))
        return PreparedSplit(data, dataset)
    from adds.features import CachedFeatureDataset

    directory = Path(cache_dir) if cache_dir is not None else \
        cache_directory(config.data.cache, dataset, model, input_size, source)
    store = _open_or_extract(dataset, directory, model, input_size, config, context)
    cached = CachedFeatureDataset(store, dataset)
    failed = len(cached.skipped)
    if indices is not None:
        wanted = torch.zeros(len(dataset), dtype=torch.bool)
        wanted[torch.as_tensor(list(indices), dtype=torch.long)] = True
        items = torch.nonzero(wanted[cached.indices.long()]).flatten().tolist()
        failed = int(wanted.sum()) - len(items)
        cached = Subset(cached, items)
    return PreparedSplit(cached, dataset, failed=failed, cache_dir=directory,
                         crop_levels=list(store.manifest["crop_levels"]))


def _label_embeddings(model: ADDS, vocabulary: Sequence[str], config: TrainConfig,
                      context: DistributedContext) -> torch.Tensor:
    if config.data.cache is None:
        return model.encode_labels(list(vocabulary))
    from adds.features import label_embedding_cache

    directory = Path(config.data.cache) / "labels"
    if context.is_main:  # one writer; the others read the file it leaves
        embeddings = label_embedding_cache(model, list(vocabulary), directory)
    barrier(context)
    if not context.is_main:
        embeddings = label_embedding_cache(model, list(vocabulary), directory)
    return embeddings


def run_training(config: TrainConfig, resume: bool = False, stop_after: int | None = None,
                 echo=print) -> TrainResult:
    """Everything ``adds train`` does: datasets, caches, model, training, final test evaluation.

    Args:
        config: the run's configuration (``config.data.train`` must be set).
        resume: continue the run in ``config.run_dir`` (its saved config must agree, see ``RESUME_MAY_CHANGE``).
        stop_after: leave after this many epochs (resume later).
        echo: where the final table goes (main process only).
    """
    if config.data.train is None:
        raise ValueError("data.train is not set: the config must name a training dataset")
    run_dir = config.resolved_run_dir
    if resume and (run_dir / "config.json").is_file():
        saved = read_saved_config(run_dir)
        diffs = config_differences(saved, config, ignore=RESUME_MAY_CHANGE)
        if diffs:
            raise TrainingStateError(f"cannot resume {run_dir}: the config differs from the saved one in "
                                     + "; ".join(diffs))
    context = setup_distributed(config.device)
    try:
        return _run(config, context, resume, stop_after, echo)
    finally:
        shutdown_distributed(context)


def _run(config: TrainConfig, context: DistributedContext, resume: bool, stop_after: int | None,
         echo) -> TrainResult:
    run_dir = config.resolved_run_dir
    if config.deterministic:
        # cuBLAS needs a fixed workspace for reproducible results; set before the first CUDA matmul.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    torch.manual_seed(config.seed)  # the head's initial weights: the same on every process
    random.seed(config.seed)
    np.random.seed(config.seed)
    model = ADDS(config.model).to(context.device)
    input_size = config.data.input_size or model.towers.image_size
    train_data = load_dataset(config.data.train)
    if config.data.val is not None:
        train_indices, val_indices = None, None
        val_data = load_dataset(config.data.val)
    elif config.data.val_fraction > 0:
        train_indices, val_indices = held_out_split(len(train_data), config.data.val_fraction, config.seed)
        val_data = train_data
    else:
        train_indices, val_indices, val_data = None, None, None
    train = prepare_split(train_data, model, input_size, config, context, train_indices, config.data.train,
                          config.data.train_cache)
    val = None
    if val_data is not None:
        val = prepare_split(val_data, model, input_size, config, context, val_indices,
                            config.data.val or config.data.train,
                            config.data.val_cache if config.data.val is not None else config.data.train_cache)
    vocabulary = train_data.vocabulary
    embeddings = _label_embeddings(model, vocabulary, config, context)
    val_embeddings = None
    if val is not None and val.dataset.vocabulary != vocabulary:
        val_embeddings = _label_embeddings(model, val.dataset.vocabulary, config, context)
    revision, dirty = git_revision()
    resolved = {"lr": config.optim.resolve_lr(input_size), "input_size": input_size,
                "sls": config.sls.active(len(vocabulary)), "vocabulary_size": len(vocabulary),
                "train_images": len(train.data), "val_images": None if val is None else len(val.data),
                "world_size": context.world_size, "git_revision": revision, "git_dirty": dirty}
    if context.is_main:
        save_config(config, run_dir, resolved)
        _write_json(run_dir / "run_info.json", {
            **resolved, "adds_version": __version__, "torch_version": torch.__version__, "command": sys.argv,
            "device": str(context.device), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "val_source": "data.val" if config.data.val is not None else
            f"held-out {config.data.val_fraction:g} of data.train (seed {config.seed})" if val is not None else None,
        })
        logger.info("training on %d images (%d labels), validating on %s images; lr %.1e, input %dpx, run dir %s",
                    len(train.data), len(vocabulary), "no" if val is None else len(val.data), resolved["lr"],
                    input_size, run_dir)
    # Dropout / disposal / worker seeds from here on must not depend on whether caches were just extracted.
    torch.manual_seed(config.seed + context.rank)
    random.seed(config.seed + context.rank)
    np.random.seed(config.seed + context.rank)
    trainer = Trainer(config, model, train.data, vocabulary, None if val is None else val.data,
                      None if val is None else val.dataset.vocabulary, label_embeddings=embeddings,
                      val_label_embeddings=val_embeddings, input_size=input_size, context=context,
                      crop_levels=train.crop_levels)
    result = trainer.fit(resume=resume, stop_after=stop_after)
    if result.finished and config.data.test is not None:
        result.test = _test_best(config, model, input_size, context, echo)
    return result


def _test_best(config: TrainConfig, model: ADDS, input_size: int, context: DistributedContext, echo) -> EvalResult:
    run_dir = config.resolved_run_dir
    best = ADDS.from_pretrained(run_dir / "best", towers=model.towers, map_location=context.device)
    test_data = load_dataset(config.data.test)
    evaluation = config.evaluation
    if evaluation.protocol == "gzsl" and config.data.test.labels is None and config.data.test.kind == "nuswide":
        logger.warning("gzsl protocol with the default NUS-WIDE test labels; set data.test.labels: all1006")
    split = prepare_split(test_data, best, input_size, config, context, source=config.data.test,
                          cache_dir=config.data.test_cache)
    embeddings = _label_embeddings(best, test_data.vocabulary, config, context)
    sampler, gather = None, None
    if context.is_distributed:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(split.data, num_replicas=context.world_size, rank=context.rank, shuffle=False)
        gather = lambda tensor: gather_rows(tensor, context)  # noqa: E731
    result = evaluate_model(
        best, split.data, test_data.vocabulary, evaluation, dataset_kind=config.data.test.kind,
        dataset_name=test_data.name, model_name=model_description(best, input_size), label_embeddings=embeddings,
        device=context.device, autocast_dtype=_resolve_amp(config.amp, context.device),
        num_workers=config.data.num_workers, sampler=sampler, gather=gather,
        progress=config.progress and context.is_main, failed_images=split.failed)
    result.expected = config.expected
    if context.is_main:
        write_json(result, run_dir / "test_metrics.json")
        echo(format_table(result, config.expected))
    return result


def with_run_dir(config: TrainConfig, run_dir: str | None) -> TrainConfig:
    """``config`` with ``run_dir`` replaced (when given)."""
    return config if run_dir is None else replace(config, run_dir=str(run_dir))

