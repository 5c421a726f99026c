import itertools

import pytest
import torch
from batches import random_batch

from nmt.config import AttentionConfig, DecoderConfig, EncoderConfig, ModelConfig, TransformerConfig
from nmt.models import build_model

pytestmark = pytest.mark.numerics  # floating-point results: run again on AVX2 kernels

SV, TV = 30, 25


def config(enc_rnn="gru", dec_rnn="gru", attention="bahdanau", bidirectional=True, layers=1, input_feeding=None,
           embed_dim=12, **extra):
    hidden = 16 if (attention != "dot" or not bidirectional) else 8
    return ModelConfig(
        embed_dim=embed_dim,
        encoder=EncoderConfig(rnn=enc_rnn, hidden_size=hidden, layers=layers, bidirectional=bidirectional, dropout=0.0),
        decoder=DecoderConfig(rnn=dec_rnn, hidden_size=16, layers=layers, dropout=0.0, input_feeding=input_feeding),
        attention=AttentionConfig(type=attention), **extra)


COMBINATIONS = list(itertools.product(["gru", "lstm"], ["gru", "lstm"], ["bahdanau", "dot", "general", "concat"],
                                      [True, False], [1, 2]))


@pytest.mark.parametrize("enc_rnn,dec_rnn,attention,bidirectional,layers", COMBINATIONS)
def test_shapes_and_every_parameter_gets_a_gradient(enc_rnn, dec_rnn, attention, bidirectional, layers):
    model = build_model(config(enc_rnn, dec_rnn, attention, bidirectional, layers), SV, TV)
    src, lengths, mask, tgt_in = random_batch(SV, TV)
    logits, weights = model.forward_with_attention(src, lengths, mask, tgt_in, 0)
    assert logits.shape == (3, 6, TV) and weights.shape == (3, 1, 6, 7)
    torch.testing.assert_close(model(src, lengths, mask, tgt_in), logits)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 1, 6))
    weights = weights[:, 0]
    assert torch.all(weights[~mask.unsqueeze(1).expand_as(weights)] == 0)
    logits.logsumexp(-1).sum().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("attention,input_feeding", [("bahdanau", None), ("general", True), ("general", False),
                                                     ("dot", False), ("concat", False), ("concat", True)])
def test_teacher_forced_logits_equal_step_by_step_logits(attention, input_feeding):
    model = build_model(config(dec_rnn="lstm", attention=attention, input_feeding=input_feeding), SV, TV).eval()
    src, lengths, mask, tgt_in = random_batch(SV, TV)
    logits = model(src, lengths, mask, tgt_in)
    weights = model.attention_maps(src, lengths, mask, tgt_in)["cross"][0].mean(dim=1)  # (B, T, S), as search
    memory, state = model.encode(src, lengths, mask)
    for t in range(tgt_in.shape[1]):
        log_probs, state, step_weights = model.step_log_probs(tgt_in[:, t], state, memory)
        torch.testing.assert_close(log_probs, torch.log_softmax(logits[:, t], -1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(step_weights, weights[:, t], atol=1e-6, rtol=1e-5)


def test_padding_does_not_change_a_sentences_output():
    model = build_model(config(attention="general"), SV, TV).eval()
    src, lengths, mask, tgt_in = random_batch(SV, TV)
    full = model(src, lengths, mask, tgt_in)
    alone = model(src[2:, :2], lengths[2:], mask[2:, :2], tgt_in[2:])
    torch.testing.assert_close(full[2:], alone, atol=1e-5, rtol=1e-5)


def test_tied_embeddings_share_the_matrix_and_scheduled_sampling_runs():
    model = build_model(config(tie_embeddings=True, embed_dim=16), SV, TV)
    assert model.decoder.output.weight is model.decoder.embed.weight
    src, lengths, mask, tgt_in = random_batch(SV, TV)
    torch.manual_seed(0)
    sampled = model(src, lengths, mask, tgt_in, teacher_forcing=0.0)
    forced = model(src, lengths, mask, tgt_in, teacher_forcing=1.0)
    assert sampled.shape == forced.shape
    # the first step sees BOS either way; later steps see the model's own predictions instead
    torch.testing.assert_close(sampled[:, 0], forced[:, 0])
    assert not torch.allclose(sampled[:, 1:], forced[:, 1:])


@pytest.mark.parametrize("cfg,tolerance", [
    (ModelConfig(embed_dim=16, encoder=EncoderConfig(hidden_size=16), decoder=DecoderConfig(hidden_size=24),
                 attention=AttentionConfig(type="bahdanau")), 0.02),
    (ModelConfig(type="transformer", transformer=TransformerConfig(d_model=32, heads=4, ff_size=64, tie="none")), 0.1),
], ids=["rnn", "transformer"])
def test_the_models_flop_count_agrees_with_torchs_counter(cfg, tolerance):
    """`forward_flops` (what scripts/bench.py divides by time) counts what torch's FlopCounterMode counts, on
    unpadded sentences; the formulas leave out element-wise work and round attention to whole matrices."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(cfg, 50, 40).eval()
    batch, src_len, tgt_len = 4, 9, 7
    src, tgt = torch.randint(4, 50, (batch, src_len)), torch.randint(4, 40, (batch, tgt_len))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(src, torch.full((batch,), src_len), torch.ones(batch, src_len, dtype=torch.bool), tgt)
    counted = counter.get_total_flops()
    assert counted > 0
    assert model.forward_flops(batch * src_len, batch * tgt_len, batch) == pytest.approx(counted, rel=tolerance)
