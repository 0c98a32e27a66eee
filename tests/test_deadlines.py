"""Deadlines of `rewards.http_client.ServerClient` against a slow-drip server on loopback: a server that sends its
headers, then one byte a second, never holds a request beyond ``timeout`` per attempt, nor a call beyond
``total_timeout``; the guard's server backend returns failed verdicts (never safe) within its own bound.

The bounds are checked with a wide margin for a loaded 2-core box: what is asserted is "seconds, not minutes" (before
the deadlines, the drip below held a request for ~60 s at ``timeout=1``)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from rewards.guards.gen.remote import RemoteGenBackend
from rewards.http_client import ServerClient, ServerError

BODY = b'{"choices": [{"message": {"content": "Safety: Safe"}}]}' + b" " * 10  # 64 bytes: over a minute at 1 byte/s
MARGIN = 3.0  # seconds of slack for a loaded machine


@contextlib.contextmanager
def drip_server(interval: float = 1.0) -> Iterator[tuple[str, list[float]]]:
    """A raw-socket HTTP server: reads a request, sends 200 headers with the full Content-Length, then the body one
    byte per ``interval``. Yields its base URL and the arrival time of each connection."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.2)
    arrivals: list[float] = []
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head = (
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(BODY)).encode()
                + b"\r\n\r\n"
            )
            try:
                conn.sendall(head)
                for i in range(len(BODY)):
                    if stop.wait(interval):
                        return
                    conn.sendall(BODY[i : i + 1])
            except OSError:  # the client gave up: what the deadline is for
                return

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            arrivals.append(time.monotonic())
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1", arrivals
    finally:
        stop.set()
        acceptor.join(timeout=5)
        listener.close()


def timed(make) -> tuple[object, float]:
    start = time.monotonic()
    result = asyncio.run(asyncio.wait_for(make(), timeout=120))  # a regression fails here, not after an hour
    return result, time.monotonic() - start


def test_timeout_bounds_each_attempt_whole():
    """Bytes keep coming, so no read ever waits ``timeout``: only a deadline on the attempt as a whole ends it."""
    with drip_server() as (url, arrivals):
        client = ServerClient(url, timeout=1.5, max_retries=0)
        [reply], elapsed = timed(lambda: client.apost_all("/chat/completions", [{"x": 1}]))
    assert isinstance(reply, ServerError) and "timeout=1.5 s" in str(reply), reply
    assert 1.4 <= elapsed <= 1.5 + MARGIN and len(arrivals) == 1


def test_retries_are_bounded_attempt_by_attempt():
    with drip_server() as (url, arrivals):
        client = ServerClient(url, timeout=1.0, max_retries=2, backoff=0.05, max_backoff=0.1)
        [reply], elapsed = timed(lambda: client.apost_all("/chat/completions", [{"x": 1}]))
    assert isinstance(reply, ServerError) and str(reply).startswith("AttemptTimeout after 3 attempts"), reply
    assert len(arrivals) == 3 and elapsed <= client.request_bound + MARGIN


def test_total_timeout_bounds_the_whole_call():
    """Eight requests, one slot: without a call deadline they would take 8 x 4 attempts x 1 s; with it, ~2.5 s."""
    with drip_server() as (url, arrivals):
        client = ServerClient(url, timeout=1.0, max_retries=3, backoff=0.01, max_concurrency=1, total_timeout=2.5)
        replies, elapsed = timed(lambda: client.apost_all("/chat/completions", [{"x": i} for i in range(8)]))
    assert all(isinstance(r, ServerError) for r in replies)
    assert sum("total_timeout=2.5 s" in str(r) for r in replies) >= 7  # the queued ones never started
    assert 2.4 <= elapsed <= 2.5 + MARGIN and len(arrivals) <= 3


def test_guard_server_backend_returns_failures_within_its_bound(caplog):
    """The reward's guard over a dripping server: every verdict a failure (never safe), within total_timeout."""
    with drip_server() as (url, _):
        backend = RemoteGenBackend(url, "no-such-guard", timeout=1.0, max_retries=1, backoff=0.01, max_backoff=0.02)
        conversations = [[{"role": "user", "content": f"q{i}"}] for i in range(40)]
        start = time.monotonic()
        verdicts = backend.moderate(conversations)
        elapsed = time.monotonic() - start
    assert backend.http.total_timeout == pytest.approx(3 * 1.0 + 0.02)
    assert all(v.safety is None and not v.is_safe("loose") for v in verdicts)
    assert elapsed <= backend.http.total_timeout + MARGIN + 2.0  # + loading no tokenizer, escaping 40 inputs


def test_total_timeout_validation():
    with pytest.raises(ValueError, match="total_timeout"):
        ServerClient("http://127.0.0.1:9/v1", total_timeout=0)
