"""CLIP-space losses against hand computations on 2-D vectors whose cosines are known exactly."""

import math

import pytest
import torch

from utils.losses import (
    DIRECTIONAL_EPS,
    angle_consistency_loss,
    clip_score,
    directional_loss,
    global_loss,
    sum_over_models,
)

SQRT_HALF = math.sqrt(0.5)  # cos 45 degrees


def test_directional_loss_hand_computed():
    source = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    adapted = torch.tensor([[1.0, 2.0], [-3.0, 0.0]])
    # Image changes: [0, 2] and [-3, 0].

    # Direction [0, 1]: cosines 1 and 0, so the loss is mean(0, 1) = 0.5.
    assert directional_loss(adapted, source, torch.tensor([0.0, 1.0])).item() == pytest.approx(0.5)

    # Direction [3, 4] / 5: cosines 8 / 10 = 0.8 and -9 / 15 = -0.6, so mean(0.2, 1.6) = 0.9.
    assert directional_loss(adapted, source, torch.tensor([3.0, 4.0])).item() == pytest.approx(0.9)


def test_directional_loss_per_row_direction():
    source = torch.zeros(2, 2)
    adapted = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    directions = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # cosines 1 and cos 45 degrees
    expected = (0 + (1 - SQRT_HALF)) / 2
    assert directional_loss(adapted, source, directions).item() == pytest.approx(expected)


def test_directional_loss_zero_change():
    source = torch.tensor([[0.6, 0.8], [1.0, 0.0], [0.0, 1.0]])
    adapted = source.clone().requires_grad_(True)
    direction = torch.tensor([3.0, 4.0])

    loss = directional_loss(adapted, source, direction)
    loss.backward()

    assert loss.item() == 1.0
    assert torch.isfinite(adapted.grad).all()
    # Below the norm floor the cosine is change . unit(direction) / eps, so each row's gradient is
    # -unit(direction) / (N * eps).
    expected_row = -torch.tensor([0.6, 0.8]) / (3 * DIRECTIONAL_EPS)
    torch.testing.assert_close(adapted.grad, expected_row.expand(3, 2))


def test_directional_loss_tiny_change_below_floor():
    source = torch.tensor([[1.0, 0.0]])
    adapted = source + torch.tensor([[0.0, DIRECTIONAL_EPS / 2]])  # along the direction, half the floor
    loss = directional_loss(adapted, source, torch.tensor([0.0, 1.0]))
    assert loss.item() == pytest.approx(0.5, abs=1e-4)


def _adam_toy_final_cosine(eps: float) -> float:
    """Fit a linear map's input so its output points along a fixed direction, starting from output 0.

    The loop mimics an adaptation. The change starts at exactly 0, and Adam uses StyleGAN-NADA's betas
    (0, 0.99 ** 0.8), whose exponent is its lazy-regularization ratio 4 / 5.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        jacobian = torch.randn(32, 500) * 0.05 / math.sqrt(500)  # parameters -> embedding change
        direction = torch.randn(32)
    params = torch.zeros(500, requires_grad=True)
    optimizer = torch.optim.Adam([params], lr=0.002, betas=(0.0, 0.99 ** 0.8))
    source = torch.zeros(1, 32)

    for _ in range(300):
        adapted = source + (jacobian @ params)[None]
        loss = directional_loss(adapted, source, direction, eps=eps)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return 1 - loss.item()


def test_directional_floor_keeps_adam_moving():
    # A 1e-8 floor gives a first gradient 1e4 times larger than the default's, which keeps Adam's
    # steps small for the rest of the run.
    assert _adam_toy_final_cosine(DIRECTIONAL_EPS) > 0.99
    assert _adam_toy_final_cosine(1e-8) < 0.98


def test_directional_loss_shape_errors():
    emb = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="same shape"):
        directional_loss(emb, torch.zeros(3, 4), torch.ones(4))
    with pytest.raises(ValueError, match=r"direction must have shape \[4\]"):
        directional_loss(emb, emb, torch.ones(3))
    with pytest.raises(ValueError, match=r"adapted_emb must be embeddings \[N, D\]"):
        directional_loss(torch.zeros(4), torch.zeros(4), torch.ones(4))


def test_global_loss_hand_computed():
    adapted = torch.tensor([[2.0, 0.0], [1.0, 1.0]])  # cosines 1 and cos 45 degrees to [1, 0]
    expected = (0 + (1 - SQRT_HALF)) / 2
    assert global_loss(adapted, torch.tensor([5.0, 0.0])).item() == pytest.approx(expected)
    assert global_loss(adapted, torch.tensor([[5.0, 0.0]])).item() == pytest.approx(expected)


def test_angle_consistency_hand_computed():
    source = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    adapted = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    # Source cosines: (0, 1) = 0, (0, 2) = (1, 2) = cos 45 degrees.
    # Adapted cosines: (0, 1) = 1, (0, 2) = (1, 2) = 0.
    # The squared differences are 1, 0.5 and 0.5, and each pair counts in both orders (6 ordered pairs).
    expected = 2 * (1 + 0.5 + 0.5) / 6
    assert angle_consistency_loss(source, adapted).item() == pytest.approx(expected)


def test_angle_consistency_zero_when_preserved():
    source = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    rotation = torch.tensor([[0.0, -1.0], [1.0, 0.0]])  # rotations keep every angle
    assert angle_consistency_loss(source, 3 * source @ rotation).item() == pytest.approx(0.0, abs=1e-7)


def test_angle_consistency_needs_pairs():
    with pytest.raises(ValueError, match="batch of >= 2, got 1"):
        angle_consistency_loss(torch.ones(1, 2), torch.ones(1, 2))


def test_clip_score_hand_computed():
    images = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert clip_score(images, torch.tensor([1.0, 1.0])).item() == pytest.approx(SQRT_HALF)
    opposite = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert clip_score(opposite, torch.tensor([1.0, 0.0])).item() == pytest.approx(0.0)


def test_sum_over_models_weights():
    first = [torch.tensor([[1.0, 0.0]])]
    second = [torch.tensor([[1.0, 1.0]])]
    images = first + second
    text = [torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])]
    # clip_score per model: 1 and cos 45 degrees.

    assert sum_over_models(clip_score, [1, 0], images, text).item() == pytest.approx(1.0)
    assert sum_over_models(clip_score, [0, 1], images, text).item() == pytest.approx(SQRT_HALF)
    assert sum_over_models(clip_score, [2, 3], images, text).item() == pytest.approx(2 + 3 * SQRT_HALF)


def test_sum_over_models_skips_zero_weight():
    calls = []

    def loss(value):
        calls.append(value)
        return torch.tensor(value)

    assert sum_over_models(loss, [1.0, 0.0], [2.0, float("nan")]).item() == 2.0
    assert calls == [2.0]


def test_sum_over_models_errors():
    expected = "argument 1 of sum_over_models has 1 entries but there are 2 weights"
    with pytest.raises(ValueError, match=expected):
        sum_over_models(clip_score, [1, 1], [torch.ones(1, 2)] * 2, [torch.ones(2)])
    with pytest.raises(ValueError, match="at least one > 0"):
        sum_over_models(clip_score, [0, 0], [torch.ones(1, 2)] * 2, [torch.ones(2)] * 2)
    with pytest.raises(ValueError, match="finite and >= 0"):
        sum_over_models(clip_score, [1, -1], [torch.ones(1, 2)] * 2, [torch.ones(2)] * 2)
