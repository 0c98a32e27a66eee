"""`rewards.http_client.ServerClient` against a real server on loopback (starlette under uvicorn) that answers with
``Retry-After`` headers: the wait honours the header on 429 and 503, capped by ``max_backoff``.

The retry paths shared with the guard and the evaluation (5xx, 4xx, garbage, timeouts, closed ports, input order,
bounded concurrency) are tested through their users: tests/test_gen_remote.py and tests/test_eval_run.py."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator

import pytest
from _serve import free_port

from rewards.http_client import ServerClient, ServerError


@contextlib.contextmanager
def busy_then_ready(status: int, retry_after: str, busy: int = 1) -> Iterator[tuple[str, list[float]]]:
    """A server whose first ``busy`` replies are ``status`` with ``Retry-After: retry_after``, then 200 ``{"ok": n}``.

    Yields the base URL and the arrival time (`time.monotonic`) of each request.
    """
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    arrivals: list[float] = []

    async def endpoint(request):
        arrivals.append(time.monotonic())
        await request.body()
        if len(arrivals) <= busy:
            return JSONResponse({"error": "busy"}, status_code=status, headers={"Retry-After": retry_after})
        return JSONResponse({"ok": len(arrivals)})

    app = Starlette(routes=[Route("/v1/echo", endpoint, methods=["POST"])])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    runner = threading.Thread(target=server.run, daemon=True)
    runner.start()
    for _ in range(400):  # up to ~20 s on a loaded machine
        if server.started:
            break
        time.sleep(0.05)
    try:
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}/v1", arrivals
    finally:
        server.should_exit = True
        runner.join(timeout=10)


def post_one(base_url: str, **options) -> object:
    client = ServerClient(base_url, max_concurrency=2, timeout=10.0, backoff=0.01, **options)
    # A wait that ignored max_backoff would sleep for an hour: the guard turns that into a failure, not a hang.
    return asyncio.run(asyncio.wait_for(client.apost_all("/echo", [{"x": 1}]), timeout=60))[0]


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_seconds_is_honoured(status):
    with busy_then_ready(status, "1") as (base_url, arrivals):
        reply = post_one(base_url, max_retries=2, max_backoff=5.0)
    assert reply == {"ok": 2}
    # The plain backoff would retry after ~0.01-0.02 s; the server asked for 1 s.
    assert arrivals[1] - arrivals[0] >= 0.95


def test_retry_after_is_capped_by_max_backoff():
    with busy_then_ready(503, "3600") as (base_url, arrivals):
        reply = post_one(base_url, max_retries=1, max_backoff=0.05)
    assert reply == {"ok": 2} and len(arrivals) == 2


def test_retry_after_date_and_exhausted_retries():
    # The HTTP-date form is not read: the plain backoff applies (the date lies far in the future).
    with busy_then_ready(429, "Wed, 21 Oct 2099 07:28:00 GMT", busy=3) as (base_url, arrivals):
        reply = post_one(base_url, max_retries=2, max_backoff=0.05)
    assert isinstance(reply, ServerError) and str(reply).startswith("HTTP 429 after 3 attempts")
    assert len(arrivals) == 3


def test_validation():
    with pytest.raises(ValueError, match="http"):
        ServerClient("localhost:8000/v1")
    with pytest.raises(ValueError, match="max_concurrency"):
        ServerClient("http://x/v1", max_concurrency=0)
    with pytest.raises(ValueError, match="timeout"):
        ServerClient("http://x/v1", timeout=0)
