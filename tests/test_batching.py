import numpy as np

from nmt.data.batching import collate, padding_fraction, token_batches
from nmt.tokens import BOS_ID, EOS_ID, PAD_ID


def lengths(n=500, seed=0):
    """Source lengths 1..40, target lengths correlated with them as in real parallel text."""
    rng = np.random.default_rng(seed)
    src = rng.integers(1, 40, n)
    return src, np.maximum(1, src + rng.integers(-4, 5, n))


def test_every_example_exactly_once_and_budget_respected():
    src, tgt = lengths()
    batches = token_batches(src, tgt, batch_tokens=400, max_sentences=64, seed=3)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(src)))
    for batch in batches:
        width = max(src[batch].max(), tgt[batch].max() + 1)
        assert len(batch) * width <= 400 or len(batch) == 1
        assert len(batch) <= 64


def test_shuffling_is_seeded_and_decoding_order_is_by_length():
    src, tgt = lengths()
    a = token_batches(src, tgt, 400, 64, seed=1)
    b = token_batches(src, tgt, 400, 64, seed=1)
    c = token_batches(src, tgt, 400, 64, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(len(x) == len(y) and np.array_equal(x, y) for x, y in zip(a, c, strict=False))
    ordered = np.concatenate(token_batches(src, None, 400, 64))
    assert np.all(np.diff(src[ordered]) >= 0)


def test_bucketing_reduces_padding():
    src, tgt = lengths()
    bucketed = token_batches(src, tgt, 400, 64, seed=1)
    rng = np.random.default_rng(0)
    random_order = np.array_split(rng.permutation(len(src)), len(bucketed))
    assert padding_fraction(bucketed, src, tgt) < 0.5 * padding_fraction(random_order, src, tgt)


def test_collate_shift_and_masks():
    batch = collate([[5, 6, EOS_ID], [7, EOS_ID]], [[10, 11], [12, 13, 14]], np.array([0, 1]))
    assert batch.src.tolist() == [[5, 6, EOS_ID], [7, EOS_ID, PAD_ID]]
    assert batch.src_mask.tolist() == [[True, True, True], [True, True, False]]
    assert batch.src_lengths.tolist() == [3, 2]
    assert batch.tgt_in.tolist() == [[BOS_ID, 10, 11, PAD_ID], [BOS_ID, 12, 13, 14]]
    assert batch.tgt_out.tolist() == [[10, 11, EOS_ID, PAD_ID], [12, 13, 14, EOS_ID]]
    assert batch.tgt_mask.tolist() == [[True, True, True, False], [True, True, True, True]]
    assert batch.n_tgt_tokens == 7
