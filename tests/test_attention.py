import math

import pytest
import torch

from nmt.models.attention import AdditiveAttention, DotAttention, GeneralAttention

pytestmark = pytest.mark.numerics  # floating-point results: run again on AVX2 kernels

B, TQ, S, H = 3, 4, 6, 8


def scorers():
    torch.manual_seed(0)
    return {"bahdanau": AdditiveAttention(H, H, 5), "dot": DotAttention(), "general": GeneralAttention(H, H)}


@pytest.mark.parametrize("name", ["bahdanau", "dot", "general"])
def test_weights_sum_to_one_and_are_exactly_zero_on_padding(name):
    attention = scorers()[name]
    memory = torch.randn(B, S, H)
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3, [True] + [False] * 5])
    context, weights = attention(torch.randn(B, TQ, H), attention.project_memory(memory), memory, mask)
    assert context.shape == (B, TQ, H) and weights.shape == (B, TQ, S)
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, TQ))
    assert torch.all(weights[~mask.unsqueeze(1).expand_as(weights)] == 0.0)
    assert torch.all(weights[2, :, 0] == 1.0)  # a single real position takes all the weight
    # The context is the weighted sum of the values.
    torch.testing.assert_close(context, torch.einsum("bts,bsh->bth", weights, memory))


@pytest.mark.parametrize("name", ["bahdanau", "dot", "general"])
def test_padding_content_does_not_change_the_result(name):
    attention = scorers()[name]
    memory = torch.randn(1, S, H)
    mask = torch.tensor([[True] * 4 + [False] * 2])
    query = torch.randn(1, TQ, H)
    garbage = memory.clone()
    garbage[:, 4:] = 100.0
    a = attention(query, attention.project_memory(memory), memory, mask)
    b = attention(query, attention.project_memory(garbage), garbage, mask)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y)


def test_scores_follow_the_papers_equations():
    torch.manual_seed(1)
    additive, general = AdditiveAttention(H, H, 5), GeneralAttention(H, H)
    q, h = torch.randn(1, 1, H), torch.randn(1, S, H)
    expected = torch.stack([additive.v @ torch.tanh(additive.query_proj(q[0, 0]) + additive.key_proj(h[0, i]))
                            for i in range(S)])
    torch.testing.assert_close(additive.score(q, additive.project_memory(h))[0, 0], expected)
    expected = torch.stack([q[0, 0] @ general.key_proj.weight @ h[0, i] for i in range(S)])
    torch.testing.assert_close(general.score(q, general.project_memory(h))[0, 0], expected)
    uniform_keys = torch.zeros(1, S, H)
    _, weights = DotAttention()(q, uniform_keys, h, torch.ones(1, S, dtype=torch.bool))
    torch.testing.assert_close(weights, torch.full((1, 1, S), 1 / S))
    assert math.isclose(float(-(weights * weights.log()).sum()), math.log(S), rel_tol=1e-5)


def test_attention_scale_divides_dot_and_general_scores_by_the_root_of_the_size():
    from nmt.config import AttentionConfig, ModelConfig
    from nmt.models.attention import build_attention

    torch.manual_seed(2)
    q, h = torch.randn(1, 2, H), torch.randn(1, S, H)
    for kind in ("dot", "general"):
        plain = build_attention(AttentionConfig(type=kind), H, H)
        scaled = build_attention(AttentionConfig(type=kind, scale=True), H, H)
        scaled.load_state_dict(plain.state_dict())
        torch.testing.assert_close(scaled.score(q, scaled.project_memory(h)),
                                   plain.score(q, plain.project_memory(h)) / math.sqrt(H))
    with pytest.raises(ValueError, match="attention.scale is for the dot and general scores, not bahdanau"):
        ModelConfig(attention={"type": "bahdanau", "scale": True})


def test_each_query_step_is_independent():
    attention = scorers()["bahdanau"]
    memory, mask = torch.randn(B, S, H), torch.ones(B, S, dtype=torch.bool)
    keys, query = attention.project_memory(memory), torch.randn(B, TQ, H)
    all_steps = attention(query, keys, memory, mask)[1]
    for t in range(TQ):
        torch.testing.assert_close(all_steps[:, t:t + 1], attention(query[:, t:t + 1], keys, memory, mask)[1])
