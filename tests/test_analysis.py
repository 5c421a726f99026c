import json
import math

import numpy as np
import pytest
import torch
from toy import reverse_words
from toy_runs import MIN_DEV_BLEU

from nmt.errors import ConfigError
from nmt.inference.attention_stats import attention_stats, entropy
from nmt.inference.translate import Translator
from nmt.inspect.buckets import analyze, bucket_edges, head_entropies
from nmt.inspect.comparison import summarize_run
from nmt.inspect.plots import heatmap_figure, heatmap_html
from nmt.inspect.sentence import inspect_sentence
from nmt.runs.loading import load_model
from nmt.tokens import EOS_ID

pytestmark = pytest.mark.numerics  # floating-point results: run again on AVX2 kernels


def test_statistics_match_hand_computed_values():
    weights = torch.tensor([[0.25, 0.25, 0.25, 0.25],   # uniform: entropy log 4, max .25, 4 above .1
                            [1.0, 0.0, 0.0, 0.0],       # one-hot: entropy 0, max 1, 1 above
                            [0.5, 0.5, 0.0, 0.0]])      # two-way: entropy log 2
    stats = attention_stats(weights, threshold=0.1)
    assert stats.entropy == pytest.approx([math.log(4), 0.0, math.log(2)])
    assert stats.max_weight == pytest.approx([0.25, 1.0, 0.5])
    assert stats.above_threshold == [4, 1, 2]
    mean, std = stats.summary()["entropy"]
    values = np.array([math.log(4), 0.0, math.log(2)])
    assert mean == pytest.approx(values.mean()) and std == pytest.approx(values.std())
    assert attention_stats(weights, threshold=0.3).above_threshold == [0, 1, 2]
    assert entropy(torch.full((7,), 1 / 7)).item() == pytest.approx(math.log(7))


def test_heatmap_has_the_right_shape_and_labels(tmp_path):
    weights = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    src, tgt = ["▁i", "▁like", "</s>"], ["▁私", "</s>"]
    fig = heatmap_figure(weights, src, tgt, "i like -> 私")
    ax = fig.axes[0]
    assert ax.images[0].get_array().shape == (2, 3)
    assert [t.get_text() for t in ax.get_xticklabels()] == src
    assert [t.get_text() for t in ax.get_yticklabels()] == tgt
    assert sorted(t.get_text() for t in ax.texts) == sorted([".70", ".20", ".10", ".10", ".10", ".80"])
    page = heatmap_html([("head 1", weights)], src, tgt, tmp_path / "h.html", "t").read_text(encoding="utf-8")
    assert page.count("<tr>") == 3 and "▁私" in page and "0.80" in page and "<script" not in page


def test_bucket_edges():
    lengths = list(range(1, 31))
    assert bucket_edges(lengths, None) == [10, 20, 30]
    assert bucket_edges(lengths, [5, 15]) == [5, 15, 30]
    with pytest.raises(ConfigError):
        bucket_edges(lengths, [15, 5])


def test_attention_command_library_on_a_trained_run(trained_run, tmp_path):
    found = inspect_sentence(trained_run, "ab ca de", out_dir=tmp_path)
    assert found.translation == reverse_words("ab ca de")  # the fixture learned the probes (conftest)
    assert found.weights.shape == (len(found.row_labels), len(found.col_labels))
    assert [(h.layer, h.head) for h in found.heads] == [(1, 1)]  # one layer, one head
    assert found.png.stat().st_size > 1000 and found.html.is_file() and ".cross-layer" not in found.png.name
    # a model that learned to reverse looks at the mirrored source word: focused attention
    assert np.mean(found.stats.max_weight) > 0.5
    summary = summarize_run(trained_run)
    assert summary.model == "rnn, general" and summary.dev_bleu >= MIN_DEV_BLEU and summary.parameters > 10_000
    assert summary.tokens_per_s > 0 and summary.peak_rss_mb > 0


def test_transformer_attention_by_kind_layer_and_head(trained_transformer, tmp_path):
    grid = inspect_sentence(trained_transformer, "ab ca de", out_dir=tmp_path)
    assert grid.translation == reverse_words("ab ca de")
    layers, heads = 2, 4
    assert [(h.layer, h.head) for h in grid.heads] == [(la, he) for la in range(1, layers + 1)
                                                       for he in range(1, heads + 1)]
    assert grid.weights.shape == (len(grid.row_labels), len(grid.col_labels))
    np.testing.assert_allclose(grid.weights.sum(-1), 1.0, rtol=1e-5)  # the heads' average is a distribution
    assert grid.html.read_text(encoding="utf-8").count("<table>") == heads
    assert grid.png.name.endswith(".cross-layer2.png") and grid.png.stat().st_size > 1000
    one = inspect_sentence(trained_transformer, "ab ca de", out_dir=tmp_path, kind="encoder", layer=1, head=3)
    assert one.row_labels == one.col_labels and one.weights.shape == (len(one.col_labels),) * 2
    assert one.html.read_text(encoding="utf-8").count("<table>") == 1 and one.png != grid.png
    causal = inspect_sentence(trained_transformer, "ab ca de", out_dir=tmp_path, kind="decoder", head=1)
    assert causal.col_labels[0] == "<s>"
    assert np.all(np.triu(causal.weights, k=1) == 0.0)  # no position looks ahead
    with pytest.raises(ConfigError, match="layer: 3 is outside 1..2: the model has 2 layers"):
        inspect_sentence(trained_transformer, "ab", out_dir=tmp_path, layer=3)
    with pytest.raises(ConfigError, match="head: 5 is outside 1..4: the model has 4 heads"):
        inspect_sentence(trained_transformer, "ab", out_dir=tmp_path, head=5)


def test_an_rnn_run_offers_its_one_layer_and_head_and_no_self_attention(trained_run, tmp_path):
    """What the model describes is what may be chosen: one layer, one head (general attention), cross only."""
    chosen = inspect_sentence(trained_run, "ab", out_dir=tmp_path, layer=1, head=1)
    assert (chosen.layer, chosen.head) == (1, 1)
    with pytest.raises(ConfigError, match="layer: 2 is outside 1..1: the model has 1 layer"):
        inspect_sentence(trained_run, "ab", out_dir=tmp_path, layer=2)
    with pytest.raises(ConfigError, match="kind: encoder: this model has cross attention only"):
        inspect_sentence(trained_run, "ab", out_dir=tmp_path, kind="encoder")
    with pytest.raises(ConfigError, match="kind: encoder: this model has cross attention only"):
        analyze(trained_run, "test", kind="encoder")


def test_head_entropies_of_a_batch_equal_each_sentence_alone_and_the_inspected_heads(trained_transformer,
                                                                                      tmp_path):
    model = load_model(trained_transformer).model
    src = [[5, 6, 7, 8, EOS_ID], [5, EOS_ID], [7, 6, EOS_ID]]  # sources end in EOS, as encoded
    tgt = [[9, 10, 11, 12], [9], [10, 11]]
    for kind in ("cross", "encoder", "decoder"):
        together = head_entropies(model, src, tgt, kind)
        assert together.shape == (3, 2, 4)
        alone = np.concatenate([head_entropies(model, [s], [t], kind) for s, t in zip(src, tgt, strict=True)])
        np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)  # padding left out exactly
    found = inspect_sentence(trained_transformer, "ab ca de", out_dir=tmp_path, kind="encoder")
    translation = Translator.for_run(load_model(trained_transformer)).translate(["ab ca de"], 1)[0]
    mine = head_entropies(model, [translation.src_ids], [translation.hypotheses[0].tokens], "encoder")[0]
    np.testing.assert_allclose(mine.ravel(), [h.entropy for h in found.heads], rtol=1e-5)


def test_analyze_reports_every_layer_and_head_by_length(trained_transformer):
    found = analyze(trained_transformer, "test", edges=[3, 5], kind="cross")
    assert found.heads is not None and found.heads.kind == "cross"
    assert found.heads.buckets == [r.label for r in found.rows]
    assert found.heads.entropy.shape == (len(found.rows), 2, 4)
    assert np.all(np.isfinite(found.heads.entropy)) and np.all(found.heads.entropy >= 0)
    assert found.heads_png is not None and found.heads_png.stat().st_size > 1000
    report = json.loads(found.report.read_text())
    assert [b["label"] for b in report["buckets"]] == found.heads.buckets
    np.testing.assert_allclose(report["heads"]["entropy"], found.heads.entropy, atol=1e-4)


def test_fonts_cover_the_labels_and_never_draw_placeholder_boxes():
    from nmt.inspect.plots import font_for

    families = font_for(["▁私", "▁i", "</s>"])
    assert families[0] == "DejaVu Sans"
    assert all("last resort" not in name.lower() for name in families)
