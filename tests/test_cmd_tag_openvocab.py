"""``adds tag --open-vocabulary {auto,on,off}``: the checkpoint's open-vocabulary mode from the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from adds.cli import main
from adds.decoder import DecoderConfig
from adds.model import ADDS, ADDSConfig
from adds.openvocab import OPEN_VOCAB_NAME, Combiner, OpenVocabulary

SEEN = ["red square", "blue circle"]
LABELS = "red square,a dog,blue circle,green triangle"


@pytest.fixture()
def photo(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
    return path


def _checkpoint(directory, towers, open_vocab: bool):
    ADDS(ADDSConfig(decoder=DecoderConfig(num_layers=2, num_heads=4, ffn_dim=64)), towers=towers).save_pretrained(
        directory)
    if open_vocab:
        OpenVocabulary(tuple(SEEN), Combiner(prior_weight=0.7, scale=2.0, bias=-1.0, standardise="global")).save(
            directory)
    return directory


def _scores(capsys, *args) -> dict[str, float]:
    assert main(["tag", *args, "--format", "json", "--threshold", "0", "--progress", "off"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    return {tag["label"]: tag["score"] for tag in row["tags"]}


def test_open_vocabulary_auto_on_off(tmp_path, tiny_towers, photo, capsys):
    checkpoint = _checkpoint(tmp_path / "ckpt", tiny_towers, open_vocab=True)
    common = [str(photo), "--checkpoint", str(checkpoint), "--labels", LABELS]
    auto = _scores(capsys, *common)
    on = _scores(capsys, *common, "--open-vocabulary", "on")
    off = _scores(capsys, *common, "--open-vocabulary", "off")
    assert auto == on
    for label in SEEN:  # the training labels keep the head's score
        assert on[label] == pytest.approx(off[label], abs=1e-6)
    assert any(abs(on[label] - off[label]) > 1e-4 for label in ("a dog", "green triangle"))


def test_open_vocabulary_on_without_the_record_is_exit_2_naming_the_file(tmp_path, tiny_towers, photo, capsys):
    checkpoint = _checkpoint(tmp_path / "plain", tiny_towers, open_vocab=False)
    code = main(["tag", str(photo), "--checkpoint", str(checkpoint), "--labels", LABELS, "--open-vocabulary", "on"])
    err = capsys.readouterr().err
    assert code == 2 and OPEN_VOCAB_NAME in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_shortlist_and_open_vocabulary_together_are_refused_in_one_line(tmp_path, tiny_towers, photo, capsys):
    checkpoint = _checkpoint(tmp_path / "ckpt", tiny_towers, open_vocab=True)
    code = main(["tag", str(photo), "--checkpoint", str(checkpoint), "--labels", LABELS, "--shortlist", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "--open-vocabulary off" in err and "Traceback" not in err
