"""`nmt serve`: the REST API through FastAPI's test client (served output against `nmt translate`, every
client error, the attention numbers), and a bounded load test against a real server process."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from toy import reverse_words
from toy_runs import MIN_DEV_BLEU

from nmt.data.splits import eval_set
from nmt.inspect.view import attention_view
from nmt.runs.loading import load_model, load_run_config
from nmt.runs.rundir import RunDir
from nmt.serve.server import Limits, create_app
from nmt.serve.service import ModelRegistry, served_runs

ROOT = Path(__file__).resolve().parent.parent
NMT = str(Path(sys.executable).parent / "nmt")


@pytest.fixture(scope="module")
def client(trained_run, trained_transformer):
    registry = ModelRegistry([("rnn", trained_run), ("transformer", trained_transformer)])
    limits = Limits(max_texts=8, max_body_bytes=4096, max_batch_sentences=64, batch_wait_ms=30)
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


CLIENT_ERRORS = [
    ({"text": ""}, 422, "text"),
    ({"text": " \t\u200b "}, 422, "text"),
    ({"text": ["ab", ""]}, 422, "text[1]"),
    ({"text": []}, 422, "text"),
    ({"text": ["ab"] * 9}, 413, "text"),
    ({"text": "ab " * 300}, 422, "text"),
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
]


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
    ({"text": "ab", "model": "transformer", "layer": 9}, "layer", "layer 9: the model has 2 layers"),
    ({"text": "ab", "model": "transformer", "head": 5}, "head", "head 5: the model has 4 heads"),
    ({"text": "ab", "model": "transformer", "head": 0}, "head", "greater than or equal to 1"),
    ({"text": "ab", "model": "transformer", "kind": "sideways"}, "kind", "'cross', 'encoder' or 'decoder'"),
    ({"text": "ab", "model": "rnn", "layer": 1}, "layer", "an RNN with one cross-attention map"),
    ({"text": "ab", "model": "rnn", "kind": "encoder"}, "kind", "an RNN with one cross-attention map"),
    ({"text": "ab", "threshold": 2}, "threshold", "less than or equal to 1"),
    ({"text": ["ab"]}, "text", "valid string"),
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
    assert rnn["model"] == "rnn" and rnn["layer"] is None and len(rnn["panels"]) == 1
    np.testing.assert_allclose(np.sum(rnn["weights"], axis=1), 1.0, rtol=1e-5)


def test_models_and_health(client):
    models = {m["name"]: m for m in client.get("/models").json()}
    assert models["transformer"]["layers"] == 2 and models["transformer"]["heads"] == 4
    assert models["transformer"]["type"] == "transformer" and models["rnn"]["attention"] == "general"
    assert models["rnn"]["dev_bleu"] >= MIN_DEV_BLEU and models["rnn"]["parameters"] > 10_000
    assert client.get("/health").json() == {"status": "ok", "models": ["rnn", "transformer"]}
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
