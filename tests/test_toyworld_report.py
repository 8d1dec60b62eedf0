"""The toy world's verdict rule, gates and the ``--json`` contract (issue 9.5 / 9.8), on given numbers."""

from __future__ import annotations

import json

import pytest

from adds.toyworld.report import format_report, gates, verdict, verdicts, write_json


def test_verdict_needs_the_sign_in_every_seed_and_two_pooled_std():
    assert verdict([10.0, 11.0, 12.0], [5.0, 6.0, 7.0]) == "agrees"
    assert verdict([5.0, 6.0, 7.0], [10.0, 11.0, 12.0]) == "disagrees"
    assert verdict([10.0, 5.0, 12.0], [9.0, 6.0, 11.0]) == "undecided"  # one seed has the other sign
    # same sign everywhere but small against the spread: pooled std = 5, mean difference 1 < 10
    assert verdict([10.0, 20.0, 0.0], [9.0, 19.0, -1.0]) == "undecided"
    assert verdict([10.0], [5.0]) == "undecided"  # one seed: no standard deviation
    with pytest.raises(ValueError, match="same seeds"):
        verdict([1.0, 2.0], [1.0])


def _rows():
    three = {"seen mAP": [50.0, 51.0, 52.0], "U_comb mAP": [30.0, 31.0, 29.0], "U_word mAP": [20.0, 22.0, 21.0]}
    cosine = {"seen mAP": [40.0, 41.0, 40.5], "U_comb mAP": [35.0, 36.0, 35.5], "U_word mAP": [21.0, 20.0, 22.0]}
    return {
        "T2 ADDS": three,
        "T2 cosine": cosine,
        "T2 open-vocab": {"seen mAP": three["seen mAP"], "U_comb mAP": [36.0, 36.5, 36.0],
                          "U_word mAP": [22.0, 22.0, 22.5]},
        "T6 random": {"seen mAP": [45.0, 46.0, 44.0], "U_comb mAP": [3.0, 3.5, 3.2], "U_word mAP": [4.0, 4.1, 3.9]},
        "chance": {"seen mAP": [2.0] * 3, "U_comb mAP": [2.5] * 3, "U_word mAP": [3.0] * 3},
        "G3": {"recall": [30.0, 32.0, 31.0]},
    }


def test_gates_and_verdicts_are_computed_from_the_rows():
    rows = _rows()
    assert all(gates(rows).values()) and len(gates(rows)) == 3
    rows["T6 random"]["U_word mAP"][1] = 9.0  # 6 points above chance in one seed: no collapse
    assert not gates(rows)["G2 random matrix collapses on unseen sets"]
    found = verdicts(rows)
    assert found["T2 ADDS beats training-free CLIP on U_comb"] == "disagrees"
    assert found["T2 ADDS beats training-free CLIP on U_word"] == "undecided"
    assert found["T6/9 aligned CLIP beats random on U_comb"] == "agrees"
    assert "T5 DM beats ML-Decoder x1 on U_comb" not in found  # rows not computed: no verdict


def test_json_contract(tmp_path):
    path = tmp_path / "run.json"
    write_json({"config": {"seeds": [3, 5, 8]}, "rows": _rows(), "seconds": 1.0}, str(path))
    record = json.loads(path.read_text())
    assert all(isinstance(v, bool) for v in record["gates"].values())
    assert set(record["verdicts"].values()) <= {"agrees", "disagrees", "undecided"}
    assert set(record["open_vocabulary"]) == {"seen", "U_comb", "U_word"}
    for entry in record["open_vocabulary"].values():
        assert set(entry) == {"head", "clip", "open_vocab"} and all(len(v) == 3 for v in entry.values())
    assert "Gates" in format_report({"rows": _rows()}) and "Verdicts" in format_report({"rows": _rows()})


@pytest.mark.parametrize("argv", [["--seeds", "a,b"], ["--seeds", "3,3"], ["--seeds", "-1"], ["--workers", "0"],
                                  ["--train-scenes", "0"], ["--epochs", "-2"]])
def test_command_refuses_bad_arguments_with_exit_code_2(argv, capsys):
    from adds.cli import main

    assert main(["toyworld", *argv]) == 2
    error = capsys.readouterr().err
    assert error.startswith("adds toyworld: ") and error.count("\n") == 1


def test_command_refuses_a_json_path_in_a_missing_folder(tmp_path, capsys):
    from adds.cli import main

    assert main(["toyworld", "--quick", "--json", str(tmp_path / "missing" / "run.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_command_passes_sizes_to_the_lab_and_names_them_in_the_command_line(monkeypatch, capsys):
    from adds.cli import main
    from adds.toyworld import lab

    seen = {}

    def fake_run_lab(config, echo, workers):
        seen["config"] = config
        return {"rows": _rows(), "seconds": 0.0}

    monkeypatch.setattr(lab, "run_lab", fake_run_lab)
    assert main(["toyworld", "--only", "core", "--train-scenes", "4800", "--epochs", "3", "--seeds", "0,1,2"]) == 0
    config = seen["config"]
    assert (config.train_scenes, config.epochs, config.groups) == (4800, 3, ("core",))
    out = capsys.readouterr().out
    assert "command: adds toyworld --seeds 0,1,2 --only core --train-scenes 4800 --epochs 3" in out


@pytest.mark.parametrize("flags, scenes", [([], 4800), (["--quick"], 800)])
def test_full_run_trains_on_4800_scenes_and_quick_on_800(monkeypatch, capsys, flags, scenes):
    """The full run's default size is where G1 and the open-vocabulary goals hold (docs/toyworld.md)."""
    from adds.cli import main
    from adds.toyworld import lab

    seen = {}

    def fake_run_lab(config, echo, workers):
        seen["config"] = config
        return {"rows": _rows(), "seconds": 0.0}

    monkeypatch.setattr(lab, "run_lab", fake_run_lab)
    assert main(["toyworld", *flags]) == 0
    assert seen["config"].train_scenes == scenes
    assert f"{scenes} training" in capsys.readouterr().out
