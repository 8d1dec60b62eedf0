"""``adds calibrate`` end to end on a tiny saved checkpoint: files the tagger reads, label-free words, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adds.calibration import per_label_f1
from adds.cli import main
from adds.decoder import DecoderConfig
from adds.model import ADDS, ADDSConfig
from adds.tagger import Tagger
from adds.tagger.thresholds import read_thresholds
from adds.towers import TINY_MODEL, TowerConfig

LABELS = ["red", "green", "blue"]
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def _image(path: Path, colours: list[str], seed: int) -> None:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 80, (24, 24, 3), dtype=np.uint8)
    for i, name in enumerate(colours):
        array[:, i * 8:(i + 1) * 8] = COLOURS[name]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A tiny checkpoint (random towers, one decoder layer) with labels.txt, a labelled manifest, unlabelled images."""
    tmp_path = tmp_path_factory.mktemp("calibrate")
    config = ADDSConfig(towers=TowerConfig(model=TINY_MODEL, pretrained=None),
                        decoder=DecoderConfig(num_layers=1, num_heads=4, ffn_dim=64))
    checkpoint = ADDS(config).save_pretrained(tmp_path / "ckpt")
    (checkpoint / "labels.txt").write_text("\n".join(LABELS) + "\n")
    rng = np.random.default_rng(0)
    rows = ["image,labels"]
    for i in range(24):
        chosen = [label for label in LABELS if rng.random() < 0.5]
        _image(tmp_path / "data" / f"{i}.png", chosen, i)
        rows.append(f"{i}.png,{'|'.join(chosen)}")
    rows.append("missing.png,red")  # skipped and counted by the manifest reader
    (tmp_path / "data" / "val.csv").write_text("\n".join(rows) + "\n")
    for i in range(6):
        _image(tmp_path / "unlabelled" / f"u{i}.png", ["red"] if i % 2 else [], 100 + i)
    return tmp_path


@pytest.fixture()
def world(template, tmp_path):
    """A fresh copy of the template per test (the command writes into the checkpoint)."""
    shutil.copytree(template, tmp_path, dirs_exist_ok=True)
    return tmp_path / "ckpt", tmp_path / "data" / "val.csv", tmp_path


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["calibrate", *args, "--workers", "0", "--no-progress", "--device", "cpu"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


def test_calibrate_writes_thresholds_the_tagger_uses_by_default(capsys, world):
    checkpoint, manifest, _ = world
    code, out, err = _run(capsys, str(checkpoint), "--data", str(manifest), "--min-positives", "2")
    assert code == 0, err
    assert "calibrated 3 label(s)" in out and f"wrote {checkpoint / 'thresholds.tsv'}" in out
    written = read_thresholds(checkpoint / "thresholds.tsv")
    assert list(written) == LABELS
    tagger = Tagger.from_checkpoint(checkpoint, device="cpu")
    assert dict(tagger.thresholds.per_label) == written  # the checkpoint's own thresholds, by default
    document = json.loads((checkpoint / "calibration.json").read_text(encoding="utf-8"))
    assert document["images"] == 24 and document["min_positives"] == 2 and "val.csv" in document["source"]
    assert document["scorer"].startswith("ADDS checkpoint") and document["tagger"]["scorer"] == "adds"
    # The command scored the images exactly as the tagger does: its F1 at the written thresholds is the recorded one
    paths = [manifest.parent / f"{i}.png" for i in range(24)]
    rows = (manifest.read_text().splitlines())[1:25]
    targets = np.array([[label in row.split(",")[1].split("|") for label in LABELS] for row in rows])
    scores = tagger.scores(paths, LABELS).numpy()
    f1 = per_label_f1(scores, targets, [written[label] for label in LABELS])
    recorded = {entry["label"]: entry["f1_after"] for entry in document["labels"]}
    assert f1 == pytest.approx([recorded[label] for label in LABELS])
    assert all(entry["f1_after"] >= entry["f1_before"] for entry in document["labels"])


def test_new_words_get_label_free_thresholds(capsys, world):
    checkpoint, manifest, root = world
    (root / "words.txt").write_text("# new words\nyellow\norange\nred\n")
    code, out, err = _run(capsys, "--checkpoint", str(checkpoint), "--data", str(manifest), "--min-positives", "2",
                          "--new-labels", str(root / "words.txt"), "--unlabelled-images", str(root / "unlabelled"))
    assert code == 0, err
    assert "label-free rule zscore" in out and "2 new word(s) from 6 unlabelled images" in out
    written = read_thresholds(checkpoint / "thresholds.tsv")
    assert list(written) == [*LABELS, "yellow", "orange"]  # 'red' has labels: it keeps its fitted threshold
    document = json.loads((checkpoint / "calibration.json").read_text(encoding="utf-8"))
    free = document["label_free"]
    assert free["rule"]["kind"] == "zscore" and free["unlabelled_images"] == 6
    assert [entry["label"] for entry in free["labels"]] == ["yellow", "orange"]
    code, out, err = _run(capsys, str(checkpoint), "--data", str(manifest), "--new-labels", "yellow,pink",
                          "--unlabelled-images", str(root / "unlabelled" / "*.png"), "--rule", "quantile")
    assert code == 0, err
    assert json.loads((checkpoint / "calibration.json").read_text())["label_free"]["rule"]["kind"] == "quantile"


def test_training_free_baseline_writes_into_output_folder(capsys, world):
    _, manifest, root = world
    out_dir = root / "clip-thr"
    code, out, err = _run(capsys, "--zero-shot-baseline", "--model", TINY_MODEL, "--pretrained", "none",
                          "--data", str(manifest), "--labels", str(root / "ckpt" / "labels.txt"),
                          "--output", str(out_dir))
    assert code == 0, err
    assert list(read_thresholds(out_dir / "thresholds.tsv")) == LABELS
    assert f"--threshold-file {out_dir / 'thresholds.tsv'}" in out
    assert json.loads((out_dir / "calibration.json").read_text())["tagger"]["scorer"] == "clip-baseline"


def test_dry_run_writes_nothing(capsys, world):
    checkpoint, manifest, _ = world
    code, out, err = _run(capsys, str(checkpoint), "--data", str(manifest), "--dry-run")
    assert code == 0, err
    assert "mean per-label F1 on this split" in out and not (checkpoint / "thresholds.tsv").exists()


@pytest.mark.parametrize("args, message", [
    (["{root}/nope", "--data", "{manifest}"], "checkpoint directory not found: "),
    (["{ckpt}"], "--data is required"),
    (["{ckpt}", "--data", "{root}/none.csv"], "manifest file not found"),
    (["{ckpt}", "--data", "{root}/latin1.csv"], "latin1.csv:2: not UTF-8 text"),
    (["{ckpt}", "--data", "{manifest}", "--new-labels", "pink"], "--new-labels and --unlabelled-images go together"),
    (["{ckpt}", "--data", "{manifest}", "--new-labels", "pink", "--unlabelled-images", "{root}/gone"],
     "--unlabelled-images: no image found at"),
    (["{ckpt}", "--data", "{manifest}", "--new-labels", "{root}/words-missing.txt", "--unlabelled-images",
      "{root}/unlabelled"], "does not exist"),
    (["{ckpt}", "--data", "{manifest}", "--min-positives", "0"], "--min-positives must be >= 1"),
    (["{ckpt}", "--zero-shot-baseline", "--data", "{manifest}"], "a CHECKPOINT directory or --zero-shot-baseline"),
    (["--zero-shot-baseline", "--model", TINY_MODEL, "--data", "{manifest}"], "needs --model, --pretrained and"),
    (["{ckpt}", "--data", "{root}/data/unknown.csv"], "unknown label(s) ['purple'] (not in the vocabulary file)"),
])
def test_user_errors_are_one_line_exit_2(capsys, world, args, message):
    checkpoint, manifest, root = world
    (root / "latin1.csv").write_bytes("image,labels\ndata/0.png,caf\xe9\n".encode("latin-1"))
    (root / "data" / "unknown.csv").write_text("image,labels\n0.png,purple\n")
    filled = [arg.format(root=root, manifest=manifest, ckpt=checkpoint) for arg in args]
    code, out, err = _run(capsys, *filled)
    assert code == 2, err
    assert message in err and err.startswith("adds calibrate: error: ") and err.count("\n") == 1, err
