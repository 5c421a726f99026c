import pytest
import torch

from nmt.dropout import Dropout


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_drops_a_fraction_p_and_keeps_the_expectation(p):
    torch.manual_seed(0)
    x = torch.ones(64, 33, 101)  # a size not a multiple of 4: the last 64-bit word is part used
    y = Dropout(p).train()(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - p) < 0.005
    assert abs(y.mean().item() - 1.0) < 0.01
    assert torch.allclose(y[y != 0], torch.tensor(1 / (1 - p)), rtol=1e-4)


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
