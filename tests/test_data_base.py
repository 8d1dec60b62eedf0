from __future__ import annotations

import pytest
import torch
from PIL import Image

from adds.data.base import MultiLabelDataset, Record, SquashResize, collate_skip_failures


def test_items_targets_masks_and_failures(tmp_path):
    Image.new("RGB", (40, 20), (255, 0, 0)).save(tmp_path / "a.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    records = [Record("a.png", (0, 2)), Record("broken.jpg", (1,), unknown=(2,)), Record("missing.png")]
    data = MultiLabelDataset(records, ["cat", "dog", "sky"], name="t", root=tmp_path, transform=SquashResize(16))
    first = data[0]
    assert first["image"].shape == (3, 16, 16) and first["error"] is None
    assert first["target"].tolist() == [1.0, 0.0, 1.0] and first["mask"].all()
    second = data[1]
    assert second["image"] is None and "not an image" in second["error"]
    assert second["mask"].tolist() == [True, True, False]
    batch = collate_skip_failures([data[i] for i in range(3)])
    assert batch["image"].shape == (1, 3, 16, 16) and batch["index"].tolist() == [0]
    assert [path.split("/")[-1] for path, _ in batch["failed"]] == ["broken.jpg", "missing.png"]
    targets, mask = data.targets()
    assert targets.shape == (3, 3) and not mask[1, 2]


def test_fingerprint_changes_with_labels_and_bad_indices_are_named(tmp_path):
    a = MultiLabelDataset([Record("x.png", (0,))], ["cat", "dog"])
    b = MultiLabelDataset([Record("x.png", (1,))], ["cat", "dog"])
    assert a.fingerprint() != b.fingerprint()
    with pytest.raises(ValueError, match=r"x.png.*\[5\]"):
        MultiLabelDataset([Record("x.png", (5,))], ["cat", "dog"])
    assert collate_skip_failures([{"path": "p", "error": "e", "image": None}])["image"] is None


def test_squash_resize_keeps_range():
    out = SquashResize(8)(torch.rand(3, 30, 10))
    assert out.shape == (3, 8, 8) and 0.0 <= out.min() and out.max() <= 1.0
