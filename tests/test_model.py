from __future__ import annotations

import json

import pytest
import torch

from adds.decoder import DecoderConfig
from adds.losses import AsymmetricLoss
from adds.model import ADDS, ADDSConfig, CheckpointError
from adds.pyramid import PyramidConfig
from adds.towers import TINY_MODEL, TowerConfig, load_towers

SMALL = DecoderConfig(num_layers=2, num_heads=4, ffn_dim=64)
LABELS = ["red circle", "blue square", "green triangle"]


@pytest.fixture()
def model(tiny_towers):
    return ADDS(ADDSConfig(decoder=SMALL), towers=tiny_towers).eval()


def test_forward_gives_one_logit_per_label_for_any_label_list(model):
    images = torch.rand(2, 3, 32, 32)
    assert model(images, LABELS).shape == (2, 3)
    assert model(images, LABELS[:1] + ["a word never seen", "x"] * 1 + ["y"]).shape == (2, 4)


def test_features_use_pyramid_forwarding_with_batch_kept(model):
    images = torch.rand(2, 3, 64, 64)  # 2x the 32 px tower: levels [0, 1] = 1 + 4 crops
    tokens = model.forward_features(images)
    assert tokens.shape == (2, 5 * 17, 32)
    alone = model.forward_features(images[1:])
    torch.testing.assert_close(tokens[1:], alone, rtol=1e-5, atol=1e-5)
    # The first crop is the whole image downsampled to the tower size: its class token is CLIP's image embedding.
    small = torch.nn.functional.interpolate(images, size=32, mode="bicubic", antialias=True).clamp(0, 1)
    mean = torch.tensor(model.towers.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.towers.std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model.towers.clip.encode_image((small - mean) / std)
    torch.testing.assert_close(tokens[:, 0], expected, rtol=1e-4, atol=1e-4)


def test_forward_accepts_a_single_image_uint8_and_grayscale(model):
    rgb = torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8)
    assert model(rgb, LABELS).shape == (1, 3)
    gray = torch.rand(1, 1, 32, 32)
    torch.testing.assert_close(model(gray, LABELS), model(gray.expand(1, 3, 32, 32), LABELS))
    with pytest.raises(ValueError, match="4"):
        model(torch.rand(1, 4, 32, 32), LABELS)


def test_small_images_are_upsampled_to_the_tower_size(model):
    assert model.forward_features(torch.rand(1, 3, 10, 20)).shape == (1, 17, 32)


def test_towers_get_no_gradient_and_stay_bit_identical_after_an_optimizer_step(model):
    before = {k: v.clone() for k, v in model.towers.state_dict().items()}
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=1e-2)
    tower_params = {id(p) for p in model.towers.parameters()}
    assert not any(id(p) in tower_params for group in optimizer.param_groups for p in group["params"])
    model.train()
    assert not model.towers.training
    loss = AsymmetricLoss()(model(torch.rand(4, 3, 32, 32), LABELS), torch.randint(0, 2, (4, 3)))
    loss.backward()
    assert all(p.grad is None for p in model.towers.parameters())
    assert all(p.grad is not None for p in model.trainable_parameters())
    optimizer.step()
    after = model.towers.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_few_steps_on_a_fixed_batch_drive_the_loss_down(tiny_towers):
    no_dropout = DecoderConfig(num_layers=2, num_heads=4, ffn_dim=64, dropout=0.0)
    model = ADDS(ADDSConfig(decoder=no_dropout), towers=tiny_towers)
    tokens = model.forward_features(torch.rand(8, 3, 32, 32))
    targets = torch.randint(0, 2, (8, 3)).float()
    labels = model.encode_labels(LABELS)
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=3e-3)
    loss_fn = AsymmetricLoss()
    losses = []
    for _ in range(60):
        loss = loss_fn(model.forward_head(tokens, labels), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_unaligned_towers_get_a_trainable_projection(tiny_towers_unaligned):
    model = ADDS(ADDSConfig(decoder=SMALL), towers=tiny_towers_unaligned).eval()
    assert isinstance(model.token_proj, torch.nn.Linear) and model.token_proj.in_features == 64
    assert model(torch.rand(1, 3, 32, 32), LABELS).shape == (1, 3)
    assert "token_proj.weight" in model.trainable_state_dict()


def test_checkpoint_round_trip_holds_only_trainable_weights(model, tmp_path):
    model.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["towers"]["model"] == TINY_MODEL and meta["config"]["decoder"]["num_layers"] == 2
    from safetensors.torch import load_file

    assert not any(key.startswith("towers.") for key in load_file(str(tmp_path / "model.safetensors")))
    images = torch.rand(2, 3, 48, 48)
    # Reloading without towers rebuilds the recorded (seeded random) towers from the config.
    reloaded = ADDS.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(reloaded(images, LABELS), model(images, LABELS))
    assert reloaded.config == model.config


def test_checkpoint_refuses_other_towers(model, tmp_path):
    model.save_pretrained(tmp_path)
    other = load_towers(TowerConfig(model=TINY_MODEL, pretrained=None, seed=7))
    with pytest.raises(CheckpointError, match="fingerprint"):
        ADDS.from_pretrained(tmp_path, towers=other)
    unaligned = load_towers(TowerConfig(model=TINY_MODEL, pretrained=None, aligned=False))
    with pytest.raises(CheckpointError, match="aligned"):
        ADDS.from_pretrained(tmp_path, towers=unaligned)


def test_corrupt_or_foreign_checkpoints_are_named(model, tmp_path):
    model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        ADDS.from_pretrained(tmp_path, towers=model.towers)
    (tmp_path / "config.json").write_text('{"format": "something-else"}')
    with pytest.raises(CheckpointError, match="not an ADDS checkpoint"):
        ADDS.from_pretrained(tmp_path, towers=model.towers)
    with pytest.raises(CheckpointError, match="not found"):
        ADDS.from_pretrained(tmp_path / "nowhere")


def test_checkpoint_with_other_decoder_shape_is_refused(model, tmp_path):
    model.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["config"]["decoder"]["num_layers"] = 3
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="missing"):
        ADDS.from_pretrained(tmp_path, towers=model.towers)


def test_config_typos_are_refused(model, tmp_path):
    model.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["config"]["decoder"]["num_layer"] = 3
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="num_layer"):
        ADDS.from_pretrained(tmp_path, towers=model.towers)


def test_pyramid_levels_come_from_the_config(tiny_towers):
    model = ADDS(ADDSConfig(decoder=SMALL, pyramid=PyramidConfig(levels=(0,))), towers=tiny_towers)
    assert model.forward_features(torch.rand(1, 3, 128, 128)).shape == (1, 17, 32)


def test_bad_labels_are_named(model):
    with pytest.raises(ValueError, match="empty"):
        model(torch.rand(1, 3, 32, 32), [])
    with pytest.raises(ValueError, match="Duplicate label 'cat'"):
        model(torch.rand(1, 3, 32, 32), ["cat", "cat"])


def test_token_norm_makes_the_head_blind_to_token_scale_and_round_trips(tiny_towers, tmp_path):
    """Issue 10.9: ``token_norm=s`` feeds ``s * a / |a|`` to the decoder; the default keeps raw tokens (Eq. 4)."""
    torch.manual_seed(0)
    normed = ADDS(ADDSConfig(decoder=SMALL, token_norm=2.0), towers=tiny_towers).eval()
    raw = ADDS(ADDSConfig(decoder=SMALL), towers=tiny_towers).eval()
    raw.load_state_dict(normed.state_dict())
    tokens = torch.randn(2, 17, tiny_towers.token_dim)
    scale = torch.rand(2, 17, 1) * 10 + 0.1  # a different norm for every token
    labels = normed.encode_labels(LABELS)
    with torch.no_grad():
        torch.testing.assert_close(normed.forward_head(tokens * scale, labels), normed.forward_head(tokens, labels))
        assert not torch.allclose(raw.forward_head(tokens * scale, labels), raw.forward_head(tokens, labels))
        unit = 2.0 * torch.nn.functional.normalize(tokens, dim=-1)
        torch.testing.assert_close(normed.forward_head(tokens, labels), raw.forward_head(unit, labels))
    normed.save_pretrained(tmp_path / "head")
    loaded = ADDS.from_pretrained(tmp_path / "head", towers=tiny_towers).eval()
    assert loaded.config.token_norm == 2.0
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_head(tokens, labels), normed.forward_head(tokens, labels))
    with pytest.raises(ValueError, match="token_norm"):
        ADDSConfig(token_norm=-1.0)
