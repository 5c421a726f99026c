import pytest
import torch
from torch import nn

from nmt.config import ModelConfig, TransformerConfig
from nmt.models import build_model
from nmt.models.dropout import Dropout, use_fast_dropout

pytestmark = pytest.mark.numerics  # floating-point results: run again on AVX2 kernels


@pytest.mark.parametrize("kind", [Dropout, nn.Dropout])
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
    lane, reference = Dropout(0.3).train()(x), nn.Dropout(0.3).train()(x)
    assert abs(lane.var().item() - reference.var().item()) < 0.02 * reference.var().item()


@pytest.mark.parametrize("model_type", ["rnn", "transformer"])
def test_every_dropout_of_both_models_follows_the_switch(model_type):
    """One dropout module in both model types; training.fast_dropout picks lanes or torch's kernel for all."""
    cfg = ModelConfig(type=model_type, transformer=TransformerConfig(d_model=16, heads=2, ff_size=32))
    model = build_model(cfg, 30, 30).train()
    found = [m for m in model.modules() if isinstance(m, Dropout)]
    assert found and all(m.lanes for m in found)
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    use_fast_dropout(model, False)
    assert not any(m.lanes for m in found)
    torch.manual_seed(0)
    reference = found[0].train()(torch.ones(1000))
    torch.manual_seed(0)
    assert torch.equal(reference, torch.nn.functional.dropout(torch.ones(1000), found[0].p, training=True))


def test_masks_differ_between_calls_and_positions_are_independent():
    torch.manual_seed(0)
    dropout = Dropout(0.5).train()
    a, b = (dropout(torch.ones(4000)) == 0 for _ in range(2))
    assert 0.4 < (a != b).float().mean().item() < 0.6
    lanes = a.view(-1, 4).float().mean(0)  # each of the four 16-bit lanes of a random word
    assert torch.all((lanes - 0.5).abs() < 0.05), lanes


def test_gradient_is_the_mask_times_the_scale_and_eval_is_identity():
    torch.manual_seed(0)
    dropout = Dropout(0.25).train()
    x = torch.randn(7, 9, requires_grad=True)
    y = dropout(x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y != 0).float() / 0.75)
    assert dropout.eval()(x) is x
    assert Dropout(0.0).train()(x) is x
