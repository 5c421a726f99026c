"""Word-level attention (nmt.inspect.words): the merge rule on its own, then through the library view, the
Python API and POST /attention on the trained toy runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

import nmt
from nmt.inference.attention_stats import attention_stats
from nmt.inspect.buckets import head_entropies
from nmt.inspect.view import attention_view
from nmt.inspect.words import drop_eos, merge_words, shape_view, word_groups, word_labels
from nmt.runs.loading import load_model
from nmt.serve.server import create_app
from nmt.serve.service import ModelRegistry

SRC = ["▁Zwei", "▁Hund", "e", "▁spiel", "en", "▁", ".", "</s>"]
TGT = ["▁Two", "▁do", "g", "s", "▁play", "</s>"]


def random_rows(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    return torch.softmax(torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)), dim=-1).double()


def test_pieces_group_into_words_and_special_tokens_stand_alone():
    assert word_groups(SRC) == [[0], [1, 2], [3, 4], [5, 6], [7]]
    assert word_labels(SRC, word_groups(SRC)) == ["Zwei", "Hunde", "spielen", ".", "</s>"]
    assert word_groups(["<s>", "g", "▁a", "</s>", "x"]) == [[0], [1], [2], [3], [4]]


def test_merge_sums_source_pieces_averages_target_pieces_and_rows_still_sum_to_one():
    weights = random_rows(len(TGT), len(SRC))
    merged = merge_words(weights, word_groups(TGT), word_groups(SRC))
    assert merged.shape == (4, 5)
    assert torch.allclose(merged.sum(-1), torch.ones(4, dtype=torch.double))
    # "dogs" (target pieces 1-3) -> "Hunde" (source pieces 1, 2): the mean over rows of the sum over columns
    assert merged[1, 1] == pytest.approx(weights[1:4, 1:3].sum(-1).mean().item())
    assert merged[0, 0] == pytest.approx(weights[0, 0].item())  # one piece each: unchanged


def test_merge_keeps_rows_summing_to_one_for_any_segmentation():
    generator = np.random.default_rng(3)
    for seed in range(20):
        rows, cols = generator.integers(1, 9, size=2)
        pieces = [("▁" if i == 0 or generator.random() < 0.5 else "") + "x" for i in range(cols)]
        targets = [("▁" if i == 0 or generator.random() < 0.5 else "") + "y" for i in range(rows)]
        merged = merge_words(random_rows(rows, cols, seed), word_groups(targets), word_groups(pieces))
        assert torch.allclose(merged.sum(-1), torch.ones(merged.shape[0], dtype=torch.double))
        assert (merged >= 0).all()


def test_without_eos_the_row_and_column_go_and_rows_are_renormalized():
    weights = random_rows(len(TGT), len(SRC))
    kept, rows, cols = drop_eos(weights, TGT, SRC)
    assert "</s>" not in rows + cols and kept.shape == (len(TGT) - 1, len(SRC) - 1)
    assert torch.allclose(kept.sum(-1), torch.ones(len(TGT) - 1, dtype=torch.double))
    assert torch.allclose(kept[0], weights[0, :-1] / weights[0, :-1].sum())
    only_eos = torch.tensor([[0.0, 1.0], [0.5, 0.5]])
    assert drop_eos(only_eos, ["▁a", "▁b"], ["▁x", "</s>"])[0].tolist() == [[0.0], [1.0]]


def test_shape_view_works_on_stacked_heads():
    weights = torch.stack([random_rows(len(TGT), len(SRC), seed) for seed in range(6)]).reshape(2, 3, len(TGT),
                                                                                                len(SRC))
    shaped, rows, cols = shape_view(weights, TGT, SRC, words=True, eos=False)
    assert shaped.shape == (2, 3, 3, 4) and rows == ["Two", "dogs", "play"] and cols == ["Zwei", "Hunde",
                                                                                       "spielen", "."]
    assert torch.allclose(shaped.sum(-1), torch.ones(2, 3, 3, dtype=torch.double))
    alone, _, _ = shape_view(weights[1, 2], TGT, SRC, words=True, eos=False)
    assert torch.allclose(shaped[1, 2], alone)


@pytest.mark.parametrize("fixture", ["trained_run", "trained_transformer"])
def test_the_view_merges_words_and_computes_its_statistics_on_the_map_shown(fixture, request):
    loaded = load_model(request.getfixturevalue(fixture), "best")
    text = "abca de fo"  # "abca" is no word of the corpus: several pieces
    pieces = attention_view(loaded, text)
    assert len(pieces.col_labels) > len(text.split()) + 1
    for eos in (True, False):
        view = attention_view(loaded, text, words=True, eos=eos)
        assert view.col_labels == ["abca", "de", "fo"] + (["</s>"] if eos else [])
        assert ("</s>" in view.row_labels) == eos
        assert np.allclose(view.weights.sum(-1), 1.0, atol=1e-5)
        assert view.stats.entropy == pytest.approx(attention_stats(torch.from_numpy(view.weights)).entropy)
        for _, panel in view.panels:
            assert panel.shape == view.weights.shape
    merged, _, _ = shape_view(torch.from_numpy(pieces.weights), pieces.row_labels, pieces.col_labels, words=True)
    assert np.allclose(attention_view(loaded, text, words=True).weights, merged.numpy(), atol=1e-6)


def test_the_api_and_the_server_serve_the_word_view(trained_transformer):
    run = nmt.load(trained_transformer)
    view = run.attention("abca de fo", layer=2, head=1, words=True, eos=False)
    expected = attention_view(run.loaded, "abca de fo", layer=2, head=1, words=True, eos=False)
    assert view.col_tokens == expected.col_labels == ["abca", "de", "fo"]
    assert np.allclose(view.weights, expected.weights) and np.allclose(view.entropy, expected.stats.entropy)
    every = run.attention("abca de fo", words=True)
    assert every.weights.shape[-1] == 4 and np.allclose(every.weights.sum(-1), 1.0, atol=1e-5)

    with TestClient(create_app(ModelRegistry.load([("transformer", trained_transformer)]))) as client:
        body = {"text": "abca de fo", "layer": 2, "head": 1, "words": True, "eos": False}
        found = client.post("/attention", json=body).json()
        assert found["words"] is True and found["eos"] is False
        assert found["col_tokens"] == ["abca", "de", "fo"]
        assert np.allclose(found["weights"], expected.weights, atol=1e-6)
        assert found["entropy"] == pytest.approx(expected.stats.entropy)
        refused = client.post("/attention", json={"text": "ab", "words": "yes"})
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "words"


def test_analyze_head_entropies_of_words_equal_the_inspected_word_view(trained_transformer):
    loaded = load_model(trained_transformer, "best")
    view = attention_view(loaded, "abca de fo", kind="decoder", words=True, eos=False)
    found = head_entropies(loaded.model, [view.src_ids], [view.tgt_ids], "decoder", tokenizer=loaded.tokenizer,
                           words=True, eos=False)[0]
    assert found == pytest.approx(np.array([h.entropy for h in view.heads]).reshape(found.shape), abs=1e-6)
    pieces = head_entropies(loaded.model, [view.src_ids], [view.tgt_ids], "decoder")[0]
    assert not np.allclose(found, pieces)  # the merged maps, not the subword ones
