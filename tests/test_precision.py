"""``--precision`` / ``TaggerConfig.precision`` / ``EvalConfig.precision`` (adds.tagger.precision): resolution
per device, the dtype that reaches the model, float32 scores close to fp32, one-line errors with exit code 2."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

import adds.tagger.precision as precision_module
from adds.cli import main
from adds.commands import tag as tag_command
from adds.decoder import DecoderConfig
from adds.evaluate import EvalConfig, evaluate_model
from adds.model import ADDS, ADDSConfig
from adds.tagger import Tagger, TaggerConfig
from adds.tagger.precision import PRECISIONS, PrecisionError, cpu_supports_bf16, resolve_precision
from adds.towers import TINY_MODEL, TowerConfig, Towers, load_towers

LABELS = ["red", "blue", "green", "white", "sky"]
TINY = ["--model", TINY_MODEL, "--pretrained", "none", "--no-label-cache"]
needs_bf16 = pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no native bfloat16 (AVX512-BF16/AMX)")


def _model(seed: int = 0) -> ADDS:
    """A tiny ADDS model with its own towers (the session's shared towers must not be cast in place)."""
    towers = load_towers(TowerConfig(model=TINY_MODEL, pretrained=None, seed=0))
    torch.manual_seed(seed)
    return ADDS(ADDSConfig(decoder=DecoderConfig(num_layers=2, num_heads=2, ffn_dim=64)), towers=towers)


def _images(count: int = 6) -> torch.Tensor:
    return torch.rand(count, 3, 48, 40, generator=torch.Generator().manual_seed(3))  # (n, 3, H, W) in [0, 1]


def test_command_names_match_the_library():
    assert tag_command.PRECISIONS == PRECISIONS


def test_resolve_precision_per_device(monkeypatch):
    assert resolve_precision("fp32", "cpu").autocast_dtype is None
    assert not resolve_precision("fp32", "cpu").casts_weights
    with pytest.raises(PrecisionError, match="needs a CUDA GPU"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(PrecisionError, match="must be one of fp32, bf16, fp16, got 'fp64'"):
        resolve_precision("fp64", "cpu")
    monkeypatch.setattr(precision_module, "cpu_supports_bf16", lambda: False)
    with pytest.raises(PrecisionError, match="no native bfloat16"):
        resolve_precision("bf16", "cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        TaggerConfig(precision="half")


def test_cuda_precisions_use_autocast_without_casting():
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        chosen = precision_module.InferencePrecision(name, "cuda")
        assert chosen.autocast_dtype is dtype and not chosen.casts_weights
    model = _model()
    precision_module.InferencePrecision("fp16", "cuda").prepare(model)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def _spy_tokens(monkeypatch) -> list[tuple[torch.dtype, torch.dtype]]:
    """Records (vision-tower weight dtype, token dtype) of every ``Towers.encode_image_tokens`` call."""
    seen: list[tuple[torch.dtype, torch.dtype]] = []
    original = Towers.encode_image_tokens

    def spy(self, pixels):
        tokens = original(self, pixels)
        seen.append((next(self.clip.visual.parameters()).dtype, tokens.dtype))
        return tokens

    monkeypatch.setattr(Towers, "encode_image_tokens", spy)
    return seen


@needs_bf16
def test_bf16_tagger_runs_the_vision_tower_in_bf16_and_scores_close_to_fp32(monkeypatch):
    reference_model = _model()
    model = copy.deepcopy(reference_model)
    fp32 = Tagger(reference_model, TaggerConfig(threshold=None, label_cache=False), labels=LABELS)
    head_inputs: list[torch.dtype] = []
    model.token_proj.register_forward_hook(lambda module, inputs, output: head_inputs.append(inputs[0].dtype))
    bf16 = Tagger(model, TaggerConfig(threshold=None, label_cache=False, precision="bf16"), labels=LABELS)
    assert bf16.describe()["precision"] == "bf16"
    assert next(model.towers.clip.visual.parameters()).dtype == torch.bfloat16
    assert next(model.towers.clip.transformer.parameters()).dtype == torch.float32  # the text tower is kept
    assert all(p.dtype == torch.float32 for p in model.trainable_parameters())  # and the head
    assert model.towers.identity() == reference_model.towers.identity()  # label-cache key of the fp32 weights
    images = _images()
    seen = _spy_tokens(monkeypatch)
    expected = fp32.scores(images)
    assert seen and set(seen) == {(torch.float32, torch.float32)}
    seen.clear()
    scores = bf16.scores(images)
    assert seen and set(seen) == {(torch.bfloat16, torch.bfloat16)}
    assert set(head_inputs) == {torch.float32}  # tokens back in float32 for the head
    assert scores.dtype == torch.float32 and scores.shape == (6, len(LABELS))
    assert torch.allclose(scores, expected, atol=0.03), (scores - expected).abs().max()
    assert not torch.equal(scores, expected)  # it really ran in another precision


@needs_bf16
def test_bf16_clip_baseline_scores_close_to_fp32():
    fp32 = Tagger.clip_baseline(TINY_MODEL, None, device="cpu", labels=LABELS,
                                config=TaggerConfig(threshold=None, label_cache=False))
    bf16 = Tagger.clip_baseline(TINY_MODEL, None, device="cpu", labels=LABELS,
                                config=TaggerConfig(threshold=None, label_cache=False, precision="bf16"))
    assert next(bf16.towers.clip.visual.parameters()).dtype == torch.bfloat16
    images = _images()
    expected, scores = fp32.scores(images), bf16.scores(images)
    assert scores.dtype == torch.float32
    assert torch.allclose(scores, expected, atol=0.05), (scores - expected).abs().max()


class _Images(Dataset):
    """Image items in the layout of ``MultiLabelDataset`` (``adds.data.base``)."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        self.images, self.targets = images, targets

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"index": index, "path": f"{index}.png", "image": self.images[index], "error": None,
                "target": self.targets[index], "mask": torch.ones_like(self.targets[index], dtype=torch.bool)}


@needs_bf16
def test_eval_config_precision_runs_the_vision_tower_in_bf16(monkeypatch):
    reference_model = _model().eval()
    model = copy.deepcopy(reference_model)
    targets = (torch.rand(8, len(LABELS), generator=torch.Generator().manual_seed(1)) > 0.5).float()
    data = _Images(torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(2)), targets)
    embeddings = reference_model.encode_labels(LABELS)
    seen = _spy_tokens(monkeypatch)
    runs = {}
    for name, which in (("fp32", reference_model), ("bf16", model)):
        runs[name] = evaluate_model(which, data, LABELS, EvalConfig(precision=name), label_embeddings=embeddings,
                                    progress=False)
    assert set(seen) == {(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16)}
    assert runs["bf16"].settings["precision"] == "bf16"
    assert abs(runs["bf16"].headline["mAP"] - runs["fp32"].headline["mAP"]) < 0.05


def _photo(tmp_path):
    path = tmp_path / "a.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(path)
    return path


@needs_bf16
def test_tag_flag_reaches_the_model(tmp_path, capsys, monkeypatch):
    seen = _spy_tokens(monkeypatch)
    photo = _photo(tmp_path)
    assert main(["tag", *TINY, "--labels", "red,blue", "--precision", "bf16", "--format", "jsonl", str(photo)]) == 0
    # the baseline's blank reference is computed once in float32, before the cast; the photo runs in bf16
    assert seen == [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16)]
    assert main(["tag", *TINY, "--labels", "red,blue", "--format", "jsonl", str(photo)]) == 0
    assert seen[-1] == (torch.float32, torch.float32)
    capsys.readouterr()


@pytest.mark.parametrize("command", ["tag", "serve", "eval"])
@pytest.mark.parametrize("value", ["fp64", "fp16"])
def test_bad_precision_is_exit_2_with_one_line(tmp_path, capsys, command, value):
    if command == "eval":
        args = ["eval", "--zero-shot-baseline", "--model", TINY_MODEL, "--pretrained", "none", "--device", "cpu",
                "--data-kind", "coco", "--data-root", str(tmp_path), "--precision", value]
    elif command == "serve":
        args = ["serve", *TINY, "--device", "cpu", "--port", "1", "--precision", value]
    else:
        args = ["tag", *TINY, "--device", "cpu", "--labels", "a,b", "--precision", value, str(_photo(tmp_path))]
    if command == "serve" and value == "fp16":
        pytest.importorskip("uvicorn")
        args[args.index("--port") + 1] = "8765"
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if "--precision" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert ("must be one of" in lines[0]) if value == "fp64" else ("needs a CUDA GPU" in lines[0])
