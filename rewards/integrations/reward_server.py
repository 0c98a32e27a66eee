"""The reward server's HTTP side (FastAPI): ``POST /get_reward`` for OpenRLHF, ``GET /health``.

Built for a shared cluster:

* **Ready before serving.** `create_app` takes a reward whose models are loaded (``safe-rl serve-reward`` loads and
  probes them before it binds); ``/health`` answers ``{"status": "ready"}`` (200), or ``"stopped"`` (503) once the
  reward's circuit breaker has tripped (`rewards.circuit_breaker`), with the reason.
* **Authentication.** With ``api_key`` every ``/get_reward`` request needs ``Authorization: Bearer <key>``, or HTTP
  Basic with the key as password (what aiohttp, OpenRLHF's client, sends for ``http://user:<key>@host:port/...``);
  the key is compared in constant time (`hmac.compare_digest`). ``/health`` stays open.
* **Body limit.** A body over ``max_body_bytes`` is refused with 413, from ``Content-Length`` before reading, or
  while reading a chunked body (it is never buffered beyond the limit).
* **One guard at a time.** All requests share one `rewards.coalesce.JudgeCoalescer`: concurrent requests become one
  batch, one batch runs at a time, so the guard's own limits (``max_concurrency`` requests for a guard server) hold
  for the whole server, not per request.
* **Errors that say why.** Malformed JSON: 400; a body that breaks the protocol (wrong types, a prompt that is not a
  prefix of its query): 422 with the reason. A correct request gets 200 whatever its samples: an unjudgeable sample
  is a number (`rewards.integrations.openrlhf.reply`). OpenRLHF retries every error five times and then silently
  trains without the reward, so nothing but a broken request or a stopped run answers an error.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint signatures.
import hmac
import json
import logging
from base64 import b64decode
from typing import Any

from rewards.circuit_breaker import TrainingOnNothingError
from rewards.integrations.common import coalescer_for
from rewards.integrations.openrlhf import BadRequest, parse_request, reply

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024  # one OpenRLHF sample is tens of KB; a batch of hundreds fits


class _TooLarge(Exception):
    pass


def authorized(header: str | None, api_key: str) -> bool:
    """Whether an ``Authorization`` header carries ``api_key`` (Bearer, or Basic with it as password).

    Example:
        >>> authorized("Bearer s3cret", "s3cret"), authorized("Bearer guess", "s3cret"), authorized(None, "s3cret")
        (True, False, False)
        >>> authorized("Basic " + __import__("base64").b64encode(b"openrlhf:s3cret").decode(), "s3cret")
        True
    """
    scheme, _, value = (header or "").strip().partition(" ")
    if scheme.lower() == "basic":
        try:
            value = b64decode(value, validate=True).decode().partition(":")[2]
        except ValueError:
            return False
    elif scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), api_key.encode())


async def _read_body(request: Any, limit: int) -> bytes:
    """The request body, raising `_TooLarge` as soon as it exceeds ``limit`` bytes (declared or read)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(
    reward: Any,
    failure: float | None = None,
    *,
    api_key: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> Any:
    """The FastAPI app serving ``reward`` (loaded) to OpenRLHF; see the module docstring.

    Example:
        >>> from fastapi.testclient import TestClient
        >>> from rewards import GuardOnlyReward, Verdict
        >>> class Safe:
        ...     def moderate(self, conversations):
        ...         return [Verdict(safety="Safe", refusal=False) for _ in conversations]
        >>> client = TestClient(create_app(GuardOnlyReward(Safe()), api_key="k"))
        >>> prompt = "<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n"
        >>> body = {"query": [prompt + "Hello!<|im_end|>"], "prompts": [prompt]}
        >>> client.get("/health").json()["status"], client.post("/get_reward", json=body).status_code
        ('ready', 401)
        >>> client.post("/get_reward", json=body, headers={"Authorization": "Bearer k"}).json()["rewards"]
        [1.0]
    """
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    coalescer = coalescer_for(reward)
    name = getattr(reward, "__name__", type(reward).__name__)
    app = FastAPI(title="safe-rl reward server")

    def error(status: int, detail: str, **headers: str) -> JSONResponse:
        return JSONResponse({"detail": detail}, status_code=status, headers=headers or None)

    @app.get("/health")
    def health() -> JSONResponse:
        stopped = reward.breaker.tripped if hasattr(reward, "breaker") else None
        if stopped is not None:
            return JSONResponse({"status": "stopped", "reward": name, "error": str(stopped)}, status_code=503)
        return JSONResponse({"status": "ready", "reward": name})

    @app.post("/get_reward")
    async def get_reward(request: Request) -> JSONResponse:
        if api_key is not None and not authorized(request.headers.get("authorization"), api_key):
            return error(
                401, "missing or wrong API key (Authorization: Bearer <key>)", **{"WWW-Authenticate": "Bearer"}
            )
        try:
            raw = await _read_body(request, max_body_bytes)
        except _TooLarge:
            return error(413, f"request body over the server's limit of {max_body_bytes} bytes (--max-body-bytes)")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            return error(400, f"the body is not JSON: {exc}")
        try:
            prompts, responses = parse_request(body)
        except BadRequest as exc:
            return error(422, str(exc))
        try:
            details = await coalescer.ajudge_many(prompts, responses)
        except TrainingOnNothingError as exc:
            logger.error("%s", exc)
            return error(503, str(exc))
        return JSONResponse(reply(reward, details, failure))

    return app
