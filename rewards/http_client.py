"""`ServerClient`: JSON POSTs to an OpenAI-compatible server (vLLM, SGLang, ``transformers serve``) with bounded
concurrency, timeouts and retries. A request that fails comes back as a `ServerError` value, never raised, so that
one bad request cannot cost a training step or an evaluation run.

Deadlines. ``timeout`` bounds each *attempt* as a whole: connecting, sending, waiting and reading the entire reply
(a server that sends one byte a second is cut off at ``timeout``, not after ``timeout`` of silence). A request
therefore takes at most ``request_bound = (max_retries + 1) * timeout + max_retries * max_backoff`` once it holds a
concurrency slot, and one `ServerClient.apost_all` call of N requests at most ``ceil(N / max_concurrency) *
request_bound``. ``total_timeout`` (off by default) bounds one call as a whole instead, from the moment of the call:
queueing for a slot, every attempt and every backoff of every request in it; what is still unanswered then is a
`ServerError`. The guard's server backend sets it (`rewards.guards.gen.remote`), so that one reward call returns
within ``total_timeout`` plus the time to cancel what is in flight, however the server behaves.

Retried: transport errors (refused connection, timeouts, resets), 408, 409, 425, 429 and every 5xx, with
exponential backoff and jitter. A ``Retry-After: <seconds>`` header on 429 or 503 raises the wait to what the server
asks, capped by ``max_backoff`` (the HTTP-date form is ignored: the plain backoff applies). The concurrency bound is
held through the backoff, so retries add no load on a struggling server. Other 4xx are not retried.

Event loops: each `ServerClient.apost_all` opens and closes its own `httpx.AsyncClient` in the running loop, and the
concurrency bound is one `asyncio.Semaphore` per loop: usable from TRL's reward loop (another thread), from
`asyncio.run`, and from sync code through `run_sync` (a fresh loop, in a worker thread when the caller's thread
already runs one, e.g. Jupyter).
"""

from __future__ import annotations

import asyncio
import functools
import math
import random
import ssl
import threading
import weakref
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

T = TypeVar("T")

RETRY_STATUS = frozenset({408, 409, 425, 429})  # and every 5xx
RETRY_AFTER_STATUS = frozenset({429, 503})


class ServerError(RuntimeError):
    """A request that failed (after its retries, or not retried) or a reply that is not what was asked for."""


class AttemptTimeout(httpx.TimeoutException):
    """One attempt did not get its whole reply within ``timeout`` (retried like any transport timeout)."""


class _RetryableStatus(Exception):
    def __init__(self, response: httpx.Response):
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


def is_retryable_status(status: int) -> bool:
    """Whether a reply with this HTTP status is worth another attempt.

    Example:
        >>> [is_retryable_status(s) for s in (200, 400, 429, 501, 503)]
        [False, False, True, True, True]
    """
    return status in RETRY_STATUS or status >= 500


def retry_after(response: httpx.Response) -> float | None:
    """Seconds asked by the reply's ``Retry-After`` header (seconds form); None when absent, a date, or malformed.

    Example:
        >>> retry_after(httpx.Response(503, headers={"Retry-After": "2"}))
        2.0
        >>> retry_after(httpx.Response(503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})) is None
        True
    """
    try:
        seconds = float(response.headers.get("retry-after", ""))
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, (httpx.TransportError, _RetryableStatus))


def _attempts(n: int) -> str:
    return f"{n} attempt{'s' * (n > 1)}"


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Loading the CA bundle takes 0.1-0.3 s and a context is thread- and loop-independent: build it once.
    return httpx.create_ssl_context()


def run_sync(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run the coroutine ``make()`` from sync code, whether or not the calling thread already runs an event loop.

    Example:
        >>> async def two():
        ...     return 2
        >>> run_sync(two)
        2
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    # A loop runs in this thread (Jupyter, an async trainer): it cannot be re-entered, so use a fresh one.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="server-client") as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


class ServerClient:
    """POSTs JSON to ``base_url + path``; one parsed JSON reply or `ServerError` per payload, in order.

    Args:
        base_url: the API root, e.g. ``"http://localhost:8000/v1"``.
        api_key: sent as ``Authorization: Bearer``.
        max_concurrency: requests in flight at once (per event loop).
        timeout: seconds for each attempt, whole (connect at most 10 s of it); see the module docstring.
        max_retries: retries after the first attempt (see the module docstring for what is retried).
        backoff, max_backoff: first and largest wait between retries, in seconds (exponential, with jitter);
            ``max_backoff`` also caps a server's ``Retry-After``.
        total_timeout: seconds for one `apost_all` call as a whole (None: no bound on the call, only on each
            request, see the module docstring).

    Example:
        >>> client = ServerClient("http://localhost:8000/v1", max_retries=2)
        >>> client.post_all("/chat/completions", [])
        []
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        max_concurrency: int = 16,
        timeout: float = 600.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 10.0,
        total_timeout: float | None = None,
    ):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if max_concurrency < 1 or max_retries < 0:
            raise ValueError("max_concurrency must be positive and max_retries not negative")
        if timeout <= 0 or backoff < 0 or max_backoff < 0:
            raise ValueError("timeout must be positive, backoff and max_backoff not negative")
        if total_timeout is not None and total_timeout <= 0:
            raise ValueError(f"total_timeout must be positive, got {total_timeout}")
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.total_timeout = None if total_timeout is None else float(total_timeout)
        self._lock = threading.Lock()
        self._semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        return f"ServerClient({self.base_url!r})"

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        with self._lock:  # a semaphore belongs to one loop; TRL's loop and asyncio.run loops each get their own
            semaphore = self._semaphores.get(loop)
            if semaphore is None:
                semaphore = self._semaphores[loop] = asyncio.Semaphore(self.max_concurrency)
        return semaphore

    def session(self) -> httpx.AsyncClient:
        """A fresh `httpx.AsyncClient` for the running loop (use it as ``async with``)."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else None
        return httpx.AsyncClient(
            verify=_ssl_context(),
            headers=headers,
            # each attempt is bounded as a whole in `apost`; httpx's own limits are per read or write
            timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
            limits=httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency),
        )

    def _wait(self, state: RetryCallState) -> float:
        # Exponential with jitter (tenacity's wait_exponential_jitter, whose arguments changed across versions).
        exponent = min(state.attempt_number - 1, 60)  # no float overflow for absurd max_retries
        wait = min(self.backoff * 2.0**exponent + random.uniform(0, self.backoff), self.max_backoff)
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, _RetryableStatus) and exc.response.status_code in RETRY_AFTER_STATUS:
            asked = retry_after(exc.response)
            if asked is not None:  # the server knows when it will be ready; never longer than max_backoff
                wait = min(max(wait, asked), self.max_backoff)
        return wait

    @property
    def request_bound(self) -> float:
        """The longest one request can take once it holds a concurrency slot, in seconds (module docstring)."""
        return (self.max_retries + 1) * self.timeout + self.max_retries * self.max_backoff

    async def apost(self, session: httpx.AsyncClient, path: str, payload: Any, deadline: float | None = None) -> Any:
        """POST ``payload`` on ``session`` (from `session`) with retries: the parsed JSON reply or a `ServerError`.

        ``deadline`` (on the running loop's clock), when given, ends the request, queueing and retries included.
        """
        attempts = [0]
        if deadline is None:
            return await self._apost(session, path, payload, attempts)
        try:
            left = max(deadline - asyncio.get_running_loop().time(), 0.0)
            return await asyncio.wait_for(self._apost(session, path, payload, attempts), left)
        except TimeoutError:
            return ServerError(
                f"Timeout: no reply within total_timeout={self.total_timeout:g} s ({_attempts(attempts[0])} started)"
            )

    async def _attempt(self, session: httpx.AsyncClient, url: str, payload: Any) -> httpx.Response:
        try:
            return await asyncio.wait_for(session.post(url, json=payload), self.timeout)
        except TimeoutError:
            raise AttemptTimeout(f"no complete reply within timeout={self.timeout:g} s") from None

    async def _apost(self, session: httpx.AsyncClient, path: str, payload: Any, counter: list[int]) -> Any:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=self._wait,
            retry=retry_if_exception(_retryable),
            reraise=True,
        )
        url = self.base_url + path
        attempts = 0
        try:
            async with self._semaphore():  # held through backoff, so that retries add no load on a busy server
                async for attempt in retrying:
                    with attempt:
                        attempts += 1
                        counter[0] = attempts
                        response = await self._attempt(session, url, payload)
                        if is_retryable_status(response.status_code):
                            raise _RetryableStatus(response)
        except _RetryableStatus as exc:
            status, text = exc.response.status_code, exc.response.text[:200]
            return ServerError(f"HTTP {status} after {_attempts(attempts)}: {text}")
        except httpx.TransportError as exc:
            return ServerError(f"{type(exc).__name__} after {_attempts(attempts)}: {exc}"[:300])
        except Exception as exc:  # never let one request kill a training step or a run
            return ServerError(f"{type(exc).__name__}: {exc}"[:300])
        if response.status_code >= 400:
            return ServerError(f"HTTP {response.status_code} (not retried): {response.text[:200]}")
        try:
            return response.json()
        except ValueError:
            return ServerError(f"reply is not JSON: {response.text[:200]!r}")

    async def apost_all(self, path: str, payloads: Sequence[Any]) -> list[Any]:
        """`apost` for each payload, concurrently (at most ``max_concurrency`` in flight), all within ``total_timeout``
        of the call when it is set; results in input order."""
        if not payloads:
            return []
        deadline = None if self.total_timeout is None else asyncio.get_running_loop().time() + self.total_timeout
        async with self.session() as session:
            return list(await asyncio.gather(*(self.apost(session, path, p, deadline) for p in payloads)))

    def post_all(self, path: str, payloads: Sequence[Any]) -> list[Any]:
        """Sync `apost_all`; works whether or not the calling thread already runs an event loop."""
        if not payloads:
            return []
        return run_sync(lambda: self.apost_all(path, payloads))
