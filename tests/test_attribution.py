"""Attribution beside attention (nmt.inspect.attribution): Spearman's rank correlation, relevance rows, and
attributions of the toy runs, which copy their input in reverse order: target word j comes from source word
n - 1 - j, so their attributions must peak on that mirrored diagonal."""

from __future__ import annotations

import numpy as np
import pytest
from toy import reversal_pairs

import nmt
from nmt.errors import ConfigError
from nmt.inspect.attribution import attribute, attribution_view, spearman_rows
from nmt.inspect.view import attention_view
from nmt.runs.loading import load_model


def test_spearman_is_1_for_the_same_order_minus_1_for_the_reverse_and_nan_for_a_constant_row():
    a = np.array([[0.1, 0.5, 0.2, 0.9], [0.1, 0.5, 0.2, 0.9], [0.25, 0.25, 0.25, 0.25]])
    b = np.array([[1.0, 7.0, 3.0, 8.0], [0.9, 0.2, 0.5, 0.1], [0.1, 0.2, 0.3, 0.4]])
    found = spearman_rows(a, b)
    assert found[:2] == [pytest.approx(1.0), pytest.approx(-1.0)] and np.isnan(found[2])
    ties = spearman_rows(np.array([[0.3, 0.1, 0.3, 0.2]]), np.array([[4.0, 1.0, 3.0, 2.0]]))[0]
    assert ties == pytest.approx(np.corrcoef([2.5, 0.0, 2.5, 1.0], [3.0, 0.0, 2.0, 1.0])[0, 1])  # mean rank of ties


@pytest.mark.parametrize("method", ["input_x_gradient", "integrated_gradients"])
def test_relevance_rows_sum_to_1_for_subwords_and_words_with_and_without_eos(trained_transformer, method):
    loaded = load_model(trained_transformer, "best")
    view = attention_view(loaded, "abca de fo")
    relevance = attribute(loaded, view.src_ids, view.tgt_ids, method, steps=8)
    assert relevance.shape == (len(view.tgt_ids) + 1, len(view.src_ids))
    assert np.allclose(relevance.sum(-1).numpy(), 1.0, atol=1e-5) and (relevance >= 0).all()
    for words in (False, True):
        for eos in (True, False):
            shown = attention_view(loaded, "abca de fo", words=words, eos=eos)
            found = attribution_view(loaded, shown, method, steps=8)
            assert (found.row_labels, found.col_labels) == (shown.row_labels, shown.col_labels)
            assert found.relevance.shape == found.attention.shape == shown.weights.shape
            assert np.allclose(found.relevance.sum(-1), 1.0, atol=1e-5)
            assert len(found.spearman) == len(shown.row_labels) and -1.0 <= found.mean_spearman <= 1.0


@pytest.mark.parametrize(("method", "least"), [("input_x_gradient", 0.8), ("integrated_gradients", 0.6)])
def test_attributions_of_the_copying_model_peak_on_the_diagonal(trained_run, method, least):
    """Over 20 sentences, the share of target words whose largest relevance is on their mirrored source word
    (measured 0.98 and 0.82 against 0.2 by chance for 3 to 5 words)."""
    loaded = load_model(trained_run, "best")
    hits = rows = 0
    for source, target in reversal_pairs(20, 11, 3, 5):
        view = attention_view(loaded, source, words=True, eos=False)
        if view.translation != target:  # the diagonal is that of the right translation
            continue
        found = attribution_view(loaded, view, method, steps=16)
        mirrored = np.arange(len(source.split()))[::-1]
        hits += int((found.relevance.argmax(-1) == mirrored).sum())
        rows += len(mirrored)
    assert rows >= 3 * 15 and hits / rows >= least


def test_the_api_returns_attribution_beside_attention(trained_transformer):
    run = nmt.load(trained_transformer)
    found = run.attribution("ab ca de", layer=1, head=2, words=True, eos=False, steps=8,
                            method="integrated_gradients")
    view = run.attention("ab ca de", layer=1, head=2, words=True, eos=False)
    assert found.col_labels == view.col_tokens == ["ab", "ca", "de"]
    assert np.allclose(found.attention, view.weights)
    assert found.spearman == pytest.approx(spearman_rows(view.weights, found.relevance), nan_ok=True)
    with pytest.raises(ConfigError, match="--attribution gradients: choose one of input_x_gradient"):
        run.attribution("ab ca de", method="gradients")
    with pytest.raises(ConfigError, match="goes with --kind cross"):
        attribution_view(run.loaded, attention_view(run.loaded, "ab ca de", kind="encoder"))
