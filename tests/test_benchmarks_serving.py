"""Smoke tests of the serving benchmarks of issue 12 (start time, on-disk label cache, precision, decoding overlap):
each core function on tiny towers with minimal sizes; no timing assertions."""

from __future__ import annotations

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
