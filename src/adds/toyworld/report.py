"""Gates, computed verdicts and tables of a toy-world v2 run (issue 9.5 / 9.8).

* **Gates**, checked before any claim is read: G1 the trained head beats the class-token cosine on *seen* labels
  (every seed); G2 the random label matrix collapses on both unseen sets (mAP within 5 points of random scores,
  every seed); G3 the class-token cosine's recall@k on scenes with >= 3 distinct objects stays below 50 % (mean),
  so there is room for per-token attention.
* **Verdicts**: a claim "A beats B" *agrees* with the paper when the paired difference ``A - B`` is positive in
  every seed and its mean exceeds 2 pooled standard deviations (``sqrt((sd_A^2 + sd_B^2) / 2)``), *disagrees*
  under the same rule with the other sign, else is *undecided* (also with fewer than 2 seeds).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence

__all__ = ["CLAIMS", "claims", "format_report", "gates", "open_vocabulary_rows", "verdict", "verdicts", "write_json"]

_UNSEEN = ("U_comb", "U_word")
_ENCODER_NAMES = {"linear_map": "second toy CLIP (linear-map control)", "caption_lm": "caption-only LM",
                  "word_vectors": "co-occurrence word vectors", "random": "random matrix"}


def verdict(a: Sequence[float], b: Sequence[float]) -> str:
    """``"agrees"`` / ``"disagrees"`` / ``"undecided"`` for the claim "A beats B" (paired by seed)."""
    if len(a) != len(b):
        raise ValueError(f"paired values need the same seeds, got {len(a)} and {len(b)}")
    if len(a) < 2:
        return "undecided"
    differences = [x - y for x, y in zip(a, b, strict=True)]
    pooled = math.sqrt((statistics.stdev(a) ** 2 + statistics.stdev(b) ** 2) / 2)
    mean = statistics.fmean(differences)
    if all(d > 0 for d in differences) and mean > 2 * pooled:
        return "agrees"
    if all(d < 0 for d in differences) and -mean > 2 * pooled:
        return "disagrees"
    return "undecided"


def claims() -> dict[str, tuple[str, str, str, str]]:
    """Every claim as ``name: (row A, metric A, row B, metric B)``, read "A beats B" (the paper's sign)."""
    out: dict[str, tuple[str, str, str, str]] = {
        "T1 ADDS beats ML-Decoder (conventional mAP)": ("T1 dm", "mAP", "T1 ml", "mAP"),
    }
    for split in _UNSEEN:
        out[f"T2 ADDS beats training-free CLIP on {split}"] = ("T2 ADDS", f"{split} mAP", "T2 cosine", f"{split} mAP")
    for encoder in _ENCODER_NAMES:
        for split in _UNSEEN:
            out[f"T6/9 aligned CLIP beats {encoder} on {split}"] = ("T2 ADDS", f"{split} mAP", f"T6 {encoder}",
                                                                   f"{split} mAP")
    for layers in (1, 3, 6):
        for split in _UNSEEN:
            out[f"T5 DM beats ML-Decoder x{layers} on {split}"] = (f"T5 dmx{layers}", f"{split} mAP",
                                                                  f"T5 mlx{layers}", f"{split} mAP")
    out["T7 full pyramid beats level [0] (mAP)"] = ("T7 [0,1,2]", "mAP", "T7 [0]", "mAP")
    out["T7 full pyramid beats top level [2] (mAP)"] = ("T7 [0,1,2]", "mAP", "T7 [2]", "mAP")
    for overlap in ("with overlap", "without overlap"):
        out[f"T3/4 ADDS beats ML-Decoder single-to-multi {overlap}"] = ("T3 dm", f"{overlap} mAP", "T3 ml",
                                                                        f"{overlap} mAP")
    for split in _UNSEEN:
        out[f"T8 100% of seen labels beats 25% on {split}"] = ("T2 ADDS", f"{split} mAP", "T8 25%", f"{split} mAP")
    return out


#: Claim names (the JSON's ``verdicts`` keys when every table ran).
CLAIMS: tuple[str, ...] = tuple(claims())
#: Not a paper claim: issue 10.9's option, read the same way ("token_norm=1 beats the default").
EXTRA_COMPARISONS = {f"token_norm=1 beats the default on {split}": ("TN token_norm=1", f"{split} mAP", "T2 ADDS",
                                                                    f"{split} mAP") for split in ("seen", *_UNSEEN)}


def _values(rows: dict, row: str, metric: str) -> list[float] | None:
    return rows.get(row, {}).get(metric)


def verdicts(rows: dict, comparisons: dict | None = None) -> dict[str, str]:
    """Verdict of every claim whose rows were computed."""
    out = {}
    for name, (row_a, metric_a, row_b, metric_b) in (comparisons or claims()).items():
        a, b = _values(rows, row_a, metric_a), _values(rows, row_b, metric_b)
        if a is not None and b is not None:
            out[name] = verdict(a, b)
    return out


def gates(rows: dict) -> dict[str, bool]:
    """G1-G3 (module docstring) from the rows of the core and align groups (a gate whose rows are missing is
    left out)."""
    out: dict[str, bool] = {}
    head, cosine = _values(rows, "T2 ADDS", "seen mAP"), _values(rows, "T2 cosine", "seen mAP")
    if head and cosine:
        out["G1 head beats cosine on seen labels"] = all(h > c for h, c in zip(head, cosine, strict=True))
    if "T6 random" in rows and "chance" in rows:
        out["G2 random matrix collapses on unseen sets"] = all(
            r < c + 5 for split in _UNSEEN
            for r, c in zip(rows["T6 random"][f"{split} mAP"], rows["chance"][f"{split} mAP"], strict=True))
    recall = _values(rows, "G3", "recall")
    if recall:
        out["G3 cosine recall@k below 50% on >=3-object scenes"] = statistics.fmean(recall) < 50
    return out


def open_vocabulary_rows(rows: dict) -> dict[str, dict[str, list[float]]]:
    """Issue 9.8's ``open_vocabulary`` block: per label set, mAP per seed of the head, CLIP and the mode."""
    if "T2 open-vocab" not in rows:
        return {}
    return {split: {"head": rows["T2 ADDS"][f"{split} mAP"], "clip": rows["T2 cosine"][f"{split} mAP"],
                    "open_vocab": rows["T2 open-vocab"][f"{split} mAP"]} for split in ("seen", *_UNSEEN)}


def open_vocabulary_goals(rows: dict) -> dict[str, bool]:
    """Issue 9.6's goals, per seed: unseen sets >= the cosine, seen within 1 mAP point of the plain head."""
    block = open_vocabulary_rows(rows)
    if not block:
        return {}
    out = {f"open-vocab >= cosine on {split} (every seed)": all(
        o >= c for o, c in zip(block[split]["open_vocab"], block[split]["clip"], strict=True)) for split in _UNSEEN}
    out["open-vocab within 1 mAP of the head on seen (every seed)"] = all(
        abs(o - h) <= 1 for o, h in zip(block["seen"]["open_vocab"], block["seen"]["head"], strict=True))
    return out


def _cell(values: list[float] | None, metric: str = "") -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    if metric.endswith("cosine"):  # a cosine, not a percentage
        return f"{statistics.fmean(values):.2f} ± {std:.2f}"
    return f"{statistics.fmean(values):.1f} ± {std:.1f}"


def format_report(result: dict) -> str:
    """Gates, verdicts and Markdown tables (mean ± std over seeds) of :func:`adds.toyworld.lab.run_lab`'s result."""
    rows = result["rows"]
    out: list[str] = []

    def table(title: str, header: Sequence[str], lines: Sequence[tuple[str, str, Sequence[str]]]) -> None:
        present = [line for line in lines if line[1] in rows]
        if not present:
            return
        out.extend([f"\n{title}\n", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"])
        for label, row, metric_names in present:
            out.append("| " + " | ".join([label] + [_cell(rows[row].get(m), m) for m in metric_names]) + " |")

    sets = [f"{s} {m}" for s in ("seen", *_UNSEEN) for m in ("mAP", "F1@3")]
    set_header = [f"{s} {m}" for s in ("seen", *_UNSEEN) for m in ("mAP", "F1@3")]
    table("Table 1 (toy v2) - conventional, 160 labels", ["Model", "mAP", "F1@3", "F1@5"],
          [(name, row, ("mAP", "F1@3", "F1@5")) for name, row in (
              ("class-token cosine (no training)", "T1 cosine"), ("ADDS head untrained", "T1 untrained"),
              ("ML-Decoder", "T1 ml"), ("ADDS (DM-decoder)", "T1 dm"))])
    table("Table 2 (toy v2) - zero-shot: 87 seen labels -> U_comb (24) / U_word (49)", ["Method", *set_header],
          [(name, row, sets) for name, row in (
              ("class-token cosine", "T2 cosine"), ("max-over-tokens cosine", "T2 max-token cosine"),
              ("calibrated linear probe", "T2 linear probe"), ("ADDS", "T2 ADDS"),
              ("open-vocabulary mode (adds.openvocab)", "T2 open-vocab"))])
    maps = [f"{split} linear-map cosine" for split in _UNSEEN]
    table("Tables 6/9 (toy v2) - text encoder of the label embeddings (zero-shot head); linear-map cosine: a "
          "least-squares map fitted on the seen labels onto the aligned embeddings, mean cosine on the unseen ones",
          ["Text encoder", *set_header, *maps],
          [("aligned toy CLIP", "T2 ADDS", sets)]
          + [(title, f"T6 {name}", [*sets, *maps]) for name, title in _ENCODER_NAMES.items()])
    table("Table 5 (toy v2) - DM- vs ML-Decoder (zero-shot)", ["Decoder", *set_header],
          [(f"{kind.upper()} x{n}", f"T5 {kind}x{n}", sets) for kind in ("ml", "dm") for n in (1, 3, 6)])
    table("Table 7 (toy v2) - Pyramid-Forwarding, 144 px scenes on the 48 px tower (conventional)",
          ["Levels", "mAP", "F1@3", "small-object mAP", "large-object mAP"],
          [(name, f"T7 {name}", ("mAP", "F1@3", "small mAP", "large mAP")) for name in ("[0]", "[2]", "[0,1,2]")])
    overlap = [f"{o} {m}" for o in ("with overlap", "without overlap") for m in ("mAP", "F1@3")]
    table("Tables 3/4 (toy v2) - single-object training images -> scenes", ["Decoder", *overlap],
          [("ML-Decoder", "T3 ml", overlap), ("ADDS (DM)", "T3 dm", overlap)])
    if "T8 25%" in rows:
        table("Table 8 (toy v2) - share of the seen labels trained on", ["Seen labels", *set_header],
              [("25 %", "T8 25%", sets), ("50 %", "T8 50%", sets), ("100 %", "T2 ADDS", sets)])
    if "TN token_norm=1" in rows:
        table("Issue 10.9 (toy v2) - L2-normalised visual tokens", ["Tokens", *set_header],
              [("as the tower gives them (paper)", "T2 ADDS", sets), ("token_norm = 1.0", "TN token_norm=1", sets)])
    lines = ["\nGates"] + [f"  {'PASS' if ok else 'FAIL'}  {name}" for name, ok in gates(rows).items()]
    goals = open_vocabulary_goals(rows)
    if goals:
        lines += ["\nOpen-vocabulary goals (issue 9.6)"] + [f"  {'PASS' if ok else 'FAIL'}  {n}" for n, ok in
                                                             goals.items()]
    lines += ["\nVerdicts (paired per seed; agrees = paper's sign in every seed and > 2 pooled std)"]
    lines += [f"  {v:10s} {name}" for name, v in verdicts(rows).items()]
    extra = verdicts(rows, EXTRA_COMPARISONS)
    if extra:
        lines += ["\nNot a paper claim (issue 10.9), same rule"] + [f"  {v:10s} {n}" for n, v in extra.items()]
    return "\n".join(out + lines) + "\n"


def write_json(result: dict, path: str) -> None:
    """The run as JSON: issue 9.8's ``gates`` / ``verdicts`` / ``open_vocabulary`` plus the rows and config."""
    rows = result["rows"]
    record = {"gates": gates(rows), "verdicts": verdicts(rows), "open_vocabulary": open_vocabulary_rows(rows),
              "open_vocabulary_goals": open_vocabulary_goals(rows), "other_comparisons": verdicts(rows,
                                                                                                EXTRA_COMPARISONS),
              **result}
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2)
