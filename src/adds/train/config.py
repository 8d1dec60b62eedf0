"""Typed configuration of a training run, read from YAML/JSON with ``--set key.sub=value`` overrides.

One frozen dataclass per concern, composed into :class:`TrainConfig`::

    TrainConfig
    |-- data: DataConfig          train / val / test datasets (adds.data.registry.DatasetConfig), input size, cache
    |-- model: ADDSConfig         towers, decoder, pyramid, prompt templates (adds.model)
    |-- optim: OptimConfig        Adam, learning-rate rule, weight decay, schedule
    |-- loss: ASLConfig           Asymmetric Loss (adds.losses)
    |-- sls: SLSConfig            Selective Language Supervision (Eq. 6), automatic for vocabularies > 1000 labels
    |-- ema: EMAConfig            exponential moving average of the trainable weights
    |-- open_vocab: OpenVocabTrainConfig   fold head for the open-vocabulary mode (adds.train.open_vocab), off
    `-- evaluation: EvalConfig    protocol of the final test evaluation (adds.evaluate)

Defaults are the paper's ("Implementation Settings"): Adam, lr 3e-4 for inputs <= 336 px and 1e-4 above,
weight decay 1e-4, 40 epochs, batch 56, ASL, frozen towers. Where the paper is silent (schedule, EMA, which
parameters get weight decay) the defaults follow ML-Decoder's training script, which the paper builds on:
OneCycle schedule (warm-up over the first 20 % of steps), EMA with decay 0.9997, no weight decay on biases and
normalisation weights. ``docs/training.md`` lists every choice.

Files: a config file is YAML (needs ``pyyaml``, the ``train`` extra) or JSON; unknown keys are errors naming the
key. ``1e-4`` is read as a number (plain PyYAML would read it as a string). Overrides are ``dotted.key=value`` with
the value parsed as YAML (``null``, ``true``, ``[0, 1, 2]``, ``3e-4``); they may create sections that the file left
out (``--set data.val.kind=coco``). Scalars follow YAML 1.2: ``amp: off`` is the string ``"off"``, not ``False``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adds.config import config_from_dict, config_to_dict
from adds.data.augment import AugmentConfig
from adds.data.registry import DatasetConfig
from adds.evaluate import EvalConfig
from adds.losses import ASLConfig
from adds.model import ADDSConfig

__all__ = [
    "DataConfig",
    "OptimConfig",
    "SLSConfig",
    "EMAConfig",
    "OpenVocabTrainConfig",
    "TrainConfig",
    "ConfigError",
    "paper_learning_rate",
    "load_config",
    "parse_overrides",
    "apply_overrides",
    "save_config",
    "config_differences",
]

SCHEDULES = ("onecycle", "cosine", "constant")
AMP_MODES = ("auto", "bf16", "fp16", "off")
#: Input size (px) up to which the paper uses lr 3e-4; larger inputs use 1e-4 ("Implementation Settings").
PAPER_LR_SIZE_LIMIT = 336


class ConfigError(ValueError):
    """A training config file or override is malformed (the message names the file, key or value)."""


def paper_learning_rate(input_size: int) -> float:
    """The paper's rule: 3e-4 for inputs of at most 336 x 336 px, 1e-4 for larger ones ("Implementation Settings")."""
    return 3e-4 if input_size <= PAPER_LR_SIZE_LIMIT else 1e-4


@dataclass(frozen=True)
class DataConfig:
    """Which data a run trains, selects and tests on.

    Attributes:
        train: training set (required to train).
        val: held-out validation set for model selection. ``None`` holds out ``val_fraction`` of ``train`` instead
            (a fixed, seed-determined subset that is never trained on). The test set is never used for selection.
        test: test set, evaluated once with the selected model after training (``evaluation`` protocol).
        val_fraction: fraction of ``train`` held out when ``val`` is ``None`` (``0`` disables model selection:
            ``best/`` is then the last epoch).
        input_size: images are squash-resized to ``input_size x input_size`` before Pyramid-Forwarding (Table 1:
            224, 336, 640, 1344); ``None`` = the tower's own size.
        cache: root directory of frozen-feature caches (``adds.features``); each split gets a sub-directory named
            after dataset, towers, input size and levels, created by ``adds extract`` or -- with ``extract`` --
            by the training command itself. ``None`` trains from images (the towers run every step, and
            Pyramid-Forwarding's random crop disposal applies).
        train_cache, val_cache, test_cache: explicit cache directories for one split (e.g. written by
            ``adds extract --out DIR``), used instead of the automatic ``<cache>/<name>``; a held-out validation
            split reads ``train_cache``.
        extract: extract missing or unfinished caches before training (resumable; sharded over torchrun ranks).
        verify: check every feature cache (sizes, checksums, finite values) before training
            (``adds train --verify-data``); a corrupt shard is an error naming its file.
        num_workers: DataLoader worker processes.
        extract_batch_size: images per tower call when extracting.
        views: augmented views per training image in the train split's feature cache (``adds extract --views``):
            view 0 is the plain image, views 1..K-1 are augmented as ``augment`` says, extracted once; each epoch
            one view per image is drawn from ``(seed, epoch)``. ``1`` (default): no augmentation, as the paper's
            cached setting. Validation and test always read view 0. The towers run K times per training image, once.
        augment: the augmentation of cached views and of ``augment_online`` (:class:`adds.data.augment.AugmentConfig`:
            horizontal flip, RandAugment 2 ops at magnitude 9, Cutout as ``RandomErasing`` on every image --
            ML-Decoder's recipe plus the flip -- and the views' seed).
        augment_online: with ``cache: null`` (the towers run every step), augment every training image afresh each
            epoch (seeded by ``(augment.seed, seed, epoch, index)``): the exact recipe, at full re-encoding cost.
    """

    train: DatasetConfig | None = None
    val: DatasetConfig | None = None
    test: DatasetConfig | None = None
    val_fraction: float = 0.05
    input_size: int | None = None
    cache: str | None = "cache"
    train_cache: str | None = None
    val_cache: str | None = None
    test_cache: str | None = None
    extract: bool = True
    verify: bool = False
    num_workers: int = 4
    extract_batch_size: int = 32
    views: int = 1
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    augment_online: bool = False

    def __post_init__(self) -> None:
        _set_float(self, "val_fraction")
        if isinstance(self.views, bool) or not isinstance(self.views, int) or self.views < 1:
            raise ConfigError(f"data.views must be a positive integer, got {self.views!r}")
        if self.augment_online and (self.cache is not None or self.train_cache is not None):
            raise ConfigError("data.augment_online needs data.cache: null (on-line augmentation re-encodes images "
                              "every step); with a cache, use data.views: K for K extracted views per image")
        if self.views > 1 and self.cache is None and self.train_cache is None:
            raise ConfigError("data.views > 1 needs a feature cache (data.cache or data.train_cache); without one "
                              "use data.augment_online: true")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.input_size is not None and (not isinstance(self.input_size, int) or self.input_size < 1):
            raise ConfigError(f"data.input_size must be a positive integer or null, got {self.input_size!r}")
        if self.num_workers < 0 or self.extract_batch_size < 1:
            raise ConfigError("data.num_workers must be >= 0 and data.extract_batch_size >= 1")


@dataclass(frozen=True)
class OptimConfig:
    """Adam with L2 weight decay, as in the paper ("All models are optimized by the Adam optimizer").

    Attributes:
        lr: peak learning rate; ``None`` = the paper's rule (:func:`paper_learning_rate`: 3e-4 for inputs
            <= 336 px, 1e-4 above).
        weight_decay: L2 penalty (paper 1e-4), not applied to biases and normalisation weights (1-D parameters).
        betas, eps: Adam's.
        schedule: ``"onecycle"`` (ML-Decoder's: cosine warm-up to ``lr`` over ``pct_start`` of the steps, then
            cosine decay; Adam's beta1 cycles 0.95 -> 0.85 -> 0.95), ``"cosine"`` (cosine decay from ``lr`` to
            ``lr * min_lr_ratio`` after ``warmup_epochs`` of linear warm-up) or ``"constant"``.
        pct_start: OneCycle warm-up fraction.
        warmup_epochs: linear warm-up length for ``"cosine"`` (may be fractional).
        min_lr_ratio: final learning rate of ``"cosine"`` relative to ``lr``.
        grad_clip: clip the gradient norm to this value (``None``: no clipping; the paper does not clip).
    """

    lr: float | None = None
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: str = "onecycle"
    pct_start: float = 0.2
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.0
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        for name in ("lr", "weight_decay", "eps", "pct_start", "warmup_epochs", "min_lr_ratio", "grad_clip"):
            _set_float(self, name)
        object.__setattr__(self, "betas", tuple(float(beta) for beta in self.betas))
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"optim.lr must be > 0 or null (paper rule), got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"optim.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not 0.0 < self.pct_start < 1.0:
            raise ConfigError(f"optim.pct_start must be in (0, 1), got {self.pct_start}")
        if self.weight_decay < 0 or self.warmup_epochs < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError("optim.weight_decay and optim.warmup_epochs must be >= 0, optim.min_lr_ratio in [0, 1]")
        if len(self.betas) != 2:
            raise ConfigError(f"optim.betas must have two values, got {self.betas}")

    def resolve_lr(self, input_size: int) -> float:
        """The learning rate to use: ``lr``, or the paper's rule for ``input_size``."""
        return self.lr if self.lr is not None else paper_learning_rate(input_size)


@dataclass(frozen=True)
class SLSConfig:
    """Selective Language Supervision during training (Eq. 6; :mod:`adds.sampling`).

    Attributes:
        enabled: ``True`` / ``False``, or ``None`` = on when the training vocabulary has more than
            ``auto_threshold`` labels (the paper uses it for ImageNet-21k).
        alpha: sampled negatives per positive label (paper 3).
        auto_threshold: vocabulary size above which ``enabled=None`` switches SLS on.
    """

    enabled: bool | None = None
    alpha: float = 3.0
    auto_threshold: int = 1000

    def __post_init__(self) -> None:
        _set_float(self, "alpha")
        if not math.isfinite(self.alpha) or self.alpha < 0:
            raise ConfigError(f"sls.alpha must be a finite number >= 0, got {self.alpha}")

    def active(self, num_labels: int) -> bool:
        """Whether SLS is used for a vocabulary of ``num_labels`` labels."""
        return self.enabled if self.enabled is not None else num_labels > self.auto_threshold


@dataclass(frozen=True)
class EMAConfig:
    """Exponential moving average of the trainable weights, evaluated separately from the raw weights.

    Attributes:
        enabled: keep an EMA copy (ML-Decoder's training keeps one; the paper does not mention it).
        decay: ``ema = decay * ema + (1 - decay) * weights`` after every optimiser step (ML-Decoder: 0.9997).
        warmup: use ``min(decay, (1 + t) / (10 + t))`` at step ``t`` so short runs are not dominated by the
            initial weights (off by default, as in ML-Decoder).
    """

    enabled: bool = True
    decay: float = 0.9997
    warmup: bool = False

    def __post_init__(self) -> None:
        _set_float(self, "decay")
        if not 0.0 <= self.decay < 1.0:
            raise ConfigError(f"ema.decay must be in [0, 1), got {self.decay}")


@dataclass(frozen=True)
class OpenVocabTrainConfig:
    """The open-vocabulary mode's fit after training (not in the paper; :mod:`adds.train.open_vocab`).

    Attributes:
        holdout: share of the training labels a second, *fold* head is trained without; its scores on the held-out
            validation split fit ``best/open_vocab.json`` (how words outside the training vocabulary mix the head
            with the CLIP prior). ``0`` (the default) = off: it costs a second training run.
        seed: which labels are hidden.
    """

    holdout: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        _set_float(self, "holdout")
        if not 0.0 <= self.holdout < 1.0:
            raise ConfigError(f"open_vocab.holdout must be in [0, 1), got {self.holdout}")


@dataclass(frozen=True)
class TrainConfig:
    """A whole training run (see the module docstring for the layout and ``configs/`` for the paper's runs).

    Attributes:
        name: run name; the default run directory is ``runs/<name>``.
        data, model, optim, loss, sls, ema, evaluation: the sections above.
        epochs: training epochs (paper 40).
        batch_size: global batch size, split evenly over torchrun processes (paper 56); must be divisible by the
            number of processes so that a multi-GPU run takes the same optimisation steps as a single-GPU one.
        amp: mixed precision on GPU: ``"auto"`` (bf16 where supported, else fp16 with a gradient scaler),
            ``"bf16"``, ``"fp16"`` or ``"off"``. Always off on CPU.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``; under torchrun each process takes
            ``cuda:LOCAL_RANK``.
        seed: seeds weights, dropout, data order (a function of ``(seed, epoch)``), SLS draws and the held-out split.
        deterministic: use only deterministic CUDA kernels (``torch.use_deterministic_algorithms``; slower), so that
            a resumed GPU run is bit-identical to an uninterrupted one. CPU runs are deterministic anyway.
        run_dir: output directory (``None``: ``runs/<name>``).
        log_every: optimiser steps between progress-bar / TensorBoard loss updates.
        checkpoint_every: also checkpoint the training state every this many optimiser steps, mid-epoch
            (``None``: only after each epoch and on SIGINT / SIGTERM). A resume from such a checkpoint ends with the
            same weights as an uninterrupted run.
        progress: show tqdm progress bars (main process only, on stderr).
        description: free text (which paper table the config reproduces).
        expected: the paper's numbers for this config (e.g. ``{"table": 1, "mAP": 89.82}``), reported next to
            the measured ones; never used for anything else.
        calibrate: after training, fit per-label F1-optimal thresholds of ``best/`` on the held-out validation
            split and write ``best/thresholds.tsv`` + ``best/calibration.json`` (:mod:`adds.calibration`), which
            ``adds tag`` then uses by default. Needs a validation split; skipped (with a log line) without one.
        open_vocab: after training (and calibration), train a fold head without some labels and fit
            ``best/open_vocab.json``, the open-vocabulary mode ``adds tag`` / ``adds eval`` then use for words
            outside the training labels (:class:`OpenVocabTrainConfig`; off by default).
    """

    name: str = "adds"
    data: DataConfig = field(default_factory=DataConfig)
    model: ADDSConfig = field(default_factory=ADDSConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: ASLConfig = field(default_factory=ASLConfig)
    sls: SLSConfig = field(default_factory=SLSConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    epochs: int = 40
    batch_size: int = 56
    amp: str = "auto"
    device: str = "auto"
    seed: int = 0
    deterministic: bool = False
    run_dir: str | None = None
    log_every: int = 20
    checkpoint_every: int | None = None
    progress: bool = True
    description: str = ""
    expected: dict[str, Any] | None = None
    calibrate: bool = True
    open_vocab: OpenVocabTrainConfig = field(default_factory=OpenVocabTrainConfig)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        every = self.checkpoint_every
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ConfigError(f"checkpoint_every must be a positive integer or null, got {every!r}")
        if self.amp not in AMP_MODES:
            raise ConfigError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if not re.fullmatch(r"[A-Za-z0-9._+-]+", self.name):
            raise ConfigError(f"name must be a plain file name (letters, digits, . _ + -), got {self.name!r}")

    @property
    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.name


# -- reading and writing ------------------------------------------------------------------------------------------
def _set_float(config: Any, name: str) -> None:
    """Accept ints (and numeric strings from lenient YAML) for float fields of a frozen dataclass."""
    value = getattr(config, name)
    if value is None or isinstance(value, float):
        return
    if isinstance(value, bool):
        raise ConfigError(f"{type(config).__name__}.{name} must be a number, got {value!r}")
    try:
        object.__setattr__(config, name, float(value))
    except (TypeError, ValueError):
        raise ConfigError(f"{type(config).__name__}.{name} must be a number, got {value!r}") from None


def _yaml_loader():
    try:
        import yaml
    except ImportError as error:  # pyyaml is the "train" extra
        raise ConfigError("reading YAML configs needs pyyaml: pip install 'adds[train]' (or use a .json config)") \
            from error

    class Loader(yaml.SafeLoader):
        """SafeLoader with YAML 1.2 scalars: ``1e-4`` is a float, ``on`` / ``off`` / ``yes`` / ``no`` are strings."""

    replaced = ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float")
    Loader.yaml_implicit_resolvers = {
        first: [(tag, regex) for tag, regex in resolvers if tag not in replaced]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
        list("-+0123456789."),
    )
    return yaml, Loader


def _parse_value(text: str) -> Any:
    yaml, loader = _yaml_loader()
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        raise ConfigError(f"cannot parse value {text!r}: {error}") from error


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML (``.yaml``/``.yml``) or JSON config file -> a plain dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path} is not valid JSON: {error}") from error
    else:
        yaml, loader = _yaml_loader()
        try:
            data = yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from error
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config sections, got {type(data).__name__}")
    return data


def parse_overrides(items: Sequence[str]) -> list[tuple[list[str], Any]]:
    """``["optim.lr=1e-4", "data.cache=null"]`` -> ``[(["optim", "lr"], 0.0001), (["data", "cache"], None)]``."""
    parsed = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        parsed.append((key.strip().split("."), _parse_value(value)))
    return parsed


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``dotted.key=value`` of ``overrides`` set (missing sections created)."""
    data = json.loads(json.dumps(data))  # deep copy of plain data
    for path, value in parse_overrides(overrides):
        node = data
        for depth, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"cannot set {'.'.join(path)}: {'.'.join(path[:depth + 1])} is not a section")
            node = child
        node[path[-1]] = value
    return data


def config_from_mapping(data: dict[str, Any], where: str = "") -> TrainConfig:
    """A plain dict (file contents after overrides) -> :class:`TrainConfig`, with errors naming the key."""
    _check_types(TrainConfig, data, where="")
    try:
        return config_from_dict(TrainConfig, data, where=where)
    except ConfigError:
        raise
    except (ValueError, TypeError) as error:
        raise ConfigError(f"invalid training config{where}: {error}") from error


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a training config file (or start from the defaults when ``path`` is ``None``) and apply overrides."""
    data = read_config_file(path) if path is not None else {}
    data = apply_overrides(data, overrides)
    return config_from_mapping(data, where=f" ({path})" if path is not None else "")


def config_dict(config: TrainConfig) -> dict[str, Any]:
    """The config as plain JSON types (what ``config.json`` / ``config.yaml`` hold)."""
    return config_to_dict(config)


def save_config(config: TrainConfig, directory: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Write ``config.json`` (always) and ``config.yaml`` (when pyyaml is installed) into ``directory``.

    ``extra`` (values resolved at run time: learning rate, input size, SLS on/off, vocabulary size) goes into
    ``config.json`` under ``"resolved"`` and into the YAML as a trailing comment block.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = config_dict(config)
    payload = {**data, "resolved": extra or {}}
    (directory / "config.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    try:
        import yaml
    except ImportError:
        return
    text = yaml.safe_dump(data, sort_keys=False)
    if extra:
        text += "# resolved at run time:\n" + "".join(f"#   {key}: {value}\n" for key, value in extra.items())
    (directory / "config.yaml").write_text(text, encoding="utf-8")


def read_saved_config(directory: str | Path) -> TrainConfig:
    """The config saved in a run directory (``config.json``)."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{path} not found: is {directory} a training run directory?")
    data = json.loads(path.read_text(encoding="utf-8"))
    data.pop("resolved", None)
    return config_from_mapping(data, where=f" ({path})")


def config_differences(old: TrainConfig, new: TrainConfig, ignore: Sequence[str] = ()) -> list[str]:
    """Dotted keys whose values differ between two configs (``ignore`` lists dotted prefixes to skip)."""
    diffs: list[str] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if any(prefix == skip or prefix.startswith(skip + ".") for skip in ignore):
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key)
        elif a != b:
            diffs.append(f"{prefix}: {a!r} -> {b!r}")

    walk(config_dict(old), config_dict(new), "")
    return diffs


def _check_types(cls: type, data: Any, where: str) -> None:
    """Reject values of the wrong kind early (e.g. a string for an int), naming the dotted key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {[f'{where}.{k}'.lstrip('.') for k in unknown]}; "
                          f"known keys{' in ' + where if where else ''}: {sorted(names)}")
    for key, value in data.items():
        _check_value(hints[key], value, f"{where}.{key}".lstrip("."))


def _check_value(hint: Any, value: Any, where: str) -> None:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if value is None:
            if len(options) == len(typing.get_args(hint)):
                raise ConfigError(f"{where} must not be null")
            return
        for option in options:
            if dataclasses.is_dataclass(option) and isinstance(value, dict):
                _check_types(option, value, where)
                return
        if len(options) == 1:
            _check_value(options[0], value, where)
        return
    if dataclasses.is_dataclass(hint):
        _check_types(hint, value, where)
        return
    expected: tuple[type, ...] | None = None
    if hint is bool:
        expected = (bool,)
    elif hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        expected = (int,)
    elif hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        expected = (int, float)
    elif hint is str:
        expected = (str,)
    if expected is not None and not isinstance(value, expected):
        raise ConfigError(f"{where} must be of type {hint.__name__}, got {value!r}")
