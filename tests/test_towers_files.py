"""Local weights files: another architecture is refused in one line (issue 11.2), and truncated or garbage
``.safetensors`` / ``.pt`` files are one-line errors naming the file, exit code 2 from ``adds tag``, never torch's
``weights_only=False`` suggestion (issue 11.3)."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from adds.cli import main
from adds.towers import TINY_MODEL, TowerConfig, WeightsFileError, load_towers


def _other_arch(tmp_path, name: str, **vision) -> str:
    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, **vision},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1},
           "quick_gelu": True}
    (tmp_path / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / f"{name}.json")
    return name


def _state(towers) -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in towers.clip.state_dict().items()}


def _torchscript(towers, path) -> str:
    towers.clip.half().float()  # fp16-representable, as OpenAI's releases are
    torch.jit.save(torch.jit.script(towers.clip), str(path))
    return str(path)


def _tag(capsys, tmp_path, pretrained: str) -> tuple[int, str]:
    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(image)
    code = main(["tag", str(image), "--model", TINY_MODEL, "--pretrained", pretrained, "--labels", "a,b"])
    err = capsys.readouterr().err
    assert "Traceback" not in err and "weights_only=False" not in err, err
    return code, err


@pytest.mark.parametrize(("variant", "vision", "seen"), [
    ("patch16", {"patch_size": 16}, "patch 16"),
    ("wider", {"width": 128}, "width 128"),
    ("deeper", {"layers": 3}, "3 layers"),
    ("larger-input", {"image_size": 48}, "48 px"),
])
@pytest.mark.parametrize("kind", ["torchscript", "state-dict"])
def test_weights_of_another_architecture_are_refused_in_one_line(tmp_path, capsys, variant, vision, seen, kind):
    name = _other_arch(tmp_path, f"adds-test-other-{variant}", **vision)
    other = load_towers(TowerConfig(model=name, pretrained=None, seed=1))
    path = tmp_path / f"{variant}.pt"
    if kind == "torchscript":
        _torchscript(other, path)
    else:
        torch.save(_state(other), path)
    with pytest.raises(WeightsFileError) as info:
        load_towers(TowerConfig(model=TINY_MODEL, pretrained=str(path)))
    message = str(info.value)
    assert str(path) in message and f"'{TINY_MODEL}'" in message and seen in message and "\n" not in message
    code, err = _tag(capsys, tmp_path, str(path))
    assert code == 2 and str(path) in err and len(err.strip().splitlines()) == 1, err


def _truncated_safetensors(tmp_path, tiny_towers):
    path = tmp_path / "trunc.safetensors"
    save_file(_state(tiny_towers), str(path))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _truncated_pt(tmp_path, tiny_towers):
    path = tmp_path / "trunc.pt"
    torch.save(_state(tiny_towers), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _truncated_torchscript(tmp_path, tiny_towers):
    source = load_towers(TowerConfig(model=TINY_MODEL + "-quickgelu", pretrained=None))
    path = tmp_path / "trunc-jit.pt"
    _torchscript(source, path)
    with zipfile.ZipFile(path) as archive, zipfile.ZipFile(tmp_path / "cut.pt", "w") as cut:
        for item in archive.infolist():  # a valid zip with the code but without the tensor data
            if "/data/" not in item.filename:
                cut.writestr(item, archive.read(item))
    return tmp_path / "cut.pt"


class Payload:
    """A pickled object: ``torch.load(weights_only=True)`` refuses it, adds must not suggest ``weights_only=False``."""


def _pickled_object(tmp_path, tiny_towers):
    path = tmp_path / "object.pt"
    torch.save({"model": Payload(), "visual.proj": torch.zeros(2, 2)}, path)
    return path


CORRUPT = {
    "truncated safetensors": (_truncated_safetensors, "truncated or corrupt"),
    "truncated pt": (_truncated_pt, "truncated or corrupt"),
    "truncated torchscript": (_truncated_torchscript, "TorchScript"),
    "garbage safetensors": (lambda tmp, _: _write(tmp / "junk.safetensors", b"\x00garbage" * 64), "safetensors"),
    "garbage pt": (lambda tmp, _: _write(tmp / "junk.pt", b"not a checkpoint at all" * 32), "truncated or corrupt"),
    "empty file": (lambda tmp, _: _write(tmp / "empty.bin", b""), "empty"),
    "pickled object": (_pickled_object, "never unpickles"),
    "not tensors": (lambda tmp, _: _save_obj(tmp / "list.pt", [1, 2, 3]), "no state dict of tensors"),
}


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _save_obj(path, value):
    torch.save(value, path)
    return path


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_unreadable_weights_are_one_line_errors_naming_the_file(tmp_path, capsys, tiny_towers, case):
    make, phrase = CORRUPT[case]
    path = make(tmp_path, tiny_towers)
    with pytest.raises(WeightsFileError) as info:
        load_towers(TowerConfig(model=TINY_MODEL, pretrained=str(path)))
    message = str(info.value)
    assert str(path) in message and phrase in message and "\n" not in message, message
    assert "weights_only=False" not in message and "weights_only" not in message.replace("weights_only=True", "")
    code, err = _tag(capsys, tmp_path, str(path))
    assert code == 2 and str(path) in err and len(err.strip().splitlines()) == 1, err


def test_missing_weights_file_and_folder_are_named(tmp_path, capsys):
    with pytest.raises(WeightsFileError, match="not found"):
        load_towers(TowerConfig(model=TINY_MODEL, pretrained=str(tmp_path / "nope.safetensors")))
    with pytest.raises(WeightsFileError, match="is not a file"):
        load_towers(TowerConfig(model=TINY_MODEL, pretrained=str(tmp_path)))
    code, err = _tag(capsys, tmp_path, str(tmp_path / "nope.safetensors"))
    assert code == 2 and "nope.safetensors" in err


def test_no_head_can_be_built_or_saved_on_weights_of_another_architecture(tmp_path):
    """Issue 11.2: the refusal comes before an ADDS model exists, so no checkpoint can record the wrong towers."""
    from adds.model import ADDS, ADDSConfig

    name = _other_arch(tmp_path, "adds-test-other-b16", patch_size=16)
    path = tmp_path / "b16.pt"
    _torchscript(load_towers(TowerConfig(model=name, pretrained=None)), path)
    with pytest.raises(WeightsFileError, match="does not fit"):
        ADDS(ADDSConfig(towers=TowerConfig(model=TINY_MODEL, pretrained=str(path))))
    assert not list(tmp_path.glob("**/config.json"))
