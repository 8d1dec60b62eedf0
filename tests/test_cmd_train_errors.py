"""``adds train`` on the user's bad weights files: one line naming the file, exit 2 (nothing could run)."""

from __future__ import annotations

from test_cmd_train_eval import _config, data  # noqa: F401  (the shared tiny manifest fixture)

from adds.cli import main


def test_unreadable_tower_weights_are_exit_2_in_one_line(data, tmp_path, capsys):  # noqa: F811
    garbage = tmp_path / "weights.safetensors"
    garbage.write_bytes(b"\x00not a safetensors file" * 10)
    code = main(["train", "--config", str(_config(data, tmp_path, epochs=1)), "--run-dir", str(tmp_path / "run"),
                 "--set", "data.test=null", "--set", f"model.towers.pretrained={garbage}"])
    err = capsys.readouterr().err
    assert code == 2 and str(garbage) in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("adds train:")]) == 1
