"""Multi-head attention and the Transformer: invariants (weights, masks, padding, cache, search), not golden
tensors; and a reversal task learned from generated integer sequences as the proof that it learns."""

from __future__ import annotations

import contextlib
import itertools
import random

import numpy as np
import pytest
import torch
from batches import random_batch

from nmt.config import ModelConfig, TransformerConfig
from nmt.data.batching import collate
from nmt.inference.search import beam_search, greedy_search
from nmt.models.multihead import MultiHeadAttention
from nmt.models.transformer import Transformer
from nmt.tokens import BOS_ID, EOS_ID, PAD_ID

pytestmark = pytest.mark.numerics  # floating-point results: run again on AVX2 kernels

SV, TV = 30, 25


def transformer_config(**settings) -> ModelConfig:
    return ModelConfig(type="transformer", transformer=TransformerConfig(**settings))


def make_model(layers: int = 2, heads: int = 2, **extra) -> Transformer:
    torch.manual_seed(0)
    args = dict(d_model=16, heads=heads, ff_size=32, encoder_layers=layers, decoder_layers=layers, dropout=0.0,
                attention_dropout=0.0)
    src, tgt = extra.pop("src_vocab_size", SV), extra.pop("tgt_vocab_size", TV)
    return Transformer(transformer_config(**{**args, **extra}), src, tgt)


def attention_inputs(heads: int = 4, dropout: float = 0.0):
    torch.manual_seed(2)
    attention = MultiHeadAttention(query_size=12, memory_size=10, dim=16, heads=heads, dropout=dropout)
    query, memory = torch.randn(3, 5, 12), torch.randn(3, 6, 10)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2, [True] + [False] * 5])
    return attention, query, memory, mask


# ---- multi-head attention


@pytest.mark.parametrize("mask_kind", ["padding", "causal", "none"])
def test_explicit_and_fused_attention_agree(mask_kind):
    attention, query, memory, mask = attention_inputs(dropout=0.5)
    attention.eval()  # eval mode: no dropout on either path
    if mask_kind == "causal":
        mask = torch.ones(1, 5, 6, dtype=torch.bool).tril()  # (1, T, S), broadcast over the batch
    keys = attention.project_memory(memory)
    explicit, weights = attention(query, keys, None if mask_kind == "none" else mask, need_weights=True)
    fused, none = attention(query, keys, None if mask_kind == "none" else mask, need_weights=False)
    assert weights is not None and none is None
    assert explicit.shape == (3, 5, 10) and weights.shape == (3, 4, 5, 6)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)
    attention.train()  # attention dropout only now, on both paths
    for need_weights in (True, False):
        dropped, _ = attention(query, keys, None if mask_kind == "none" else mask, need_weights=need_weights)
        assert not torch.allclose(dropped, explicit, atol=1e-3)


@pytest.mark.parametrize("need_weights", [True, False])
def test_grouped_queries_read_one_keys_row_as_its_copies_would(need_weights):
    """Beams: g query rows per keys row give what g copies of the keys row give."""
    attention, query, memory, mask = attention_inputs()
    attention.eval()
    keys = attention.project_memory(memory)
    beams = torch.randn(6, 5, 12)
    grouped, grouped_weights = attention(beams, keys, mask, need_weights)
    copied, copied_weights = attention(beams, keys.repeat_interleave(2, 0), mask.repeat_interleave(2, 0),
                                       need_weights)
    torch.testing.assert_close(grouped, copied, atol=1e-5, rtol=1e-5)
    if need_weights:
        torch.testing.assert_close(grouped_weights, copied_weights, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="multiple of the memory rows"):
        attention(torch.randn(4, 5, 12), keys, mask, need_weights)


def test_every_heads_weights_sum_to_one_and_are_exactly_zero_on_padding():
    attention, query, memory, mask = attention_inputs()
    _, weights = attention(query, attention.project_memory(memory), mask)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 4, 5))
    assert torch.all(weights.masked_select(~mask[:, None, None, :].expand_as(weights)) == 0)
    assert torch.all(weights[2, :, :, 0] == 1)  # one real position takes all the weight


def test_dim_must_divide_into_heads():
    with pytest.raises(ValueError, match="multiple of heads"):
        MultiHeadAttention(8, 8, 10, 4)


def test_rnn_style_use_keys_projected_once_and_repeated_rows_agree():
    """The RNN decoder's pattern: project once, one query step per call, rows repeated for beams."""
    attention, query, memory, mask = attention_inputs(heads=2)
    keys = attention.project_memory(memory)
    step_query = query[:, :1]  # (B, 1, Hq)
    context, weights = attention(step_query, keys, mask)
    assert context.shape == (3, 1, 10) and weights.shape == (3, 2, 1, 6)
    k = 3
    repeated = (t.repeat_interleave(k, dim=0) for t in (step_query, keys, mask))
    beam_context, beam_weights = attention(*repeated)
    torch.testing.assert_close(beam_context, context.repeat_interleave(k, dim=0), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(beam_weights, weights.repeat_interleave(k, dim=0), atol=1e-6, rtol=1e-6)


# ---- the Transformer


def last_cross(model: Transformer, *batch: torch.Tensor) -> torch.Tensor:
    """The last layer's cross-attention averaged over heads (B, T, S): what search returns per step."""
    return model.attention_maps(*batch)["cross"][-1].mean(dim=1)


@pytest.mark.parametrize("layers,heads", [(1, 1), (2, 4)])
def test_shapes_maps_and_every_parameter_gets_a_gradient(layers, heads):
    model = make_model(layers, heads, positions="learned", tie="none")
    src, lengths, mask, tgt_in = random_batch(SV, TV, seed=1)
    logits = model(src, lengths, mask, tgt_in)
    assert logits.shape == (3, 6, TV)
    logits.logsumexp(-1).sum().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    model.eval()
    guided, weights = model.forward_with_attention(src, lengths, mask, tgt_in, layers - 1)
    assert weights.shape == (3, heads, 6, 7)
    torch.testing.assert_close(guided, model(src, lengths, mask, tgt_in), atol=1e-5, rtol=1e-5)
    maps = model.attention_maps(src, lengths, mask, tgt_in)
    assert {kind: found.shape[0] for kind, found in maps.items()} == model.describe().kinds
    assert maps["encoder"].shape == (layers, 3, heads, 7, 7)
    assert maps["decoder"].shape == (layers, 3, heads, 6, 6)
    assert maps["cross"].shape == (layers, 3, heads, 6, 7)
    torch.testing.assert_close(maps["cross"][-1], weights)
    for name, maps_ in maps.items():
        torch.testing.assert_close(maps_.sum(-1), torch.ones(maps_.shape[:-1]), msg=name)
    assert torch.all(maps["cross"].masked_select(~mask[None, :, None, None, :].expand_as(maps["cross"])) == 0)
    assert torch.all(maps["decoder"].triu(1) == 0)  # nothing attends to a later target position


def test_training_fused_path_equals_eval_explicit_path_without_dropout():
    model = make_model()
    src, lengths, mask, tgt_in = random_batch(SV, TV, seed=1)
    fused = model(src, lengths, mask, tgt_in)
    explicit, _ = model.eval().forward_with_attention(src, lengths, mask, tgt_in, 1)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)


def test_later_target_tokens_do_not_change_earlier_logits():
    model = make_model().eval()
    src, lengths, mask, tgt_in = random_batch(SV, TV, seed=1)
    changed = tgt_in.clone()
    changed[:, 3:] = torch.randint(4, TV, (3, 3))
    before = model(src, lengths, mask, tgt_in)
    after = model(src, lengths, mask, changed)
    torch.testing.assert_close(after[:, :3], before[:, :3], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(after[:, 3:], before[:, 3:])


def test_padding_does_not_change_a_sentences_output():
    model = make_model().eval()
    src, lengths, mask, tgt_in = random_batch(SV, TV, seed=1)
    tgt_in[2, 4:] = PAD_ID  # the short sentence's target is padded too
    full, full_weights = model(src, lengths, mask, tgt_in), last_cross(model, src, lengths, mask, tgt_in)
    alone = model(src[2:, :2], lengths[2:], mask[2:, :2], tgt_in[2:, :4])
    alone_weights = last_cross(model, src[2:, :2], lengths[2:], mask[2:, :2], tgt_in[2:, :4])
    torch.testing.assert_close(full[2:, :4], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full_weights[2:, :4, :2], alone_weights, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("norm,positions", [("pre", "sinusoidal"), ("post", "learned")])
def test_cached_steps_equal_the_teacher_forced_forward(norm, positions):
    model = make_model(norm=norm, positions=positions).eval()
    src, lengths, mask, tgt_in = random_batch(SV, TV, seed=1)
    logits, weights = model(src, lengths, mask, tgt_in), last_cross(model, src, lengths, mask, tgt_in)
    memory, state = model.encode(src, lengths, mask)
    for t in range(tgt_in.shape[1]):
        log_probs, state, step_weights = model.step_log_probs(tgt_in[:, t], state, memory)
        assert log_probs.dtype == torch.float32 and state.position == t + 1
        assert all(state.keys(layer).shape == (3, t + 1, 32) for layer in range(len(state.cache)))
        torch.testing.assert_close(log_probs, torch.log_softmax(logits[:, t], -1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(step_weights, weights[:, t], atol=1e-5, rtol=1e-5)


def test_the_in_place_cache_equals_the_concatenated_one_and_survives_a_branch(monkeypatch):
    """The in-place cache (the fast path) against concatenation (the plain one); a state stepped twice (two
    continuations of one prefix) copies instead of overwriting its first continuation's position."""
    model = make_model().eval()
    src, lengths, mask, tgt_in = random_batch(SV, TV, seed=1)

    def steps(ids_per_step):
        memory, state = model.encode(src, lengths, mask)
        out = []
        for ids in ids_per_step:
            log_probs, state, _ = model.step_log_probs(ids, state, memory)
            out.append(log_probs)
        return out, state, memory

    with torch.inference_mode():
        in_place, state, memory = steps(tgt_in.T)
        assert state.in_place and state.cache[0].shape[1] > state.position  # room beyond the positions written
        monkeypatch.setattr(Transformer, "in_place_cache", False)
        plain, plain_state, _ = steps(tgt_in.T)
        assert not plain_state.in_place and plain_state.cache[0].shape[1] == plain_state.position
        monkeypatch.undo()
        for a, b in zip(in_place, plain, strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
        _, first, _ = model.step_log_probs(torch.full((3,), 5), state, memory)
        _, second, _ = model.step_log_probs(torch.full((3,), 6), state, memory)  # a branch of the same state
        after_first, _, _ = model.step_log_probs(torch.full((3,), 7), first, memory)
        after_second, _, _ = model.step_log_probs(torch.full((3,), 7), second, memory)
    assert first.cache[0].data_ptr() == state.cache[0].data_ptr() != second.cache[0].data_ptr()
    with torch.inference_mode():
        memory, replay = model.encode(src, lengths, mask)
        for ids in [*tgt_in.T, torch.full((3,), 5)]:
            _, replay, _ = model.step_log_probs(ids, replay, memory)
        expected, _, _ = model.step_log_probs(torch.full((3,), 7), replay, memory)
    torch.testing.assert_close(after_first, expected, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(after_second, expected)


def test_beam_hypotheses_score_and_attend_as_the_teacher_forced_forward_does():
    """Beam 3's back-pointers traced at the end: every returned hypothesis, fed back teacher forced, has the
    log-probability and the attention rows the search reported."""
    model = make_model(heads=4).eval()
    src, lengths, mask, _ = random_batch(SV, TV, seed=3)
    with torch.inference_mode():
        memory, state = model.encode(src, lengths, mask)
        found = beam_search(model.step_log_probs, memory, state, torch.tensor([7, 5, 3]), 3, BOS_ID, EOS_ID, PAD_ID,
                            n_best=3)
        for i, hyps in enumerate(found):
            for h in hyps:
                steps = h.attention.shape[0]
                targets = h.tokens + [EOS_ID] * (steps - len(h.tokens))  # EOS scored where it ended with one
                tgt_in = torch.tensor([[BOS_ID, *targets[:-1]]])
                one = (src[i:i + 1], lengths[i:i + 1], mask[i:i + 1], tgt_in)
                logits, weights = model(*one), last_cross(model, *one)
                log_p = torch.log_softmax(logits[0], -1).gather(-1, torch.tensor(targets)[:, None]).sum()
                assert h.log_prob == pytest.approx(float(log_p), abs=1e-4)
                torch.testing.assert_close(h.attention, weights[0], atol=1e-5, rtol=1e-5)
    assert len({tuple(h.tokens) for h in found[0]}) == 3


def test_beam_of_one_equals_greedy_through_search():
    model = make_model(heads=4).eval()
    src, lengths, mask, _ = random_batch(SV, TV, seed=1)
    max_lengths = torch.tensor([9, 7, 4])
    with torch.inference_mode():
        memory, state = model.encode(src, lengths, mask)
        greedy = greedy_search(model.step_log_probs, memory, state, max_lengths, BOS_ID, EOS_ID, PAD_ID)
        beam = beam_search(model.step_log_probs, memory, state, max_lengths, 1, BOS_ID, EOS_ID, PAD_ID)
    for g, (b,) in zip(greedy, beam, strict=True):
        assert g.tokens == b.tokens
        assert g.log_prob == pytest.approx(b.log_prob, abs=1e-4)
        torch.testing.assert_close(g.attention, b.attention)


@pytest.mark.parametrize("mode", ["inference", "gradients"])
def test_memory_repeat_and_state_select_keep_rows_together(mode):
    """Beams: rows repeated, then reordered within a sentence; each row keeps its own cache (the in-place
    cache under inference mode, the concatenated one where gradients are recorded)."""
    model = make_model().eval()
    src, lengths, mask, tgt_in = random_batch(SV, TV, seed=1)
    with torch.inference_mode() if mode == "inference" else contextlib.nullcontext():
        _check_rows_stay_together(model, src, lengths, mask, tgt_in)


def _check_rows_stay_together(model, src, lengths, mask, tgt_in):
    memory, state = model.encode(src, lengths, mask)
    for t in range(2):
        _, state, _ = model.step_log_probs(tgt_in[:, t], state, memory)
    expected, _, expected_weights = model.step_log_probs(tgt_in[:, 2], state, memory)
    beams, state = memory.repeat(2), state.select(torch.arange(3).repeat_interleave(2))
    assert all(t.shape[0] == 6 for t in beams.flatten())
    prev = tgt_in[:, 2].repeat_interleave(2)
    prev[1::2] = 5  # the second beam of each sentence takes another token
    log_probs, state, weights = model.step_log_probs(prev, state, beams)
    torch.testing.assert_close(log_probs[0::2], expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(weights[0::2], expected_weights, atol=1e-6, rtol=1e-6)
    swap = torch.tensor([1, 0, 3, 2, 5, 4])
    following = torch.full((6,), 7)
    swapped, _, _ = model.step_log_probs(following, state.select(swap), beams)
    unswapped, _, _ = model.step_log_probs(following, state, beams)
    torch.testing.assert_close(swapped, unswapped[swap], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(unswapped[0], unswapped[1])


def test_three_way_tying_shares_one_parameter():
    model = make_model(src_vocab_size=TV, tie="all")
    assert model.src_embed.weight is model.tgt_embed.weight is model.output.weight
    untied = make_model(src_vocab_size=TV, tie="none")
    shared = TV * 16
    assert sum(p.numel() for p in untied.parameters()) - sum(p.numel() for p in model.parameters()) == 2 * shared
    decoder_tied = make_model(tie="decoder")
    assert decoder_tied.output.weight is decoder_tied.tgt_embed.weight
    assert decoder_tied.src_embed.weight is not decoder_tied.tgt_embed.weight
    with pytest.raises(ValueError, match="joint vocabulary"):
        make_model(tie="all")


def test_post_norm_runs_and_differs_from_pre_norm():
    pre, post = make_model(norm="pre").eval(), make_model(norm="post").eval()
    missing, unexpected = post.load_state_dict(pre.state_dict(), strict=False)
    assert not missing and set(unexpected) == {f"{stack}_norm.{p}" for stack in ("encoder", "decoder")
                                               for p in ("weight", "bias")}
    src, lengths, mask, tgt_in = random_batch(SV, TV, seed=1)
    pre_logits = pre(src, lengths, mask, tgt_in)
    post_logits = post(src, lengths, mask, tgt_in)
    assert torch.isfinite(post_logits).all()
    assert not torch.allclose(pre_logits, post_logits, atol=1e-3)


def test_clear_errors_for_scheduled_sampling_and_overlong_inputs():
    model = make_model(max_positions=6)
    src, lengths, mask, tgt_in = random_batch(SV, TV, seed=1)
    with pytest.raises(ValueError, match="RNN"):
        model(src, lengths, mask, tgt_in[:, :5], teacher_forcing=0.5)
    with pytest.raises(ValueError, match="max_positions"):
        model(src, lengths, mask, tgt_in[:, :5])  # the source has 7 positions


# ---- learning


def reversal_data(count: int, seed: int, exclude: set[tuple[int, ...]] | None = None) -> list[tuple[int, ...]]:
    """Distinct integer sequences over ids 4..13, lengths 2-6, none of them in `exclude`."""
    rng = random.Random(seed)
    found: dict[tuple[int, ...], None] = {}
    while len(found) < count:
        seq = tuple(rng.randrange(4, 14) for _ in range(rng.randint(2, 6)))
        if seq not in (exclude or set()):
            found[seq] = None
    return list(found)


@pytest.fixture
def one_thread():
    """Tiny matrices: one thread is faster than two, and far faster on a machine whose cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.numerics
def test_a_tiny_transformer_learns_to_reverse_sequences(one_thread):
    torch.manual_seed(0)
    train, vocab = reversal_data(3000, seed=1), 14
    test = reversal_data(150, seed=2, exclude=set(train))
    model = Transformer(transformer_config(d_model=64, heads=2, ff_size=128, encoder_layers=2, decoder_layers=2,
                                           dropout=0.0, attention_dropout=0.0, tie="all"), vocab, vocab)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.98))
    steps, warmup = 400, 50  # linear warmup, then linear decay to 5%
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.05, (steps - step) / (steps - warmup))))
    rng = np.random.default_rng(0)
    for _ in range(steps):
        indices = rng.choice(len(train), 64, replace=False)
        batch = collate([list(train[i]) + [EOS_ID] for i in indices], [list(reversed(train[i])) for i in indices],
                        indices)
        assert batch.tgt_in is not None and batch.tgt_out is not None
        logits = model(batch.src, batch.src_lengths, batch.src_mask, batch.tgt_in)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.tgt_out.flatten(), ignore_index=PAD_ID)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()

    model.eval()
    batch = collate([list(s) + [EOS_ID] for s in test], None, np.arange(len(test)))
    max_lengths = batch.src_lengths + 3
    with torch.inference_mode():
        memory, state = model.encode(batch.src, batch.src_lengths, batch.src_mask)
        greedy = greedy_search(model.step_log_probs, memory, state, max_lengths, BOS_ID, EOS_ID, PAD_ID)
        beam = beam_search(model.step_log_probs, memory, state, max_lengths, 3, BOS_ID, EOS_ID, PAD_ID)
    expected = [list(reversed(s)) for s in test]
    greedy_exact = np.mean([h.tokens == e for h, e in zip(greedy, expected, strict=True)])
    beam_exact = np.mean([hyps[0].tokens == e for hyps, e in zip(beam, expected, strict=True)])
    assert greedy_exact >= 0.95, f"greedy exact match {greedy_exact:.2f} after training (loss {loss.item():.3f})"
    assert beam_exact >= 0.95, f"beam-3 exact match {beam_exact:.2f}"


def test_layer_head_combinations_are_the_same_interface():
    """Every (layers, heads) pair decodes through search: the interface does not depend on the size."""
    src, lengths, mask, _ = random_batch(SV, TV, seed=1)
    for layers, heads in itertools.product([1, 2], [1, 4]):
        model = make_model(layers, heads).eval()
        with torch.inference_mode():
            memory, state = model.encode(src, lengths, mask)
            found = greedy_search(model.step_log_probs, memory, state, torch.tensor([4, 4, 4]), BOS_ID, EOS_ID, PAD_ID)
        assert all(h.attention.shape[1] == 7 for h in found)
