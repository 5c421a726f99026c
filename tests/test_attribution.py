"""Attribution beside attention (nmt.inspect.attribution): Spearman's rank correlation, relevance rows, and
attributions of the toy runs, which copy their input in reverse order: target word j comes from source word
n - 1 - j, so their attributions must peak on that mirrored diagonal. Then attribution beside translations in
other threads of one run, of a translation that stopped at the model's positions, and its cost bound."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from safetensors.torch import load_file, save_file
from toy import reversal_pairs

import nmt
from nmt.errors import ArgumentError, ConfigError
from nmt.fileio import sha256_of
from nmt.inspect.attribution import Cost, attribute, attribution_view, spearman_rows
from nmt.inspect.view import attention_view
from nmt.runs.loading import load_model
from nmt.runs.rundir import RunDir
from nmt.serve.server import create_app
from nmt.serve.service import ModelRegistry
from nmt.tokens import EOS_ID

ROOT = Path(__file__).resolve().parent.parent


def nmt_command(*args: object) -> subprocess.CompletedProcess:
    """`nmt ...` as a real process, from this checkout (`-m nmt` in its root, whatever `nmt` a shared
    environment's console script would run)."""
    return subprocess.run([sys.executable, "-m", "nmt", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


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
    with pytest.raises(ConfigError, match="method: 'gradients' is not one of input_x_gradient"):
        run.attribution("ab ca de", method="gradients")
    with pytest.raises(ConfigError, match="goes with --kind cross"):
        attribution_view(run.loaded, attention_view(run.loaded, "ab ca de", kind="encoder"))


def test_attributions_and_translations_in_threads_of_one_run_equal_the_sequential_ones(trained_transformer):
    """captum's hooks and the source-embedding pre-hooks used to sit on the run's shared model: two attributions
    at once raised `encoding called 3 embeddings`, a translation beside integrated gradients read the hooked
    embedding. Every thread here starts together and repeats its work."""
    run = nmt.load(trained_transformer)
    texts = ["ab ca de fo gu", "fo gu hi jo"]
    work = {"ig": lambda: run.attribution(texts[0], method="integrated_gradients", steps=8).relevance,
            "ixg": lambda: run.attribution(texts[1]).relevance,
            "translate": lambda: [t.text for t in run.translate(texts * 4, beam_size=3)]}
    expected = {name: do() for name, do in work.items()}
    start, found, errors = threading.Barrier(len(work) + 1), {name: [] for name in work}, []

    def repeat(name: str) -> None:
        start.wait()
        try:
            for _ in range(4):
                found[name].append(work[name]())
        except Exception as err:  # noqa: BLE001 - what a thread raised is the finding
            errors.append(f"{name}: {err!r}")

    threads = [threading.Thread(target=repeat, args=(name,)) for name in [*work, "ig"]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors
    assert all(found["translate"][i] == expected["translate"] for i in range(4))
    for name in ("ig", "ixg"):
        assert len(found[name]) == 4 * (2 if name == "ig" else 1)
        assert all(np.allclose(relevance, expected[name], atol=1e-5) for relevance in found[name])


@pytest.fixture
def endless_transformer(trained_transformer, tmp_path, rewrite_meta) -> Path:
    """The toy Transformer with max_positions 16 and EOS's (tied) embedding zeroed: EOS's logit is 0 at every
    step, below the best token's, so a translation always runs to the model's 16 positions without EOS."""
    copy = tmp_path / "endless"
    shutil.copytree(trained_transformer, copy)
    config = copy / "config.yaml"
    config.write_text(config.read_text().replace("max_positions: 1024", "max_positions: 16"))
    for files in RunDir(copy).checkpoints():
        tensors = load_file(str(files.weights))
        for name in tensors:
            if name.endswith(("embed.weight", "output.weight")):
                tensors[name][EOS_ID] = 0.0
        save_file(tensors, str(files.weights))
        manifest = json.loads(files.manifest.read_text())
        manifest[files.WEIGHTS] = sha256_of(files.weights)
        files.manifest.write_text(json.dumps(manifest))
        rewrite_meta(files, lambda text: text.replace('"max_positions": 1024', '"max_positions": 16'))
    return copy


@pytest.mark.slow  # real processes or big files: seconds
def test_attribution_of_a_translation_stopped_at_the_models_positions(endless_transformer, tmp_path):
    """BOS + 16 tokens used to be forced into 16 positions: a traceback from `nmt attention`, `nmt align` and
    the API, a 503 "retry" from the server that every retry met again. The translation's EOS, which it never
    produced, is no longer forced: every one of its tokens is attributed."""
    run = nmt.load(endless_transformer)
    view = attention_view(run.loaded, "ab ca de")
    assert len(view.tgt_ids) == 16 and "</s>" not in view.row_labels  # what the fixture makes sure of
    found = run.attribution("ab ca de", method="integrated_gradients", steps=4)
    assert found.row_labels == view.row_labels and found.relevance.shape == view.weights.shape
    assert np.allclose(found.relevance.sum(-1), 1.0, atol=1e-5)
    for method in ("input_x_gradient", "integrated_gradients"):
        shown = run.attribution("ab ca de", method=method, steps=4, words=True, eos=False)
        assert shown.relevance.shape == shown.attention.shape and len(shown.row_labels) == 6  # 16 pieces, 6 words
    with pytest.raises(ConfigError, match=r"17 target positions; the model has 16 \(model.transformer.max_posi"):
        attribute(run.loaded, view.src_ids, view.tgt_ids, ended=True)  # a given target must fit with its EOS

    (tmp_path / "src.txt").write_text("ab ca de\n")
    for args in (["attention", "ab ca de", "--attribution", "input_x_gradient", "-o", tmp_path / "maps"],
                 ["align", "--src", tmp_path / "src.txt", "--attribution", "input_x_gradient"]):
        result = nmt_command(*args, "--model", endless_transformer)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    with TestClient(create_app(ModelRegistry.load([("endless", endless_transformer)]))) as client:
        response = client.post("/attention", json={"text": "ab ca de", "attribution": "input_x_gradient"})
    assert response.status_code == 200, response.text
    served = response.json()
    assert len(served["attribution"]["weights"]) == len(served["row_tokens"]) == 16


@pytest.mark.slow  # real processes or big files: seconds
def test_an_attribution_over_the_cost_bound_is_refused_in_one_line_naming_steps(trained_transformer, tmp_path):
    """`nmt attention --steps 1024` of a long sentence used to run for minutes; the API, the CLI and the
    server (413, tests/test_server.py) now refuse one cost, target x source tokens x steps, above one bound."""
    sentence = "ab ca de fo gu hi jo ku le mi"
    result = nmt_command("attention", "--model", trained_transformer, sentence, "--attribution",
                         "integrated_gradients", "--steps", "1024", "-o", tmp_path / "maps")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --steps: integrated_gradients costs "), lines
    assert "above the bound of 8192" in lines[0] and "fewer steps" in lines[0]
    assert not (tmp_path / "maps").exists()  # refused before any gradient or drawing
    lifted = nmt_command("attention", "--model", trained_transformer, sentence, "--attribution",
                         "integrated_gradients", "--steps", "2", "--max-cost", "100000", "-o", tmp_path / "maps")
    assert lifted.returncode == 0, lifted.stderr

    run = nmt.load(trained_transformer)
    with pytest.raises(ArgumentError, match=r"integrated_gradients costs .* above the bound of 8192") as refused:
        run.attribution(sentence, method="integrated_gradients", steps=1024)
    assert refused.value.field == "steps"
    with pytest.raises(ArgumentError, match=r"above the bound of 10: attribute a shorter sentence") as refused:
        run.attribution(sentence, max_cost=10)
    assert refused.value.field == "max_cost"
    assert Cost.of("input_x_gradient", 3, 4, 32).total == 12 and Cost.of("integrated_gradients", 3, 4, 32).total == 384
