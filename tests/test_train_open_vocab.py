"""``adds train`` with ``open_vocab.holdout``: a fold head trained without some labels fits best/open_vocab.json,
which ``adds tag`` then uses for words outside the training labels."""

from __future__ import annotations

import json

import pytest
import torch
from test_cmd_train_eval import COLOURS, _config, data  # noqa: F401  (the shared tiny manifest fixture)

from adds.cli import main
from adds.openvocab import OPEN_VOCAB_NAME, OpenVocabulary
from adds.tagger import Tagger
from adds.train.open_vocab import FOLD_DIR, HiddenLabels, hidden_labels


def test_hidden_labels_are_seeded_and_never_all():
    assert hidden_labels(10, 0.3, 0) == hidden_labels(10, 0.3, 0) and len(hidden_labels(10, 0.3, 0)) == 3
    assert hidden_labels(10, 0.3, 0) != hidden_labels(10, 0.3, 1)
    assert len(hidden_labels(2, 0.9, 0)) == 1 and len(hidden_labels(40, 0.01, 0)) == 1
    with pytest.raises(ValueError, match="at least 2"):
        hidden_labels(1, 0.5, 0)


def test_hidden_labels_dataset_masks_the_columns_without_touching_the_source():
    item = {"target": torch.tensor([1.0, 1.0, 0.0]), "mask": torch.ones(3, dtype=torch.bool), "index": 0}
    masked = HiddenLabels([item], [1])[0]
    assert masked["target"].tolist() == [1.0, 0.0, 0.0] and masked["mask"].tolist() == [True, False, True]
    assert item["target"].tolist() == [1.0, 1.0, 0.0] and bool(item["mask"].all())


def test_train_fits_open_vocab_json_from_a_fold_head(data, tmp_path):  # noqa: F811
    config = _config(data, tmp_path, epochs=1)
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--run-dir", str(run), "--set", "data.test=null",
                 "--set", "open_vocab.holdout=0.5"]) == 0
    assert (run / FOLD_DIR / "last" / "model.safetensors").is_file()
    record = OpenVocabulary.load(run / "best")
    assert list(record.vocabulary) == list(COLOURS)  # the main head's labels keep their scores
    assert record.info["held_out_labels"] == 2 and len(record.info["hidden_labels"]) == 2
    assert set(record.info["hidden_labels"]) <= set(COLOURS)
    assert 0.0 <= record.combiner.prior_weight <= 1.0
    assert json.loads((run / "config.json").read_text())["open_vocab"] == {"holdout": 0.5, "seed": 0}
    tagger = Tagger.from_checkpoint(run / "best", device="cpu")
    assert tagger.open_vocabulary is not None  # auto: used because best/open_vocab.json exists
    assert (run / "best" / OPEN_VOCAB_NAME).is_file()
