from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from adds.prompts import PAPER_TEMPLATES, LabelEmbedder, clip_templates, resolve_templates, validate_labels


def test_paper_and_clip_templates():
    assert PAPER_TEMPLATES == ("This photo contains {}.", "This is a {} photo.")
    templates = clip_templates()
    assert len(templates) == 80 and all(t.count("{}") == 1 for t in templates)
    assert resolve_templates("clip80") == templates and resolve_templates("paper") == PAPER_TEMPLATES
    with pytest.raises(ValueError, match="exactly once"):
        resolve_templates(["no placeholder"])
    with pytest.raises(ValueError, match="Unknown template set"):
        resolve_templates("clip81")


def test_embedding_is_the_normalised_mean_of_normalised_prompt_embeddings(tiny_towers):
    embedder = LabelEmbedder(tiny_towers, ["a photo of a {}.", "{} in the wild"])
    got = embedder(["red circle", "blue square"])
    prompts = ["a photo of a red circle.", "red circle in the wild"]
    expected = F.normalize(F.normalize(tiny_towers.encode_text(prompts), dim=-1).mean(0), dim=0)
    torch.testing.assert_close(got[0], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(2))


def test_each_label_is_encoded_once_per_template_set(tiny_towers, monkeypatch):
    embedder = LabelEmbedder(tiny_towers, ["x {} y"], batch_size=2)
    calls = []
    real = tiny_towers.encode_text
    monkeypatch.setattr(tiny_towers, "encode_text", lambda prompts: calls.append(list(prompts)) or real(prompts))
    first = embedder(["cat", "dog", "bird"])
    second = embedder(["bird", "cat", "zebra"])
    encoded = [p for call in calls for p in call]
    assert sorted(encoded) == ["x bird y", "x cat y", "x dog y", "x zebra y"]
    assert max(len(call) for call in calls) <= 2  # batched
    torch.testing.assert_close(second[1], first[0])
    assert (embedder.hits, embedder.misses) == (2, 4)
    # Another template set is another cache entry.
    LabelEmbedder(tiny_towers, ["z {}"])(["cat"])
    assert encoded != [p for call in calls for p in call]


def test_order_of_labels_is_kept(tiny_towers):
    embedder = LabelEmbedder(tiny_towers)
    forward = embedder(["a", "b", "c"])
    backward = embedder(["c", "b", "a"])
    torch.testing.assert_close(forward.flip(0), backward)


@pytest.mark.parametrize(
    "labels, message",
    [([], "empty"), (["cat", ""], "#1 is empty"), (["   "], "blank"), (["cat", "dog", "cat"], "Duplicate label 'cat'"),
     ("cat", "single string"), (["cat", 3], "#1 is not a string")],
)
def test_bad_label_lists_are_named(labels, message):
    with pytest.raises(ValueError, match=message):
        validate_labels(labels)
