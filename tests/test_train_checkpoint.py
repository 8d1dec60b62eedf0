"""Step-level checkpoints (adds.train.checkpoint) and clean stops on signals (adds.train.interrupt): a run stopped
mid-epoch -- by a step budget, a crash after a periodic checkpoint, or SIGINT/SIGTERM -- resumes to the weights of an
uninterrupted run, bit for bit."""

from __future__ import annotations

import json
import os
import random
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from adds.decoder import DecoderConfig
from adds.evaluate import TensorFeatureDataset
from adds.model import ADDS, ADDSConfig
from adds.train.config import DataConfig, EMAConfig, OptimConfig, SLSConfig, TrainConfig
from adds.train.interrupt import StopSignals, exit_code
from adds.train.loop import Trainer

LABELS = ["red", "green", "blue", "white", "black", "pink"]


def _task(num: int, seed: int, towers) -> TensorFeatureDataset:
    generator = torch.Generator().manual_seed(seed)
    embeddings = ADDS(ADDSConfig(towers=towers.config), towers=towers).encode_labels(LABELS)  # (C, D)
    targets = (torch.rand(num, len(LABELS), generator=generator) < 0.3).float()  # (N, C)
    tokens = 0.5 * torch.randn(num, 5, embeddings.shape[1], generator=generator)  # (N, 5, D)
    tokens[:, 1:] += (targets @ embeddings).unsqueeze(1)
    return TensorFeatureDataset(tokens, targets)


def _config(run_dir: Path, towers, **changes) -> TrainConfig:
    config = TrainConfig(
        name="test", data=DataConfig(cache=None, num_workers=0),
        model=ADDSConfig(towers=towers.config, decoder=DecoderConfig(num_layers=2, num_heads=4, ffn_dim=32,
                                                                     dropout=0.1)),
        optim=OptimConfig(lr=3e-3), sls=SLSConfig(enabled=True, alpha=1.0), ema=EMAConfig(decay=0.8),
        epochs=2, batch_size=4, run_dir=str(run_dir), progress=False, log_every=1)
    return replace(config, **changes)


def _trainer(config: TrainConfig, towers, data, init_seed: int = 0) -> Trainer:
    torch.manual_seed(init_seed)
    return Trainer(config, ADDS(config.model, towers=towers), data["train"], LABELS, data["val"])


@pytest.fixture(scope="module")
def data(tiny_towers):
    return {"train": _task(28, 1, tiny_towers), "val": _task(8, 2, tiny_towers)}  # 7 batches per epoch


@pytest.fixture(scope="module")
def uninterrupted(tiny_towers, data, tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the per-test one-thread fixture; results depend on threads
    try:
        trainer = _trainer(_config(tmp_path_factory.mktemp("full"), tiny_towers), tiny_towers, data)
        result = trainer.fit()
    finally:
        torch.set_num_threads(threads)
    return trainer, result


def _scramble_process_state() -> None:
    """What a new process has: other global RNG states (the checkpoint must restore them all)."""
    torch.manual_seed(999)
    random.seed(999)
    np.random.seed(999)


def _assert_same_run(full: tuple[Trainer, object], trainer: Trainer, result) -> None:
    reference, reference_result = full
    assert result.finished and result.interrupted is None
    for name, value in reference.model.trainable_state_dict().items():
        assert torch.equal(value, trainer.model.trainable_state_dict()[name]), name
    for name, value in reference.ema.shadow.items():
        assert torch.equal(value, trainer.ema.shadow[name]), name
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in reference_result.history]
    assert strip == [{k: v for k, v in row.items() if k != "seconds"} for row in result.history]
    assert (reference.run_dir / "last" / "model.safetensors").read_bytes() == \
        (trainer.run_dir / "last" / "model.safetensors").read_bytes()


def test_stopped_mid_epoch_resumes_bit_identical(tmp_path, tiny_towers, data, uninterrupted):
    config = _config(tmp_path / "run", tiny_towers)
    first = _trainer(config, tiny_towers, data)
    partial = first.fit(stop_after_steps=10)  # epoch 1 (7 batches) + 3 batches of epoch 2
    assert not partial.finished and partial.epochs_done == 1 and partial.batch_in_epoch == 3
    meta = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert meta["epoch"] == 1 and meta["batch_in_epoch"] == 3 and meta["partial"]["steps"] + \
        meta["partial"]["skipped"] == 3
    assert not (tmp_path / "run" / "last").exists()
    _scramble_process_state()
    second = _trainer(config, tiny_towers, data, init_seed=7)
    _assert_same_run(uninterrupted, second, second.fit(resume=True))


def test_periodic_checkpoint_survives_a_crash(tmp_path, tiny_towers, data, uninterrupted, monkeypatch):
    config = _config(tmp_path / "run", tiny_towers, checkpoint_every=4)
    first = _trainer(config, tiny_towers, data)
    calls = {"n": 0}
    original = first.loss_fn.forward

    def crash_on_call_12(*args):
        calls["n"] += 1
        if calls["n"] == 12:
            raise RuntimeError("simulated crash (node lost)")
        return original(*args)

    monkeypatch.setattr(first.loss_fn, "forward", crash_on_call_12)
    with pytest.raises(RuntimeError, match="simulated crash"):
        first.fit()
    meta = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert meta["batch_in_epoch"] > 0 and meta["global_step"] % 4 == 0  # the last periodic, mid-epoch checkpoint
    assert len(list((tmp_path / "run" / "checkpoint").glob("*.safetensors"))) == 1
    _scramble_process_state()
    second = _trainer(config, tiny_towers, data, init_seed=3)
    _assert_same_run(uninterrupted, second, second.fit(resume=True))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_after_the_step_and_resumes_bit_identical(tmp_path, tiny_towers, data, uninterrupted,
                                                               monkeypatch, signum):
    config = _config(tmp_path / "run", tiny_towers)
    first = _trainer(config, tiny_towers, data)
    calls = {"n": 0}
    original = first.loss_fn.forward

    def signal_on_call_4(*args):
        calls["n"] += 1
        if calls["n"] == 4:
            os.kill(os.getpid(), signum)  # delivered now, handled between bytecodes: mid-step
        return original(*args)

    monkeypatch.setattr(first.loss_fn, "forward", signal_on_call_4)
    result = first.fit()
    assert result.interrupted == signum and not result.finished and result.epochs_done == 0
    assert result.batch_in_epoch >= 4  # the step in progress was finished (plus SLS-skipped batches before it)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    _scramble_process_state()
    second = _trainer(config, tiny_towers, data, init_seed=5)
    _assert_same_run(uninterrupted, second, second.fit(resume=True))


def test_second_sigint_stops_at_once_and_exit_codes():
    with StopSignals() as signals, pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        assert signals.requested == signal.SIGINT
        os.kill(os.getpid(), signal.SIGINT)
    assert exit_code(signal.SIGINT) == 130 and exit_code(signal.SIGTERM) == 143


def test_checkpoint_every_must_be_positive(tmp_path, tiny_towers):
    from adds.train.config import ConfigError

    with pytest.raises(ConfigError, match="checkpoint_every"):
        _config(tmp_path, tiny_towers, checkpoint_every=0)
