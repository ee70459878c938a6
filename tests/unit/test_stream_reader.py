"""The OpenAI backend's stream reader against what servers really send on the wire: a scripted HTTP
server on 127.0.0.1 answers each request with bytes written in separate reads (so a JSON object
can arrive split, a last line can lack its newline), and the engine's finish says what went wrong
in words, for that request only. The protocol is the thing tested here, so the server is scripted;
real servers stream in test_openai_http.py."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rllm_study.backends.base import FINISH_ERROR, FINISH_STOP, Request, SamplingParams, TokenEvent
from rllm_study.backends.openai_http.engine import OpenAIEngine, ServerError, SSEReader
from rllm_study.backends.options import OpenAIOptions


def _chunk(text: str, finish: str | None = None) -> bytes:
    return b"data: " + json.dumps({"choices": [{"text": text, "index": 0, "finish_reason": finish}]}).encode() + b"\n\n"


# prompt -> (HTTP status, content-type, the body's writes: each a separate read on the client)
SCRIPTS: dict[str, tuple[int, str, list[bytes]]] = {
    "ok": (200, "text/event-stream", [_chunk("4"), _chunk("", "stop"), b"data: [DONE]\n\n"]),
    "malformed": (
        200,
        "text/event-stream",
        [_chunk("4"), b'data: {"choices": [{"text": oops}]}\n\n', _chunk("", "stop")],
    ),
    "not-an-object": (200, "text/event-stream", [_chunk("4"), b"data: 42\n\n"]),
    "no-final-newline": (200, "text/event-stream", [_chunk("4"), _chunk(" apples", "stop").rstrip(b"\n")]),
    "pings": (
        200,
        "text/event-stream",
        [
            b": ping\n\n",
            b"id: 1\nretry: 100\n",
            _chunk("4"),
            b": ping - 2026-12-07\n\n",
            b"event: message\n" + _chunk("", "stop"),
            b"data: [DONE]\n\n",
        ],
    ),
    "error-event": (
        200,
        "text/event-stream",
        [_chunk("4"), b'event: error\ndata: {"message": "model overloaded"}\n\n'],
    ),
    "split": (
        200,
        "text/event-stream",
        [
            b'data: {"choices": [{"te',
            b'xt": "4", "ind',
            b'ex": 0}]}\r',
            b"\n\r\n",
            _chunk(" apples", "stop").replace(b"\n", b"\r\n"),
        ],
    ),
    "not-a-stream": (
        200,
        "application/json",
        [json.dumps({"choices": [{"text": "4", "index": 0, "finish_reason": "stop"}]}).encode()],
    ),
    "overloaded": (503, "application/json", [b'{"error": {"message": "server busy, try later", "code": 503}}']),
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # the body ends when the connection closes

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, ctype: str, writes: list[bytes]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.end_headers()
        for piece in writes:
            self.wfile.write(piece)
            self.wfile.flush()
            time.sleep(0.05)  # each write its own network read

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            self._send(
                200, "application/json", [json.dumps({"data": [{"id": "scripted", "owned_by": "scripted"}]}).encode()]
            )
        else:
            self._send(404, "application/json", [b'{"error": "no such path"}'])

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self._send(*SCRIPTS[body["prompt"]])


@pytest.fixture(scope="module")
def engine():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    eng = OpenAIEngine("", OpenAIOptions(base_url=f"http://127.0.0.1:{server.server_address[1]}", timeout_s=20))
    yield eng
    eng.close()
    server.shutdown()


def _run(engine, *prompts: str) -> dict[str, list]:
    for p in prompts:
        engine.submit(Request(p, p, SamplingParams(max_tokens=8)))
    out: dict[str, list] = {}
    deadline = time.monotonic() + 30
    while engine.has_work():
        assert time.monotonic() < deadline
        for ev in engine.step():
            out.setdefault(ev.request_id, []).append(ev)
    return out


def _texts(events: list) -> str:
    return "".join(e.text for e in events if isinstance(e, TokenEvent))


def test_malformed_data_line_is_a_clear_error_of_that_request_only(engine):
    events = _run(engine, "malformed", "not-an-object", "ok")
    for name, shows in (("malformed", "oops"), ("not-an-object", "42")):
        fin = events[name][-1]
        assert fin.reason == FINISH_ERROR, fin
        assert "data line that is not a JSON object" in fin.error and shows in fin.error, fin.error
        assert "Expecting value" not in fin.error and "line 1 column" not in fin.error, fin.error
        assert _texts(events[name]) == "4" and fin.output_tokens == 1  # what arrived before stays
    assert events["ok"][-1].reason == FINISH_STOP and events["ok"][-1].output_text == "4"


def test_last_line_without_its_newline_is_read(engine):
    fin = _run(engine, "no-final-newline")["no-final-newline"][-1]
    assert fin.reason == FINISH_STOP and fin.output_text == "4 apples", fin


def test_comments_pings_and_other_fields_are_skipped(engine):
    fin = _run(engine, "pings")["pings"][-1]
    assert fin.reason == FINISH_STOP and fin.output_text == "4" and fin.output_tokens == 1, fin


def test_error_event_finishes_the_request_with_the_servers_message(engine):
    events = _run(engine, "error-event")["error-event"]
    fin = events[-1]
    assert fin.reason == FINISH_ERROR and "error event" in fin.error and "model overloaded" in fin.error, fin.error
    assert _texts(events) == "4"


def test_json_split_across_reads_and_crlf_line_ends(engine):
    events = _run(engine, "split")["split"]
    assert [e.text for e in events if isinstance(e, TokenEvent)] == ["4", " apples"]
    assert events[-1].reason == FINISH_STOP and events[-1].output_text == "4 apples"


def test_http_200_that_is_not_a_stream_is_named(engine):
    fin = _run(engine, "not-a-stream")["not-a-stream"][-1]
    assert (
        fin.reason == FINISH_ERROR and "no server-sent event stream" in fin.error and "application/json" in fin.error
    ), fin.error


def test_5xx_in_mid_run_fails_that_request_and_the_others_finish(engine):
    events = _run(engine, "ok", "overloaded", "pings")
    assert events["overloaded"][-1].reason == FINISH_ERROR
    assert "HTTP 503" in events["overloaded"][-1].error and "server busy" in events["overloaded"][-1].error
    assert [events[k][-1].reason for k in ("ok", "pings")] == [FINISH_STOP, FINISH_STOP]
    # and the engine takes new requests after it
    assert _run(engine, "ok")["ok"][-1].reason == FINISH_STOP


def test_reader_rules_without_a_network():
    reader = SSEReader()
    lines = [b": ping", b"", b'data: {"a": 1}', b"", b"data: [DONE]", b'data: {"b": 2}']
    assert list(reader.chunks(lines)) == [{"a": 1}, None]
    with pytest.raises(ServerError, match="not a JSON object"):
        list(SSEReader().chunks([b"data: {oops"]))
    with pytest.raises(ServerError, match="disk full"):
        list(SSEReader().chunks([b"event: error", b'data: {"error": {"message": "disk full"}}']))
    # `event:` holds for one event only: after the blank line, data is an ordinary chunk again
    assert list(SSEReader().chunks([b"event: error", b"", b'data: {"c": 3}'])) == [{"c": 3}]
