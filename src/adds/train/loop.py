"""The ADDS trainer: frozen towers, a trained head, step-exact resume, model selection on held-out data.

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
   every ``checkpoint_every`` steps, and when SIGINT / SIGTERM arrives (:mod:`adds.train.interrupt`), the training
   state is checkpointed mid-epoch (:mod:`adds.train.checkpoint`);
4. after the epoch: mAP on the held-out validation split for the raw and the EMA weights (never the test set);
   the better of the two, if better than before, is saved to ``run_dir/best``; then the training state is
   checkpointed.

A resumed run skips the batches of the interrupted epoch already consumed (the epoch's order is recomputed from
``(seed, epoch)``), and every random stream it uses is either restored (torch / numpy / Python global RNGs, the SLS
generator) or a function of ``(seed, epoch)`` (the DataLoader's worker seeds, augmented-view choice), so its final
weights are bit-identical to an uninterrupted run's on the same hardware. Building a run from a config (datasets,
caches, final test) is :mod:`adds.train.run`.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from adds.evaluate import EvalConfig, EvalResult, collate_batch, eval_batch_size, evaluate_scores, predict
from adds.losses import AsymmetricLoss
from adds.model import ADDS
from adds.sampling import SelectiveLanguageSupervision
from adds.sampling import SLSConfig as SamplingConfig
from adds.train import checkpoint, records
from adds.train.checkpoint import TrainingStateError
from adds.train.config import TrainConfig
from adds.train.distributed import (
    DistributedContext,
    all_reduce_max,
    all_reduce_sum,
    barrier,
    epoch_sampler,
    gather_rows,
)
from adds.train.ema import ModelEMA
from adds.train.interrupt import StopSignals
from adds.train.optim import make_scheduler as _make_scheduler
from adds.train.optim import parameter_groups as _parameter_groups
from adds.train.optim import resolve_amp as _resolve_amp

__all__ = ["Trainer", "TrainResult", "TrainingStateError", "epoch_generator"]

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """Outcome of :meth:`Trainer.fit` / :func:`adds.train.run.run_training`.

    Attributes:
        run_dir: the run directory.
        epochs_done: completed epochs (including those of earlier invocations when resumed).
        finished: all ``config.epochs`` epochs are done (``False`` after ``stop_after`` or a signal).
        best: ``{"epoch", "source" ("model" | "ema"), "val_mAP"}`` of the selected checkpoint, or ``None``.
        history: one dict per epoch (the rows of ``metrics.csv``).
        test: the final test evaluation of ``best/`` (when a test set was configured and training finished).
        interrupted: the signal number (SIGINT 2, SIGTERM 15) that stopped the run after a step, else ``None``.
        batch_in_epoch: batches of the unfinished epoch already trained (0 at an epoch boundary).
    """

    run_dir: Path
    epochs_done: int
    finished: bool
    best: dict[str, Any] | None
    history: list[dict[str, Any]]
    test: EvalResult | None = None
    interrupted: int | None = None
    batch_in_epoch: int = 0


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The DataLoader's generator of one epoch (its worker seeds): a function of ``(seed, epoch)`` only, so that
    creating a loader mid-epoch on resume neither consumes the global RNG nor changes any worker's stream."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))


def _set_epoch(data: Dataset, epoch: int) -> None:
    """Tell ``data`` (or the dataset under a ``Subset``) the epoch: augmented-view choice and on-line augmentation
    are functions of ``(seed, epoch)``."""
    while isinstance(data, Subset) and not hasattr(data, "set_epoch"):
        data = data.dataset
    if hasattr(data, "set_epoch"):
        data.set_epoch(epoch)


class _Head(nn.Module):
    """The trainable part of ADDS as its own module, so DDP sees (and broadcasts) only the head, not the towers."""

    def __init__(self, model: ADDS) -> None:
        super().__init__()
        self.parts = nn.ModuleDict({"token_proj": model.token_proj, "decoder": model.decoder,
                                    "classifier": model.classifier})
        self.__dict__["model"] = model  # plain attribute: not a submodule

    def forward(self, tokens: torch.Tensor, label_embeddings: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(tokens, label_embeddings)  # (B, k)


# -- the trainer ----------------------------------------------------------------------------------------------------
class Trainer:
    """Trains the head of ``model`` on prepared splits (cached tokens or images).

    Args:
        config: the run's configuration.
        model: the ADDS model (towers frozen; its head is trained in place), on ``context.device``.
        train_set: items ``{"index", "tokens" | "image", "target", "mask"}`` (``CachedFeatureDataset``,
            :class:`adds.evaluate.TensorFeatureDataset`, or a ``MultiLabelDataset`` with a resize transform). A
            dataset with a ``set_epoch(epoch)`` method (augmented cache views) is told the epoch before each epoch.
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
        self._signals: StopSignals | None = None
        self._budget: int | None = None
        self.interrupted: int | None = None

        self.batch_in_epoch = 0
        self.partial = self.empty_partial()

    @staticmethod
    def empty_partial() -> dict[str, Any]:
        """Running sums of the epoch in progress (checkpointed mid-epoch so the epoch's row is exact on resume)."""
        return {"loss_sum": 0.0, "steps": 0, "skipped": 0, "seconds": 0.0}

    # -- public ---------------------------------------------------------------------------------------------------
    def fit(self, resume: bool = False, stop_after: int | None = None,
            stop_after_steps: int | None = None) -> TrainResult:
        """Train to ``config.epochs``, or for ``stop_after`` more epochs / ``stop_after_steps`` more batches at most.

        Checkpoints are written after every epoch, every ``config.checkpoint_every`` optimiser steps and when
        SIGINT / SIGTERM arrives (the run then stops after the current step: ``TrainResult.interrupted``).

        Args:
            resume: continue from ``run_dir/checkpoint`` (bit-identical to an uninterrupted run on the same
                hardware, also from a mid-epoch checkpoint); a run directory without a checkpoint starts from
                scratch.
            stop_after: leave after this many epochs in this call (time-limited jobs; resume later).
            stop_after_steps: leave (with a checkpoint) after this many batches in this call -- what a kill
                mid-epoch leaves behind.
        """
        state = self.run_dir / "checkpoint" / "state.json"
        if resume and state.is_file():
            self.load_state(self.run_dir / "checkpoint")
            logger.info("resumed %s after epoch %d, batch %d", self.run_dir, self.epoch, self.batch_in_epoch)
        elif resume:
            logger.warning("--resume: %s has no checkpoint, starting from scratch", self.run_dir)
        elif state.is_file():
            raise TrainingStateError(f"{self.run_dir} already holds a training checkpoint; pass --resume to continue "
                                     f"it or choose another --run-dir")
        if self.context.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._tensorboard = records.open_tensorboard(self.run_dir)
        if self.sls_active and self.context.is_main:
            logger.info("selective language supervision on (alpha %g, %d labels)", self.config.sls.alpha,
                        len(self.vocabulary))
        done_now, self._budget = 0, stop_after_steps
        with StopSignals() as signals:
            self._signals = signals
            while self.epoch < self.config.epochs and (stop_after is None or done_now < stop_after):
                if not self._train_one_epoch():
                    break
                done_now += 1
        self._signals = None
        finished = self.epoch >= self.config.epochs
        if finished and self.context.is_main:
            self._save_final()
        barrier(self.context)
        if self._tensorboard is not None:
            self._tensorboard.close()
        return TrainResult(self.run_dir, self.epoch, finished, self.best, list(self.history),
                           interrupted=self.interrupted, batch_in_epoch=self.batch_in_epoch)

    def save_state(self, directory: Path) -> None:
        """Write the complete training state (:func:`adds.train.checkpoint.save_state`)."""
        checkpoint.save_state(self, directory)

    def load_state(self, directory: Path) -> None:
        """Restore a state written by :meth:`save_state` (:class:`TrainingStateError` naming the file)."""
        checkpoint.load_state(self, directory)

    def plan(self) -> dict[str, Any]:
        """What must not change between a run and its resumption (it shapes the schedule and the data order)."""
        return {"epochs": self.config.epochs, "batch_size": self.config.batch_size, "seed": self.config.seed,
                "train_size": len(self.train_set), "schedule": self.config.optim.schedule,
                "vocabulary_size": len(self.vocabulary)}

    # -- one epoch ------------------------------------------------------------------------------------------------
    def _loader(self, dataset: Dataset, sampler, batch_size: int, generator: torch.Generator) -> DataLoader:
        workers = self.config.data.num_workers
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                          collate_fn=collate_batch, pin_memory=self.device.type == "cuda",
                          persistent_workers=False, generator=generator)

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _train_one_epoch(self) -> bool:
        """Train (the rest of) epoch ``self.epoch``; ``False`` when the run stopped mid-epoch (signal, step budget)."""
        from tqdm.auto import tqdm

        config, context = self.config, self.context
        start = time.perf_counter()
        epoch = self.epoch  # 0-based index of the epoch being trained
        self.sampler.set_epoch(epoch)
        _set_epoch(self.train_set, epoch)
        order = list(self.sampler)  # this process's share of the (seed, epoch) permutation
        first = self.batch_in_epoch
        loader = self._loader(self.train_set, order[first * self.local_batch:], self.local_batch,
                              epoch_generator(config.seed, epoch))
        self.model.train()
        partial = self.partial
        bar = tqdm(loader, total=self.steps_per_epoch, initial=first, desc=f"epoch {epoch + 1}/{config.epochs}",
                   leave=False, disable=not (context.is_main and config.progress), dynamic_ncols=True, file=sys.stderr)
        stopped = False
        for batch in bar:
            stepped = self._train_step(batch, partial, bar)
            self.batch_in_epoch += 1
            signal_number = self._signals.requested_anywhere(context) if self._signals is not None else None
            if self._budget is not None:
                self._budget -= 1
            last_batch = self.batch_in_epoch >= self.steps_per_epoch
            if signal_number is not None or (self._budget is not None and self._budget <= 0 and not last_batch):
                self.interrupted = signal_number
                stopped = True
            every = config.checkpoint_every
            if stopped or (stepped and every is not None and self.global_step % every == 0 and not last_batch):
                partial["seconds"] += time.perf_counter() - start
                start = time.perf_counter()
                self._checkpoint_mid_epoch()
            if stopped:
                break
        bar.close()
        if stopped:
            return False
        self._finish_epoch(epoch, partial, time.perf_counter() - start)
        return not (self._budget is not None and self._budget <= 0)

    def _train_step(self, batch: dict[str, Any], partial: dict[str, Any], bar) -> bool:
        """One optimiser step on ``batch`` (``False`` when the batch is skipped: no image, or no positive for SLS)."""
        config, context = self.config, self.context
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
            partial["skipped"] += 1
            return False
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
        partial["steps"] += 1
        value = float(loss.detach())  # this process's share x processes: an estimate of the global batch loss
        partial["loss_sum"] += value / context.world_size
        if partial["steps"] % config.log_every == 0 and context.is_main:
            bar.set_postfix(loss=f"{value:.3f}", lr=f"{self._lr():.2e}")
            if self._tensorboard is not None:
                self._tensorboard.add_scalar("train/loss", value, self.global_step)
                self._tensorboard.add_scalar("train/lr", self._lr(), self.global_step)
        return True

    def _global_loss_sum(self) -> float:
        """The epoch's loss sum over every process's share (collective under torchrun)."""
        loss_sum = self.partial["loss_sum"]
        if self.context.is_distributed:
            loss_sum = float(all_reduce_sum(torch.tensor([loss_sum], dtype=torch.float64), self.context).item())
        return loss_sum

    def _checkpoint_mid_epoch(self) -> None:
        # The saved running loss is the global one; after saving only the main process keeps it, so the epoch-end
        # reduction counts it once, with or without a resume in between.
        total = self._global_loss_sum()
        self.partial["loss_sum"] = total
        if self.context.is_main:
            self.save_state(self.run_dir / "checkpoint")
            logger.info("checkpoint at epoch %d, batch %d/%d (step %d)", self.epoch + 1, self.batch_in_epoch,
                        self.steps_per_epoch, self.global_step)
        else:
            self.partial["loss_sum"] = 0.0
        barrier(self.context)

    def _finish_epoch(self, epoch: int, partial: dict[str, Any], seconds: float) -> None:
        context = self.context
        if partial["skipped"] and context.is_main:
            logger.info("epoch %d: skipped %d batch(es) without any positive label (SLS, Eq. 6) or image",
                        epoch + 1, partial["skipped"])
        loss_sum = self._global_loss_sum()
        steps = partial["steps"]
        self.epoch, self.batch_in_epoch = epoch + 1, 0
        row = self._validate_and_select()
        row.update(epoch=self.epoch, steps=steps, skipped_batches=partial["skipped"], lr=self._lr(),
                   train_loss=loss_sum / steps if steps else None,
                   seconds=round(partial["seconds"] + seconds, 3))
        self.history.append(row)
        self.partial = self.empty_partial()
        if context.is_main:
            self.save_state(self.run_dir / "checkpoint")
            records.write_metrics(self.run_dir, self.history, self._tensorboard)
            records.log_epoch(row, self.config.epochs, self.best)
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
        batch = eval_batch_size(self.config.evaluation, len(self.val_vocabulary))
        loader = self._loader(self.val_set, sampler, batch, torch.Generator().manual_seed(self.config.seed))
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
        records.save_pretrained(self, directory, use_ema, note)

    def _save_final(self) -> None:
        self._save_pretrained(self.run_dir / "last", use_ema=False, note="last")
        if self.ema is not None:
            self._save_pretrained(self.run_dir / "last-ema", use_ema=True, note="last-ema")
        if self.best is None:
            # No validation data (or none loadable): nothing to select on, so "best" is the last epoch's raw weights.
            self.best = {"epoch": self.epoch, "source": "model", "val_mAP": None,
                         "note": "no validation split: last epoch"}
            self._save_pretrained(self.run_dir / "best", use_ema=False, note="best (last epoch, no validation split)")
