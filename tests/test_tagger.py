"""The tagging API: output shape and order, thresholds, top-k, vocabularies, pyramid levels, the CLIP baseline."""

from __future__ import annotations

import json
import math
from importlib import resources

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from adds.data.images import ImageLoadError
from adds.decoder import DecoderConfig
from adds.model import ADDS, ADDSConfig
from adds.tagger import (
    CLIPBaseline,
    CLIPBaselineConfig,
    Tagger,
    TaggerConfig,
    ThresholdSet,
    builtin_thresholds,
    builtin_vocabulary,
    labels_from_values,
    read_labels,
    read_thresholds,
    split_label_text,
)
from adds.towers import TINY_MODEL, TowerConfig

LABELS = ["red square", "blue circle", "green triangle", "yellow star", "a dog"]
SMALL = DecoderConfig(num_layers=2, num_heads=4, ffn_dim=64)


@pytest.fixture()
def adds_model(tiny_towers):
    return ADDS(ADDSConfig(decoder=SMALL), towers=tiny_towers).eval()


@pytest.fixture()
def tagger(adds_model):
    return Tagger(adds_model, labels=LABELS)


@pytest.fixture()
def baseline(tiny_towers):
    return Tagger(CLIPBaseline(tiny_towers), labels=LABELS)


def _image(seed: int, height: int = 64, width: int = 64) -> torch.Tensor:
    return torch.rand(3, height, width, generator=torch.Generator().manual_seed(seed))


# -- output shape and order --------------------------------------------------------------------------------------


def test_one_image_gives_one_sorted_list_of_label_score_dicts(tagger):
    tags = tagger(_image(0), threshold=0.0)
    assert isinstance(tags, list) and [set(t) for t in tags] == [{"label", "score"}] * len(LABELS)
    assert sorted(t["label"] for t in tags) == sorted(LABELS)
    scores = [t["score"] for t in tags]
    assert scores == sorted(scores, reverse=True)
    assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores)


def test_several_images_give_one_list_each_in_input_order(tagger):
    a, b = _image(1), _image(2)
    together = tagger([a, b], threshold=0.0)
    assert len(together) == 2
    _assert_same_tags(together[0], tagger(a, threshold=0.0))
    _assert_same_tags(together[1], tagger(b, threshold=0.0))
    batch = tagger(torch.stack([a, b]), threshold=0.0)  # a (B, 3, H, W) tensor is a batch
    _assert_same_tags(batch[0], together[0])
    _assert_same_tags(batch[1], together[1])


def _assert_same_tags(got, expected, atol: float = 1e-5) -> None:
    assert {t["label"] for t in got} == {t["label"] for t in expected}
    by_label = {t["label"]: t["score"] for t in expected}
    for tag in got:
        assert tag["score"] == pytest.approx(by_label[tag["label"]], abs=atol)


def test_scores_are_the_models_independent_sigmoids(adds_model):
    image = _image(3)  # 64 px on a 32 px tower: a head trained at 64 px gets levels 0 and 1, its own default there
    tagger = Tagger(adds_model, labels=LABELS, trained_input_size=64)
    assert tagger.plan.levels == (0, 1) and tagger.plan.input_size == 64
    expected = adds_model(image, LABELS).sigmoid()[0].detach()
    torch.testing.assert_close(tagger.scores(image)[0], expected, rtol=1e-5, atol=1e-5)
    assert not math.isclose(float(expected.sum()), 1.0, abs_tol=1e-3)  # not a distribution over labels


def test_paths_pil_images_and_tensors_give_the_same_tags(tagger, tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    path = tmp_path / "img.png"
    Image.fromarray(array).save(path)
    as_tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous()  # uint8 (3, H, W)
    reference = tagger(as_tensor, threshold=0.0)
    for source in (path, str(path), Image.open(path), as_tensor.float() / 255):
        _assert_same_tags(tagger(source, threshold=0.0), reference)


def test_bad_path_raises_image_load_error_naming_it(tagger, tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty.png"):
        tagger(path)


# -- sizes and Pyramid-Forwarding --------------------------------------------------------------------------------


def test_every_image_gets_the_heads_plan_whatever_its_size(adds_model):
    tagger = Tagger(adds_model, labels=LABELS)  # no training record: the tower's size, one crop
    assert (tagger.plan.input_size, tagger.plan.levels, tagger.plan.num_crops) == (32, (0,), 1)
    for height, width in ((10, 10), (500, 300), (64, 64)):
        assert tagger.levels_for(height, width) == (0,)
        assert tagger.prepare(_image(0, height, width)).pixels.shape == (3, 32, 32)
    trained = Tagger(adds_model, labels=LABELS, trained_input_size=48)
    assert (trained.plan.input_size, trained.plan.levels, trained.plan.num_crops) == (48, (0, 1), 5)
    assert trained.prepare(_image(0, 500, 20)).pixels.shape == (3, 48, 48)
    fixed = Tagger(adds_model, TaggerConfig(levels=(0, 2)), labels=LABELS)
    assert fixed.levels_for(10, 10) == (0, 2)
    assert fixed.prepare(_image(0, 10, 10)).pixels.shape == (3, 128, 128)
    sized = Tagger(adds_model, TaggerConfig(input_size=40), labels=LABELS, trained_input_size=48)
    assert (sized.plan.input_size, sized.plan.levels) == (40, (0, 1))
    with pytest.raises(ValueError, match="level 2"):
        Tagger(adds_model, TaggerConfig(input_size=40, levels=(0, 2)), labels=LABELS)


def test_pyramid_levels_change_the_scores(adds_model):
    image = _image(4, 64, 64)
    single_crop = Tagger(adds_model, labels=LABELS)
    with_pyramid = Tagger(adds_model, labels=LABELS, trained_input_size=64)
    assert not torch.allclose(with_pyramid.scores(image), single_crop.scores(image), atol=1e-4)


def test_images_of_different_sizes_in_one_call(adds_model):
    tagger = Tagger(adds_model, labels=LABELS, trained_input_size=64)
    images = [_image(5, 64, 64), _image(6, 32, 32), _image(7, 100, 40), _image(8, 17, 90), _image(9, 64, 64)]
    together = tagger(images, threshold=0.0)
    for image, tags in zip(images, together, strict=True):
        _assert_same_tags(tags, tagger(image, threshold=0.0))
    prepared = [tagger.prepare(image) for image in images]
    assert [p.levels for p in prepared] == [(0, 1)] * 5
    assert prepared[2].size == (100, 40) and prepared[2].pixels.shape == (3, 64, 64)


def test_batch_size_does_not_change_scores(adds_model):
    images = [_image(i, 32 + 8 * i, 40) for i in range(5)]
    one = Tagger(adds_model, TaggerConfig(batch_size=1), labels=LABELS, trained_input_size=64).scores(images)
    many = Tagger(adds_model, TaggerConfig(batch_size=4), labels=LABELS, trained_input_size=64).scores(images)
    torch.testing.assert_close(one, many, rtol=1e-4, atol=1e-5)


# -- thresholds and top-k ----------------------------------------------------------------------------------------


def test_global_threshold_keeps_exactly_the_labels_at_or_above_it(tagger):
    image = _image(10)
    scores = tagger.scores(image)[0]
    cut = float(scores.median())
    kept = tagger(image, threshold=cut)
    assert {t["label"] for t in kept} == {label for label, s in zip(LABELS, scores.tolist(), strict=True) if s >= cut}
    assert all(t["score"] >= 1.0 for t in tagger(image, threshold=1.0))
    assert len(tagger(image, threshold=0.0)) == len(LABELS)


def test_default_threshold_is_half(tagger, adds_model):
    assert tagger.thresholds == ThresholdSet(default=0.5)
    image = _image(11)
    scores = tagger.scores(image)[0]
    assert {t["label"] for t in tagger(image)} == {lb for lb, s in zip(LABELS, scores.tolist(), strict=True)
                                                   if s >= 0.5}


def test_top_k_keeps_the_k_best_after_thresholds(tagger):
    image = _image(12)
    everything = tagger(image, threshold=0.0)
    assert tagger(image, threshold=0.0, top_k=2) == everything[:2]
    cut = everything[1]["score"]
    assert tagger(image, threshold=cut, top_k=4) == everything[:2]  # only two pass the threshold
    capped = Tagger(tagger.model, TaggerConfig(top_k=3, threshold=0.0), labels=LABELS)
    assert len(capped(image)) == 3
    with pytest.raises(ValueError, match="top_k"):
        tagger(image, top_k=0)


def test_per_label_thresholds_from_dict_and_files(tagger, tmp_path):
    image = _image(13)
    scores = dict(zip(LABELS, tagger.scores(image)[0].tolist(), strict=True))
    # "red square" needs more than its score, "a dog" gets in with less; the others use the global 0.0 / 1.0.
    per_label = {"red square": min(1.0, scores["red square"] + 1e-3), "a dog": max(0.0, scores["a dog"] - 1e-3)}
    got = {t["label"] for t in tagger(image, threshold=ThresholdSet(default=0.0, per_label=per_label))}
    assert got == set(LABELS) - {"red square"}
    got = {t["label"] for t in tagger(image, threshold=ThresholdSet(default=1.0, per_label=per_label))}
    assert got == {"a dog"}

    tsv = tmp_path / "thresholds.txt"
    tsv.write_text("".join(f"{label}\t{value}\n" for label, value in per_label.items()), encoding="utf-8")
    js = tmp_path / "thresholds.json"
    js.write_text(json.dumps(per_label), encoding="utf-8")
    assert read_thresholds(tsv) == pytest.approx(per_label) and read_thresholds(js) == pytest.approx(per_label)
    strict = Tagger(tagger.model, TaggerConfig(threshold=1.0), labels=LABELS)
    for spec in (per_label, tsv, str(js)):  # dict / file per call: combined with the tagger's global threshold
        assert {t["label"] for t in strict(image, threshold=spec)} == {"a dog"}
    strict_with_file = Tagger(tagger.model, TaggerConfig(threshold=1.0), labels=LABELS, thresholds=tsv)
    assert {t["label"] for t in strict_with_file(image)} == {"a dog"}


def test_bad_threshold_files_are_named(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("dog\t0.5\ncat 0.4\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.txt:2"):
        read_thresholds(bad)
    bad.write_text("dog\t1.5\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.txt:1"):
        read_thresholds(bad)
    bad.write_text("dog\tx\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not a number"):
        read_thresholds(bad)
    (tmp_path / "list.json").write_text("[0.5]", encoding="utf-8")
    with pytest.raises(ValueError, match="JSON object"):
        read_thresholds(tmp_path / "list.json")
    with pytest.raises(ValueError, match="cannot read"):
        read_thresholds(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ThresholdSet(default=-0.1)


# -- vocabularies ------------------------------------------------------------------------------------------------


def test_builtin_vocabulary_and_its_thresholds():
    tags = builtin_vocabulary()
    assert len(tags) == 4585 == len(set(tags))
    thresholds = builtin_thresholds()
    assert list(thresholds) == tags
    assert all(0.0 < v <= 1.0 for v in thresholds.values())
    raw = resources.files("adds.resources").joinpath("ram_tag_list_4585_thresholds.txt").read_text().split()
    assert thresholds[tags[7]] == float(raw[7]) and thresholds[tags[-1]] == float(raw[-1])


def test_without_labels_the_builtin_vocabulary_and_its_thresholds_are_used(tiny_towers):
    tagger = Tagger(CLIPBaseline(tiny_towers))
    assert tagger.uses_builtin_vocabulary and tagger.labels == builtin_vocabulary()
    assert tagger.thresholds.per_label == builtin_thresholds() and tagger.thresholds.default == 0.5
    tags = tagger(_image(14, 32, 32), threshold=0.0, top_k=5)
    assert len(tags) == 5 and all(t["label"] in set(tagger.labels) for t in tags)
    # the built-in per-tag thresholds decide the default tags
    scores = tagger.scores(_image(14, 32, 32))[0]
    limits = tagger.thresholds.for_labels(tagger.labels)
    assert {t["label"] for t in tagger(_image(14, 32, 32))} == {
        label for label, s, lim in zip(tagger.labels, scores.tolist(), limits.tolist(), strict=True) if s >= lim
    }


def test_checkpoint_vocabulary_and_thresholds_are_the_defaults(adds_model, tmp_path):
    adds_model.save_pretrained(tmp_path / "ckpt")
    plain = Tagger.from_checkpoint(tmp_path / "ckpt", device="cpu")
    assert plain.uses_builtin_vocabulary
    (tmp_path / "ckpt" / "labels.txt").write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    (tmp_path / "ckpt" / "thresholds.tsv").write_text("a dog\t0.25\n", encoding="utf-8")
    tagger = Tagger.from_checkpoint(tmp_path / "ckpt", device="cpu")
    assert tagger.labels == LABELS and not tagger.uses_builtin_vocabulary
    assert tagger.thresholds == ThresholdSet(default=0.5, per_label={"a dog": 0.25})
    image = _image(15, 32, 32)
    torch.testing.assert_close(tagger.scores(image), adds_model(image, LABELS).sigmoid(), rtol=1e-5, atol=1e-5)
    override = Tagger.from_checkpoint(tmp_path / "ckpt", device="cpu", labels=["x", "y"])
    assert override.labels == ["x", "y"]


def test_checkpoint_thresholds_tsv_is_read_before_the_legacy_txt(adds_model, tmp_path):
    directory = adds_model.save_pretrained(tmp_path / "ckpt")
    (directory / "labels.txt").write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    (directory / "thresholds.txt").write_text("a dog\t0.25\n", encoding="utf-8")
    assert Tagger.from_checkpoint(directory, device="cpu").thresholds.per_label == {"a dog": 0.25}  # fallback
    (directory / "thresholds.tsv").write_text("# calibrated\nlabel\tthreshold\nred square\t0.7\na dog\t0.3\n",
                                              encoding="utf-8")
    assert Tagger.from_checkpoint(directory, device="cpu").thresholds.per_label == {"red square": 0.7, "a dog": 0.3}


def test_per_label_thresholds_for_labels_not_in_the_list_are_refused(tagger, adds_model, tmp_path):
    typo = tmp_path / "thr.tsv"
    typo.write_text("red square\t0.4\ndgo\t0.3\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"thr.tsv.*'dgo'"):
        tagger(_image(0), threshold=typo)
    with pytest.raises(ValueError, match="'dgo'"):
        tagger(_image(0), threshold={"dgo": 0.3})
    with pytest.raises(ValueError, match="'dgo'"):
        Tagger(adds_model, labels=LABELS, thresholds=typo)
    with pytest.raises(ValueError, match="'dgo'"):
        list(tagger.tag_files([], threshold=typo))
    assert len(tagger(_image(0), labels=["red square"], threshold={"red square": 0.0})) == 1
    # the tagger's own (built-in) thresholds are not "explicit": a custom label list is fine with them
    builtin = Tagger(adds_model)
    assert len(builtin(_image(0), labels=["dog", "cat"], threshold=None)) <= 2


def test_set_labels_computes_embeddings_once(tagger, monkeypatch):
    calls = []
    real = tagger.model.encode_labels
    monkeypatch.setattr(tagger.model, "encode_labels", lambda labels: calls.append(list(labels)) or real(labels))
    tagger.set_labels(["cat", "dog", "bird"])
    assert calls == [["cat", "dog", "bird"]] and tagger.labels == ["cat", "dog", "bird"]
    for seed in range(3):
        tagger(_image(seed))
    tagger(_image(0), labels=["cat", "dog", "bird"])
    assert len(calls) == 1
    tagger(_image(0), labels=["sky"])
    assert calls[-1] == ["sky"]


def test_duplicate_labels_are_refused(tagger):
    with pytest.raises(ValueError, match="Duplicate"):
        tagger(_image(0), labels=["cat", "cat"])


def test_read_labels(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("\ufeff# my labels\ncat\n\n  dog  \n   # not a label either\nred car", encoding="utf-8")
    assert read_labels(path) == ["cat", "dog", "red car"]
    path.write_text("cat\ncat\n", encoding="utf-8")
    with pytest.raises(ValueError, match="labels.txt"):
        read_labels(path)
    with pytest.raises(ValueError, match="missing.txt does not exist"):
        read_labels(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="is a folder"):
        read_labels(tmp_path)


def test_labels_from_values_tells_word_lists_from_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.txt").write_text("sea\nsky\n", encoding="utf-8")
    (tmp_path / "photos").mkdir()
    assert labels_from_values(["dog, cat", "mine.txt", "red car"]) == ["dog", "cat", "sea", "sky", "red car"]
    assert labels_from_values(["AC/DC,"]) == ["AC/DC"]  # a comma forces a word list
    for value, message in (("mylabels.txt", "mylabels.txt does not exist"), ("photos", "photos is a folder"),
                           ("lists/tags", "tags does not exist"), (" , ", "no label"), ("dog,dog", "Duplicate")):
        with pytest.raises(ValueError, match=message):
            labels_from_values([value])
    assert split_label_text(" dog, cat\n\ndog ,red car\r\n") == ["dog", "cat", "dog", "red car"]


# -- label-list dependence (documented) --------------------------------------------------------------------------


def test_dm_decoder_scores_depend_on_the_label_list_and_the_baselines_do_not(tagger, baseline):
    image = _image(16)
    short = tagger(image, labels=LABELS[:2], threshold=0.0)
    longer = tagger(image, labels=LABELS, threshold=0.0)
    first = {t["label"]: t["score"] for t in short}
    second = {t["label"]: t["score"] for t in longer}
    assert abs(first["red square"] - second["red square"]) > 1e-6  # 2-layer DM-decoder: the whole list matters
    first = {t["label"]: t["score"] for t in baseline(image, labels=LABELS[:2], threshold=0.0)}
    second = {t["label"]: t["score"] for t in baseline(image, labels=LABELS, threshold=0.0)}
    assert first["red square"] == pytest.approx(second["red square"], abs=1e-6)


# -- the CLIP baseline --------------------------------------------------------------------------------------------


def _ensembled(towers, prompts: list[str]) -> torch.Tensor:
    return F.normalize(F.normalize(towers.encode_text(prompts), dim=-1).mean(0), dim=-1)  # (D,)


def _normalised(towers, pixels: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(towers.mean).view(1, 3, 1, 1)
    std = torch.tensor(towers.std).view(1, 3, 1, 1)
    return (pixels - mean) / std


def test_clip_baseline_default_is_the_best_crop_against_the_blank_reference(baseline, tiny_towers):
    """Issue 9.7: ``s * (max over the level-0 view and the 4 quadrants of cos(crop, label) - b)``, ``b`` the
    label-free prompts' cosine with a blank image, checked by hand (resize, slicing, CLIP's encode_image)."""
    image = _image(17, 48, 80)
    got = baseline.scores(image)[0]  # (k,)
    squashed = F.interpolate(image[None], size=(64, 64), mode="bicubic", antialias=True).clamp(0, 1)  # 2 x 32 px
    view = F.interpolate(squashed, size=(32, 32), mode="bicubic", antialias=True).clamp(0, 1)
    quadrants = [squashed[..., r:r + 32, c:c + 32] for r in (0, 32) for c in (0, 32)]
    with torch.no_grad():
        crops = torch.cat([view, *quadrants])  # (5, 3, 32, 32)
        embedded = F.normalize(tiny_towers.clip.encode_image(_normalised(tiny_towers, crops)), dim=-1)  # (5, D)
        blank = F.normalize(tiny_towers.clip.encode_image(torch.zeros(1, 3, 32, 32)), dim=-1)[0]  # (D,)
        scale = float(tiny_towers.clip.logit_scale.exp())
        reference = _ensembled(tiny_towers, ["This photo contains.", "This is a photo."])
        labels = torch.stack([_ensembled(tiny_towers, [f"This photo contains {lb}.", f"This is a {lb} photo."])
                              for lb in LABELS])  # (k, D)
    expected = torch.sigmoid(scale * ((embedded @ labels.T).amax(0) - blank @ reference))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert baseline.plan.input_size == 64 and baseline.plan.levels == (0, 1) and baseline.plan.num_crops == 5


def test_clip_baseline_blank_reference_ranks_images_by_their_cosine(tiny_towers):
    """The reference is one constant: a label's scores over images are in the order of its best-crop cosine."""
    tagger = Tagger(CLIPBaseline(tiny_towers), labels=LABELS)
    images = [_image(40 + i, 64, 64) for i in range(6)]
    scores = tagger.scores(images)  # (6, k)
    with torch.no_grad():
        tokens = tagger._pyramid(torch.stack([tagger.prepare(im).pixels for im in images]),
                                 tiny_towers.encode_image_tokens)
        crops = tagger.model.class_tokens(tokens)  # (6, 5, D)
        cos = torch.einsum("bnd,kd->bnk", crops, F.normalize(tagger.model.encode_labels(LABELS), dim=-1)).amax(1)
    for column in range(len(LABELS)):
        assert torch.equal(scores[:, column].argsort(), cos[:, column].argsort())


def test_clip_baseline_view_with_image_reference_is_clips_two_way_softmax(tiny_towers):
    """``pooling="view", reference="image"``: the level-0 view against its own label-free prompt (CLIP's softmax
    over the pair), the score before issue 9.7."""
    config = CLIPBaselineConfig(pooling="view", reference="image")
    baseline = Tagger(CLIPBaseline(tiny_towers, config), labels=LABELS)
    image = _image(17, 48, 80)
    got = baseline.scores(image)[0]  # (k,)
    pixels = F.interpolate(image[None], size=(32, 32), mode="bicubic", antialias=True).clamp(0, 1)
    with torch.no_grad():
        img = F.normalize(tiny_towers.clip.encode_image(_normalised(tiny_towers, pixels)), dim=-1)[0]  # (D,)
        scale = float(tiny_towers.clip.logit_scale.exp())
        reference = _ensembled(tiny_towers, ["This photo contains.", "This is a photo."])
        labels = torch.stack([_ensembled(tiny_towers, [f"This photo contains {lb}.", f"This is a {lb} photo."])
                              for lb in LABELS])
    expected = torch.sigmoid(scale * (labels @ img - reference @ img))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    pair = torch.softmax(scale * torch.stack([labels[0] @ img, reference @ img]), dim=0)[0]
    assert float(got[0]) == pytest.approx(float(pair), abs=1e-5)


def test_clip_baseline_view_uses_one_view_and_ignores_pyramid_levels(tiny_towers, caplog):
    view = Tagger(CLIPBaseline(tiny_towers, CLIPBaselineConfig(pooling="view")), labels=LABELS)
    assert view.levels_for(500, 500) == (0,)
    assert view.prepare(_image(18, 100, 60)).pixels.shape == (3, 32, 32)
    with caplog.at_level("WARNING", logger="adds.tagger"):
        ignored = Tagger(CLIPBaseline(tiny_towers, CLIPBaselineConfig(pooling="view")),
                         TaggerConfig(levels=(0, 1)), labels=LABELS)
    assert ignored.plan.levels == (0,) and "ignored" in caplog.text


def test_clip_baseline_max_takes_the_taggers_levels(tiny_towers):
    quadrants = Tagger(CLIPBaseline(tiny_towers), TaggerConfig(levels=(1,)), labels=LABELS)
    assert quadrants.plan.levels == (1,) and quadrants.plan.num_crops == 4 and quadrants.plan.input_size == 64
    assert quadrants.scores(_image(3)).shape == (1, len(LABELS))
    assert quadrants.describe()["baseline_pooling"] == "max"


@pytest.mark.parametrize("kwargs, message", [({"pooling": "mean"}, "pooling must be one of"),
                                             ({"reference": "none"}, "reference must be one of"),
                                             ({"pooling": "view", "levels": (0, 1)}, "level-0 view only")])
def test_clip_baseline_config_refuses_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CLIPBaselineConfig(**kwargs)


def test_clip_baseline_constructor_with_random_weights():
    tagger = Tagger.clip_baseline(TINY_MODEL, None, device="cpu", labels=["a", "b"], seed=0)
    assert tagger.describe()["scorer"] == "clip-baseline" and tagger.labels == ["a", "b"]
    assert tagger.towers.config == TowerConfig(model=TINY_MODEL, pretrained=None, seed=0)


# -- files --------------------------------------------------------------------------------------------------------


def test_tag_files_reports_bad_files_and_keeps_order(tagger, tmp_path):
    paths = []
    for index in range(5):
        path = tmp_path / f"{index}.png"
        Image.fromarray(np.full((40, 30 + index, 3), 40 * index, dtype=np.uint8)).save(path)
        paths.append(path)
    (tmp_path / "2.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    small = Tagger(tagger.model, TaggerConfig(batch_size=2, threshold=0.0), labels=LABELS)
    for workers in (0, 2):
        results = list(small.tag_files(paths, workers=workers))
        assert [r.path for r in results] == [str(p) for p in paths]
        assert [r.error is None for r in results] == [True, True, False, True, True]
        assert results[2].tags is None and "not an image" in results[2].error
        _assert_same_tags(results[4].tags, small(paths[4]))
