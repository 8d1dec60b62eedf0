"""The CLI end to end on tiny towers: manifest dataset -> adds extract -> adds train -> adds eval."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score

from adds.cli import main

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (30, 50, 220), "yellow": (240, 230, 30)}


def _write_images(directory: Path, count: int, seed: int) -> list[tuple[str, list[str]]]:
    """``count`` 64 x 48 grey images with one or two coloured squares; returns (file name, labels)."""
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    rows = []
    for number in range(count):
        pixels = (100 + 40 * rng.random((48, 64, 3))).astype(np.uint8)
        chosen = sorted(set(rng.choice(len(names), size=int(rng.integers(1, 3))).tolist()))
        for label in chosen:
            top, left = int(rng.integers(0, 28)), int(rng.integers(0, 44))
            pixels[top:top + 18, left:left + 18] = COLOURS[names[label]]
        name = f"img{seed}_{number:02d}.png"
        Image.fromarray(pixels).save(directory / name)
        rows.append((name, [names[label] for label in chosen]))
    return rows


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    (root / "vocab.txt").write_text("\n".join(COLOURS) + "\n")
    train = _write_images(root, 24, seed=1)
    (root / "train.csv").write_text("image,labels\n" + "".join(f"{name},{'|'.join(labels)}\n"
                                                                for name, labels in train))
    test = _write_images(root, 10, seed=2)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # a corrupt file: skipped and counted
    test.append(("broken.png", ["red"]))
    (root / "test.jsonl").write_text("".join(json.dumps({"image": name, "labels": labels}) + "\n"
                                             for name, labels in test))
    return root


def _config(root: Path, tmp: Path, epochs: int = 2) -> Path:
    path = tmp / "tiny.yaml"
    path.write_text(f"""
name: tiny
data:
  train: {{kind: manifest, root: {root / 'train.csv'}, labels: {root / 'vocab.txt'}}}
  test: {{kind: manifest, root: {root / 'test.jsonl'}, labels: {root / 'vocab.txt'}}}
  val_fraction: 0.25
  input_size: 64
  cache: {tmp / 'cache'}
  num_workers: 0
  extract_batch_size: 8
model:
  towers: {{model: adds-tiny-vit, pretrained: null}}
  decoder: {{num_layers: 2, num_heads: 4, ffn_dim: 32}}
optim: {{lr: 1e-3}}
ema: {{decay: 0.9}}
epochs: {epochs}
batch_size: 8
progress: false
device: cpu
expected: {{table: 0, mAP: 50.0}}
""")
    return path


def test_extract_train_eval_end_to_end(data, tmp_path, capsys):
    train_cache = tmp_path / "train-cache"
    assert main(["extract", "--data-kind", "manifest", "--data-root", str(data / "train.csv"), "--labels",
                 str(data / "vocab.txt"), "--model", "adds-tiny-vit", "--pretrained", "none", "--input-size", "64",
                 "--out", str(train_cache), "--batch-size", "8", "--no-progress"]) == 0
    config = _config(data, tmp_path)
    run = tmp_path / "run"
    # the train split reads the cache written by `adds extract`; the test split's is extracted by `adds train`
    assert main(["train", "--config", str(config), "--run-dir", str(run),
                 "--set", f"data.train_cache={train_cache}"]) == 0
    printed = capsys.readouterr().out
    assert "mAP(%)" in printed and "paper" in printed

    assert {"config.json", "config.yaml", "run_info.json", "metrics.csv", "checkpoint", "best", "last",
            "last-ema", "test_metrics.json"} <= {p.name for p in run.iterdir()}
    info = json.loads((run / "run_info.json").read_text())
    assert info["git_revision"] and info["lr"] == pytest.approx(1e-3) and info["input_size"] == 64
    assert info["train_images"] == 18 and info["val_images"] == 6  # 25 % held out of the 24 training images
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 3
    test_metrics = json.loads((run / "test_metrics.json").read_text())
    assert test_metrics["num_images"] == 10 and test_metrics["failed_images"] == 1
    assert test_metrics["expected"] == {"table": 0, "mAP": 50.0}
    caches = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert "labels" in caches and any(name.startswith("manifest-train-") for name in caches)  # the test split's
    test_cache = next(p for p in (tmp_path / "cache").iterdir() if p.name != "labels")

    # the held-out split calibrated best/'s thresholds, in the file the tagger reads by default
    from adds.tagger.thresholds import checkpoint_thresholds_file, read_thresholds

    assert checkpoint_thresholds_file(run / "best") == run / "best" / "thresholds.tsv"
    thresholds = read_thresholds(run / "best" / "thresholds.tsv")
    assert set(thresholds) == set(COLOURS) and all(0.0 <= value <= 1.0 for value in thresholds.values())
    calibration = json.loads((run / "best" / "calibration.json").read_text())
    assert "held-out validation split" in json.dumps(calibration)

    # adds eval on the same cache reproduces the training run's test numbers exactly
    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(run / "best"), "--data-kind", "manifest", "--data-root",
                 str(data / "test.jsonl"), "--labels", str(data / "vocab.txt"), "--cache", str(test_cache),
                 "--json", str(out), "--workers", "0", "--no-progress", "--device", "cpu"]) == 0
    evaluated = json.loads(out.read_text())
    assert evaluated["metrics"]["all"] == pytest.approx(test_metrics["metrics"]["all"])

    # from images: equals metrics computed by hand (scikit-learn) on the model's own scores
    out_images = tmp_path / "eval-images.json"
    assert main(["eval", "--checkpoint", str(run / "best"), "--data-kind", "manifest", "--data-root",
                 str(data / "test.jsonl"), "--labels", str(data / "vocab.txt"), "--protocol", "zsl", "--topk", "1,2",
                 "--json", str(out_images), "--workers", "0", "--no-progress", "--device", "cpu"]) == 0
    from_images = json.loads(out_images.read_text())
    assert from_images["failed_images"] == 1 and from_images["num_images"] == 10
    from adds.data.base import SquashResize
    from adds.data.images import load_image
    from adds.model import ADDS

    model = ADDS.from_pretrained(run / "best").eval()
    rows = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()][:10]
    images = torch.stack([SquashResize(64)(load_image(data / row["image"])) for row in rows])
    with torch.no_grad():
        scores = model(images, list(COLOURS)).sigmoid().numpy()
    targets = np.array([[label in row["labels"] for label in COLOURS] for row in rows], dtype=int)
    expected_map = np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in range(len(COLOURS))])
    assert from_images["metrics"]["all"]["mAP"] == pytest.approx(expected_map, abs=1e-6)
    top1 = scores.argmax(axis=1)
    hits = targets[np.arange(10), top1].sum()
    assert from_images["metrics"]["all"]["P@1"] == pytest.approx(hits / 10)
    assert from_images["metrics"]["all"]["R@1"] == pytest.approx(hits / targets.sum())


def test_killed_cli_run_resumes_to_identical_weights(data, tmp_path):
    config = _config(data, tmp_path, epochs=3)
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(["train", "--config", str(config), "--run-dir", str(full), "--set", "data.test=null"]) == 0
    assert main(["train", "--config", str(config), "--run-dir", str(cut), "--set", "data.test=null",
                 "--stop-after-epochs", "1"]) == 0
    assert not (cut / "last").exists()
    assert main(["train", "--resume", "--run-dir", str(cut)]) == 0  # the saved config is reused
    for sub in ("last", "last-ema", "best"):
        assert (full / sub / "model.safetensors").read_bytes() == (cut / sub / "model.safetensors").read_bytes()
    # resuming with a changed config is refused, naming the key
    assert main(["train", "--config", str(config), "--run-dir", str(cut), "--set", "data.test=null",
                 "--set", "optim.lr=0.01", "--resume"]) == 1


def test_zero_shot_baseline_through_the_cli(data, tmp_path):
    from adds.data.base import SquashResize
    from adds.data.images import load_image
    from adds.model import ADDS, ADDSConfig
    from adds.pyramid import PyramidConfig
    from adds.towers import TowerConfig

    out = tmp_path / "clip.json"
    assert main(["eval", "--zero-shot-baseline", "--model", "adds-tiny-vit", "--pretrained", "none",
                 "--data-kind", "manifest", "--data-root", str(data / "test.jsonl"), "--labels",
                 str(data / "vocab.txt"), "--protocol", "zsl", "--topk", "1,2", "--json", str(out),
                 "--workers", "0", "--no-progress", "--device", "cpu", "--baseline-pooling", "view"]) == 0
    result = json.loads(out.read_text())
    assert result["num_images"] == 10 and "no training" in result["model"]
    # reference (--baseline-pooling view; the default is in test_cmd_eval_baseline_pooling): cosine of CLIP's
    # image embedding (32 px, the tower's size) and the label embedding
    model = ADDS(ADDSConfig(towers=TowerConfig("adds-tiny-vit", pretrained=None), pyramid=PyramidConfig((0,))))
    rows = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()][:10]
    images = torch.stack([SquashResize(32)(load_image(data / row["image"])) for row in rows])
    with torch.no_grad():
        image = torch.nn.functional.normalize(model.forward_features(images)[:, 0], dim=-1)
        scores = (image @ torch.nn.functional.normalize(model.encode_labels(list(COLOURS)), dim=-1).T).numpy()
    targets = np.array([[label in row["labels"] for label in COLOURS] for row in rows], dtype=int)
    expected_map = np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in range(len(COLOURS))])
    assert result["metrics"]["all"]["mAP"] == pytest.approx(expected_map, abs=1e-6)


def test_eval_of_given_scores_matches_hand_computed_metrics(tmp_path, capsys):
    scores = np.array([[0.9, 0.1, 0.4], [0.8, 0.7, 0.3], [0.2, 0.6, 0.9], [0.1, 0.3, 0.2]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 1], [0, 0, 1]])
    np.save(tmp_path / "scores.npy", scores)
    np.save(tmp_path / "targets.npy", targets)
    out = tmp_path / "m.json"
    assert main(["eval", "--scores", str(tmp_path / "scores.npy"), "--targets", str(tmp_path / "targets.npy"),
                 "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())["metrics"]["all"]
    assert metrics["mAP"] == pytest.approx(((1 + 2 / 3) / 2 + 1 + (1 + 2 / 4) / 2) / 3)
    assert metrics["OP"] == pytest.approx(4 / 5) and metrics["OR"] == pytest.approx(4 / 6)
    assert "86.11" in capsys.readouterr().out  # the table prints percentages
    assert main(["eval", "--scores", str(tmp_path / "scores.npy")]) == 1  # --targets missing: clear error
    assert main(["eval"]) == 2


def test_print_config_of_a_paper_config(capsys):
    config = Path(__file__).resolve().parents[1] / "configs" / "coco_vitl14-336_640.yaml"
    assert main(["train", "--config", str(config), "--print-config", "--set", "data.train.root=/data/coco"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["data"]["train"]["root"] == "/data/coco" and printed["data"]["input_size"] == 640
    assert printed["model"]["pyramid"]["levels"] == [0, 1] and printed["expected"]["mAP"] == 93.41
    assert main(["train", "--config", str(config), "--set", "optim.lrr=1", "--print-config"]) == 2
    assert "optim.lrr" in capsys.readouterr().err


def _forked_cli(argv: list[str], err_path: Path) -> int:
    """Start ``adds ARGV`` in a forked child: a real process that gets a real signal, without a fresh interpreter's
    5-30 s of imports (torch, open_clip). Its stdout goes to /dev/null, its stderr to ``err_path``; as in
    ``python -m adds``, its exit status is ``main()``'s return value, and an exception escaping ``main`` prints a
    traceback. Returns the child's pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        os.dup2(os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        logging.getLogger().handlers.clear()  # pytest's capture handlers; adds.cli installs a stderr handler
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a fresh interpreter's handlers
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        code = main(argv)
    except BaseException:  # noqa: BLE001 - what the interpreter would print for an exception leaving main()
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _wait(pid: int, deadline: float) -> int | None:
    """The exit code of child ``pid`` once it ends, or ``None`` if it is still running at ``deadline``."""
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    return None


def _assert_quiet_stop_with_a_checkpoint(code: int | None, err: str, run: Path, signum: int) -> None:
    assert code == 128 + signum, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert f"stopped by {signal.Signals(signum).name}" in err and "--resume" in err
    meta = json.loads((run / "checkpoint" / "state.json").read_text())
    assert 1 <= meta["epoch"] < 500


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")
def test_sigint_during_training_exits_quietly_with_a_checkpoint(data, tmp_path):
    """Issue 11.10 / 10.12: Ctrl+C in a running `adds train` process, delivered by the OS while it trains: no
    traceback, exit 130, resumable (SIGTERM takes the same path, tested in-process in test_train_checkpoint.py).
    The process is forked from this one so the test takes seconds; the same check in a fresh `python -m adds`
    interpreter is the slow test below."""
    signum = signal.SIGINT
    config = _config(data, tmp_path, epochs=500)
    run, err_path = tmp_path / "run", tmp_path / "stderr.txt"
    pid = _forked_cli(["train", "--config", str(config), "--run-dir", str(run), "--set", "data.test=null"], err_path)
    try:
        deadline = time.monotonic() + 120
        code = None
        while not (run / "metrics.csv").is_file() and code is None and time.monotonic() < deadline:
            code = _wait(pid, time.monotonic() + 0.05)
        assert code is None, f"adds train ended before the signal: {err_path.read_text()}"
        os.kill(pid, signum)
        code = _wait(pid, time.monotonic() + 120)
    finally:
        if code is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    _assert_quiet_stop_with_a_checkpoint(code, err_path.read_text(), run, signum)
    assert main(["train", "--resume", "--run-dir", str(run), "--set", "epochs=500", "--stop-after-steps", "1"]) == 0


@pytest.mark.slow
def test_sigint_in_a_fresh_interpreter_exits_quietly_with_a_checkpoint(data, tmp_path):
    """The same as above through `python -m adds` in a new interpreter (also covers the module's top level)."""
    signum = signal.SIGINT
    config = _config(data, tmp_path, epochs=500)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "adds", "train", "--config", str(config), "--run-dir", str(run),
                                "--set", "data.test=null"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + 120
    while not (run / "metrics.csv").is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    _assert_quiet_stop_with_a_checkpoint(process.returncode, err, run, signum)


@pytest.fixture
def train_cache(data, tmp_path):
    cache = tmp_path / "train-cache"
    assert main(["extract", "--data-kind", "manifest", "--data-root", str(data / "train.csv"), "--labels",
                 str(data / "vocab.txt"), "--model", "adds-tiny-vit", "--pretrained", "none", "--input-size", "64",
                 "--out", str(cache), "--batch-size", "8", "--no-progress"]) == 0
    return cache


def _one_line_error(err: str, command: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith(f"adds {command}:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_truncated_named_cache_is_a_one_line_error(data, tmp_path, train_cache, capsys):
    """Issue 11.9: a truncated cache named with data.train_cache: the shard file, not a shard_size mismatch."""
    shard = train_cache / "shard-00000.bin"
    shard.write_bytes(shard.read_bytes()[:1000])
    capsys.readouterr()
    assert main(["train", "--config", str(_config(data, tmp_path)), "--run-dir", str(tmp_path / "run"),
                 "--set", f"data.train_cache={train_cache}"]) == 2
    line = _one_line_error(capsys.readouterr().err, "train")
    assert str(shard) in line and "truncated" in line and "data.train_cache" in line and "shard_size" not in line


def test_nan_bytes_in_a_cache_point_to_the_shard(data, tmp_path, train_cache, capsys):
    """Issue 11.9: NaN bytes: an error naming the shard file and the image (while training, and with --verify-data
    before training; adds eval --verify-data likewise)."""
    shard = train_cache / "shard-00000.bin"
    values = np.fromfile(shard, dtype="<f2")
    values[len(values) // 2: len(values) // 2 + 4] = np.nan  # one row, size unchanged
    values.tofile(shard)
    config = str(_config(data, tmp_path))
    capsys.readouterr()
    assert main(["train", "--config", config, "--run-dir", str(tmp_path / "run"), "--set", "data.test=null",
                 "--set", f"data.train_cache={train_cache}"]) == 2
    line = _one_line_error(capsys.readouterr().err, "train")
    assert str(shard) in line and "NaN" in line and "image img1_" in line

    assert main(["train", "--config", config, "--run-dir", str(tmp_path / "run2"), "--verify-data",
                 "--set", f"data.train_cache={train_cache}"]) == 2
    line = _one_line_error(capsys.readouterr().err, "train")
    assert str(shard) in line and "SHA-256" in line
    assert not (tmp_path / "run2" / "checkpoint").exists()  # found before any training step

    assert main(["eval", "--zero-shot-baseline", "--model", "adds-tiny-vit", "--pretrained", "none", "--data-kind",
                 "manifest", "--data-root", str(data / "train.csv"), "--labels", str(data / "vocab.txt"), "--cache",
                 str(train_cache), "--verify-data", "--workers", "0", "--no-progress", "--device", "cpu"]) == 2
    line = _one_line_error(capsys.readouterr().err, "eval")
    assert str(shard) in line and "SHA-256" in line


def _weights(run: Path, sub: str = "last") -> bytes:
    return (run / sub / "model.safetensors").read_bytes()


def test_augmented_views_train_per_epoch_and_resume_mid_epoch_exactly(data, tmp_path):
    """Issue 10.8: a 3-view cache (plain + 2 augmented views) is extracted once; training draws a view per image per
    epoch (so it differs from one-view training), and a run stopped mid-epoch resumes to identical weights."""
    config = _config(data, tmp_path, epochs=3)
    sets = ["--set", "data.test=null", "--set", "data.views=3"]
    full, cut, plain = tmp_path / "full", tmp_path / "cut", tmp_path / "plain"
    assert main(["train", "--config", str(config), "--run-dir", str(full), *sets]) == 0
    assert main(["train", "--config", str(config), "--run-dir", str(cut), *sets, "--stop-after-steps", "4"]) == 0
    meta = json.loads((cut / "checkpoint" / "state.json").read_text())
    assert meta["epoch"] == 1 and not (cut / "last").exists()  # stopped inside the second epoch
    assert main(["train", "--resume", "--run-dir", str(cut)]) == 0
    for sub in ("last", "last-ema", "best"):
        assert _weights(full, sub) == _weights(cut, sub)
    caches = sorted(path.name for path in (tmp_path / "cache").iterdir() if path.name != "labels")
    assert len(caches) == 1 and caches[0].endswith("_v3s0")  # train and held-out split share the 3-view cache
    manifest = json.loads((tmp_path / "cache" / caches[0] / "manifest.json").read_text())
    assert manifest["views"] == 3 and manifest["augment"]["randaugment"] is True
    assert main(["train", "--config", str(config), "--run-dir", str(plain), "--set", "data.test=null"]) == 0
    assert _weights(plain) != _weights(full)  # the augmented views are trained on


def test_online_augmentation_without_a_cache_resumes_exactly(data, tmp_path):
    config = _config(data, tmp_path, epochs=2)
    sets = ["--set", "data.test=null", "--set", "data.cache=null", "--set", "data.augment_online=true"]
    full, cut, plain = tmp_path / "full", tmp_path / "cut", tmp_path / "plain"
    assert main(["train", "--config", str(config), "--run-dir", str(full), *sets]) == 0
    assert main(["train", "--config", str(config), "--run-dir", str(cut), *sets, "--stop-after-steps", "2"]) == 0
    assert json.loads((cut / "checkpoint" / "state.json").read_text())["epoch"] == 0
    assert main(["train", "--resume", "--run-dir", str(cut)]) == 0
    assert _weights(full) == _weights(cut) and _weights(full, "best") == _weights(cut, "best")
    assert main(["train", "--config", str(config), "--run-dir", str(plain), "--set", "data.test=null",
                 "--set", "data.cache=null"]) == 0
    assert _weights(plain) != _weights(full)
    assert not (tmp_path / "cache").exists()


def test_views_and_online_augmentation_config_errors(data, tmp_path, capsys):
    config = _config(data, tmp_path)
    assert main(["train", "--config", str(config), "--set", "data.augment_online=true"]) == 2
    assert "data.augment_online needs data.cache: null" in capsys.readouterr().err
    assert main(["train", "--config", str(config), "--set", "data.views=0"]) == 2
    assert "data.views must be a positive integer" in capsys.readouterr().err
