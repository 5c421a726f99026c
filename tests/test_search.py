"""Search against scripted distributions (no model), and against the trained toy model."""

import math

import pytest
import torch
from toy import reverse_words

from nmt.inference.search import beam_search, greedy_search

pytestmark = pytest.mark.numerics  # floating-point results: run again on AVX2 kernels

PAD, BOS, EOS, A, B, C = 0, 2, 3, 4, 5, 6
V, S = 7, 3

# Next-token distributions by prefix; greedy takes A (0.5) then EOS: p = 0.5 * 0.34 = 0.17,
# while B EOS has p = 0.4 * 0.9 = 0.36.
SCRIPT = {
    (): {A: 0.5, B: 0.4, C: 0.1},
    (A,): {EOS: 0.34, A: 0.33, B: 0.33},
    (B,): {EOS: 0.9, C: 0.1},
}


def distribution(prefix: tuple[int, ...]) -> dict[int, float]:
    return SCRIPT.get(prefix, {EOS: 0.6, C: 0.4})


def log_prob_of(tokens: list[int], ended: bool) -> float:
    total, prefix = 0.0, ()
    for token in tokens + ([EOS] if ended else []):
        total += math.log(distribution(prefix)[token])
        prefix = prefix + (token,)
    return total


class PrefixState:
    """The scripted 'decoder state': the tokens generated so far per row."""

    def __init__(self, prefixes: list[tuple[int, ...]]):
        self.prefixes = prefixes

    def select(self, index: torch.Tensor) -> "PrefixState":
        return PrefixState([self.prefixes[i] for i in index.tolist()])


class NoMemory:
    """The scripted 'encoder memory': the distributions depend on the prefix only."""

    def select(self, index: torch.Tensor) -> "NoMemory":
        return self

    def repeat(self, times: int) -> "NoMemory":
        return self


def scripted_step(prev: torch.Tensor, state: PrefixState, memory: NoMemory):
    prefixes = [p if token == BOS else p + (token,) for p, token in zip(state.prefixes, prev.tolist(), strict=True)]
    log_probs = torch.full((len(prefixes), V), float("-inf"))
    for row, prefix in enumerate(prefixes):
        for token, p in distribution(prefix).items():
            log_probs[row, token] = math.log(p)
    return log_probs, PrefixState(prefixes), torch.full((len(prefixes), S), 1.0 / S)


def run_beam(k: int, n_best: int = 1, batch: int = 2, max_len: int = 6, alpha: float = 0.0):
    state = PrefixState([()] * batch)
    return beam_search(scripted_step, NoMemory(), state, torch.full((batch,), max_len), k, BOS, EOS, PAD, alpha,
                       n_best)


def test_greedy_takes_the_locally_best_token():
    hyps = greedy_search(scripted_step, NoMemory(), PrefixState([()] * 2), torch.full((2,), 6), BOS, EOS, PAD)
    assert [h.tokens for h in hyps] == [[A], [A]]
    assert hyps[0].log_prob == pytest.approx(log_prob_of([A], True))
    assert hyps[0].attention.shape == (2, S)  # one row per generated token, EOS included


def test_beam_one_equals_greedy():
    greedy = greedy_search(scripted_step, NoMemory(), PrefixState([()] * 2), torch.full((2,), 6), BOS, EOS, PAD)
    beam = [h[0] for h in run_beam(1)]
    assert [h.tokens for h in beam] == [h.tokens for h in greedy]
    assert [h.log_prob for h in beam] == pytest.approx([h.log_prob for h in greedy])


def test_beam_finds_the_better_hypothesis_and_nbest_is_sorted():
    nbest = run_beam(3, n_best=3)
    for hyps in nbest:
        assert hyps[0].tokens == [B]
        assert hyps[0].log_prob == pytest.approx(math.log(0.36))
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)
        for h in hyps:  # scores are those of the hypotheses returned: nothing extended past EOS
            assert h.log_prob == pytest.approx(log_prob_of(h.tokens, ended=True))
            assert EOS not in h.tokens


def test_length_limit_ends_hypotheses_without_eos():
    hyps = greedy_search(lambda p, s, m: _always(p, s, A), NoMemory(), PrefixState([()]), torch.tensor([4]), BOS,
                         EOS, PAD)
    assert hyps[0].tokens == [A, A, A, A]
    beams = beam_search(lambda p, s, m: _always(p, s, A), NoMemory(), PrefixState([()]), torch.tensor([4]), 2, BOS,
                        EOS, PAD)
    assert beams[0][0].tokens == [A, A, A, A]


def _always(prev, state, token):
    log_probs = torch.full((prev.shape[0], V), -20.0)
    log_probs[:, token] = 0.0
    return log_probs, state, torch.full((prev.shape[0], S), 1.0 / S)


def test_length_penalty_ranks_by_normalized_score():
    plain = run_beam(3, n_best=3, alpha=0.0)[0]
    penalized = run_beam(3, n_best=3, alpha=5.0)[0]
    for h in penalized:
        assert h.score == pytest.approx(h.log_prob / ((5 + len(h.tokens) + 1) / 6) ** 5.0)
    assert [h.score for h in penalized] == sorted((h.score for h in penalized), reverse=True)
    assert len(penalized[0].tokens) >= len(plain[0].tokens)
    assert [h.log_prob for h in plain] == sorted((h.log_prob for h in plain), reverse=True)


def test_trained_model_beam_scores_at_least_greedy_and_batching_changes_nothing(trained_run):
    from nmt.inference.translate import Translator
    from nmt.runs.loading import load_model

    translator = Translator.for_run(load_model(trained_run))
    lines = ["ab ca de fo gu", "le mi", "no pa ab ca de fo", "hi jo ku le", "gu", "fo fo fo ab"]
    encoded = translator.encode(lines)
    greedy = translator.search_ids(encoded, beam_size=1)
    beam = translator.search_ids(encoded, beam_size=4)
    for g, b in zip(greedy, beam, strict=True):
        assert b[0].log_prob >= g[0].log_prob - 1e-4
    one_at_a_time = [translator.search_ids([ids], beam_size=4)[0] for ids in encoded]
    for batched, alone in zip(beam, one_at_a_time, strict=True):
        assert batched[0].tokens == alone[0].tokens
        assert batched[0].log_prob == pytest.approx(alone[0].log_prob, abs=1e-4)
    assert [t.text for t in translator.translate(lines[:2], beam_size=1)] == [reverse_words(s) for s in lines[:2]]


@pytest.mark.parametrize("fixture", ["trained_run", "trained_transformer"])
def test_dropping_finished_sentences_from_the_batch_changes_no_hypothesis(fixture, request):
    """The fast path (rows of finished sentences dropped as soon as one finishes) against the plain one (every
    row decoded to the end), greedy and beam, on sentences of different lengths."""
    from nmt.data.batching import collate
    from nmt.runs.loading import load_model
    from nmt.tokens import BOS_ID, EOS_ID, PAD_ID

    loaded = load_model(request.getfixturevalue(fixture))
    model = loaded.model.eval()
    lines = ["ab ca de fo gu hi jo", "le", "no pa ab", "hi jo ku le mi", "gu fo", "fo fo fo ab ca de fo gu hi"]
    src = [ids for ids in loaded.tokenizer.encode_src(lines)]
    batch = collate(src, None, list(range(len(src))))
    limits = batch.src_lengths + 2
    with torch.inference_mode():
        memory, state = model.encode(batch.src, batch.src_lengths, batch.src_mask)
        searches = {
            "greedy": lambda share: [[h] for h in greedy_search(model.step_log_probs, memory, state, limits, BOS_ID,
                                                                EOS_ID, PAD_ID, drop_share=share)],
            "beam": lambda share: beam_search(model.step_log_probs, memory, state, limits, 3, BOS_ID, EOS_ID, PAD_ID,
                                              1.0, n_best=3, drop_share=share),
        }
        for search in searches.values():
            dropping, plain = search(0.0), search(1.0)
            assert len({len(hyps[0].tokens) for hyps in plain}) > 2  # the sentences do end at different steps
            for a, b in zip(dropping, plain, strict=True):
                assert [h.tokens for h in a] == [h.tokens for h in b]
                assert [h.log_prob for h in a] == pytest.approx([h.log_prob for h in b], abs=1e-5)
                for x, y in zip(a, b, strict=True):
                    torch.testing.assert_close(x.attention, y.attention, atol=1e-5, rtol=1e-5)
