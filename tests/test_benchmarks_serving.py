"""Smoke tests of the serving benchmarks of issue 12 (start time, on-disk label cache, precision, decoding overlap):
each core function on tiny towers with minimal sizes; no timing assertions."""

from __future__ import annotations

import argparse
import json

from test_benchmarks_smoke import _load, _positive

from adds.towers import TINY_MODEL


def test_text_cache_disk_first_and_repeated_start(tmp_path):
    bench = _load("text_cache")
    vocabulary = tmp_path / "labels.txt"
    vocabulary.write_text("\n".join(f"tag number {i}" for i in range(30)) + "\n", encoding="utf-8")
    config = bench.TextCacheBenchConfig(model=TINY_MODEL, vocabulary=str(vocabulary), miss_labels=5, repeats=1,
                                        threads=1)
    result = bench.run_disk(config)
    json.dumps(result)
    assert result["hit_equals_miss"] is True
    assert result["large"]["miss_labels"] == 5 and result["vocabulary_size"] == 30
    assert _positive(result["tiny"]["ratio_first_over_repeated"]) and _positive(result["large"]["repeated_s"])
    assert "repeated start goal" in bench.format_disk_table(result)


def test_start_time_cases_run(capsys):
    bench = _load("start_time")
    assert bench.time_case(["-m", "adds", "--help"]) > 0


def test_precision_toy_world_and_table(tmp_path):
    bench = _load("precision")
    args = argparse.Namespace(train_scenes=32, epochs=1, test_scenes=24, toy_batch=16,
                                                         repeats=1)
    result = {"toy": bench.run_toy(args)}
    json.dumps(result)
    toy = result["toy"]
    assert set(toy["speedup_vs_fp32"]) == {"bf16", "bf16-all", "bf16-autocast", "fp16"}
    assert all(0.0 <= toy["agreement"][name]["top5_same_set"] <= 1.0 for name in toy["agreement"])
    assert 0.0 < toy["split"]["head_share_fp32"] < 1.0 and toy["profile"]["bf16"]
    assert "toy world" in bench.table(result)


def test_decode_overlap_runs_every_case(tmp_path):
    bench = _load("decode_overlap")
    args = argparse.Namespace(images=4, model=TINY_MODEL, labels=3, batch=2, workers=1, decode_only=False,
                                                         repeats=1)
    result = {"environment": {"torch_threads": 1}, "run": bench.run(args, tmp_path / "jpegs")}
    json.dumps(result)
    assert _positive(result["run"]["tag_vs_model_only"]) and _positive(result["run"]["baseline_vs_hand_written"])
    assert "hand-written" in bench.table(result)


def test_head_gemm_fraction():
    bench = _load("head_gemm")
    args = argparse.Namespace(labels=[8], batch=1, dim=64, tokens=5, layers=2, repeats=1)
    row = bench.run(args)["rows"][0]
    assert row["head_flops"] > 0 and _positive(row["head_fraction_of_gemm"])
