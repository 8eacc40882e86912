import math

import pytest
import torch

from training.losses import pairwise_ce_loss, pairwise_focal_loss, pairwise_loss


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_ce_matches_hand_computed_values():
    s_w = torch.tensor([2.0, 0.0, -1.0])
    s_l = torch.tensor([1.0, 0.0, 1.0])
    # gaps 1, 0, -2
    expected = (-math.log(_sig(1.0)) - math.log(0.5) - math.log(_sig(-2.0))) / 3
    assert pairwise_ce_loss(s_w, s_l).item() == pytest.approx(expected, rel=1e-6)
    assert pairwise_ce_loss(torch.zeros(1), torch.zeros(1)).item() == pytest.approx(math.log(2), rel=1e-6)


def test_focal_matches_hand_computed_values():
    s_w = torch.tensor([1.0, -0.5])
    s_l = torch.tensor([0.0, 0.5])
    terms = []
    for gap in (1.0, -1.0):
        p = _sig(gap)
        terms.append((1 - p) ** 2 * -math.log(p))
    assert pairwise_focal_loss(s_w, s_l).item() == pytest.approx(sum(terms) / 2, rel=1e-6)
    p = _sig(0.3)
    assert pairwise_focal_loss(torch.tensor([0.3]), torch.tensor([0.0]), gamma=0.5).item() == pytest.approx(
        (1 - p) ** 0.5 * -math.log(p), rel=1e-6)


def test_focal_with_gamma_zero_equals_ce():
    gen = torch.Generator().manual_seed(0)
    s_w, s_l = torch.randn(50, generator=gen) * 4, torch.randn(50, generator=gen) * 4
    assert torch.allclose(pairwise_focal_loss(s_w, s_l, gamma=0.0), pairwise_ce_loss(s_w, s_l))


def test_focal_down_weights_easy_pairs():
    easy_w, easy_l = torch.tensor([5.0]), torch.tensor([0.0])
    assert pairwise_focal_loss(easy_w, easy_l) < pairwise_ce_loss(easy_w, easy_l) / 100


@pytest.mark.parametrize("loss", [pairwise_ce_loss, pairwise_focal_loss])
def test_stable_for_large_gaps(loss):
    s_w = torch.tensor([200.0, -200.0], requires_grad=True)
    s_l = torch.zeros(2)
    value = loss(s_w, s_l)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(s_w.grad).all()
    # the badly ordered pair dominates with loss ~ gap / 2 (averaged over two pairs)
    assert value.item() == pytest.approx(100.0, rel=1e-4)
    # float32 log(sigmoid(-200)) is -inf; the losses must not go that way
    assert torch.isinf(torch.log(torch.sigmoid(torch.tensor(-200.0))))


def test_gradient_pushes_winner_up():
    s_w = torch.tensor([0.0], requires_grad=True)
    s_l = torch.tensor([0.0], requires_grad=True)
    pairwise_focal_loss(s_w, s_l).backward()
    assert s_w.grad.item() < 0 < s_l.grad.item()


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="same shape"):
        pairwise_ce_loss(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="no pairs"):
        pairwise_focal_loss(torch.zeros(0), torch.zeros(0))
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        pairwise_focal_loss(torch.zeros(1), torch.zeros(1), gamma=-1)
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        pairwise_loss("hinge", torch.zeros(1), torch.zeros(1))
