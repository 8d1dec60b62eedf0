"""Smoke tests of the benchmark scripts: each core function on tiny towers with minimal sizes.

No timing assertions (times on shared cores are noise); these check that every script runs end to end, returns the
fields its table and JSON promise, and that the numbers it derives without timing (FLOP counts, crop counts,
token equality, loss behaviour) are right.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from adds.decoder import DecoderConfig
from adds.towers import TINY_MODEL

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SMALL = DecoderConfig(num_layers=2, num_heads=4, ffn_dim=64, dropout=0.0)



def _load(name: str):
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))  # as when a script runs: it imports its sibling _common
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


@pytest.mark.parametrize("name", ["pyramid_vs_fullres", "cache_vs_reencode", "head_overhead", "text_cache",
                                  "gpu_check"])
def test_every_script_explains_itself(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _load(name).main(["--help"])
    assert exit_info.value.code == 0
    assert "--out" in capsys.readouterr().out


def test_pyramid_vs_fullres_counts_match_the_analytic_model():
    bench = _load("pyramid_vs_fullres")
    config = bench.PyramidBenchConfig(models=(TINY_MODEL,), measure=(2,), count_only=(4,), count_only_models=(),
                                      repeats=1, warmup=0, threads=1)
    result = bench.run(config)
    json.dumps(result)
    (entry,) = result["models"]
    rows = {row["d"]: row for row in entry["rows"]}
    assert set(rows) == {2, 4}
    assert rows[2]["crops"] == 5 and rows[4]["crops"] == 21  # 1 + 4 (+ 16)
    assert rows[2]["naive_tokens"] == 4 * 16 + 1  # tiny tower: 32 px, patch 8 -> 16 patches at 1x
    for row in rows.values():
        counted, analytic = row["flops"]["naive"], row["analytic_flops_naive"]["total"]
        assert counted == pytest.approx(analytic, rel=1e-3)  # attention is counted (meta tensors), nothing else
        assert row["flops"]["pyramid"] == pytest.approx(row["crops"] * row["flops"]["base_crop"], rel=1e-6)
        assert row["flops"]["top_level_only"] < row["flops"]["pyramid"]
    assert rows[4]["flop_ratio_naive_over_pyramid"] > rows[2]["flop_ratio_naive_over_pyramid"]  # gap grows with d
    assert _positive(rows[2]["time_ratio_naive_over_pyramid"])
    assert "time_ratio_naive_over_pyramid" not in rows[4]  # counted only
    assert entry["crossover_d"] is None or entry["crossover_d"] > 1
    assert "| " + TINY_MODEL in bench.format_table(result)


def test_pyramid_crossover_is_where_the_analytic_costs_meet():
    bench = _load("pyramid_vs_fullres")
    shape = bench.VitShape(image_size=224, patch=32, width=768, layers=12, mlp=3072, embed_dim=512)  # ViT-B-32
    d_star = bench.crossover(shape)
    assert 4 < d_star < 8  # more expensive than naive at d = 4, cheaper at d = 8
    assert bench.analytic_ratio(shape, 4) < 1 < bench.analytic_ratio(shape, 8)
    base = shape.flops(1)["total"]
    assert shape.flops(d_star)["total"] == pytest.approx((4 * d_star**2 - 1) / 3 * base, rel=1e-6)


def test_head_overhead_reports_every_k():
    bench = _load("head_overhead")
    config = bench.HeadBenchConfig(model=TINY_MODEL, labels=(4, 40), batch=2, large_k=8, large_k_batch=1,
                                   decoder=SMALL, memory=False, profile_k=4, repeats=1, warmup=0, threads=1)
    result = bench.run(config)
    json.dumps(result)
    rows = {row["k"]: row for row in result["rows"]}
    assert rows[4]["batch"] == 2 and rows[40]["batch"] == 1  # large vocabularies at the large-k batch
    for row in rows.values():
        assert math.isfinite(row["overhead"])
        assert row["flops"]["full"] > row["flops"]["bare"]
        assert row["flop_ratio_dm_over_ml"] > 1  # the DM-decoder's MHA2 costs extra (Eq. 5)
        assert _positive(row["time_ratio_dm_over_ml"])
    assert _positive(result["head_flops_per_label_per_image"])
    assert result["profile"]["top_ops"] and result["profile"]["k"] == 4
    by_layers = {(row["layers"], row["k"]): row["flop_overhead"] for row in result["flop_overhead_by_layers"]}
    for k in (4, 40):
        assert 0 < by_layers[(1, k)] < by_layers[(3, k)] < by_layers[(6, k)]  # deeper decoders cost more
    assert "overhead_le_10_percent_up_to_1006_labels" in result["goals"]
    assert "goals" in bench.format_table(result)



def test_head_overhead_memory_probe_entry_point(capsys):
    """What ``run`` starts in a subprocess per k (``--memory-probe K BATCH --probe-config JSON``), run in-process."""
    bench = _load("head_overhead")
    config = bench.HeadBenchConfig(model=TINY_MODEL, labels=(40,), decoder=SMALL, threads=1)
    probe_config = json.dumps(bench.config_to_dict(config))
    assert bench.main(["--memory-probe", "40", "1", "--probe-config", probe_config]) == 0
    memory = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert memory["loaded_mib"] > 0 and memory["process_max_rss_mib"] > 0
    if "full_peak_mib" in memory:  # Linux with /proc/self/clear_refs
        assert memory["full_peak_mib"] > 0 and memory["bare_peak_mib"] > 0
        assert memory["head_extra_mib"] == pytest.approx(memory["full_peak_mib"] - memory["bare_peak_mib"])


def test_text_cache_hit_equals_miss_and_truncation_is_exact(tmp_path):
    bench = _load("text_cache")
    vocabulary = tmp_path / "labels.txt"
    vocabulary.write_text("\n".join(f"tag number {i}" for i in range(12)) + "\n", encoding="utf-8")
    config = bench.TextCacheBenchConfig(model=TINY_MODEL, vocabulary=str(vocabulary), miss_labels=4, repeats=1,
                                        threads=1)
    result = bench.run(config)
    json.dumps(result)
    assert result["vocabulary_size"] == 12 and result["miss_labels"] == 4 and result["miss_prompts"] == 8
    assert result["miss_vocabulary_extrapolated"] is True
    assert result["hit_equals_miss"] is True
    assert result["truncated_max_abs_difference"] < 1e-5
    assert _positive(result["ratio_miss_over_hit_same_labels"])
    assert result["counters"]["misses"] == 4
    assert "hit, whole vocabulary" in bench.format_table(result)


def test_text_cache_refuses_a_vocabulary_with_duplicates(tmp_path):
    bench = _load("text_cache")
    vocabulary = tmp_path / "labels.txt"
    vocabulary.write_text("cat\ndog\ncat\n", encoding="utf-8")
    with pytest.raises(ValueError, match="labels.txt.*Duplicate"):
        bench.read_vocabulary(vocabulary)


def test_cache_vs_reencode_reads_the_real_cache(tmp_path):
    bench = _load("cache_vs_reencode")
    config = bench.CacheBenchConfig(model=TINY_MODEL, input_size=32, images=4, image_side=40, labels=6, batch=2,
                                    decoder=SMALL, repeats=1, project=((TINY_MODEL, 64),), threads=1)
    result = bench.run(config, tmp_path)
    json.dumps(result)
    assert result["tokens_per_image"] == 17 and result["token_dim"] == 32
    assert result["cache_bytes_per_image"] == 17 * 32 * 2  # float16 shards
    assert result["cached_vs_fresh_tokens_max_relative_difference"] < 1e-2  # fp16 rounding only
    for key in ("epoch_ratio", "end_to_end_ratio", "flop_end_to_end_ratio"):
        assert _positive(result[key])
    low, high = result["end_to_end_ratio_range"]
    assert low <= high
    cached_losses = result["losses"]["cached_epoch"]
    assert len(cached_losses) == config.repeats and all(map(math.isfinite, cached_losses))
    (projected,) = result["projection"]
    assert projected["tokens"] == 5 * 17  # 64 px on a 32 px tower: 1 + 4 crops
    assert 1 < projected["end_to_end_ratio"] < config.epochs
    assert "end_to_end_ge_20x" in result["goals"]
    assert "re-encoded epoch" in bench.format_table(result)


def test_gpu_check_runs_on_cpu_and_ddp_smoke_steps(tmp_path):
    bench = _load("gpu_check")
    result = bench.run(bench.quick_config("cpu"), tmp_path)
    saved = json.loads((tmp_path / bench.RESULT_NAME).read_text())
    assert saved["environment"]["cuda_available"] in (True, False)
    assert not saved["skipped"]
    rows = saved["throughput"]
    assert {(r["precision"], r["what"], r["k"]) for r in rows} == {
        (p, w, k) for p in ("fp32", "bf16") for w, k in (("bare", None), ("full", 8), ("full", 16))}
    assert all(r["finite"] and r["images_per_second"] > 0 for r in rows)
    (train,) = result["training"]
    assert train["precision"] == "bf16" and train["finite"] and train["decreased"]
    assert saved["pyramid"]["crops"] == 21 and saved["pyramid"]["naive_tokens_per_image"] == 16 * 16 + 1

    smoke = bench.ddp_smoke(TINY_MODEL, init_method=f"file://{tmp_path}/ddp-init", decoder=SMALL)
    assert smoke["ok"] and smoke["world_size"] == 1 and len(smoke["losses"]) == 3


def test_baseline_variants_quick_run_writes_every_cell(tmp_path):
    """benchmarks/baseline_variants.py --quick (issue 9.7): every template x pooling x reference row, percentages
    in [0, 100], tags per image at most the 160 labels, a time per image for every pooling."""
    bench = _load("baseline_variants")
    out = tmp_path / "variants.json"
    assert bench.main(["--quick", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {name: v for name, v in result["rows"].items() if not name.startswith("diagnostics")}
    assert len(rows) == len(bench.TEMPLATES) * len(bench.POOLINGS) * len(bench.REFERENCES) * len(bench.METRICS)
    assert all(len(values) == 1 and 0.0 <= values[0] <= (160 if "tags" in name else 100)
               for name, values in rows.items())
    assert -1.0 <= result["rows"]["diagnostics | corr(reference cosine, mean label cosine)"][0] <= 1.0
    assert set(result["seconds_per_image"]) == set(bench.POOLINGS)


def test_token_norm_quick_run_has_every_row(tmp_path):
    """benchmarks/token_norm.py --quick (issue 10.9): three token treatments x three label sets, mAP in [0, 100]."""
    bench = _load("token_norm")
    out = tmp_path / "token_norm.json"
    assert bench.main(["--quick", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == len(bench.NORMS) * 3 and all(0.0 <= v[0] <= 100.0 for v in rows.values())


def test_baseline_cost_quick_run_times_both_poolings(tmp_path):
    """benchmarks/baseline_cost.py --quick (issue 9.7): both poolings timed, 5 crops against 1."""
    bench = _load("baseline_cost")
    out = tmp_path / "cost.json"
    assert bench.main(["--quick", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["seconds_per_image"]) == {"view", "max"} and result["max_over_view"] > 0
    assert "5 crop(s)" in result["plans"]["max"] and "1 crop(s)" in result["plans"]["view"]
