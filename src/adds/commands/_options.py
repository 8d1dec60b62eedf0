"""Pieces of argument handling that several sub-commands share (not a sub-command: ``adds.cli`` skips ``_`` names).

Imports nothing heavy, so argument errors stay fast (``tests/test_cli_start.py``).
"""

from __future__ import annotations

__all__ = ["BASELINE_POOLING_CHOICES", "OPEN_VOCABULARY_CHOICES", "UsageError", "add_baseline_pooling",
           "parse_levels"]

#: ``--open-vocabulary`` of ``adds tag`` / ``adds eval`` -> ``TaggerConfig.open_vocabulary`` /
#: :func:`adds.openvocab.checkpoint_open_vocabulary`'s ``wanted``.
OPEN_VOCABULARY_CHOICES = {"auto": None, "on": True, "off": False}


#: ``--baseline-pooling`` -> ``CLIPBaselineConfig.pooling`` (:data:`adds.tagger.baseline.BASELINE_POOLINGS`).
BASELINE_POOLING_CHOICES = ("max", "view")


def add_baseline_pooling(parser) -> None:
    """``--baseline-pooling max|view`` of the training-free CLIP baseline on ``parser`` (or an argument group)."""
    parser.add_argument(
        "--baseline-pooling", choices=BASELINE_POOLING_CHOICES, default="max",
        help="how the training-free CLIP baseline looks at an image: 'max' = each label's best crop among the "
        "whole view and its four quadrants (levels 0,1; --levels changes them; five tower passes per image), "
        "'view' = the one whole view, as plain CLIP zero-shot (one pass, faster). docs/tagging.md measures both "
        "(default: %(default)s)")


class UsageError(Exception):
    """A user mistake (bad arguments, a model or file that cannot be used): one line on stderr, exit code 2."""


def parse_levels(value: str | None, default_word: str = "auto") -> tuple[int, ...] | None:
    """``--levels`` -> Pyramid-Forwarding levels: ``"0,1,2"`` -> ``(0, 1, 2)``; ``None`` or ``default_word`` ->
    ``None`` (the command's default plan). Raises :class:`UsageError` naming the value."""
    if value is None or value.strip().lower() == default_word:
        return None
    try:
        return tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"--levels must be '{default_word}' or comma-separated integers like 0,1,2, "
                         f"got {value!r}") from None
