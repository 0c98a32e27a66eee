"""Calls to an OpenAI-compatible server (vLLM, SGLang, ``transformers serve``) for the server policy and the
server-backed judges, through the reward component's `rewards.http_client.ServerClient`: bounded concurrency,
timeouts, retries with backoff (and ``Retry-After``); a failed request is a value, not an exception."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from rewards.http_client import ServerClient, ServerError

__all__ = ["ServerError", "ServerSettings", "api_key_from_env", "message_text", "post_all", "post_each"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_BACKOFF = 8.0  # longest wait between retries, in seconds: an evaluation run prefers waiting to failing


class ServerSettings(Protocol):
    """What `post_each` reads from a server policy or judge."""

    base_url: str | None
    api_key: str | None
    max_concurrency: int
    timeout: float
    max_retries: int


def api_key_from_env(api_key: str | None) -> str | None:
    """``api_key``, else ``$OPENAI_API_KEY`` (unset is fine for local servers)."""
    return api_key or os.environ.get("OPENAI_API_KEY") or None


def post_all(
    base_url: str,
    path: str,
    payloads: Sequence[dict[str, Any]],
    *,
    api_key: str | None = None,
    max_concurrency: int = 16,
    timeout: float = 600.0,
    max_retries: int = 3,
) -> list[Any]:
    """POST each payload to ``base_url + path``; one parsed JSON reply or `ServerError` per payload, in order.

    Example:
        >>> post_all("http://localhost:8000/v1", "/chat/completions", [])
        []
    """
    if not payloads:
        return []
    client = ServerClient(
        base_url,
        api_key_from_env(api_key),
        max_concurrency=max_concurrency,
        timeout=timeout,
        max_retries=max_retries,
        max_backoff=MAX_BACKOFF,
    )
    return client.post_all(path, payloads)


def post_each(
    settings: ServerSettings, path: str, payloads: Sequence[dict[str, Any]], read: Callable[[Any], T], what: str
) -> list[T | None]:
    """`post_all` with ``settings``' server options, then ``read`` on each reply, in order.

    A failed request, or a reply that ``read`` finds unusable (it raises `ServerError`), is logged as
    ``"{what} failed: ..."`` and gives None: the caller counts it, it never passes as an answer.
    """
    replies = post_all(
        settings.base_url or "",
        path,
        payloads,
        api_key=settings.api_key,
        max_concurrency=settings.max_concurrency,
        timeout=settings.timeout,
        max_retries=settings.max_retries,
    )
    results: list[T | None] = []
    for reply in replies:
        try:
            if isinstance(reply, ServerError):
                raise reply
            results.append(read(reply))
        except ServerError as exc:
            logger.warning("%s failed: %s", what, exc)
            results.append(None)
    return results


def message_text(reply: dict[str, Any]) -> tuple[str, str | None]:
    """(text, finish_reason) of the first choice of a chat or text completion.

    A reasoning model served with a reasoning parser returns its thinking apart (``reasoning_content`` or
    ``reasoning``); it is put back in front as ``<think>…</think>`` so that thinking and answer split the same way
    whatever the server.
    """
    if not isinstance(reply, dict):
        raise ServerError(f"reply is not a JSON object: {str(reply)[:300]}")
    choices = reply.get("choices") or []
    if not choices:
        raise ServerError(f"reply has no choices: {str(reply)[:300]}")
    choice = choices[0]
    finish = choice.get("finish_reason")
    if "message" in choice:
        message = choice["message"] or {}
        content = message.get("content") or ""
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        if reasoning:
            content = f"<think>\n{reasoning}\n</think>\n\n{content}"
        return content, finish
    return choice.get("text") or "", finish
