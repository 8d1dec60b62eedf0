"""A training run built from its config: datasets, feature caches, towers, the trainer, the final test (``adds train``).

Run directory::

    config.json / config.yaml   resolved config (+ values resolved at run time)
    run_info.json               git revision, versions, command line, world size
    metrics.csv                 one row per epoch (TensorBoard events in tb/ when installed)
    checkpoint/                 state.json + state-epochEEEE-stepSSSSSSSS.safetensors: everything --resume needs
                                (after each epoch, every ``checkpoint_every`` steps and on SIGINT/SIGTERM; no pickle)
    best/  last/  last-ema/     ADDS.save_pretrained checkpoints + labels.txt + training.json
    test_metrics.json           final test evaluation of best/ (when a test set is configured)
"""

from __future__ import annotations

import logging
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from adds import __version__
from adds.data.base import MultiLabelDataset, SquashResize
from adds.data.registry import DatasetConfig, load_dataset
from adds.evaluate import EvalResult, Predictions, evaluate_model, format_table, predict, write_json
from adds.model import ADDS
from adds.train.checkpoint import TrainingStateError
from adds.train.checkpoint import write_json as _write_json
from adds.train.config import TrainConfig, config_differences, read_saved_config, save_config
from adds.train.distributed import (
    DistributedContext,
    all_reduce_max,
    barrier,
    gather_rows,
    setup_distributed,
    shutdown_distributed,
)
from adds.train.loop import Trainer, TrainResult
from adds.train.optim import resolve_amp as _resolve_amp

__all__ = [
    "run_training",
    "prepare_split",
    "PreparedSplit",
    "HeldOutScores",
    "held_out_split",
    "cache_directory",
    "model_description",
    "git_revision",
    "with_run_dir",
    "RESUME_MAY_CHANGE",
]

logger = logging.getLogger(__name__)

#: Config keys that may change between a run and its resumption (they do not affect the numbers).
RESUME_MAY_CHANGE = ("run_dir", "data.num_workers", "data.extract", "data.extract_batch_size", "data.verify",
                     "device", "progress", "log_every", "checkpoint_every", "description", "expected",
                     "evaluation.batch_size", "calibrate")


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
                    source: DatasetConfig | None = None, views: int = 1, augment_seed: int = 0) -> Path:
    """Where the feature cache of ``dataset``'s images for ``model``'s towers and pyramid at ``input_size`` lives.

    ``<root>/<kind>-<split>-<images hash>_<tower model>-<weights>-<tower hash>_<input>px_L<levels>``. The name
    depends on the images, not the labels, so runs that share towers, images and resolution share a cache: NUS-WIDE
    test for ZSL (81 labels) and GZSL (1006), or Table 1's 224 px run and Table 6's ML-Decoder run. A multi-view
    (augmented) cache adds ``_v<views>s<augment seed>``.
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
            f"{aligned}_{input_size}px_L{level_tag}" + (f"_v{views}s{augment_seed}" if views > 1 else ""))
    return Path(root) / _slug(name)


def model_description(model: ADDS, input_size: int) -> str:
    decoder = model.config.decoder
    kind = "DM" if decoder.kind == "dm" else "ML"
    return f"ADDS {model.towers.config.model} {kind}-Decoder x{decoder.num_layers} {input_size}x{input_size}"


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
                     context: DistributedContext, named_by: str | None = None, views: int = 1):
    """Open (extracting first if needed) the cache of ``dataset`` in ``directory``.

    A cache named explicitly (``named_by``: the config key, e.g. ``data.train_cache``) that exists but is broken
    (truncated, unfinished, corrupt) is an error naming the file: it was written by ``adds extract`` with settings
    of its own, so re-extracting into it here would only fail with a list of setting differences.
    """
    from adds.features import ExtractConfig, FeatureCacheError, FeatureStore, extract_features
    from adds.features.manifest import MANIFEST_NAME

    try:
        store = FeatureStore.open(directory)
        error = None
    except FeatureCacheError as failure:
        store, error = None, failure
    need = all_reduce_max(torch.tensor([store is None]), context).item()
    if need:
        if error is not None and named_by is not None and (directory / MANIFEST_NAME).is_file():
            raise FeatureCacheError(f"{error} (the cache named by {named_by})")
        if not config.data.extract:
            raise error or FeatureCacheError(f"feature cache {directory} is incomplete on another process")
        if context.is_main:
            logger.info("extracting features of %s into %s", dataset.name, directory)
        extract = ExtractConfig(input_size=input_size, batch_size=config.data.extract_batch_size,
                                num_workers=config.data.num_workers, views=views, augment=config.data.augment)
        try:
            extract_features(model, dataset, directory, extract, rank=context.rank, world_size=context.world_size,
                             progress=context.is_main and config.progress)
        except FeatureCacheError as refusal:
            if error is None:
                raise
            raise FeatureCacheError(f"{error}; it cannot be re-extracted in place: {refusal}") from None
        barrier(context)
        store = FeatureStore.open(directory)
    if config.data.verify:
        from adds.features import verify_cache

        store = verify_cache(directory)
    store.check_compatible(model, dataset, input_size)
    if store.views != views:
        raise FeatureCacheError(f"feature cache {directory} holds {store.views} view(s) per image, the config asks "
                                f"for {views} (data.views); extract it with adds extract --views {views}")
    wanted = config.data.augment.settings()
    if views > 1 and store.manifest.get("augment") != wanted:
        raise FeatureCacheError(f"feature cache {directory} was augmented with {store.manifest.get('augment')}, the "
                                f"config asks for {wanted} (data.augment); re-extract it or change data.augment")
    return store


def prepare_split(dataset: MultiLabelDataset, model: ADDS, input_size: int, config: TrainConfig,
                  context: DistributedContext, indices: Sequence[int] | None = None,
                  source: DatasetConfig | None = None, cache_dir: str | None = None,
                  named_by: str | None = None, augment: bool = False, views: int = 1) -> PreparedSplit:
    """Cached tokens (default) or resized images of ``dataset``, restricted to dataset ``indices`` if given.

    ``cache_dir`` is an explicit cache directory (``named_by``: the config key that named it); otherwise
    ``config.data.cache`` names the root of automatically named caches (:func:`cache_directory`), and with neither
    the split is read from images. With ``config.data.verify`` the cache (or the images) is checked first.

    ``views`` is the number of views per image of the split's cache (``data.views`` for the training split and the
    held-out part of it, 1 otherwise); ``augment`` (the training split only) draws one view per image each epoch
    (cache) or augments each image on-line (images, ``data.augment_online``). Without ``augment`` a multi-view
    cache is read at view 0, the plain image.
    """
    dataset.transform = SquashResize(input_size)
    if config.data.cache is None and cache_dir is None:
        if config.data.verify and context.is_main:
            from adds.features import verify_images

            verify_images(dataset)
        data: Dataset = dataset
        if augment and config.data.augment_online:
            from adds.data.augment import OnlineAugmentedDataset

            data = OnlineAugmentedDataset(dataset, input_size, config.data.augment, seed=config.seed)
        data = data if indices is None else Subset(data, list(indices))
        return PreparedSplit(data, dataset)
    from adds.features import CachedFeatureDataset

    directory = Path(cache_dir) if cache_dir is not None else \
        cache_directory(config.data.cache, dataset, model, input_size, source, views, config.data.augment.seed)
    store = _open_or_extract(dataset, directory, model, input_size, config, context, named_by, views)
    cached = CachedFeatureDataset(store, dataset, sample_views=augment, seed=config.seed)
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


@dataclass
class HeldOutScores:
    """Scores of the selected checkpoint (``best/``) on the held-out validation split -- what per-label threshold
    calibration fits on (never the test set).

    Attributes:
        vocabulary: the validation labels (columns).
        predictions: ``predictions.scores["all"]`` ``(N, C)`` sigmoid scores, ``.targets`` ``(N, C)``, ``.mask``
            ``(N, C)`` (``False`` = label not annotated), ``.indices`` ``(N,)`` dataset rows.
    """

    vocabulary: list[str]
    predictions: Predictions


def held_out_scores(best: ADDS, split: PreparedSplit, embeddings: torch.Tensor, config: TrainConfig,
                    context: DistributedContext, score_fn=None) -> HeldOutScores:
    """Score ``split`` (the run's held-out validation split) with ``best`` (all processes take part).

    ``score_fn(tokens, label_embeddings) -> (B, k)`` replaces the head's sigmoid scores (see
    :func:`adds.evaluate.predict`), e.g. raw logits or the training-free prior."""
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    from adds.evaluate import collate_batch, eval_batch_size

    vocabulary = list(split.dataset.vocabulary)
    sampler = DistributedSampler(split.data, num_replicas=context.world_size, rank=context.rank, shuffle=False) \
        if context.is_distributed else None
    loader = DataLoader(split.data, batch_size=eval_batch_size(config.evaluation, len(vocabulary)), sampler=sampler,
                        num_workers=config.data.num_workers, collate_fn=collate_batch,
                        generator=torch.Generator().manual_seed(config.seed))
    gather = (lambda tensor: gather_rows(tensor, context)) if context.is_distributed else None
    best.eval()
    predictions = predict(best, loader, {"all": embeddings.to(context.device)}, score_fn=score_fn,
                          device=context.device,
                          autocast_dtype=_resolve_amp(config.amp, context.device), gather=gather,
                          description="held-out", progress=False)
    return HeldOutScores(vocabulary, predictions)


def _after_training(config: TrainConfig, run_dir: Path, scores: Callable[[], HeldOutScores] | None,
                    context: DistributedContext) -> None:
    """Steps that run once training has finished, before the final test (every process calls it).

    This is where fitting per-label thresholds on the held-out split belongs (``best/thresholds.tsv``): call
    ``scores()`` (collective under torchrun; ``None`` when the run has no validation split) for
    :class:`HeldOutScores` of ``best/`` and write from the main process only (``context.is_main``).

    Fits ``best/thresholds.tsv`` (issue 11: calibrated thresholds) when ``config.calibrate`` is on.
    """
    if not config.calibrate:
        return
    if scores is None:
        logger.info("no validation split: best/ keeps no calibrated thresholds (adds calibrate fits them later)")
        return
    held_out = scores()
    if not context.is_main:
        return
    from adds.calibration import calibrate_checkpoint

    predictions = held_out.predictions
    source = f"held-out validation split of {run_dir.name} ({len(predictions.targets)} images)"
    report = calibrate_checkpoint(run_dir / "best", predictions.scores["all"], predictions.targets,
                                  held_out.vocabulary, predictions.mask, source=source)
    summary = report.fit.summary()
    logger.info("calibrated thresholds -> %s: %d per-label, %d pooled fallback; macro F1 at 0.5 %.3f -> %.3f",
                report.thresholds_path, summary["per_label"], summary["pooled_fallback"],
                summary["macro_f1_before"], summary["macro_f1_after"])


def run_training(config: TrainConfig, resume: bool = False, stop_after: int | None = None,
                 echo=print, stop_after_steps: int | None = None) -> TrainResult:
    """Everything ``adds train`` does: datasets, caches, model, training, final test evaluation.

    Args:
        config: the run's configuration (``config.data.train`` must be set).
        resume: continue the run in ``config.run_dir`` (its saved config must agree, see ``RESUME_MAY_CHANGE``).
        stop_after: leave after this many epochs (resume later).
        stop_after_steps: leave, with a step-level checkpoint, after this many batches (resume later).
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
        return _run(config, context, resume, stop_after, echo, stop_after_steps)
    finally:
        shutdown_distributed(context)


def _run(config: TrainConfig, context: DistributedContext, resume: bool, stop_after: int | None,
         echo, stop_after_steps: int | None = None) -> TrainResult:
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
                          config.data.train_cache, named_by="data.train_cache", augment=True, views=config.data.views)
    val = None
    if val_data is not None:
        held_out = config.data.val is None  # a held-out part of train: reads view 0 of the train cache
        val = prepare_split(val_data, model, input_size, config, context, val_indices,
                            config.data.val or config.data.train,
                            config.data.train_cache if held_out else config.data.val_cache,
                            named_by="data.train_cache" if held_out else "data.val_cache",
                            views=config.data.views if held_out else 1)
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
    result = trainer.fit(resume=resume, stop_after=stop_after, stop_after_steps=stop_after_steps)
    if not result.finished:
        return result
    scores = None
    if val is not None:
        def scores() -> HeldOutScores:
            best = ADDS.from_pretrained(run_dir / "best", towers=model.towers, map_location=context.device)
            return held_out_scores(best, val, val_embeddings if val_embeddings is not None else embeddings, config,
                                   context)
    _after_training(config, run_dir, scores, context)
    if config.open_vocab.holdout > 0:
        if val is None:
            logger.warning("open_vocab.holdout needs a validation split: best/ gets no open_vocab.json")
        else:
            from adds.train.open_vocab import fit_open_vocabulary

            fold = fit_open_vocabulary(config, model, train, val, list(vocabulary), embeddings, input_size, context,
                                       resume)
            if not fold.finished:  # the fold run was interrupted: --resume finishes it
                result.finished, result.interrupted = False, fold.interrupted
                return result
    if config.data.test is not None:
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
                          cache_dir=config.data.test_cache, named_by="data.test_cache")
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

