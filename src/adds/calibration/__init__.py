"""Calibrated decision thresholds (issue 11): per-label F1-optimal thresholds for a checkpoint, and label-free
thresholds for words without labels.

* :mod:`~adds.calibration.fit` -- exact F1-optimal threshold per label on a labelled split (every cut between
  distinct scores, ties predicted together), the pooled (micro-F1-optimal) threshold for labels with fewer than
  ``min_positives`` positives.
* :mod:`~adds.calibration.transfer` -- label-free rules (``zscore``, ``quantile``, ``global``) fitted on the
  labelled labels of the same model and applied to new words from their scores on unlabelled images.
* :mod:`~adds.calibration.checkpoint` -- :func:`calibrate_checkpoint`: fit and write ``thresholds.tsv`` (the file
  ``adds tag`` / :class:`adds.tagger.Tagger` read by default) and ``calibration.json`` into a checkpoint.
* :mod:`~adds.calibration.scoring` -- scores of a dataset or an image folder under a checkpoint, as the tagger
  computes them (used by ``adds calibrate``).

The ADDS paper keeps a label at sigmoid score 0.5 (Appendix, Fig. 5); see ``docs/calibration.md`` for what
calibration changes, measured on the toy world.
"""

from adds.calibration.checkpoint import CALIBRATION_NAME, CalibrationReport, calibrate_checkpoint, write_thresholds
from adds.calibration.fit import (
    FitConfig,
    LabelFit,
    ThresholdFit,
    best_f1_threshold,
    f1_at,
    fit_thresholds,
    per_label_f1,
)
from adds.calibration.transfer import RULES, TransferRule, fit_transfer_rule

__all__ = [
    "CALIBRATION_NAME",
    "RULES",
    "CalibrationReport",
    "FitConfig",
    "LabelFit",
    "ThresholdFit",
    "TransferRule",
    "best_f1_threshold",
    "calibrate_checkpoint",
    "f1_at",
    "fit_thresholds",
    "fit_transfer_rule",
    "per_label_f1",
    "write_thresholds",
]
