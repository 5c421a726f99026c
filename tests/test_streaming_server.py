"""POST /translate/stream on a real server process: the token events' deltas join to the translation /translate
gives for the same request (greedy and beam, steered or not), mistakes are answered before any event as JSON,
and a client that goes away stops the decoding at its next token."""

from __future__ import annotations

import http.client
import json

import pytest
from test_server import LONG, Server, raw_request

PREFIX = " ".join(["KU JO HI GU FO DE CA AB"] * 16)  # 240 target tokens, forced one per step, each streamed


@pytest.fixture(scope="module")
def server(trained_run, trained_transformer, tmp_path_factory):
    running = Server([("rnn", trained_run), ("transformer", trained_transformer)], tmp_path_factory.mktemp("stream"))
    yield running
    running.stop()
    assert "Traceback" not in running.log.read_text()


def parse_events(body: str) -> list[tuple[str, dict]]:
    """A text/event-stream body as (event, data) pairs."""
    events = []
    for block in body.split("\n\n"):
        if block:
            fields = dict(line.split(": ", 1) for line in block.split("\n"))
            events.append((fields["event"], json.loads(fields["data"])))
    return events


def stream(port: int, body: dict) -> tuple[int, str, str]:
    """POST /translate/stream: the status, the content type and the whole body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.request("POST", "/translate/stream", json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.getheader("content-type", ""), response.read().decode()
    finally:
        connection.close()


@pytest.mark.parametrize("steering", [{}, {"prefix": "FO", "constraints": ["PA"]}])
@pytest.mark.parametrize("beam", [1, 3])
@pytest.mark.parametrize("model", ["rnn", "transformer"])
def test_streamed_deltas_join_to_the_translation_that_translate_gives(server, model, beam, steering):
    body = {"text": "ab ca de fo", "model": model, "beam_size": beam, **steering}
    status, kind, answer = stream(server.port, body)
    assert status == 200 and kind.startswith("text/event-stream"), answer
    events = parse_events(answer)
    *tokens, (last, done) = events
    assert last == "done" and tokens and all(name == "token" for name, _ in tokens)
    assert all(set(data) == {"id", "piece", "delta"} for _, data in tokens)
    assert "".join(data["delta"] for _, data in tokens) + done["delta"] == done["text"]
    assert len(tokens) == done["hypotheses"][0]["tokens"]  # one event per token of the best hypothesis
    status, translated = server.request("POST", "/translate", body)
    assert status == 200, translated
    expected = translated["translations"][0]
    assert done["text"] == expected["text"] == expected["hypotheses"][0]["text"]
    assert done["missing"] == expected["missing"] == []
    assert done["hypotheses"][0]["score"] == pytest.approx(expected["hypotheses"][0]["score"], abs=1e-4)
    assert (done["model"], done["beam_size"], done["source"]) == (model, beam, body["text"])
    assert done["text"].startswith(steering.get("prefix", "")) and all(p in done["text"]
                                                                      for p in steering.get("constraints", []))


STREAM_ERRORS = [
    ({"text": ["ab", "ca"]}, 422, "text"),
    ({"text": " "}, 422, "text"),
    ({"text": "ab", "n_best": 2}, 422, "n_best"),
    ({"text": "ab", "n_alternatives": 2}, 422, "n_alternatives"),
    ({"text": "ab", "constraints": ["ß§"]}, 422, "constraints[0]"),
    ({"text": "ab", "prefix": "AB " * 40}, 422, "prefix"),
    ({"text": "ab", "repetition_penalty": 0.5}, 422, "repetition_penalty"),
    ({"text": LONG, "beam_size": 16}, 413, "text"),
]


@pytest.mark.parametrize(("body", "status", "field"), STREAM_ERRORS)
def test_a_stream_refused_is_a_json_error_naming_the_field_before_any_event(server, body, status, field):
    found, kind, answer = stream(server.port, body)
    assert found == status and kind == "application/json", answer
    assert json.loads(answer)["error"]["field"] == field


def test_a_stream_whose_client_goes_away_stops_decoding_at_its_next_token(server):
    """The client reads the first token event of a long decode, then closes its connection: the server stops
    the decoding (counted only when the search ended early) and serves the next request."""
    before = server.health()
    body = {"text": LONG, "model": "transformer", "beam_size": 1, "prefix": PREFIX}
    connection = raw_request(server.port, body, "/translate/stream")
    received = b""
    while b"event: token" not in received:  # each recv waits up to 10 s
        chunk = connection.recv(4096)
        assert chunk, received
        received += chunk
    connection.close()
    after = server.wait_for(lambda h: h["streams_stopped"] > before["streams_stopped"])
    assert after["streams"] == before["streams"] + 1 and b"event: done" not in received
    status, translated = server.request("POST", "/translate", {"text": "ab ca de", "model": "transformer"})
    assert status == 200 and translated["translations"][0]["text"] == "DE CA AB"


def test_the_stream_is_in_the_api_docs(server):
    paths = server.request("GET", "/openapi.json")[1]["paths"]
    assert "text/event-stream" in paths["/translate/stream"]["post"]["responses"]["200"]["content"]
