import pytest
import torch

from risbench.losses import bce_loss, deep_supervision, dice_loss, iterative_loss_weights, weighted_ce_loss


def two_class_logits(mask, scale=50.0):
    return torch.cat([-scale * (mask - 0.5), scale * (mask - 0.5)], dim=1)


def test_dice_perfect_and_inverted():
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:6, 2:6] = 1
    assert dice_loss(two_class_logits(mask), mask).item() == pytest.approx(0.0, abs=1e-3)
    assert dice_loss(two_class_logits(1 - mask), mask).item() == pytest.approx(1.0, abs=2e-2)
    assert dice_loss(100 * (mask - 0.5), mask).item() == pytest.approx(0.0, abs=1e-3)


def test_bce_pos_weight_and_weighted_ce():
    logits, target = torch.zeros(1, 1, 2, 2), torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    plain = bce_loss(logits, target)
    assert plain.item() == pytest.approx(torch.log(torch.tensor(2.0)).item())
    assert bce_loss(logits, target, pos_weight=3.0).item() == pytest.approx(plain.item() * (3 + 3) / 4)
    ce = weighted_ce_loss(torch.zeros(1, 2, 2, 2), target, (0.9, 1.1))
    assert ce.item() == pytest.approx(torch.log(torch.tensor(2.0)).item())  # weighted mean of equal losses


def test_loss_weights_rule():
    assert iterative_loss_weights(3, 0.7) == pytest.approx([0.15, 0.15, 0.7])
    assert iterative_loss_weights(1, 0.7) == [1.0]
    assert sum(iterative_loss_weights(5, 0.7)) == pytest.approx(1.0)
    assert deep_supervision([torch.tensor(1.0), torch.tensor(2.0)], [0.25, 0.75]).item() == pytest.approx(1.75)
    with pytest.raises(ValueError):
        deep_supervision([torch.tensor(1.0)], [0.5, 0.5])
