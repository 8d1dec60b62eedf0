"""Calibrated thresholds next to a checkpoint: ``thresholds.tsv`` (read by ``adds tag`` / ``Tagger``) and
``calibration.json`` (how they were fitted, F1 before and after, counts, the source split).

:func:`calibrate_checkpoint` is the one call that ``adds calibrate`` and ``adds train`` (on its held-out split)
make: it fits the thresholds on given scores (:mod:`adds.calibration.fit`), optionally adds label-free thresholds
for new words (:mod:`adds.calibration.transfer`), and writes both files atomically.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from adds import __version__
from adds.calibration.fit import FitConfig, ThresholdFit, fit_thresholds
from adds.calibration.transfer import TransferRule, fit_transfer_rule
from adds.tagger.thresholds import THRESHOLDS_NAME

__all__ = ["CALIBRATION_NAME", "CalibrationReport", "calibrate_checkpoint", "write_thresholds"]

logger = logging.getLogger(__name__)

#: How a checkpoint's thresholds were fitted (JSON), next to ``thresholds.tsv``.
CALIBRATION_NAME = "calibration.json"

_METHOD = ("exact F1-optimal threshold per label (a label is kept when score >= threshold; every cut between "
           "distinct scores evaluated), the pooled micro-F1-optimal threshold for labels with fewer than "
           "min_positives positives")


@dataclass
class CalibrationReport:
    """What :func:`calibrate_checkpoint` fitted and wrote.

    Attributes:
        fit: the labelled labels' thresholds and F1 before / after.
        new_labels: label-free thresholds of words without labels (label -> threshold), in order.
        rule: the rule that gave them (fitted on the labelled labels), or ``None``.
        thresholds_path / json_path: the files written.
        skipped: labels that cannot be written to a ``label<TAB>threshold`` line (a tab, a line break, a
            leading ``#`` or surrounding blanks); the tagger uses its global threshold for them.
    """

    fit: ThresholdFit
    thresholds_path: Path
    json_path: Path
    new_labels: dict[str, float] = field(default_factory=dict)
    rule: TransferRule | None = None
    skipped: list[str] = field(default_factory=list)

    @property
    def thresholds(self) -> dict[str, float]:
        """Every threshold written: the labelled labels', then the new words'."""
        return {**self.fit.thresholds, **self.new_labels}


def _writable(label: str) -> bool:
    return bool(label) and label == label.strip() and not label.startswith("#") and not any(
        ch in label for ch in "\t\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


def _atomic_write(path: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_thresholds(path: str | os.PathLike, thresholds: Mapping[str, float]) -> list[str]:
    """Write ``label<TAB>threshold`` lines (with a header) in the format :func:`adds.tagger.read_thresholds`
    reads; values are written exactly (shortest round-trip repr). Returns the labels left out (see
    :attr:`CalibrationReport.skipped`)."""
    lines = ["label\tthreshold"]
    skipped = []
    for label, value in thresholds.items():
        if not _writable(label):
            skipped.append(label)
            continue
        lines.append(f"{label}\t{float(value)!r}")
    _atomic_write(Path(path), "\n".join(lines) + "\n")
    return skipped


def calibrate_checkpoint(
    checkpoint_dir: str | os.PathLike,
    scores: Any,
    targets: Any,
    label_names: Sequence[str],
    mask: Any | None = None,
    *,
    config: FitConfig | None = None,
    source: str = "",
    new_label_names: Sequence[str] | None = None,
    new_label_scores: Any | None = None,
    rule: str = "zscore",
    unlabelled_source: str = "",
    extra: Mapping[str, Any] | None = None,
) -> CalibrationReport:
    """Fit per-label thresholds on a labelled split and write ``thresholds.tsv`` + ``calibration.json`` into
    ``checkpoint_dir`` (replacing earlier ones).

    Args:
        checkpoint_dir: an existing checkpoint directory (``ADDS.save_pretrained``).
        scores: ``(N, C)`` scores of the labelled split in the tagger's scale (the head's sigmoid); ``targets``
            ``(N, C)`` 0/1; ``mask`` optional ``(N, C)`` known-mask. Numpy or torch.
        label_names: the ``C`` labels (the checkpoint's ``labels.txt`` order, usually).
        config: ``min_positives`` (default 3) and the reference threshold of the "before" F1 (0.5).
        source: a description of the labelled split for ``calibration.json`` (e.g. ``"manifest val.csv"``).
        new_label_names / new_label_scores: words without labels and their ``(M, k)`` scores on unlabelled
            images; they get thresholds from a label-free ``rule`` (:data:`adds.calibration.transfer.RULES`)
            fitted on the labelled labels. A word that is also a labelled label keeps its fitted threshold.
        unlabelled_source: a description of the unlabelled images.
        extra: more keys for ``calibration.json`` (e.g. the model, the input size).
    """
    directory = Path(checkpoint_dir)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {directory}")
    config = config or FitConfig()
    fit = fit_thresholds(scores, targets, label_names, mask, config)
    new: dict[str, float] = {}
    fitted_rule = None
    if new_label_names:
        if new_label_scores is None:
            raise ValueError("new_label_names need new_label_scores (their scores on unlabelled images)")
        fitted_rule = fit_transfer_rule(scores, targets, mask, kind=rule, min_positives=config.min_positives)
        values = fitted_rule.thresholds(new_label_scores)
        names = [str(name) for name in new_label_names]
        if len(names) != len(values):
            raise ValueError(f"{len(names)} new labels for {len(values)} score columns")
        labelled = set(fit.thresholds)
        already = [name for name in names if name in labelled]
        if already:
            logger.warning("%d new label(s) have labelled images and keep their fitted threshold: %s", len(already),
                           ", ".join(already[:5]))
        new = {name: float(value) for name, value in zip(names, values, strict=True) if name not in labelled}
    report = CalibrationReport(fit=fit, thresholds_path=directory / THRESHOLDS_NAME,
                               json_path=directory / CALIBRATION_NAME, new_labels=new, rule=fitted_rule)
    report.skipped = write_thresholds(report.thresholds_path, report.thresholds)
    if report.skipped:
        logger.warning("%d label(s) cannot be written to %s and keep the global threshold: %s", len(report.skipped),
                       report.thresholds_path, ", ".join(repr(label) for label in report.skipped[:5]))
    document = {
        "adds_version": __version__,
        "method": _METHOD,
        "min_positives": config.min_positives,
        "reference_threshold": config.reference_threshold,
        "source": source,
        "images": int(scores.shape[0]),
        "pooled_threshold": fit.pooled_threshold,
        "summary": fit.summary(),
        "labels": [asdict(label) for label in fit.labels],
        "label_free": None if fitted_rule is None else {
            "rule": fitted_rule.to_dict(),
            "unlabelled_source": unlabelled_source,
            "unlabelled_images": int(new_label_scores.shape[0]),
            "labels": [{"label": name, "threshold": value} for name, value in new.items()],
        },
        "not_written": report.skipped,
        **dict(extra or {}),
    }
    _atomic_write(report.json_path, json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    return report
