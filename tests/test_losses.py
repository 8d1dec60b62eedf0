from __future__ import annotations

import math

import pytest
import torch

from adds.losses import ASLConfig, AsymmetricLoss


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _scalar_loss(x: float, y: float, config: ASLConfig | None = None) -> float:
    loss = AsymmetricLoss(config)(torch.tensor([x], dtype=torch.float64), torch.tensor([y]))
    return float(loss)


# ---------------------------------------------------------------- closed-form values


@pytest.mark.parametrize("x", [-2.0, 0.0, 0.7, 3.0])
def test_positive_gamma0_is_bce(x: float) -> None:
    assert _scalar_loss(x, 1.0) == pytest.approx(-math.log(_sigmoid(x)), rel=1e-5)


@pytest.mark.parametrize("x", [-2.0, 0.7])
def test_positive_with_gamma_pos(x: float) -> None:
    p = _sigmoid(x)
    expected = -((1 - p) ** 1.0) * math.log(p)
    assert _scalar_loss(x, 1.0, ASLConfig(gamma_pos=1.0)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("x", [0.3, 2.0, -1.0])
def test_negative_with_shift_and_focusing(x: float) -> None:
    p = _sigmoid(x)
    p_m = max(p - 0.05, 0.0)  # shifted probability
    expected = -(p_m**4) * math.log(1 - p_m)
    assert _scalar_loss(x, 0.0) == pytest.approx(expected, rel=1e-5)


def test_negative_without_clip_or_focusing_is_bce() -> None:
    x = 1.3
    expected = -math.log(1 - _sigmoid(x))
    assert _scalar_loss(x, 0.0, ASLConfig(gamma_neg=0.0, clip=0.0)) == pytest.approx(expected, rel=1e-5)


def test_clip_zeroes_easy_negative() -> None:
    x = -4.0
    assert _sigmoid(x) < 0.05
    logits = torch.tensor([x], requires_grad=True)
    loss = AsymmetricLoss()(logits, torch.zeros(1))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and logits.grad.item() == 0.0


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("x", [-1.5, 0.0, 2.0])
def test_positive_gradient_gamma0(x: float) -> None:
    logits = torch.tensor([x], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(AsymmetricLoss()(logits, torch.ones(1)), logits)
    assert grad.item() == pytest.approx(_sigmoid(x) - 1.0, rel=1e-6)


def test_focusing_weight_gets_no_gradient() -> None:
    cfg = ASLConfig(gamma_neg=4.0, gamma_pos=1.0, clip=0.05)
    xs = [0.8, -0.3, 1.5, 0.2]
    ys = [0.0, 0.0, 1.0, 1.0]
    logits = torch.tensor(xs, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(AsymmetricLoss(cfg)(logits, torch.tensor(ys)), logits)

    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        p = _sigmoid(x)
        if y == 1.0:
            w = (1 - p) ** cfg.gamma_pos
            analytic = -w * (1 - p)  # d/dx of -w*log(p) with w constant
        else:
            p_neg = min(1 - p + cfg.clip, 1.0)
            w = (1 - p_neg) ** cfg.gamma_neg
            analytic = w * p * (1 - p) / p_neg  # d/dx of -w*log(p_neg) with w constant
        assert grad[i].item() == pytest.approx(analytic, rel=1e-6)

    # sanity: the full derivative (through w) differs, so the test above can tell the two apart
    x = xs[0]
    p = _sigmoid(x)
    p_m = p - cfg.clip
    full = 4 * p_m**3 * p * (1 - p) * -math.log(1 - p_m) + p_m**4 * p * (1 - p) / (1 - p_m)
    assert abs(full - grad[0].item()) > 1e-3


def test_grad_mode_preserved_under_no_grad() -> None:
    logits = torch.randn(3, 5, requires_grad=True)
    targets = (torch.rand(3, 5) > 0.5).float()
    with torch.no_grad():
        loss = AsymmetricLoss()(logits, targets)
        assert not loss.requires_grad
        assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled()


def test_grad_mode_preserved_in_grad_mode() -> None:
    logits = torch.randn(3, 5, requires_grad=True)
    targets = (torch.rand(3, 5) > 0.5).float()
    loss = AsymmetricLoss()(logits, targets)
    assert torch.is_grad_enabled()
    assert loss.requires_grad
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


# ---------------------------------------------------------------- mask and reduction


def test_mask_equals_loss_on_known_entries() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 6, generator=g)
    targets = (torch.rand(4, 6, generator=g) > 0.6).float()
    mask = torch.rand(4, 6, generator=g) > 0.3
    targets_with_unknown = torch.where(mask, targets, torch.full_like(targets, -1.0))
    crit = AsymmetricLoss()
    masked = crit(logits, targets_with_unknown, mask=mask)
    sub = crit(logits[mask], targets[mask])
    torch.testing.assert_close(masked, sub)

    mean_crit = AsymmetricLoss(ASLConfig(reduction="mean"))
    torch.testing.assert_close(mean_crit(logits, targets, mask=mask), sub / mask.sum())


def test_mask_blocks_gradient_of_unknown_entries() -> None:
    logits = torch.randn(2, 3, requires_grad=True)
    mask = torch.tensor([[True, False, True], [False, True, True]])
    AsymmetricLoss()(logits, torch.ones(2, 3), mask=mask).backward()
    assert logits.grad is not None
    assert (logits.grad[~mask] == 0).all()
    assert (logits.grad[mask] != 0).all()


def test_mean_is_sum_over_count() -> None:
    logits = torch.randn(5, 7)
    targets = (torch.rand(5, 7) > 0.5).float()
    total = AsymmetricLoss(ASLConfig(reduction="sum"))(logits, targets)
    mean = AsymmetricLoss(ASLConfig(reduction="mean"))(logits, targets)
    torch.testing.assert_close(mean, total / 35)


def test_sum_is_default_and_scales_with_batch() -> None:
    assert ASLConfig().reduction == "sum"
    logits = torch.randn(4, 6)
    targets = (torch.rand(4, 6) > 0.5).float()
    crit = AsymmetricLoss()
    torch.testing.assert_close(crit(logits.repeat(2, 1), targets.repeat(2, 1)), 2 * crit(logits, targets))


@pytest.mark.parametrize("dtype", [torch.bool, torch.long, torch.float32])
def test_target_dtypes(dtype: torch.dtype) -> None:
    logits = torch.randn(3, 4)
    targets = torch.rand(3, 4) > 0.5
    crit = AsymmetricLoss()
    torch.testing.assert_close(crit(logits, targets.to(dtype)), crit(logits, targets.float()))


# ---------------------------------------------------------------- training and precision


def test_adam_drives_loss_down() -> None:
    torch.manual_seed(0)
    features = torch.randn(32, 64)  # more dims than samples: the fixed batch is separable
    targets = (torch.rand(32, 8) > 0.7).float()
    model = torch.nn.Linear(64, 8)
    crit = AsymmetricLoss()
    opt = torch.optim.Adam(model.parameters(), lr=5e-2)
    with torch.no_grad():
        start = crit(model(features), targets).item()
    for _ in range(50):
        opt.zero_grad()
        loss = crit(model(features), targets)
        loss.backward()
        opt.step()
    with torch.no_grad():
        end = crit(model(features), targets).item()
    assert end < start / 10


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_logits_match_fp32(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(1)
    logits = (3 * torch.randn(6, 10, generator=g)).to(dtype)
    targets = (torch.rand(6, 10, generator=g) > 0.5).float()
    crit = AsymmetricLoss()
    half = crit(logits, targets)
    full = crit(logits.float(), targets)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, rtol=1e-5, atol=1e-6)

    leaf = logits.clone().requires_grad_(True)
    crit(leaf, targets).backward()
    assert leaf.grad is not None and leaf.grad.dtype == dtype and torch.isfinite(leaf.grad.float()).all()


# ---------------------------------------------------------------- validation


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)|\(2, 4\).*\(2, 3\)"):
        AsymmetricLoss()(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="mask"):
        AsymmetricLoss()(torch.zeros(2, 3), torch.zeros(2, 3), mask=torch.ones(3, 2, dtype=torch.bool))


@pytest.mark.parametrize(
    "kwargs",
    [{"gamma_neg": -1.0}, {"gamma_pos": -0.5}, {"clip": -0.1}, {"clip": 1.0}, {"reduction": "none"}, {"eps": 0.0}],
)
def test_config_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ASLConfig(**kwargs)
