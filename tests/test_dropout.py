import pytest
import torch
from torch import nn

from nmt.models import dropout as dropout_module
from nmt.models.dropout import LaneDropout, make_dropout

pytestmark = pytest.mark.numerics  # floating-point results: run again on AVX2 kernels


@pytest.mark.parametrize("kind", [LaneDropout, nn.Dropout])
@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_lane_and_reference_dropout_drop_a_fraction_p_and_keep_the_expectation(kind, p):
    """The fast path and the reference agree in distribution: drop rate p, survivors scaled by 1 / (1 - p)."""
    torch.manual_seed(0)
    x = torch.ones(64, 33, 101)  # a size not a multiple of 4: the last 64-bit word is part used
    y = kind(p).train()(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - p) < 0.005
    assert abs(y.mean().item() - 1.0) < 0.01
    assert torch.allclose(y[y != 0], torch.tensor(1 / (1 - p)), rtol=1e-4)


def test_lane_and_reference_dropout_have_the_same_variance():
    torch.manual_seed(0)
    x = torch.randn(200_000)
    lane, reference = LaneDropout(0.3).train()(x), nn.Dropout(0.3).train()(x)
    assert abs(lane.var().item() - reference.var().item()) < 0.02 * reference.var().item()


def test_the_switch_picks_the_reference(monkeypatch):
    assert isinstance(make_dropout(0.1), LaneDropout)
    monkeypatch.setattr(dropout_module, "LANE_DROPOUT_ON_CPU", False)
    assert isinstance(make_dropout(0.1), nn.Dropout)


def test_masks_differ_between_calls_and_positions_are_independent():
    torch.manual_seed(0)
    dropout = LaneDropout(0.5).train()
    a, b = (dropout(torch.ones(4000)) == 0 for _ in range(2))
    assert 0.4 < (a != b).float().mean().item() < 0.6
    lanes = a.view(-1, 4).float().mean(0)  # each of the four 16-bit lanes of a random word
    assert torch.all((lanes - 0.5).abs() < 0.05), lanes


def test_gradient_is_the_mask_times_the_scale_and_eval_is_identity():
    torch.manual_seed(0)
    dropout = LaneDropout(0.25).train()
    x = torch.randn(7, 9, requires_grad=True)
    y = dropout(x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y != 0).float() / 0.75)
    assert dropout.eval()(x) is x
    assert LaneDropout(0.0).train()(x) is x
