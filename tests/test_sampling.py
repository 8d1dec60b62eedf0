from __future__ import annotations

import math

import pytest
import torch

from adds.sampling import LabelSelection, SelectiveLanguageSupervision, SLSConfig, select_labels


def _targets(batch: int, k: int, positives: list[list[int]]) -> torch.Tensor:
    targets = torch.zeros(batch, k)  # (B, k)
    for row, labels in enumerate(positives):
        targets[row, labels] = 1.0
    return targets


def _check(sel: LabelSelection, targets: torch.Tensor, alpha: float) -> None:
    k = targets.shape[1]
    pos = set(torch.nonzero(targets.any(dim=0)).flatten().tolist())
    expected = len(pos) + min(math.floor(alpha * len(pos)), k - len(pos))
    idx = sel.indices.tolist()
    assert sel.indices.dtype == torch.long
    assert len(idx) == expected == sel.num_labels
    assert sel.num_positive == len(pos)
    assert sel.num_sampled == expected - len(pos)
    assert idx == sorted(idx)
    assert len(set(idx)) == len(idx)  # distinct
    assert pos <= set(idx)  # every positive kept
    assert torch.equal(sel.targets, targets[:, sel.indices])
    sampled = set(idx) - pos
    assert len(sampled) == sel.num_sampled
    assert all(targets[:, j].sum() == 0 for j in sampled)  # truly negatives


@pytest.mark.parametrize(
    ("k", "positives", "alpha"),
    [
        (100, [[1, 5], [5, 17], [40]], 3.0),  # plenty of negatives
        (10, [[0, 1, 2], [3]], 3.0),  # negatives run out: min(12, 6) = 6
        (5, [[0, 1, 2, 3, 4]], 3.0),  # everything positive
        (50, [[2, 3], [7]], 0.0),  # alpha 0: positives only
        (50, [[2, 3], [7]], 1.5),  # floor(4.5) = 4
        (1000, [[i] for i in range(0, 1000, 37)], 3.0),
    ],
)
def test_sizes_and_contents(k: int, positives: list[list[int]], alpha: float) -> None:
    targets = _targets(len(positives), k, positives)
    sel = select_labels(targets, SLSConfig(alpha=alpha), generator=torch.Generator().manual_seed(0))
    _check(sel, targets, alpha)


def test_random_batches() -> None:
    g = torch.Generator().manual_seed(3)
    for alpha in (0.5, 1.0, 3.0, 10.0):
        for _ in range(5):
            targets = (torch.rand(8, 60, generator=g) > 0.97).float()
            sel = select_labels(targets, SLSConfig(alpha=alpha), generator=g)
            _check(sel, targets, alpha)


def test_target_dtypes_agree() -> None:
    targets = _targets(2, 30, [[1, 4], [9]])
    results = [
        select_labels(targets.to(dtype), generator=torch.Generator().manual_seed(5)).indices
        for dtype in (torch.float32, torch.bool, torch.long)
    ]
    assert all(torch.equal(results[0], r) for r in results[1:])


def test_mask_unknown_entries_are_not_positive() -> None:
    targets = _targets(2, 20, [[1, 2], [3]])
    targets[0, 10] = -1.0  # conventional "unknown" marker
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[0, 2] = False  # label 2 only positive in an unknown entry
    sel = select_labels(targets, SLSConfig(alpha=0.0), mask=mask)
    assert sel.indices.tolist() == [1, 3]
    assert sel.num_positive == 2
    assert sel.mask is not None and torch.equal(sel.mask, mask[:, sel.indices])


def test_determinism_with_seed() -> None:
    targets = _targets(3, 500, [[1, 2], [100], [250, 499]])

    def draw(seed: int) -> torch.Tensor:
        return select_labels(targets, generator=torch.Generator().manual_seed(seed)).indices

    assert torch.equal(draw(7), draw(7))
    assert not torch.equal(draw(7), draw(8))


def test_wrapper_is_seedable_and_resumable() -> None:
    targets = _targets(2, 300, [[0, 10], [20]])
    a = SelectiveLanguageSupervision(SLSConfig(alpha=3.0), seed=11)
    b = SelectiveLanguageSupervision(SLSConfig(alpha=3.0), seed=11)
    first = [a(targets).indices for _ in range(3)]
    assert all(torch.equal(x, b(targets).indices) for x in first)
    assert not torch.equal(first[0], first[1])  # the generator advances between batches

    state = a.state_dict()
    nxt = a(targets).indices
    c = SelectiveLanguageSupervision(SLSConfig(alpha=3.0), seed=0)
    c.load_state_dict(state)
    assert torch.equal(c(targets).indices, nxt)


def test_empty_positive_batch() -> None:
    targets = torch.zeros(4, 50)
    sel = select_labels(targets)
    assert sel.is_empty
    assert sel.indices.numel() == 0 and sel.num_positive == 0 and sel.num_sampled == 0
    assert sel.targets.shape == (4, 0)


def test_imagenet21k_scale() -> None:
    g = torch.Generator().manual_seed(0)
    k = 21843
    targets = torch.zeros(56, k)  # (B, k)
    targets[torch.arange(56), torch.randint(0, k, (56,), generator=g)] = 1.0
    sel = select_labels(targets, generator=g)
    _check(sel, targets, 3.0)
    assert sel.targets.shape == (56, sel.num_labels)


def test_uniformity_of_sampled_negatives() -> None:
    k, draws = 20, 3000
    targets = _targets(1, k, [[0, 1]])  # 2 positives -> 6 of the 18 negatives per draw
    sls = SelectiveLanguageSupervision(SLSConfig(alpha=3.0), seed=1234)
    counts = torch.zeros(k)
    for _ in range(draws):
        counts[sls(targets).indices] += 1
    assert counts[0] == counts[1] == draws
    neg_counts = counts[2:]
    assert neg_counts.sum() == draws * 6
    expected = draws * 6 / 18
    chi2 = ((neg_counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 60.0  # 17 dof: mean 17; 60 is far in the tail
    assert (neg_counts > 0.85 * expected).all() and (neg_counts < 1.15 * expected).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_targets_with_cpu_generator() -> None:
    targets = _targets(2, 100, [[1, 2], [50]]).cuda()
    sel = select_labels(targets, generator=torch.Generator().manual_seed(0))
    assert sel.indices.device.type == "cuda" and sel.targets.device.type == "cuda"
    _check(sel, targets, 3.0)


def test_validation() -> None:
    with pytest.raises(ValueError):
        SLSConfig(alpha=-1.0)
    with pytest.raises(ValueError):
        SLSConfig(alpha=float("nan"))
    with pytest.raises(ValueError):
        select_labels(torch.zeros(10))
    with pytest.raises(ValueError):
        select_labels(torch.zeros(2, 5), mask=torch.ones(2, 4, dtype=torch.bool))
