"""The API under abuse (issue Step 6, B8): request budget, disconnects, body size, connection
limits and timeouts, and browsers (Origin, Host, Content-Type). Exact codes and error bodies;
no timings are asserted (waits are bounded polls)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time

import httpx
import pytest

from lmforge.config import load_config
from lmforge.errors import UserError
from lmforge.infer.limits import ServerLimits, limits_from_config

from .api_servers import guarded_server

HI = [{"role": "user", "content": "Hi"}]


def error(message: str, code: str | None = None, param: str | None = None) -> dict:
    return {
        "error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    }


@pytest.fixture(scope="module")
def server(shared_engine):
    """The shared engine behind the real server setup, with small limits to reach."""
    from lmforge.infer.api import create_app

    limits = ServerLimits(max_body_bytes=64 * 1024, max_request_tokens=65536)
    with guarded_server(create_app(shared_engine, limits=limits), limits) as url:
        yield url


@pytest.fixture(scope="module")
def cors_server(shared_engine):
    from lmforge.infer.api import create_app

    limits = ServerLimits(cors_origins=("http://localhost:3000",))
    with guarded_server(create_app(shared_engine, limits=limits), limits) as url:
        yield url


def chat(url: str, body: dict | None = None, **kwargs) -> httpx.Response:
    body = body or {"model": "tiny", "messages": HI, "max_tokens": 2}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60, **kwargs)


# -- (a) a request's cost is bounded before it is queued ---------------------------------------


def test_64_prompts_with_n_16_are_refused_naming_the_budget(server, shared_engine):
    body = {"model": "tiny", "prompt": ["Hi"] * 64, "n": 16, "max_tokens": 100}
    r = httpx.post(f"{server}/v1/completions", json=body, timeout=60)
    assert r.status_code == 400
    assert r.json() == error(
        "this request may process 104448 tokens (64 prompts x n=16 x (prompt + max_tokens)), "
        "more than this server's budget of 65536 tokens per request (api_max_request_tokens); "
        "lower n, max_tokens or the number of prompts, or send several requests",
        "request_too_large",
        "n",
    )
    assert shared_engine.stats()["waiting"] == 0  # nothing was queued


def test_the_budget_is_checked_before_tokenizing_many_prompts(shared_engine, monkeypatch):
    from fastapi.testclient import TestClient

    from lmforge.infer.api import create_app

    encoded = []
    encode = shared_engine.tokenizer.encode
    monkeypatch.setattr(
        shared_engine.tokenizer, "encode", lambda *a, **k: encoded.append(1) or encode(*a, **k)
    )
    app = create_app(shared_engine, limits=ServerLimits(max_request_tokens=100))
    with TestClient(app) as client:
        r = client.post("/v1/completions", json={"model": "tiny", "prompt": ["Hi"] * 60})
    assert r.status_code == 400
    assert r.json()["error"]["message"].startswith("this request may process 120 tokens")
    assert encoded == []


def test_a_chat_request_over_a_small_budget(shared_engine):
    from fastapi.testclient import TestClient

    from lmforge.infer.api import create_app

    app = create_app(shared_engine, limits=ServerLimits(max_request_tokens=100))
    with TestClient(app) as client:
        body = {"model": "tiny", "messages": HI, "max_tokens": 10}
        assert client.post("/v1/chat/completions", json=body).status_code == 200  # 28 tokens
        r = client.post("/v1/chat/completions", json={**body, "n": 4})  # 4 x (18 + 10)
        assert r.status_code == 400
        assert r.json()["error"]["message"].startswith(
            "this request may process 112 tokens (1 prompt x n=4 x (prompt + max_tokens)), "
            "more than this server's budget of 100 tokens"
        )


def test_the_default_budget_covers_the_whole_context():
    assert ServerLimits().request_budget(512) == 65536
    assert ServerLimits().request_budget(131072) == 131072
    assert ServerLimits(max_request_tokens=1000).request_budget(131072) == 1000


def test_limits_come_from_the_config_and_flags_win():
    config = load_config(
        None,
        [
            "api_max_request_tokens=1000",
            "api_cors=http://A.example/, https://b.example",
            "api_max_body_mb=0.5",
        ],
    )
    limits = limits_from_config(config, "127.0.0.1")
    assert limits.max_request_tokens == 1000
    assert limits.cors_origins == ("http://a.example", "https://b.example")
    assert limits.max_body_bytes == 512 * 1024
    assert limits.bind_host == "127.0.0.1"
    flagged = limits_from_config(config, None, cors="*", max_request_tokens=5)
    assert flagged.cors_origins == ("*",) and flagged.max_request_tokens == 5
    with pytest.raises(UserError, match="has no scheme"):
        limits_from_config(config, None, cors="localhost:3000")
    with pytest.raises(UserError, match="api_max_request_tokens is 0"):
        limits_from_config(config, None, max_request_tokens=0)


# -- (b) an abandoned non-streaming request is cancelled ---------------------------------------


def test_a_non_streaming_client_that_goes_away_is_cancelled(server, shared_engine, monkeypatch):
    reasons = []
    finish = shared_engine.scheduler._finish

    def recording_finish(seq, text, reason):
        reasons.append(reason)
        return finish(seq, text, reason)

    monkeypatch.setattr(shared_engine.scheduler, "_finish", recording_finish)
    body = json.dumps({"model": "tiny", "messages": HI, "max_tokens": 480}).encode()
    port = int(server.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (port, len(body), body)
        )
        for _ in range(1000):  # bounded: until the sequence is generating
            if shared_engine.stats()["active"]:
                break
            time.sleep(0.01)
        assert shared_engine.stats()["active"] == 1
    for _ in range(1000):  # hung up; bounded wait for the server to notice
        if reasons:
            break
        time.sleep(0.01)
    assert reasons == ["cancelled"]


def test_cancelled_requests_waiting_for_a_slot_are_dropped(shared_engine):
    from lmforge.infer.sampling import SamplingParams

    scheduler = shared_engine.scheduler
    ids = shared_engine.encode_chat(HI).ids
    hold = [scheduler.submit(ids, SamplingParams(max_tokens=200)) for _ in range(8)]
    waiting = scheduler.submit(ids, SamplingParams(max_tokens=200), n=4)
    waiting.cancel()
    chunks = list(waiting)  # ends without the 4 sequences ever being admitted
    assert [c.finish_reason for c in chunks] == ["cancelled"] * 4
    assert all(c.completion_tokens == 0 for c in chunks)
    for stream in hold:
        stream.cancel()
        list(stream)


def test_free_slots_go_to_requests_in_turn(shared_engine, monkeypatch):
    """A request with n=16 does not take every slot from the request queued after it."""
    from lmforge.infer.sampling import SamplingParams

    scheduler = shared_engine.scheduler
    admitted = []
    next_waiting = scheduler._next_waiting

    def recording():
        seq = next_waiting()
        admitted.append(seq.stream)
        return seq

    monkeypatch.setattr(scheduler, "_next_waiting", recording)
    ids = shared_engine.encode_chat(HI).ids
    hold = [scheduler.submit(ids, SamplingParams(max_tokens=400)) for _ in range(8)]
    big = scheduler.submit(ids, SamplingParams(max_tokens=400), n=16)
    small = scheduler.submit(ids, SamplingParams(max_tokens=2))
    hold[0].cancel()  # one slot frees: big's first sequence takes it
    hold[1].cancel()  # the next goes to small, not to big's second sequence
    assert list(small)[-1].finish_reason == "length"  # long before big's 16 x 400 tokens
    assert admitted[8:10] == [big, small]
    for stream in [*hold, big]:
        stream.cancel()
        list(stream)


# -- (c) body size, and work kept off the event loop ------------------------------------------


def test_a_body_over_the_limit_is_413_before_parsing(server):
    big = b'{"model": "tiny", "prompt": "' + b"x" * (64 * 1024) + b'"}'
    r = httpx.post(
        f"{server}/v1/completions",
        content=big,
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert r.status_code == 413
    assert r.json() == error(
        "the request body is larger than this server's limit of 0.0625 MiB (api_max_body_mb)",
        "request_too_large",
    )


def test_a_streamed_body_over_the_limit_is_413(server):
    def chunks():  # no Content-Length: chunked transfer encoding
        yield b'{"model": "tiny", "prompt": "'
        for _ in range(100):
            yield b"x" * 1024
        yield b'"}'

    r = httpx.post(
        f"{server}/v1/completions",
        content=chunks(),
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"


def test_parsing_and_tokenizing_run_off_the_event_loop(shared_engine, monkeypatch):
    from fastapi.testclient import TestClient

    import lmforge.infer.api as api

    on_loop = []

    def running_loop() -> bool:
        try:
            asyncio.get_running_loop()
            return True
        except RuntimeError:
            return False

    def spy(function):
        def wrapper(*args, **kwargs):
            on_loop.append((function.__name__, running_loop()))
            return function(*args, **kwargs)

        wrapper.__name__ = function.__name__
        return wrapper

    monkeypatch.setattr(api, "parse_request", spy(api.parse_request))
    monkeypatch.setattr(shared_engine, "encode_chat", spy(shared_engine.encode_chat))
    monkeypatch.setattr(shared_engine.tokenizer, "encode", spy(shared_engine.tokenizer.encode))
    with TestClient(api.create_app(shared_engine)) as client:
        assert (
            client.post(
                "/v1/chat/completions", json={"model": "tiny", "messages": HI, "max_tokens": 1}
            ).status_code
            == 200
        )
        assert (
            client.post(
                "/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 1}
            ).status_code
            == 200
        )
    names = {name for name, _ in on_loop}
    assert {"parse_request", "encode_chat", "encode"} <= names
    assert not any(loop for _, loop in on_loop), on_loop


# -- (d) slow, idle and too many connections --------------------------------------------------


@pytest.fixture
def small_server(shared_engine):
    from lmforge.infer.api import create_app

    limits = ServerLimits(max_connections=4, request_read_s=0.5, keep_alive_s=60)
    with guarded_server(create_app(shared_engine, limits=limits), limits) as url:
        yield int(url.rsplit(":", 1)[1])


def closed_by_server(sock: socket.socket, trickle: bytes = b"") -> bool:
    """True once the server closes `sock` (bounded: about 10 s), sending `trickle` meanwhile."""
    sock.settimeout(0.1)
    for _ in range(100):
        try:
            if trickle:
                sock.sendall(trickle)
            if sock.recv(4096) == b"":
                return True
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


def test_a_connection_that_sends_nothing_is_closed(small_server):
    with socket.create_connection(("127.0.0.1", small_server)) as sock:
        assert closed_by_server(sock)


def test_a_request_head_sent_a_byte_at_a_time_is_cut_off(small_server):
    with socket.create_connection(("127.0.0.1", small_server)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\n")
        assert closed_by_server(sock, trickle=b"X")  # bytes keep coming; still closed


def get_health(sock: socket.socket, port: int) -> bytes:
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % port)
    return sock.recv(4096)


def test_connections_over_the_limit_get_a_503_and_are_closed(small_server):
    port = small_server
    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(4)]
    try:
        for sock in held:  # each answered: each is one of the server's open connections
            assert get_health(sock, port).startswith(b"HTTP/1.1 200")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:
            reply = extra.recv(4096)
            assert reply.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
            assert b"retry-after: 1" in reply and b'"code": "too_many_connections"' in reply
        held.pop().close()
        for _ in range(100):  # bounded: until the server has seen the close
            with socket.create_connection(("127.0.0.1", port), timeout=10) as again:
                if get_health(again, port).startswith(b"HTTP/1.1 200"):
                    break
            time.sleep(0.05)
        else:
            pytest.fail("a freed connection slot was not reused")
    finally:
        for sock in held:
            sock.close()


def test_a_request_head_over_16_kib_is_refused(small_server):
    with socket.create_connection(("127.0.0.1", small_server), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20000)
        assert sock.recv(4096).startswith(b"HTTP/1.1 400")


def test_repeated_warnings_are_logged_once_per_window(monkeypatch):
    from lmforge.infer import http_server

    clock = [100.0]
    monkeypatch.setattr(http_server.time, "monotonic", lambda: clock[0])
    flt = http_server.RepeatFilter(every=10)

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.error", logging.WARNING, __file__, 1, msg, (), None)

    assert flt.filter(record("Invalid HTTP request received."))
    assert not any(flt.filter(record("Invalid HTTP request received.")) for _ in range(500))
    assert flt.filter(record("another message"))
    clock[0] += 10
    summary = record("Invalid HTTP request received.")
    assert flt.filter(summary)
    assert summary.msg == "Invalid HTTP request received. (500 more like this in the last 10 s)"


# -- (e) browsers: Origin, Host and Content-Type -----------------------------------------------


ORIGIN_REFUSED = (
    "requests from web pages are refused: the origin `https://evil.example` is not allowed; "
    "start the server with --cors ORIGIN (or api_cors) to let a page at that origin call it"
)


@pytest.mark.parametrize(
    "method, path",
    [
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/models"),
        ("GET", "/health"),
        ("OPTIONS", "/v1/chat/completions"),
    ],
)
def test_a_cross_origin_request_is_403(server, method, path):
    body = {"model": "tiny", "messages": HI, "max_tokens": 2}
    r = httpx.request(
        method,
        f"{server}{path}",
        json=body if method == "POST" else None,
        timeout=60,
        headers={"Origin": "https://evil.example"},
    )
    assert r.status_code == 403
    assert r.json() == error(ORIGIN_REFUSED, "origin_not_allowed")
    assert "access-control-allow-origin" not in r.headers


def test_cors_lets_the_named_origin_in_and_no_other(cors_server):
    page = {"Origin": "http://localhost:3000"}
    r = chat(cors_server, headers=page)
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "http://localhost:3000"
    preflight = httpx.options(
        f"{cors_server}/v1/chat/completions",
        headers={
            **page,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert chat(cors_server, headers={"Origin": "http://localhost:3001"}).status_code == 403


@pytest.mark.parametrize(
    "host, status",
    [
        ("127.0.0.1:{port}", 200),
        ("localhost:{port}", 200),
        ("LOCALHOST:{port}", 200),
        ("[::1]:{port}", 200),
        ("evil.example:{port}", 403),  # DNS rebinding: the page's own name
        ("evil.example", 403),
        ("localhost", 403),  # not port 80
        ("127.0.0.1:1", 403),
    ],
)
def test_a_loopback_server_answers_only_local_host_names(server, host, status):
    port = int(server.rsplit(":", 1)[1])
    host = host.format(port=port)
    r = chat(server, headers={"Host": host})
    assert r.status_code == status
    if status == 403:
        assert r.json() == error(
            f"the Host header `{host}` does not name this server; a server on loopback answers "
            f"only localhost, 127.0.0.1 or [::1] with port {port} (another name may be a web "
            "page reaching it through DNS rebinding)",
            "host_not_allowed",
        )


def test_a_server_on_all_interfaces_takes_any_host(shared_engine):
    from fastapi.testclient import TestClient

    from lmforge.infer.api import create_app

    app = create_app(shared_engine, limits=ServerLimits(bind_host="0.0.0.0"))
    with TestClient(app, base_url="http://my-gpu-box:8000") as client:
        assert client.get("/v1/models").status_code == 200


@pytest.mark.parametrize(
    "content_type, status",
    [
        ("text/plain", 415),
        ("text/plain;charset=UTF-8", 415),
        ("application/x-www-form-urlencoded", 415),
        ("multipart/form-data; boundary=x", 415),
        ("application/json", 200),
        ("application/json; charset=utf-8", 200),
        ("Application/JSON", 200),
        (None, 200),  # no type: not a browser form; a browser adds an Origin
    ],
)
def test_only_json_bodies_are_read(server, content_type, status):
    body = json.dumps({"model": "tiny", "messages": HI, "max_tokens": 2}).encode()
    headers = {"Content-Type": content_type} if content_type else {}
    r = httpx.post(f"{server}/v1/chat/completions", content=body, headers=headers, timeout=60)
    assert r.status_code == status
    if status == 415:
        assert r.json() == error(
            "the request body must be JSON sent as `Content-Type: application/json`, not "
            f"`{content_type}`",
            "unsupported_media_type",
        )


def test_the_guards_hold_with_many_clients_at_once(server):
    """Refusals under concurrency: each request gets its own answer."""
    results: list[int] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        headers = {"Origin": "https://evil.example"} if i % 2 else {}
        status = chat(server, headers=headers).status_code
        with lock:
            results.append((i % 2, status))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(results) == [(0, 200)] * 6 + [(1, 403)] * 6
