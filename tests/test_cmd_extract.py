"""``adds extract`` end to end on a CSV manifest and tiny random towers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from adds.cli import main
from adds.data.base import SquashResize
from adds.data.images import load_image
from adds.decoder import DecoderConfig
from adds.features import FeatureStore, pending_shards
from adds.model import ADDS, ADDSConfig
from adds.pyramid import PyramidConfig


@pytest.fixture()
def manifest(tmp_path):
    """A CSV manifest of 6 rows: 4 real images, a corrupt file and a missing one."""
    rng = np.random.default_rng(1)
    (tmp_path / "photos").mkdir()
    rows = ["image,labels"]
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 30 + 10 * i, 3), dtype=np.uint8)).save(tmp_path / f"photos/{i}.png")
        rows.append(f"photos/{i}.png,{'cat|dog' if i % 2 else 'sky'}")
    (tmp_path / "photos/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    rows.insert(3, "photos/broken.jpg,sky")
    rows.append("photos/gone.png,cat")
    path = tmp_path / "data.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def extract_args(manifest, out, *extra: str) -> list[str]:
    return ["extract", "--data-kind", "manifest", "--data-root", str(manifest), "--model", "adds-tiny-vit",
            "--pretrained", "none", "--input-size", "64", "--out", str(out), "--batch-size", "2", "--shard-size", "2",
            "--device", "cpu", "--no-progress", *extra]


def test_extract_end_to_end_and_resume(manifest, tmp_path, tiny_towers, capsys):
    out = tmp_path / "cache"
    assert main(extract_args(manifest, out)) == 0
    printed = capsys.readouterr().out
    assert "stored          4 images" in printed and "failed          1 images" in printed
    assert "85 = 5 crops (levels [0, 1]) x 17 tokens, dim 32, float16" in printed
    assert "broken.jpg" in printed
    store = FeatureStore.open(out, verify="full")
    assert store.manifest["vocabulary"] == ["cat", "dog", "sky"]
    assert store.manifest["dataset"]["num_records"] == 5  # the missing file is dropped by the reader
    model = ADDS(ADDSConfig(towers=tiny_towers.config, decoder=DecoderConfig(num_layers=1, num_heads=4, ffn_dim=32)),
                 towers=tiny_towers)
    store.check_compatible(model, input_size=64)  # `--pretrained none` = the same random towers (seed 0)
    images = torch.stack([SquashResize(64)(load_image(tmp_path / f"photos/{i}.png")) for i in range(4)])
    torch.testing.assert_close(store.tokens(range(4)).float(), model.forward_features(images), atol=2e-3, rtol=2e-3)

    before = {path.name: path.stat().st_mtime_ns for path in out.glob("shard-*")}
    assert main(extract_args(manifest, out)) == 0  # resumed: nothing to redo
    assert {path.name: path.stat().st_mtime_ns for path in out.glob("shard-*")} == before

    assert main(extract_args(manifest, out, "--levels", "0")) == 1
    error = capsys.readouterr().err
    assert "pyramid.levels: cache has [0, 1], requested [0]" in error and "--overwrite" in error
    assert main(extract_args(manifest, out, "--levels", "0", "--overwrite")) == 0
    assert FeatureStore.open(out).num_tokens == 17


def test_full_verification_reports_a_corrupted_shard(manifest, tmp_path, capsys):
    out = tmp_path / "cache"
    assert main(extract_args(manifest, out)) == 0
    shard = out / "shard-00001.bin"
    raw = bytearray(shard.read_bytes())
    raw[7] ^= 0x01
    shard.write_bytes(bytes(raw))
    assert main(extract_args(manifest, out)) == 0  # the default size check cannot see a flipped bit
    capsys.readouterr()
    assert main(extract_args(manifest, out, "--verify", "full")) == 1
    assert "shard-00001.bin is corrupt: SHA-256" in capsys.readouterr().err


def test_torchrun_ranks_split_the_shards(manifest, tmp_path, monkeypatch, capsys):
    out = tmp_path / "cache"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert main(extract_args(manifest, out)) == 0
    assert "rank 1/2 finished its shards" in capsys.readouterr().out
    assert pending_shards(out) == ["shard-00000", "shard-00002"]
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert main(extract_args(manifest, out)) == 0
    assert "stored          4 images" in capsys.readouterr().out
    assert len(FeatureStore.open(out, verify="full")) == 4


def test_extract_from_a_checkpoint_uses_its_towers_and_levels(manifest, tmp_path, tiny_towers, capsys):
    config = ADDSConfig(towers=tiny_towers.config, decoder=DecoderConfig(num_layers=1, num_heads=4, ffn_dim=32),
                        pyramid=PyramidConfig(levels=(1,)))
    checkpoint = ADDS(config, towers=tiny_towers).save_pretrained(tmp_path / "ckpt")
    args = ["extract", "--data-kind", "manifest", "--data-root", str(manifest), "--checkpoint", str(checkpoint),
            "--input-size", "64", "--out", str(tmp_path / "cache"), "--device", "cpu", "--no-progress"]
    assert main(args) == 0
    store = FeatureStore.open(tmp_path / "cache")
    assert store.manifest["pyramid"]["levels"] == [1] and store.num_tokens == 4 * 17
    assert store.manifest["towers"]["fingerprint"] == tiny_towers.identity()["fingerprint"]


def test_bad_arguments_are_clear_errors(manifest, tmp_path, capsys):
    assert main(extract_args(manifest, tmp_path / "c", "--levels", "zero")) == 2  # a bad argument: exit 2
    assert "--levels must be 'all' or comma-separated integers" in capsys.readouterr().err
    assert main(extract_args(tmp_path / "nope.csv", tmp_path / "c")) == 1
    assert "nope.csv" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["extract", "--help"])
    assert exit_info.value.code == 0
    assert "torchrun" in capsys.readouterr().out


def test_extract_views_option(manifest, tmp_path, capsys):
    out = tmp_path / "views"
    assert main(extract_args(manifest, out, "--views", "3", "--augment-seed", "7", "--no-cutout")) == 0
    printed = capsys.readouterr().out
    assert "views / image   3 (view 0 plain, the others augmented: flip, randaugment, seed 7)" in printed
    store = FeatureStore.open(out, verify="full")
    assert store.views == 3 and store.manifest["augment"]["cutout"] is False and store.manifest["augment"]["seed"] == 7
    plain = tmp_path / "plain"
    assert main(extract_args(manifest, plain)) == 0
    torch.testing.assert_close(store.tokens(range(4)), FeatureStore.open(plain).tokens(range(4)))  # view 0
    assert not torch.equal(store.tokens(range(4), [1] * 4), store.tokens(range(4)))
    assert main(extract_args(manifest, out, "--views", "3", "--augment-seed", "8", "--no-cutout")) == 1
    assert "augment: cache has" in capsys.readouterr().err
    assert main(extract_args(manifest, tmp_path / "bad", "--views", "0")) == 1
    assert "views must be a positive int" in capsys.readouterr().err
