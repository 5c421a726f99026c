"""`nmt serve`: the REST API through FastAPI's test client (served output against `nmt translate`, every
client error, the attention numbers), the micro-batcher's bounds (chunks, round-robin, failures, cancelling,
closing) with a scripted decoder, and real server processes: a bounded load test, a client that goes away,
half-sent requests, SIGTERM with a big request in flight."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from toy import reverse_words
from toy_runs import MIN_DEV_BLEU

from nmt.data.splits import eval_set
from nmt.inference.translate import Translator
from nmt.inspect.attribution import STEPS, attribution_view
from nmt.inspect.view import attention_view
from nmt.runs.loading import load_model, load_run_config
from nmt.runs.rundir import RunDir
from nmt.serve.microbatch import Closing, MicroBatcher
from nmt.serve.server import Limits, create_app
from nmt.serve.service import ModelRegistry, ServedModel, served_runs

ROOT = Path(__file__).resolve().parent.parent
NMT = str(Path(sys.executable).parent / "nmt")
sys.path.insert(0, str(ROOT / "scripts"))

from serve_bench import free_port  # noqa: E402


@pytest.fixture(scope="module")
def client(trained_run, trained_transformer):
    registry = ModelRegistry.load([("rnn", trained_run), ("transformer", trained_transformer)])
    limits = Limits(max_texts=8, max_body_bytes=4096, max_batch_sentences=64, batch_wait_ms=30,
                    max_attribution_cost=4096)
    with TestClient(create_app(registry, limits)) as test_client:
        yield test_client


def dev_sources(run: Path) -> list[str]:
    return eval_set(load_run_config(RunDir(run)).data).sources


@pytest.mark.parametrize("model", ["rnn", "transformer"])
def test_served_translations_equal_nmt_translate_and_requests_share_batches(client, trained_run,
                                                                            trained_transformer, model, tmp_path):
    run = {"rnn": trained_run, "transformer": trained_transformer}[model]
    sources = dev_sources(run)
    (tmp_path / "in.txt").write_text("".join(s + "\n" for s in sources), encoding="utf-8")
    command = subprocess.run([NMT, "translate", "--model", str(run), "--input", str(tmp_path / "in.txt"),
                              "--beam-size", "3"], capture_output=True, text=True, timeout=300)
    assert command.returncode == 0, command.stderr
    expected = command.stdout.splitlines()
    assert len(expected) == len(sources) > 20

    chunks = [sources[i:i + 3] for i in range(0, len(sources), 3)]
    batcher = client.app.state.batcher
    before = batcher.batches

    def post(chunk: list[str]) -> list[str]:
        response = client.post("/translate", json={"text": chunk, "model": model, "beam_size": 3})
        assert response.status_code == 200, response.text
        return [t["text"] for t in response.json()["translations"]]

    with ThreadPoolExecutor(8) as pool:
        served = [text for texts in pool.map(post, chunks) for text in texts]
    assert served == expected
    assert batcher.batches - before < len(chunks)  # concurrent requests were decoded together


def test_n_best_scores_and_length_penalty(client):
    body = {"text": "ab ca de fo", "model": "transformer", "beam_size": 4, "n_best": 3}
    found = client.post("/translate", json=body).json()
    hypotheses = found["translations"][0]["hypotheses"]
    assert len(hypotheses) == 3 and found["n_best"] == 3 and found["length_penalty"] == 0.0
    assert hypotheses[0]["text"] == found["translations"][0]["text"] == reverse_words("ab ca de fo")
    assert [h["score"] for h in hypotheses] == sorted((h["score"] for h in hypotheses), reverse=True)
    assert all(h["score"] == h["log_prob"] for h in hypotheses)  # alpha 0: ranked by log p alone
    penalized = client.post("/translate", json={**body, "length_penalty": 1.0}).json()["translations"][0]
    best = penalized["hypotheses"][0]
    length = best["tokens"] + 1  # the EOS it ended with counts
    assert best["score"] == pytest.approx(best["log_prob"] / ((5 + length) / 6), rel=1e-5)


def test_steered_translations_begin_with_their_prefix_and_hold_their_constraints(client):
    """Invariants, not golden strings: each translation starts with its prefix and contains each phrase, whatever
    the beam; a prefix or constraint list sent once applies to every text."""
    texts = ["ab ca de", "fo gu hi jo", "le mi"]
    for model, beam in (("rnn", 1), ("transformer", 3)):
        aligned = {"text": texts, "model": model, "beam_size": beam, "prefix": ["DE", "JO HI", ""],
                   "constraints": [["PA"], ["NO", "KU LE"], []]}
        shared = {"text": texts, "model": model, "beam_size": beam, "prefix": "AB", "constraints": ["MI"]}
        for body in (aligned, shared):
            response = client.post("/translate", json=body)
            assert response.status_code == 200, response.text
            for i, found in enumerate(response.json()["translations"]):
                prefix = body["prefix"] if isinstance(body["prefix"], str) else body["prefix"][i]
                phrases = body["constraints"] if shared is body else body["constraints"][i]
                assert found["text"].startswith(prefix) and all(p in found["text"] for p in phrases), found
                assert found["missing"] == [] and found["hypotheses"][0]["text"] == found["text"]
    plain = client.post("/translate", json={"text": texts, "model": "rnn"}).json()
    assert [t["text"] for t in plain["translations"]] == [reverse_words(t) for t in texts]
    assert all(t["missing"] == [] for t in plain["translations"])


def test_alternatives_and_repetition_settings_are_answered_with_the_settings_used(client):
    body = {"text": "ab ca de fo", "model": "transformer", "prefix": "FO", "n_alternatives": 3}
    found = client.post("/translate", json=body).json()
    hypotheses = found["translations"][0]["hypotheses"]
    assert found["n_alternatives"] == 3 and len(hypotheses) == 3
    assert all(h["text"].startswith("FO") for h in hypotheses) and len({h["text"] for h in hypotheses}) == 3
    assert hypotheses[0]["text"] == reverse_words("ab ca de fo")
    settings = {"no_repeat_ngram_size": 1, "repetition_penalty": 2.0}
    found = client.post("/translate", json={"text": "ab ab ab ca", "model": "transformer", **settings}).json()
    assert {k: found[k] for k in settings} == settings and found["n_alternatives"] is None
    words = found["translations"][0]["text"].split()
    assert len(words) == len(set(words))  # no 1-gram twice: "AB" appears at most once


CLIENT_ERRORS = [
    ({"text": ""}, 422, "text"),
    ({"text": " \t\u200b "}, 422, "text"),
    ({"text": ["ab", ""]}, 422, "text[1]"),
    ({"text": []}, 422, "text"),
    ({"text": ["ab"] * 9}, 413, "text"),
    ({"text": "ab " * 300}, 422, "text"),
    ({"text": ["ab ca de"] * 8, "beam_size": 64}, 413, "text"),  # 8 x 4+ tokens x beam 64 > max_request_cost 1024
    ({"text": 5}, 422, "text"),
    ({}, 422, "text"),
    ({"text": "ab", "beam_size": 0}, 422, "beam_size"),
    ({"text": "ab", "beam_size": 65}, 422, "beam_size"),
    ({"text": "ab", "beam_size": 2, "n_best": 4}, 422, "n_best"),
    ({"text": "ab", "length_penalty": -1}, 422, "length_penalty"),
    ('{"text": "ab", "length_penalty": Infinity}', 422, "length_penalty"),  # what Python's json writes
    ('{"text": "ab", "length_penalty": NaN}', 422, "length_penalty"),
    ({"text": "ab", "length_penalty": 1e308}, 422, "length_penalty"),
    ({"text": "ab", "beam_size": True}, 422, "beam_size"),
    ({"text": "ab", "beam_size": 2.5}, 422, "beam_size"),
    ({"text": "ab", "model": "nope"}, 404, "model"),
    ({"text": "ab", "colour": "red"}, 422, "colour"),
    ({"text": "ab ca", "constraints": ["CA", ""]}, 422, "constraints[1]"),
    ({"text": "ab ca", "constraints": [" "]}, 422, "constraints[0]"),
    ({"text": ["ab", "ca"], "constraints": [["AB"], ["CA", "ß§"]]}, 422, "constraints[1][1]"),  # not in the vocabulary
    ({"text": ["ab", "ca"], "constraints": [["AB"]]}, 422, "constraints"),  # not aligned with text
    ({"text": "ab", "prefix": "ß§"}, 422, "prefix"),
    ({"text": "ab", "prefix": "AB " * 40}, 422, "prefix"),  # longer than the output limit
    ({"text": ["ab", "ca"], "prefix": ["AB", "CA " * 40]}, 422, "prefix[1]"),
    ({"text": ["ab", "ca"], "prefix": ["AB"]}, 422, "prefix"),
    ({"text": "ab", "prefix": 5}, 422, "prefix"),
    ({"text": "ab", "no_repeat_ngram_size": 0}, 422, "no_repeat_ngram_size"),
    ({"text": "ab", "no_repeat_ngram_size": 11}, 422, "no_repeat_ngram_size"),
    ({"text": "ab", "repetition_penalty": 0.5}, 422, "repetition_penalty"),
    ({"text": "ab", "repetition_penalty": 10.5}, 422, "repetition_penalty"),
    ('{"text": "ab", "repetition_penalty": 1e400}', 422, "repetition_penalty"),  # parsed as inf
    ('{"text": "ab", "repetition_penalty": Infinity}', 422, "repetition_penalty"),
    ({"text": "ab", "n_alternatives": 0}, 422, "n_alternatives"),
    ({"text": "ab", "n_alternatives": 2, "constraints": ["AB"]}, 422, "n_alternatives"),
    ({"text": "ab", "n_alternatives": 2, "n_best": 2}, 422, "n_alternatives"),
    ({"text": ["ab ca de"] * 8, "beam_size": 8, "constraints": ["AB", "CA"]}, 413, "text"),  # 8 x 4 x 8 x 3 > 1024
    ({"text": "<p>ab</p>", "format": "pdf"}, 422, "format"),
    ({"text": "<p>ab</p>", "format": "html", "prefix": "AB"}, 422, "prefix"),
    ({"text": "<p>ab</p>", "format": "html", "n_best": 2}, 422, "n_best"),
    ({"text": "  ", "format": "html"}, 422, "text"),
    ({"text": "<p>" + "ab ca " * 60 + "</p>", "format": "html", "beam_size": 8}, 413, "text"),
]


def test_documents_come_back_with_their_tags_on_the_aligned_words(client):
    """format html: the toy task reverses the words, so each tag lands on the mirrored word; blocks, attributes
    and comments come back as they were, and a document needs no hypotheses."""
    document = '<ul><li>ab <a href="?x=1&amp;y=2">ca</a> de</li><li><!-- c --><b>fo</b> gu</li></ul>'
    response = client.post("/translate", json={"text": [document, "<p>le <i>mi</i></p>"], "model": "transformer",
                                               "format": "html"})
    assert response.status_code == 200, response.text
    found = response.json()["translations"]
    assert [t["text"] for t in found] == ['<ul><li>DE <a href="?x=1&amp;y=2">CA</a> AB</li><li><!-- c -->GU <b>FO</b>'
                                          '</li></ul>', "<p><i>MI</i> LE</p>"]
    assert found[0]["source"] == document and found[0]["hypotheses"] == []


@pytest.mark.parametrize(("body", "status", "field"), CLIENT_ERRORS)
def test_client_errors_name_the_field_and_never_give_500(client, body, status, field, caplog):
    with caplog.at_level(logging.INFO):
        if isinstance(body, str):  # JSON that httpx would not write (Infinity, NaN)
            response = client.post("/translate", content=body, headers={"content-type": "application/json"})
        else:
            response = client.post("/translate", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["field"] == field
    assert response.json()["error"]["message"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


ATTENTION_ERRORS = [
    ({"text": "ab", "model": "transformer", "layer": 9}, "layer", "9 is outside 1..2: the model has 2 layers"),
    ({"text": "ab", "model": "transformer", "head": 5}, "head", "5 is outside 1..4: the model has 4 heads"),
    ({"text": "ab", "model": "transformer", "head": 0}, "head", "greater than or equal to 1"),
    ({"text": "ab", "model": "transformer", "kind": "sideways"}, "kind", "'cross', 'encoder' or 'decoder'"),
    ({"text": "ab", "model": "rnn", "layer": 2}, "layer", "2 is outside 1..1: the model has 1 layer"),
    ({"text": "ab", "model": "rnn", "kind": "encoder"}, "kind", "encoder: this model has cross attention only"),
    ({"text": "ab", "threshold": 2}, "threshold", "less than or equal to 1"),
    ({"text": ["ab"]}, "text", "valid string"),
    ({"text": "ab", "attribution": "gradients"}, "attribution", "'input_x_gradient' or 'integrated_gradients'"),
    ({"text": "ab", "model": "transformer", "kind": "encoder", "attribution": "input_x_gradient"}, "attribution",
     "goes with kind cross, not encoder"),
]


@pytest.mark.parametrize(("body", "field", "message"), ATTENTION_ERRORS)
def test_attention_errors_name_the_field(client, body, field, message):
    response = client.post("/attention", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field and message in response.json()["error"]["message"]


def test_malformed_json_oversized_bodies_and_unknown_paths(client):
    bad = client.post("/translate", content=b'{"text": "ab",', headers={"Content-Type": "application/json"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "body"
    assert "malformed JSON" in bad.json()["error"]["message"]
    big = json.dumps({"text": "ab " * 2000}).encode()
    declared = client.post("/translate", content=big, headers={"Content-Type": "application/json"})
    assert declared.status_code == 413 and declared.json()["error"]["field"] == "body"
    chunked = client.post("/translate", content=(big[i:i + 1000] for i in range(0, len(big), 1000)),
                          headers={"Content-Type": "application/json"})  # no Content-Length: counted as read
    assert chunked.status_code == 413 and chunked.json()["error"]["field"] == "body"
    missing = client.get("/nowhere")
    assert missing.status_code == 404 and missing.json()["error"]["message"] == "Not Found"


def test_attention_matches_the_library_view(client, trained_transformer, trained_run):
    loaded = load_model(trained_transformer)
    grid = client.post("/attention", json={"text": "ab ca de", "model": "transformer", "kind": "encoder"}).json()
    view = attention_view(loaded, "ab ca de", kind="encoder")
    assert grid["layer"] == 2 and grid["head"] is None and len(grid["panels"]) == 4
    assert grid["row_tokens"] == view.row_labels and grid["col_tokens"] == view.col_labels
    np.testing.assert_allclose(grid["weights"], view.weights, atol=1e-6)
    np.testing.assert_allclose(np.mean([p["weights"] for p in grid["panels"]], axis=0), grid["weights"], atol=1e-6)
    assert len(grid["heads"]) == 8 and grid["entropy"] == pytest.approx(view.stats.entropy)
    one = client.post("/attention", json={"text": "ab ca de", "model": "transformer", "layer": 1, "head": 3,
                                          "threshold": 0.3}).json()
    view = attention_view(loaded, "ab ca de", threshold=0.3, layer=1, head=3)
    np.testing.assert_allclose(one["weights"], view.weights, atol=1e-6)
    assert one["above_threshold"] == view.stats.above_threshold and one["translation"] == reverse_words("ab ca de")
    rnn = client.post("/attention", json={"text": "ab ca de"}).json()  # the first model is the default
    assert rnn["model"] == "rnn" and rnn["layer"] == 1 and len(rnn["panels"]) == 1
    np.testing.assert_allclose(np.sum(rnn["weights"], axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(("model", "method", "words", "eos"), [
    ("rnn", "input_x_gradient", False, True),
    ("transformer", "integrated_gradients", True, False),
    ("transformer", "input_x_gradient", False, False),
])
def test_attribution_beside_attention_matches_the_library(client, trained_run, trained_transformer, model, method,
                                                          words, eos):
    """Computed in the model's attribution child, shaped by the server as the library shapes it."""
    found = client.post("/attention", json={"text": "ab ca de", "model": model, "words": words, "eos": eos,
                                            "attribution": method}).json()
    explained = found["attribution"]
    assert explained["method"] == method
    assert np.shape(explained["weights"]) == np.shape(found["weights"])
    np.testing.assert_allclose(np.sum(explained["weights"], axis=1), 1.0, atol=1e-5)
    loaded = load_model({"rnn": trained_run, "transformer": trained_transformer}[model])
    expected = attribution_view(loaded, attention_view(loaded, "ab ca de", words=words, eos=eos), method, STEPS)
    np.testing.assert_allclose(explained["weights"], expected.relevance, atol=1e-5)
    shown = [np.nan if r is None else r for r in explained["spearman"]]
    assert len(shown) == len(found["row_tokens"]) and shown == pytest.approx(expected.spearman, abs=1e-5,
                                                                              nan_ok=True)
    assert explained["mean_spearman"] == pytest.approx(expected.mean_spearman, abs=1e-5)


def test_an_attribution_over_its_cost_bound_is_refused_with_413_naming_the_bound(client):
    body = {"text": "ab ca de fo gu hi jo ku le mi no pa", "model": "transformer"}
    response = client.post("/attention", json={**body, "attribution": "integrated_gradients"})
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["field"] == "attribution" and f"x {STEPS} steps" in error["message"]
    assert "at most 4096" in error["message"]
    assert client.post("/attention", json={**body, "attribution": "input_x_gradient"}).status_code == 200
    assert client.post("/attention", json=body).json()["attribution"] is None  # not asked for


def test_an_attribution_child_killed_is_a_503_and_the_next_request_starts_a_new_one(client, caplog):
    import multiprocessing
    import os
    import signal

    body = {"text": "ab ca de", "model": "rnn", "attribution": "input_x_gradient"}
    assert client.post("/attention", json=body).status_code == 200  # the child exists now
    children = multiprocessing.active_children()
    assert children
    for child in children:  # a real kill, as the kernel's OOM killer would
        os.kill(child.pid, signal.SIGKILL)
        child.join(timeout=30)
    response = client.post("/attention", json=body)
    assert response.status_code == 503, response.text
    assert response.json()["error"]["field"] == "attribution"
    assert "Traceback" not in caplog.text
    assert client.post("/attention", json=body).status_code == 200  # a fresh child


@pytest.mark.slow  # real processes or big files: seconds
def test_attribution_is_by_the_served_checkpoint_after_training_writes_a_better_one(trained_transformer, tmp_path,
                                                                                  rewrite_meta):
    """The attribution child used to load `best` when it started: once training had written a better checkpoint
    after the server started, /attention put another checkpoint's attribution beside the served model's
    attention (and /models still named the served one). The child now loads the checkpoint served, and a model
    served with another checkpoint (reloaded) gets a child of its own."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained_transformer, run_dir)
    older, newer = RunDir(run_dir).checkpoints()[-2:]
    rewrite_meta(older, lambda text: re.sub(r'"dev_bleu": [^,\n]+', '"dev_bleu": 0.0', text))  # newer: the best
    held = tmp_path / newer.folder.name
    newer.folder.rename(held)  # not written yet when the server starts
    body = {"text": "ab ca de", "attribution": "integrated_gradients", "words": True}

    def own(files) -> np.ndarray:
        """A checkpoint's own attribution, computed directly."""
        loaded = load_model(run_dir, files)
        view = attention_view(loaded, body["text"], words=True)
        return attribution_view(loaded, view, "integrated_gradients", STEPS).relevance

    registry = ModelRegistry.load([("toy", run_dir)])
    with TestClient(create_app(registry)) as client:
        held.rename(newer.folder)  # training writes its best checkpoint yet (staged, then renamed in whole)
        assert load_model(run_dir, "best").checkpoint.path == newer.folder
        found = client.post("/attention", json=body)
        described = client.get("/models").json()[0]
        reloaded = load_model(run_dir, "best")
        registry.models["toy"] = ServedModel("toy", reloaded, Translator.for_run(reloaded))
        again = client.post("/attention", json=body)
    by_older, by_newer = own(older), own(newer)
    assert np.shape(by_older) != np.shape(by_newer) or not np.allclose(by_older, by_newer, atol=1e-3)
    assert found.status_code == again.status_code == 200, (found.text, again.text)
    assert described["checkpoint"] == older.folder.name
    np.testing.assert_allclose(found.json()["attribution"]["weights"], by_older, atol=1e-5)
    np.testing.assert_allclose(again.json()["attribution"]["weights"], by_newer, atol=1e-5)


def test_attribution_refuses_a_served_checkpoint_written_again_or_pruned(trained_transformer, tmp_path):
    """The served folder holding other weights (a step written again) or gone (pruned by training) is refused
    by the child, naming why and what to do, not attributed with whatever is there; translation goes on."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained_transformer, run_dir)
    older, newer = RunDir(run_dir).checkpoints()[-2:]
    body = {"text": "ab ca de", "attribution": "input_x_gradient"}
    with TestClient(create_app(ModelRegistry.load([("toy", run_dir)], checkpoint="last"))) as client:
        shutil.rmtree(newer.folder)
        shutil.copytree(older.folder, newer.folder)
        rewritten = client.post("/attention", json=body)
        shutil.rmtree(newer.folder)
        pruned = client.post("/attention", json=body)
        translated = client.post("/translate", json={"text": body["text"]})
    for response, reason in ((rewritten, "holds other weights than the server loaded"),
                             (pruned, "no such checkpoint")):
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert error["field"] == "attribution" and reason in error["message"]
        assert "restart the server" in error["message"] and "retry" not in error["message"]
    assert translated.status_code == 200 and translated.json()["translations"][0]["text"] == reverse_words(body["text"])


def test_models_and_health(client):
    client.post("/translate", json={"text": "ab ca"})
    models = {m["name"]: m for m in client.get("/models").json()}
    assert models["transformer"]["layers"] == 2 and models["transformer"]["heads"] == 4
    assert models["transformer"]["type"] == "transformer" and models["rnn"]["attention"] == "general"
    assert models["rnn"]["dev_bleu"] >= MIN_DEV_BLEU and models["rnn"]["parameters"] > 10_000
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["models"] == ["rnn", "transformer"]
    assert health["texts_decoded"] >= health["decodes"] > 0 and health["texts_dropped"] == 0
    assert "attention explorer" in client.get("/").text
    assert client.get("/docs").status_code == 200 and "/translate" in client.get("/openapi.json").json()["paths"]


def test_served_run_names(tmp_path):
    assert served_runs(["runs/enja", "ja=runs/x", "a/b=c"]) == [
        ("enja", Path("runs/enja")), ("ja", Path("runs/x")), ("b=c", Path("a/b=c"))]


@pytest.mark.slow
def test_a_real_server_under_bounded_load_answers_every_request_and_stops_cleanly(trained_run, tmp_path):
    figures = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "serve_bench.py"), "--model", str(trained_run),
                             "--clients", "16", "--seconds", "5", "--single-requests", "40", "--soak-requests", "400",
                             "--json", str(figures)], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    found = json.loads(figures.read_text())
    for phase in ("single", "concurrent", "soak"):
        assert found[phase]["errors"] == 0 and found[phase]["requests"] > 0
    assert found["soak"]["requests"] == 400
    assert found["clean_shutdown"] and found["server_tracebacks"] == 0
    assert 0 < found["single"]["p50_ms"] <= found["single"]["p95_ms"]


def test_a_request_over_the_cost_bound_is_refused_with_413_naming_the_bound(client):
    response = client.post("/translate", json={"text": ["ab ca de fo gu"] * 4, "beam_size": 64})
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["field"] == "text" and "beam_size 64" in error["message"] and "at most 1024" in error["message"]
    assert client.post("/translate", json={"text": ["ab ca de fo gu"] * 4, "beam_size": 8}).status_code == 200


# A model that cannot encode what max_src_tokens allows ------------------------------------------------------

@pytest.fixture
def short_transformer(trained_transformer, tmp_path, rewrite_meta) -> Path:
    """The toy Transformer with `model.transformer.max_positions: 64`, below `decoding.max_src_tokens` (256):
    the same weights (sinusoidal positions are not saved), a model that cannot encode a 65th token."""
    copy = tmp_path / "short"
    shutil.copytree(trained_transformer, copy)
    config = copy / "config.yaml"
    config.write_text(config.read_text().replace("max_positions: 1024", "max_positions: 64"))
    for files in RunDir(copy).checkpoints():
        rewrite_meta(files, lambda text: text.replace('"max_positions": 1024', '"max_positions": 64'))
    return copy


def test_a_text_longer_than_the_model_encodes_is_refused_and_its_batch_mates_are_served(short_transformer):
    long_text = " ".join(["ab ca de fo"] * 20)  # 80 words
    assert 64 < len(load_model(short_transformer).tokenizer.encode_src([long_text])[0]) <= 256
    limits = Limits(batch_wait_ms=200)  # the six requests share a batch when they reach the decoder together
    with TestClient(create_app(ModelRegistry.load([("short", short_transformer)]), limits)) as client:
        bodies = [{"text": "ab ca de"}] * 5 + [{"text": long_text}]
        with ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(lambda body: client.post("/translate", json=body), bodies))
        described = client.get("/models").json()[0]
    assert [r.status_code for r in responses] == [200] * 5 + [422]
    assert all(r.json()["translations"][0]["text"] == reverse_words("ab ca de") for r in responses[:5])
    error = responses[5].json()["error"]
    assert error["field"] == "text" and error["message"].endswith("at most 64 (model.transformer.max_positions)")
    assert described["max_src_tokens"] == 64


# The micro-batcher with a scripted decoder ------------------------------------------------------------------

class Scripted:
    """A decoder that records each chunk it is given and holds the first one until `release` is set."""

    def __init__(self, fail_on: str | None = None):
        self.chunks: list[tuple[str, list[str]]] = []
        self.started, self.release = threading.Event(), threading.Event()
        self.fail_on = fail_on

    def __call__(self, key: str, texts: list[str]) -> list[str]:
        self.chunks.append((key, list(texts)))
        if len(self.chunks) == 1:
            self.started.set()
            assert self.release.wait(10)
        if self.fail_on in texts:
            raise RuntimeError(f"cannot decode {self.fail_on}")
        return [text.upper() for text in texts]

    async def first_chunk_started(self) -> None:
        assert await asyncio.get_running_loop().run_in_executor(None, self.started.wait, 10)


def run_batcher(decode: Scripted, scenario: Callable, **options) -> tuple:
    async def main() -> tuple:
        batcher = MicroBatcher(decode, **options)
        await batcher.start()
        try:
            return batcher, await scenario(batcher)
        finally:
            decode.release.set()
            await batcher.stop()

    return asyncio.run(main())


BIG = [f"b{i}" for i in range(8)]


def test_a_big_request_is_decoded_in_chunks_round_robin_with_requests_that_came_later():
    decode = Scripted()

    async def scenario(batcher):
        big = asyncio.ensure_future(batcher.submit("k", BIG, [3] * 8))  # max_cost 6: chunks of two texts
        await decode.first_chunk_started()
        small = asyncio.ensure_future(batcher.submit("k", ["s1", "s2", "s3"], [2, 2, 2]))
        other = asyncio.ensure_future(batcher.submit("j", ["o"], [1]))  # other settings: never in the same chunk
        await asyncio.sleep(0.05)  # both are queued while the first chunk decodes
        decode.release.set()
        return await asyncio.gather(big, small, other)

    _batcher, (big, small, other) = run_batcher(decode, scenario, max_cost=6, max_wait_ms=0)
    assert big == [text.upper() for text in BIG] and small == ["S1", "S2", "S3"] and other == ["O"]
    assert decode.chunks == [("k", ["b0", "b1"]), ("k", ["s1", "s2", "s3"]), ("j", ["o"]), ("k", ["b2", "b3"]),
                             ("k", ["b4", "b5"]), ("k", ["b6", "b7"])]


def test_a_failing_chunk_fails_only_the_request_whose_texts_fail():
    decode = Scripted(fail_on="bad")

    async def scenario(batcher):
        first = asyncio.ensure_future(batcher.submit("k", ["warm"]))
        await decode.first_chunk_started()
        mates = [asyncio.ensure_future(batcher.submit("k", texts)) for texts in (["a", "b"], ["bad"], ["c"])]
        await asyncio.sleep(0.05)
        decode.release.set()
        return await asyncio.gather(first, *mates, return_exceptions=True)

    batcher, (_first, a, bad, c) = run_batcher(decode, scenario)
    assert a == ["A", "B"] and c == ["C"] and isinstance(bad, RuntimeError) and "cannot decode bad" in str(bad)
    assert decode.chunks[1] == ("k", ["a", "b", "bad", "c"])  # batched together, then tried one request at a time
    assert batcher.sentences == 1 + 3


def test_a_cancelled_request_has_its_remaining_chunks_dropped():
    decode = Scripted()

    async def scenario(batcher):
        big = asyncio.ensure_future(batcher.submit("k", BIG, [3] * 8))
        await decode.first_chunk_started()
        big.cancel()  # what the server does when the client goes away
        decode.release.set()
        return await batcher.submit("k", ["after"])  # served once the worker has passed the cancelled request

    batcher, after = run_batcher(decode, scenario, max_cost=6)
    assert after == ["AFTER"] and decode.chunks == [("k", ["b0", "b1"]), ("k", ["after"])]
    assert batcher.dropped == 6 and batcher.sentences == 3


def test_closing_refuses_what_is_not_decoded_by_the_deadline_and_new_requests():
    decode = Scripted()

    async def scenario(batcher):
        big = asyncio.ensure_future(batcher.submit("k", BIG, [3] * 8))
        await decode.first_chunk_started()
        batcher.close(grace=0)
        with pytest.raises(Closing):
            await batcher.submit("k", ["late"])
        decode.release.set()
        with pytest.raises(Closing):
            await big
        return len(decode.chunks)

    _batcher, chunks = run_batcher(decode, scenario, max_cost=6)
    assert chunks == 1  # the chunk in progress ended; no other started


# Real server processes ------------------------------------------------------------------------------------

LONG = " ".join(["ab ca de fo gu hi jo ku"] * 12)  # 193 tokens for the toy Transformer
BIG_BODY = {"text": [LONG] * 32, "beam_size": 16}  # 32 chunks of one text under max_batch_cost 2000


class Server:
    """`serve()` in its own process on 127.0.0.1 with the given Limits; its output in a log file."""

    def __init__(self, runs: list[tuple[str, Path]], folder: Path, **limits):
        self.port, self.log = free_port(), folder / "server.log"
        code = ("import json, sys; from pathlib import Path; from nmt.serve.server import Limits, serve; "
                "serve([(n, Path(p)) for n, p in json.loads(sys.argv[1])], port=int(sys.argv[2]), "
                "limits=Limits(**json.loads(sys.argv[3])))")
        with self.log.open("w") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-c", code, json.dumps([(n, str(p)) for n, p in runs]), str(self.port),
                 json.dumps(limits)], stdout=output, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 120
        while True:
            assert self.process.poll() is None, self.log.read_text()
            try:
                self.health()
                return
            except OSError:
                assert time.monotonic() < deadline, "the server did not answer /health within 120 s"
                time.sleep(0.2)

    def request(self, method: str, path: str, body: dict | None = None, timeout: float = 120) -> tuple[int, dict]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request(method, path, None if body is None else json.dumps(body),
                               {"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, json.loads(response.read() or b"null")
        finally:
            connection.close()

    def health(self) -> dict:
        return self.request("GET", "/health", timeout=10)[1]

    def wait_for(self, condition: Callable[[dict], bool], seconds: float = 60) -> dict:
        deadline = time.monotonic() + seconds
        while not condition(found := self.health()):
            assert time.monotonic() < deadline, f"not reached within {seconds} s: {found}"
            time.sleep(0.05)
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


@pytest.fixture(scope="module")
def big_server(trained_transformer, tmp_path_factory):
    server = Server([("toy", trained_transformer)], tmp_path_factory.mktemp("server"), max_request_cost=10**7,
                    max_batch_cost=2000, request_timeout_s=2)
    yield server
    server.stop()
    assert "Traceback" not in server.log.read_text()


def raw_request(port: int, body: dict, path: str = "/translate") -> socket.socket:
    """A connection that has sent a whole POST request and reads nothing yet."""
    data = json.dumps(body).encode()
    connection = socket.create_connection(("127.0.0.1", port), timeout=10)
    connection.sendall(b"POST %s HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(data), data))
    return connection


def test_a_small_request_is_answered_while_a_big_one_is_decoded(big_server):
    before = big_server.health()
    big = raw_request(big_server.port, BIG_BODY)
    big_server.wait_for(lambda h: h["decodes"] > before["decodes"])
    assert big_server.request("POST", "/translate", {"text": "ab ca de"})[0] == 200
    big.setblocking(False)
    with pytest.raises(BlockingIOError):  # no answer yet: the small request waited for a chunk, not for 32
        big.recv(100)
    big.close()
    big_server.wait_for(lambda h: h["texts_dropped"] > before["texts_dropped"])


def test_a_client_that_goes_away_has_its_remaining_texts_dropped(big_server):
    before = big_server.health()
    connection = raw_request(big_server.port, BIG_BODY)
    big_server.wait_for(lambda h: h["decodes"] > before["decodes"])
    connection.close()
    after = big_server.wait_for(lambda h: h["texts_dropped"] > before["texts_dropped"])
    decoded, dropped = (after[k] - before[k] for k in ("texts_decoded", "texts_dropped"))
    assert decoded + dropped == len(BIG_BODY["text"]) and dropped > 0
    assert big_server.request("POST", "/translate", {"text": "ab ca de"})[0] == 200


HALF_SENT = [b"", b"POST /translate HTTP/1.1\r\nHost: test\r\nContent-Ty",
             b"POST /translate HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n{\"te"]


def test_half_sent_requests_are_closed_after_the_request_timeout(big_server):
    """Nothing, half a head, half a body: uvicorn alone keeps such connections open for ever (its keep-alive
    timeout starts after a response, and stops at the next request's first byte)."""
    connections = []
    for sent in HALF_SENT * 7:
        connections.append(socket.create_connection(("127.0.0.1", big_server.port), timeout=10))
        connections[-1].sendall(sent)
    assert big_server.request("POST", "/translate", {"text": "ab ca de"})[0] == 200  # others are still served
    answers = []
    for connection in connections:  # request_timeout_s is 2; each recv waits up to 10 s
        answers.append(connection.recv(1000))
        connection.close()
    assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in answers), answers


@pytest.mark.slow
def test_sigterm_with_a_big_request_in_flight_exits_within_seconds(trained_transformer, tmp_path):
    server = Server([("toy", trained_transformer)], tmp_path, max_request_cost=10**7, max_batch_cost=2000)
    try:
        answer: list[tuple[int, dict]] = []
        biggest = {"text": [LONG] * 64, "beam_size": 64}  # minutes of decoding
        big = threading.Thread(target=lambda: answer.append(server.request("POST", "/translate", biggest)))
        big.start()
        server.wait_for(lambda h: h["decodes"] > 0)
        start = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(30)
        took = time.monotonic() - start
        big.join(30)
    finally:
        server.stop()
    log = server.log.read_text()
    assert took < 10, f"exit {took:.1f} s after SIGTERM"  # shutdown_grace_s 2 + one chunk; it used to take minutes
    assert code in (0, -signal.SIGTERM) and "Application shutdown complete" in log and "Traceback" not in log
    assert answer[0][0] == 503 and "shutting down" in answer[0][1]["error"]["message"]


# Minimum Bayes risk and quality scores (issue 36) ----------------------------------------------------------------

def test_mbr_requests_are_answered_with_their_settings_utilities_and_cost(client, trained_transformer):
    body = {"text": ["ab ca de", "le mi"], "model": "transformer",
            "mbr": {"candidates": 8, "epsilon": 0.0, "source": "sample"}}
    response = client.post("/translate", json=body)
    assert response.status_code == 200, response.text
    found = response.json()
    assert found["mbr"] == {"candidates": 8, "source": "sample", "epsilon": 0.0, "metric": "chrf"}
    assert [t["text"] for t in found["translations"]] == [reverse_words(t) for t in body["text"]]
    assert all(t["hypotheses"][0]["utility"] is not None for t in found["translations"])
    library = Translator.for_run(load_model(trained_transformer)).translate(body["text"], mbr=body["mbr"])
    assert [t["text"] for t in found["translations"]] == [t.text for t in library]
    listed = client.post("/translate", json={"text": "fo gu hi", "model": "rnn", "n_best": 3,
                                             "mbr": {"candidates": 5, "source": "beam"}}).json()
    utilities = [h["utility"] for h in listed["translations"][0]["hypotheses"]]
    assert listed["beam_size"] == 5 and utilities == sorted(utilities, reverse=True) and len(utilities) > 1
    assert client.post("/translate", json={"text": "ab ca", "mbr": True}).json()["mbr"]["candidates"] == 16
    assert client.post("/translate", json={"text": "ab ca", "mbr": False}).json()["mbr"] is None
    # the candidates count in the cost as a beam's hypotheses do
    big = client.post("/translate", json={"text": ["ab ca de fo gu"] * 4, "mbr": {"candidates": 64}})
    assert big.status_code == 413 and "mbr.candidates 64" in big.json()["error"]["message"]


@pytest.mark.parametrize(("mbr", "extra", "field", "message"), [
    ({"candidates": 65}, {}, "mbr.candidates", "at most 64"),
    ({"candidates": "8"}, {}, "mbr.candidates", "valid integer"),
    ({"source": "nucleus"}, {}, "mbr.source", "'beam' or 'sample'"),
    ({"seed": 3}, {}, "mbr.seed", "Extra inputs"),
    (True, {"beam_size": 3}, "beam_size", "not with MBR"),
    (True, {"n_alternatives": 2}, "mbr", "n_alternatives"),
    ({"source": "sample"}, {"constraints": ["DE"]}, "constraint", "sampled candidates"),
    (True, {"format": "html"}, "mbr", "goes with sentences"),
])
def test_mbr_mistakes_name_the_field_as_sent(client, mbr, extra, field, message):
    response = client.post("/translate", json={"text": "ab ca de", "mbr": mbr, **extra})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field and message in error["message"]
    stream = client.post("/translate/stream", json={"text": "ab ca de", "mbr": True})
    assert stream.status_code == 422 and stream.json()["error"]["field"] == "mbr"


def test_answers_carry_each_translations_quality(client, trained_run):
    texts = ["ab ca de", "fo gu hi jo", "le mi"]
    found = client.post("/translate", json={"text": texts, "model": "rnn"}).json()["translations"]
    expected = [t.quality for t in Translator.for_run(load_model(trained_run)).translate(texts)]
    assert [t["quality"] for t in found] == pytest.approx(expected)
    assert all(0.0 <= t["quality"] <= 100.0 for t in found)
    models = {m["name"]: m for m in client.get("/models").json()}
    assert models["rnn"]["quality_calibrated"] is True and models["rnn"]["mbr"] is None
