"""The Python API (`nmt.load`, `Run.translate`, `Run.attention`, `nmt.train`, `nmt.compare`) on the shared
trained toy runs: objects that agree with what the library computes, the inline view holding every number."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from toy import reverse_words, toy_config_dict, write_config
from toy_runs import PROBES

import nmt
from nmt.errors import ConfigError


def page_data(page: str) -> dict:
    """The data the inline explorer page answers from, out of the iframe's srcdoc."""
    srcdoc = html.unescape(re.search(r'srcdoc="([^"]*)"', page).group(1))
    embedded = re.search(r'<script type="application/json" id="nmt-data">(.*?)</script>', srcdoc, re.S).group(1)
    return json.loads(embedded)


def test_import_nmt_loads_neither_torch_nor_the_api():
    code = "import sys, nmt; print('torch' in sys.modules, 'nmt.api' in sys.modules, sorted(nmt.__all__)[:2])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("False False")


def test_the_done_when_line_on_an_rnn_run(trained_run):
    run = nmt.load(trained_run)
    found = run.translate(PROBES)
    assert [t.text for t in found] == [reverse_words(s) for s in PROBES]
    assert all(len(t.hypotheses) == 1 and t.hypotheses[0].log_prob <= 0 for t in found)
    view = run.attention(PROBES[0])
    assert view.translation == reverse_words(PROBES[0])
    assert view.weights.shape == (len(view.row_tokens), len(view.col_tokens))
    assert np.allclose(view.weights.sum(-1), 1.0, atol=1e-4)
    assert view.entropy.shape == view.max_weight.shape == (len(view.row_tokens),)
    fig = view.plot()
    assert fig.axes[0].get_title().startswith(PROBES[0])
    data = page_data(view._repr_html_())
    [[average, head]] = data["attention"]["cross"]  # one layer: the heads averaged, then its one head
    assert np.allclose(average["weights"], view.weights) and average["weights"] == head["weights"]
    assert np.allclose(average["entropy"], view.entropy)
    assert list(data["attention"]) == ["cross"]  # an RNN has no self-attention to choose


def test_n_best_comes_with_scores_best_first_and_options_are_checked(trained_run):
    run = nmt.load(trained_run)
    [found] = run.translate("ab ca de", beam_size=3, n_best=3, length_penalty=0.0)
    scores = [h.score for h in found.hypotheses]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True) and found.text == found.hypotheses[0].text
    with pytest.raises(ConfigError, match="cannot exceed the beam size"):
        run.translate(["ab"], beam_size=2, n_best=3)
    with pytest.raises(ConfigError, match="head: 2 is outside 1..1: the model has 1 head"):
        run.attention("ab ca", head=2)


def test_a_transformer_view_holds_every_head_of_every_layer(trained_transformer):
    run = nmt.load(trained_transformer)
    layers, heads = run.config.model.transformer.decoder_layers, run.config.model.transformer.heads
    view = run.attention(PROBES[1])
    rows, cols = len(view.row_tokens), len(view.col_tokens)
    assert view.weights.shape == (layers, heads, rows, cols)
    assert view.entropy.shape == view.max_weight.shape == view.above_threshold.shape == (layers, heads, rows)
    assert np.allclose(view.weights.sum(-1), 1.0, atol=1e-4)
    fig = view.plot()
    assert len(fig.axes) == layers * heads
    one = run.attention(PROBES[1], kind="encoder", layer=1, head=2)
    assert one.weights.shape == (cols, cols) and np.allclose(one.weights, view.kinds("encoder").heads[0][1].weights)
    assert run.attention(PROBES[1], layer=2).weights.shape == (1, heads, rows, cols)
    with pytest.raises(ConfigError, match="head: 9 is outside"):
        run.attention(PROBES[1], head=9)


def test_the_inline_view_holds_every_weight_and_every_rows_entropy(trained_transformer):
    view = nmt.load(trained_transformer).attention(PROBES[2])
    page = view._repr_html_()
    assert page.startswith("<iframe srcdoc=")
    data = page_data(page)
    assert set(data["attention"]) == {"cross", "encoder", "decoder"}
    cross = data["attention"]["cross"]  # per layer: the server's answer for the heads averaged, then each head
    embedded = np.array([[answer["weights"] for answer in layer[1:]] for layer in cross])
    entropies = np.array([[answer["entropy"] for answer in layer[1:]] for layer in cross])
    assert np.array_equal(embedded, view.weights.astype(float))
    assert np.allclose(entropies, view.entropy)
    assert [[(a["layer"], a["head"]) for a in layer] for layer in cross] == [
        [(la, h) for h in [None, *range(1, view.weights.shape[1] + 1)]] for la in range(1, view.weights.shape[0] + 1)]
    srcdoc = html.unescape(re.search(r'srcdoc="([^"]*)"', page).group(1))
    assert "/static/" not in srcdoc and "function heatmap(" in srcdoc  # the explorer's own script, inlined


def test_score_and_evaluate_agree_with_translation(trained_run):
    run = nmt.load(trained_run)
    wrong = " ".join(reversed(reverse_words("ab ca de").split()))
    good, bad = run.score(["ab ca de", "ab ca de"], [reverse_words("ab ca de"), wrong])
    assert good.log_prob > bad.log_prob and good.tokens[-1] == "</s>"
    evaluation = run.evaluate(sources=PROBES, references=[reverse_words(s) for s in PROBES])
    assert evaluation.bleu == pytest.approx(100.0) and [s.name for s in evaluation.scores] == ["BLEU", "chrF", "TER"]
    assert run.evaluate().name == "dev"
    with pytest.raises(ConfigError, match="together"):
        run.evaluate(sources=PROBES)


def test_compare_returns_records_a_table_and_a_figure(trained_run, trained_transformer):
    found = nmt.compare([nmt.load(trained_run), trained_transformer])
    assert [r["run"] for r in found.records()] == [trained_run.name, trained_transformer.name]
    assert found._repr_html_().count("<tr>") == 3
    assert found.plot().axes


@pytest.mark.slow
def test_train_applies_overrides_and_returns_the_loaded_run(tmp_path):
    config = write_config(tmp_path, toy_config_dict(tmp_path))
    run = nmt.train(config, training={"max_steps": 4, "validate_every": 2}, run_dir=str(tmp_path / "api-run"))
    assert run.path == tmp_path / "api-run" and run.config.training.max_steps == 4
    assert run.translate(["ab"])[0].source == "ab"
