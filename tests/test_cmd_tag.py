"""``adds tag``: formats, folders and globs, thresholds, bad files, odd image modes, weights and exit codes."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import adds.data.images as images_module
from adds.cli import main
from adds.decoder import DecoderConfig
from adds.model import ADDS, ADDSConfig
from adds.tagger import Tagger
from adds.towers import TINY_MODEL, TowerConfig, load_towers

LABELS = ["red", "blue", "green", "white"]
TINY = ["--model", TINY_MODEL, "--pretrained", "none"]


def _save(path: Path, seed: int, height: int = 40, width: int = 56) -> Path:
    array = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture()
def photos(tmp_path) -> Path:
    root = tmp_path / "photos"
    _save(root / "a.png", 0)
    _save(root / "b.jpg", 1, 64, 30)
    _save(root / "trip" / "c.png", 2, 20, 20)
    _save(root / "trip" / "day2" / "d.webp", 3, 90, 70)
    (root / "trip" / "notes.txt").write_text("not an image, and not picked up from a folder")
    _save(root / ".thumbs" / "e.png", 4)  # hidden: skipped
    return root


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["tag", *args])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


def _reference(paths: list[Path], labels=LABELS, threshold=0.0) -> dict[str, list[dict]]:
    tagger = Tagger.clip_baseline(TINY_MODEL, None, device="cpu", labels=labels)
    return {str(p): tags for p, tags in zip(paths, tagger(paths, threshold=threshold), strict=True)}


def _records(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def _jsonl(out: str) -> dict[str, list[dict]]:
    """path -> tags of the images that were tagged (failed inputs are in the output too, with tags null)."""
    return {r["path"]: r["tags"] for r in _records(out) if r["error"] is None}


def _assert_close(got: dict[str, list[dict]], expected: dict[str, list[dict]]) -> None:
    assert set(got) == set(expected)
    for path, tags in expected.items():
        assert [t["label"] for t in got[path]] == [t["label"] for t in tags], path
        assert [t["score"] for t in got[path]] == pytest.approx([t["score"] for t in tags], abs=1e-5)


# -- formats and folders -----------------------------------------------------------------------------------------


EXPECTED = ["a.png", "b.jpg", "trip/c.png", "trip/day2/d.webp"]


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "table"])
def test_folder_is_tagged_recursively_in_every_format(capsys, photos, fmt):
    code, out, err = run(capsys, str(photos), *TINY, "--labels", ",".join(LABELS), "--threshold", "0",
                         "--format", fmt, "--batch-size", "3")
    assert code == 0, err
    paths = [photos / name for name in EXPECTED]
    expected = _reference(paths)
    if fmt == "jsonl":
        got = _jsonl(out)
    elif fmt == "json":
        got = {r["path"]: r["tags"] for r in json.loads(out)}
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(out)))
        got = {}
        for row in rows:
            got.setdefault(row["path"], []).append({"label": row["label"], "score": float(row["score"])})
    else:
        got, current = {}, None
        for line in out.splitlines():
            if not line.startswith("  "):
                current = line
                got[current] = []
            else:
                score, label = line.split(None, 1)
                got[current].append({"label": label, "score": float(score)})
        for tags in expected.values():
            for tag in tags:
                tag["score"] = round(tag["score"], 3)
    _assert_close(got, expected)
    assert list(got) == [str(p) for p in paths]  # sorted walk order, hidden folder and .txt skipped


def test_globs_and_explicit_files(capsys, photos):
    code, out, _ = run(capsys, str(photos / "**" / "*.png"), str(photos / "b.jpg"), *TINY, "--labels", "red,blue",
                       "--format", "jsonl", "--threshold", "0")
    assert code == 0
    assert list(_jsonl(out)) == [str(photos / "a.png"), str(photos / "trip" / "c.png"), str(photos / "b.jpg")]


def test_threshold_top_k_and_threshold_file(capsys, photos, tmp_path):
    path = str(photos / "a.png")
    all_scores = _reference([photos / "a.png"])[path]
    code, out, _ = run(capsys, path, *TINY, "--labels", ",".join(LABELS), "--threshold", "0", "--top-k", "2",
                       "--format", "jsonl")
    assert code == 0 and [t["label"] for t in _jsonl(out)[path]] == [t["label"] for t in all_scores[:2]]
    cut = all_scores[2]["score"]
    code, out, _ = run(capsys, path, *TINY, "--labels", ",".join(LABELS), "--threshold", str(cut - 1e-7),
                       "--format", "jsonl")
    assert [t["label"] for t in _jsonl(out)[path]] == [t["label"] for t in all_scores[:3]]
    # per-label: the best label needs more than it has, the worst gets in; others use the global threshold 1.0
    best, worst = all_scores[0], all_scores[-1]
    thresholds = tmp_path / "thr.tsv"
    thresholds.write_text(f"{best['label']}\t{min(1.0, best['score'] + 1e-4)}\n{worst['label']}\t0\n")
    code, out, _ = run(capsys, path, *TINY, "--labels", ",".join(LABELS), "--threshold-file", str(thresholds),
                       "--threshold", "1", "--format", "jsonl")
    assert code == 0 and [t["label"] for t in _jsonl(out)[path]] == [worst["label"]]


def test_labels_from_a_file(capsys, photos, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("red car\nblue sky\n\n")
    code, out, _ = run(capsys, str(photos / "a.png"), *TINY, "--labels", str(labels), "--threshold", "0",
                       "--format", "jsonl")
    assert code == 0 and {t["label"] for t in _jsonl(out)[str(photos / "a.png")]} == {"red car", "blue sky"}


def test_results_stream_batch_by_batch(capsys, photos, monkeypatch):
    events: list[str] = []
    real = Tagger.score_prepared

    def scored(self, images, labels=None):
        events.append(f"score {len(images)}")
        return real(self, images, labels)

    class Recorder(io.StringIO):
        def write(self, text):
            events.append("write")
            return super().write(text)

    monkeypatch.setattr(Tagger, "score_prepared", scored)
    monkeypatch.setattr("sys.stdout", Recorder())
    assert main(["tag", str(photos), *TINY, "--labels", "red", "--format", "jsonl", "--batch-size", "2"]) == 0
    assert events[0] == "score 2" and events[1] == "write"  # the first batch is out before the second is scored
    assert events.count("score 2") == 2 and events.index("write") < events.index("score 2", 1)


def test_progress_bar_on_stderr(capsys, photos):
    code, out, err = run(capsys, str(photos), *TINY, "--labels", "red", "--batch-size", "1", "--progress", "on",
                         "--format", "jsonl")
    assert code == 0 and "tagging" in err and "4/4" in err
    assert "tagging" not in out


# -- bad files and odd images -------------------------------------------------------------------------------------


def _bad_files(folder: Path, monkeypatch) -> dict[str, str]:
    """Every kind of bad file -> the reason the CLI should print."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "text.png").write_text("hello, I am not a picture")
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good, "PNG")
    (folder / "truncated.png").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(jpeg, "JPEG")
    corrupt = bytearray(jpeg.getvalue())
    corrupt[200:] = b"\x00" * (len(corrupt) - 200)  # header intact, scan data destroyed
    (folder / "corrupt.jpg").write_bytes(bytes(corrupt[: len(corrupt) // 2]))
    Image.new("RGB", (300, 300)).save(folder / "bomb.png")
    monkeypatch.setattr(images_module, "MAX_IMAGE_PIXELS", 200 * 200)
    return {"zero.jpg": "zero-byte", "text.png": "not an image", "truncated.png": "truncated or corrupt",
            "corrupt.jpg": "truncated or corrupt", "bomb.png": "decompression bomb"}


def test_each_bad_file_is_reported_and_the_rest_are_tagged(capsys, photos, monkeypatch):
    reasons = _bad_files(photos / "bad", monkeypatch)
    code, out, err = run(capsys, str(photos), str(photos / "missing.png"), *TINY, "--labels", "red,blue",
                         "--format", "jsonl", "--batch-size", "2")
    assert code == 1
    assert list(_jsonl(out)) == [str(photos / name) for name in EXPECTED]  # every good image, in order
    errors = {r["path"]: r["error"] for r in _records(out) if r["error"] is not None}
    for name, reason in reasons.items():
        lines = [line for line in err.splitlines() if str(photos / "bad" / name) in line]
        assert len(lines) == 1 and reason in lines[0], (name, err)
        assert reason in errors[str(photos / "bad" / name)]  # failed inputs are in the output with their error
    assert f"{photos / 'missing.png'}: no such file" in err and "no such file" in errors[str(photos / "missing.png")]
    assert len(errors) == 6 and all(r["tags"] is None for r in _records(out) if r["error"])
    assert "4 image(s) tagged, 6 failed" in err


@pytest.mark.parametrize("kind", ["zero.jpg", "text.png", "truncated.png", "corrupt.jpg", "bomb.png"])
def test_a_single_bad_file_gives_exit_code_one(capsys, tmp_path, monkeypatch, kind):
    _bad_files(tmp_path, monkeypatch)
    good = _save(tmp_path / "good.png", 9)
    code, out, err = run(capsys, str(tmp_path / kind), str(good), *TINY, "--labels", "red", "--format", "jsonl")
    assert code == 1 and list(_jsonl(out)) == [str(good)] and str(tmp_path / kind) in err
    assert [r["path"] for r in _records(out) if r["error"]] == [str(tmp_path / kind)]


def test_odd_modes_and_exif_rotation_are_handled(capsys, tmp_path):
    rng = np.random.default_rng(7)
    array = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees clockwise
    Image.fromarray(array).save(tmp_path / "exif.png", exif=exif.tobytes())
    Image.fromarray(array).transpose(Image.Transpose.ROTATE_270).save(tmp_path / "upright.png")
    Image.new("CMYK", (30, 30), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 65536, (20, 20), dtype=np.uint16)).save(tmp_path / "deep16.png")
    Image.fromarray(array).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "palette.png")
    Image.new("RGBA", (32, 32), (255, 0, 0, 0)).save(tmp_path / "transparent.png")
    Image.new("RGB", (32, 32), (255, 255, 255)).save(tmp_path / "white.png")
    code, out, err = run(capsys, str(tmp_path), *TINY, "--labels", ",".join(LABELS), "--threshold", "0",
                         "--format", "jsonl")
    assert code == 0, err
    got = _jsonl(out)
    assert len(got) == 7
    for tags in got.values():
        assert len(tags) == len(LABELS)
    _assert_close({"x": got[str(tmp_path / "exif.png")]}, {"x": got[str(tmp_path / "upright.png")]})
    _assert_close({"x": got[str(tmp_path / "transparent.png")]}, {"x": got[str(tmp_path / "white.png")]})
    # 16-bit data is read on its own scale (not clipped to 8 bits): same tags as the API on the loaded pixels
    deep = np.asarray(Image.open(tmp_path / "deep16.png"), dtype=np.float32) / 65535.0
    tensor = torch.from_numpy(deep)[None].repeat(3, 1, 1)
    expected = Tagger.clip_baseline(TINY_MODEL, None, device="cpu", labels=LABELS)(tensor, threshold=0.0)
    _assert_close({"x": got[str(tmp_path / "deep16.png")]}, {"x": expected})


@pytest.mark.parametrize("pooling", ["max", "view"])
def test_baseline_pooling_flag_reaches_the_scorer(capsys, tmp_path, pooling):
    """``--baseline-pooling`` (issue 9.7): the CLI's scores are the API's with that pooling."""
    from adds.tagger import CLIPBaselineConfig

    image = _save(tmp_path / "x.png", 3)
    code, out, err = run(capsys, str(image), *TINY, "--labels", ",".join(LABELS), "--threshold", "0",
                         "--format", "jsonl", "--baseline-pooling", pooling)
    assert code == 0, err
    tagger = Tagger.clip_baseline(TINY_MODEL, None, device="cpu", labels=LABELS,
                                  baseline=CLIPBaselineConfig(pooling=pooling))
    assert tagger.plan.num_crops == (5 if pooling == "max" else 1)
    _assert_close(_jsonl(out), {str(image): tagger(str(image), threshold=0.0)})


def test_baseline_pooling_choices_match_the_library():
    from adds.commands._options import BASELINE_POOLING_CHOICES
    from adds.tagger.baseline import BASELINE_POOLINGS

    assert BASELINE_POOLING_CHOICES == BASELINE_POOLINGS


# -- models and weights --------------------------------------------------------------------------------------------


def test_offline_tag_prints_where_to_put_the_weights(capsys, tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", no_network)
    image = _save(tmp_path / "x.png", 0)
    code, out, err = run(capsys, str(image), "--model", "ViT-B-32-quickgelu", "--pretrained", "openai",
                         "--cache-dir", str(tmp_path / "cache"), "--labels", "red")
    assert code == 2 and out == ""
    assert "'openai'" in err and str(tmp_path / "cache") in err and "--pretrained /path/to/" in err


def test_local_weights_files_work(capsys, tmp_path):
    source = load_towers(TowerConfig(model=TINY_MODEL, pretrained=None, seed=0))
    state = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in source.clip.state_dict().items()}, str(state))
    scripted = load_towers(TowerConfig(model=TINY_MODEL + "-quickgelu", pretrained=None, seed=0))
    scripted.clip.half().float()
    torchscript = tmp_path / "openai-style.pt"
    torch.jit.save(torch.jit.script(scripted.clip), str(torchscript))
    image = _save(tmp_path / "x.png", 0)
    expected = _reference([image])
    code, out, err = run(capsys, str(image), "--model", TINY_MODEL, "--pretrained", str(state),
                         "--labels", ",".join(LABELS), "--threshold", "0", "--format", "jsonl")
    assert code == 0, err
    _assert_close(_jsonl(out), expected)  # the same weights as random seed 0, read from the file
    code, out, err = run(capsys, str(image), "--model", TINY_MODEL, "--pretrained", str(torchscript),
                         "--labels", ",".join(LABELS), "--threshold", "0", "--format", "jsonl")
    assert code == 0, err
    assert len(_jsonl(out)[str(image)]) == len(LABELS)


def test_checkpoint_with_its_vocabulary(capsys, tmp_path, photos):
    config = ADDSConfig(towers=TowerConfig(model=TINY_MODEL, pretrained=None),
                        decoder=DecoderConfig(num_layers=1, num_heads=4, ffn_dim=64))
    directory = ADDS(config).save_pretrained(tmp_path / "ckpt")
    (directory / "labels.txt").write_text("\n".join(LABELS))
    paths = [photos / name for name in EXPECTED]
    expected = Tagger.from_checkpoint(directory, device="cpu")(paths, threshold=0.0)
    code, out, err = run(capsys, str(photos), "--checkpoint", str(directory), "--threshold", "0",
                         "--format", "jsonl")
    assert code == 0, err
    _assert_close(_jsonl(out), {str(p): tags for p, tags in zip(paths, expected, strict=True)})


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--threshold", "1.5"], "--threshold must be in [0, 1]"),
        (["--labels", "red,red"], "Duplicate label"),
        (["--levels", "one"], "--levels"),
        (["--top-k", "0"], "--top-k"),
        (["--model", "No-Such-Model"], "No-Such-Model"),
    ],
)
def test_usage_errors_exit_2_with_a_message(capsys, photos, extra, message):
    args = [str(photos / "a.png"), *extra]
    if "--model" not in extra:
        args += TINY
    else:
        args += ["--pretrained", "none"]
    code, out, err = run(capsys, *args)
    assert code == 2 and out == "" and message in err


def test_bad_threshold_file_and_checkpoint_exit_2(capsys, photos, tmp_path):
    bad = tmp_path / "thr.txt"
    bad.write_text("red 0.5\n")
    code, _, err = run(capsys, str(photos / "a.png"), *TINY, "--threshold-file", str(bad))
    assert code == 2 and "thr.txt:1" in err
    code, _, err = run(capsys, str(photos / "a.png"), "--checkpoint", str(tmp_path / "nothing"))
    assert code == 2 and "nothing" in err


def test_nothing_to_tag_exits_2(capsys, tmp_path):
    code, out, err = run(capsys, str(tmp_path / "*.jpg"), *TINY, "--format", "jsonl")
    assert code == 2 and "no such file" in err
    assert [(r["path"], r["tags"]) for r in _records(out)] == [(str(tmp_path / "*.jpg"), None)]
    (tmp_path / "bad.png").write_text("not an image")
    code, out, err = run(capsys, str(tmp_path / "bad.png"), *TINY, "--format", "jsonl", "--labels", "red")
    assert code == 2 and "not an image" in _records(out)[0]["error"]  # no input could be tagged
    (tmp_path / "empty").mkdir()
    code, out, err = run(capsys, str(tmp_path / "empty"), *TINY)
    assert code == 2 and out == "" and "no image files" in err


def test_help_explains_the_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["tag", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for option in ("--labels", "--checkpoint", "--pretrained", "--threshold-file", "--top-k", "--format",
                   "--batch-size", "--device", "Exit code", "--output", "--resume", "--retry-failed", "--from-file",
                   "--write", "--sidecar-name", "--input-size", "--levels", "torchrun", "thresholds.tsv",
                   "'#' starts a comment", "130", "141"):
        assert option in text
