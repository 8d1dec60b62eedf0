"""``adds tag`` on a messy library: label and threshold mistakes, symlink loops, closed pipes, interrupted and resumed
runs (in-process and a real SIGKILL), path lists, and torchrun sharding (2 processes == 1 process)."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adds.cli import main
from adds.tagger import Tagger
from adds.tagger.output import read_results
from adds.towers import TINY_MODEL

TINY = ["--model", TINY_MODEL, "--pretrained", "none"]
LABELS = "red,green,blue"
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _save(path: Path, seed: int, size: int = 24) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size + 3, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture()
def library(tmp_path) -> Path:
    root = tmp_path / "lib"
    for index in range(12):
        _save(root / f"album{index % 3}" / f"img{index:02d}.png", index)
    (root / "album1" / "broken.png").write_text("not a picture")
    return root


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["tag", *args])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _assert_same_records(got: list[dict], expected: list[dict]) -> None:
    """Same paths in the same order, same errors and labels; scores equal up to batch-composition noise."""
    assert [r["path"] for r in got] == [r["path"] for r in expected]
    for a, b in zip(got, expected, strict=True):
        assert a["error"] == b["error"] and (a["tags"] is None) == (b["tags"] is None)
        if a["tags"] is not None:
            assert [t["label"] for t in a["tags"]] == [t["label"] for t in b["tags"]]
            assert [t["score"] for t in a["tags"]] == pytest.approx([t["score"] for t in b["tags"]], abs=1e-5)


# -- labels and thresholds ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, message", [("mylabels.txt", "mylabels.txt does not exist"),
                                            ("lib", "is a folder"), ("tags/mine", "does not exist")])
def test_labels_that_look_like_a_missing_file_or_name_a_folder_exit_2(capsys, library, monkeypatch, value, message):
    monkeypatch.chdir(library.parent)
    code, out, err = run(capsys, str(library), *TINY, "--labels", value)
    assert code == 2 and out == "" and message in err and value.split("/")[-1] in err


def test_comment_lines_in_a_label_file_are_not_labels(capsys, library, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("# colours I care about\nred\n  # blue is out\ngreen\n", encoding="utf-8")
    code, out, _ = run(capsys, str(library / "album0" / "img00.png"), *TINY, "--labels", str(labels),
                       "--threshold", "0", "--format", "jsonl")
    assert code == 0 and {t["label"] for t in json.loads(out)["tags"]} == {"red", "green"}


def test_a_threshold_file_naming_an_unknown_label_exits_2_naming_it(capsys, library, tmp_path):
    thresholds = tmp_path / "thr.tsv"
    thresholds.write_text("red\t0.4\ndgo\t0.3\n", encoding="utf-8")
    code, out, err = run(capsys, str(library), *TINY, "--labels", LABELS, "--threshold-file", str(thresholds))
    assert code == 2 and out == "" and "'dgo'" in err and "thr.tsv" in err


# -- finding files ----------------------------------------------------------------------------------------------------


def test_a_symlink_loop_tags_each_image_once_and_overlapping_globs_are_no_failure(capsys, library):
    os.symlink(library, library / "album2" / "loop")
    code, out, err = run(capsys, str(library / "**" / "*.png"), str(library / "album0" / "*.png"), *TINY,
                         "--labels", LABELS, "--format", "jsonl")
    records = [json.loads(line) for line in out.splitlines()]
    assert code == 1 and [r["path"] for r in records if r["error"]] == [str(library / "album1" / "broken.png")]
    assert len(records) == 13 == len({os.path.realpath(r["path"]) for r in records})
    walked = run(capsys, str(library), *TINY, "--labels", LABELS, "--format", "jsonl")[1]
    assert sorted(os.path.realpath(json.loads(x)["path"]) for x in walked.splitlines()) == \
        sorted(os.path.realpath(r["path"]) for r in records)  # the folder walk and the glob agree


def test_paths_from_a_file_and_from_stdin(capsys, library, tmp_path, monkeypatch):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{library / 'album0' / 'img00.png'}\n\n{library / 'album1'}\n", encoding="utf-8")
    code, out, _ = run(capsys, "--from-file", str(listing), *TINY, "--labels", LABELS, "--format", "jsonl")
    assert code == 1 and len(out.splitlines()) == 1 + 5  # one file, the folder's 4 images and its broken file
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{library / 'album2' / 'img02.png'}\n"))
    code, out, _ = run(capsys, "--from-file", "-", *TINY, "--labels", LABELS, "--format", "jsonl")
    assert code == 0 and json.loads(out)["path"] == str(library / "album2" / "img02.png")
    code, _, err = run(capsys, "--from-file", str(tmp_path / "none.txt"), *TINY)
    assert code == 2 and "none.txt" in err


# -- output formats ---------------------------------------------------------------------------------------------------


def test_failed_inputs_are_in_csv_json_and_table_output(capsys, library):
    broken = str(library / "album1" / "broken.png")
    args = [str(library / "album1"), *TINY, "--labels", LABELS, "--threshold", "0"]
    code, out, _ = run(capsys, *args, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 1 and [r["error"] for r in rows if r["path"] == broken][0].startswith("not an image")
    code, out, _ = run(capsys, *args, "--format", "json")
    assert [r["error"] is not None for r in json.loads(out)] == [True, False, False, False, False]
    code, out, _ = run(capsys, *args, "--format", "table")
    assert f"{broken}\n  error: not an image" in out


def test_a_closed_pipe_ends_quietly(library, tmp_path):
    command = (f"{sys.executable} -m adds tag {library} --model {TINY_MODEL} --pretrained none --labels {LABELS} "
               "--format jsonl --batch-size 1 | head -1")
    env = {**os.environ, "PYTHONPATH": SRC}
    done = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, env=env,
                          timeout=120)
    assert len(done.stdout.splitlines()) == 1 and json.loads(done.stdout)["path"]
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert done.returncode == 141


# -- interrupt and resume ---------------------------------------------------------------------------------------------


def test_an_interrupted_run_resumes_to_each_image_exactly_once(capsys, library, tmp_path, monkeypatch):
    output = tmp_path / "tags.jsonl"
    args = [str(library), *TINY, "--labels", LABELS, "--format", "jsonl", "--output", str(output),
            "--batch-size", "2", "--workers", "0"]
    real = Tagger.score_prepared
    calls = []

    def interrupted(self, images, labels=None):
        calls.append(len(images))
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl+C in the middle of the run
        return real(self, images, labels)

    monkeypatch.setattr(Tagger, "score_prepared", interrupted)
    code, out, err = run(capsys, *args)
    assert code == 130 and "--resume" in err and out == ""
    first = _lines(output)
    assert 0 < len(first) < 13
    with output.open("a", encoding="utf-8") as handle:
        handle.write('{"path": "half a line')  # a kill in the middle of a write
    monkeypatch.setattr(Tagger, "score_prepared", real)
    code, _, err = run(capsys, *args, "--resume")
    assert code == 1 and "already in" in err
    records = _lines(output)
    assert records[:len(first)] == first  # appended, nothing rewritten
    assert len(records) == 13 == len({r["path"] for r in records})  # each image exactly once
    fresh = tmp_path / "fresh.jsonl"
    run(capsys, *args[:-6], "--format", "jsonl", "--output", str(fresh))
    _assert_same_records(sorted(records, key=lambda r: r["path"]), sorted(_lines(fresh), key=lambda r: r["path"]))
    code, _, err = run(capsys, *args, "--resume")  # nothing left: the failure from before is still reported
    assert code == 1 and "0 image(s) tagged, 0 failed, 13 already" in err and len(_lines(output)) == 13


def test_resume_retries_failed_inputs_only_when_asked_and_works_with_csv(capsys, library, tmp_path):
    output = tmp_path / "tags.csv"
    args = [str(library), *TINY, "--labels", LABELS, "--format", "csv", "--output", str(output)]
    assert run(capsys, *args)[0] == 1
    rows = output.read_text().count("\n")
    broken = library / "album1" / "broken.png"
    _save(broken, 99)  # the user fixes the broken file
    assert run(capsys, *args, "--resume")[0] == 1 and output.read_text().count("\n") == rows  # not retried
    code, _, err = run(capsys, *args, "--resume", "--retry-failed")
    assert code == 0 and "1 image(s) tagged, 0 failed" in err
    last = [r for r in read_results(output, "csv") if r.path == str(broken)][-1]
    assert last.ok and last.tags is not None and output.read_text().startswith("path,label,score,error\n")
    assert output.read_text().count("path,label,score,error") == 1


@pytest.mark.parametrize("extra, message", [(["--resume"], "--resume needs --output"),
                                            (["--resume", "--output", "x.json", "--format", "json"], "jsonl or csv"),
                                            (["--retry-failed"], "--retry-failed"), ([], "give image files"),
                                            (["--output", "/nonexistent/dir/t.jsonl"], "--output /nonexistent"),
                                            (["--input-size", "0"], "--input-size")])
def test_bad_resume_combinations_exit_2(capsys, library, extra, message):
    paths = [] if message == "give image files" else [str(library)]
    code, _, err = run(capsys, *paths, *TINY, *extra)
    assert code == 2 and message in err


_SLOW = """
import sys, time
from adds.tagger import Tagger
real = Tagger.score_prepared
def slow(self, images, labels=None):
    time.sleep(0.4)
    return real(self, images, labels)
Tagger.score_prepared = slow
from adds.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_killed_process_resumes_to_each_image_exactly_once(library, tmp_path):
    output = tmp_path / "tags.jsonl"
    script = tmp_path / "slow_adds.py"
    script.write_text(_SLOW, encoding="utf-8")
    args = ["tag", str(library), *TINY, "--labels", LABELS, "--format", "jsonl", "--output", str(output),
            "--batch-size", "2", "--workers", "0"]
    env = {**os.environ, "PYTHONPATH": SRC}
    process = subprocess.Popen([sys.executable, str(script), *args], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not output.exists() or len(output.read_text().splitlines()) < 4):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    before = len(output.read_text().splitlines())
    assert 4 <= before < 13, "the run ended before it could be killed"
    done = subprocess.run([sys.executable, "-m", "adds", *args, "--resume"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    records = _lines(output)
    assert len(records) == 13 == len({r["path"] for r in records})


# -- sharding with torchrun -------------------------------------------------------------------------------------------


def test_a_two_process_torchrun_run_equals_a_one_process_run(library, tmp_path):
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    common = [str(library), *TINY, "--labels", LABELS, "--threshold", "0", "--format", "jsonl", "--batch-size", "3"]
    one = subprocess.run([sys.executable, "-m", "adds", "tag", *common, "--output", str(tmp_path / "one.jsonl")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 1, one.stderr
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "adds", "tag"]
    two = subprocess.run([*launch, *common, "--output", str(tmp_path / "two.jsonl")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert "part0-of-2" not in " ".join(os.listdir(tmp_path)), "the part files are merged and removed"
    expected = _lines(tmp_path / "one.jsonl")
    _assert_same_records(_lines(tmp_path / "two.jsonl"), expected)  # same records, same order
    assert "12 image(s) tagged, 1 failed" in two.stderr and two.returncode == 1  # the documented code, via torchrun
    assert "/adds/" not in two.stderr.split("ChildFailedError")[0].split("Traceback")[-1]  # no trace of our code
    stdout = subprocess.run([*launch, *common], env=env, capture_output=True, text=True, timeout=300)
    _assert_same_records([json.loads(line) for line in stdout.stdout.splitlines()], expected)
