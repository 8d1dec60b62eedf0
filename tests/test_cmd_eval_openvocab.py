"""``adds eval --open-vocabulary {auto,on,off}``: a checkpoint's open-vocabulary mode in the evaluation."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from adds.cli import main
from adds.decoder import DecoderConfig
from adds.model import ADDS, ADDSConfig
from adds.openvocab import Combiner, OpenVocabulary

VOCABULARY = ["red", "green", "blue", "white"]


def _setup(tmp_path, towers):
    head = tmp_path / "head"
    ADDS(ADDSConfig(towers=towers.config, decoder=DecoderConfig(num_layers=2, num_heads=4, ffn_dim=32)),
         towers=towers).save_pretrained(head)
    OpenVocabulary(("red", "green"), Combiner(prior_weight=0.8, scale=3.0, standardise="global")).save(head)
    rng = np.random.default_rng(0)
    rows = []
    for number in range(8):
        Image.fromarray((255 * rng.random((40, 40, 3))).astype(np.uint8)).save(tmp_path / f"{number}.png")
        rows.append(f"{number}.png,{VOCABULARY[number % 4]}\n")
    (tmp_path / "test.csv").write_text("image,labels\n" + "".join(rows))
    (tmp_path / "vocab.txt").write_text("\n".join(VOCABULARY) + "\n")
    return head


def _eval(tmp_path, head, mode: str) -> dict:
    out = tmp_path / f"eval-{mode}.json"
    assert main(["eval", "--checkpoint", str(head), "--data-kind", "manifest", "--data-root",
                 str(tmp_path / "test.csv"), "--labels", str(tmp_path / "vocab.txt"), "--open-vocabulary", mode,
                 "--json", str(out), "--workers", "0", "--no-progress", "--device", "cpu"]) == 0
    return json.loads(out.read_text())


def test_eval_open_vocabulary_changes_only_the_new_labels(tmp_path, tiny_towers):
    head = _setup(tmp_path, tiny_towers)
    auto, off = _eval(tmp_path, head, "auto"), _eval(tmp_path, head, "off")
    assert "open vocabulary (2 of 4 labels" in auto["model"] and "open vocabulary" not in off["model"]
    for label in ("red", "green"):  # training labels keep the head's scores, so their AP
        assert auto["per_label_ap"][label] == off["per_label_ap"][label]
    assert any(auto["per_label_ap"][label] != off["per_label_ap"][label] for label in ("blue", "white"))


def test_eval_open_vocabulary_on_without_the_record_fails_naming_the_file(tmp_path, tiny_towers, capsys):
    head = _setup(tmp_path, tiny_towers)
    (head / "open_vocab.json").unlink()
    code = main(["eval", "--checkpoint", str(head), "--data-kind", "manifest", "--data-root",
                 str(tmp_path / "test.csv"), "--labels", str(tmp_path / "vocab.txt"), "--open-vocabulary", "on",
                 "--workers", "0", "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code != 0 and "open_vocab.json" in err and "Traceback" not in err
