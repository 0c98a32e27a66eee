"""`RemoteGenBackend`: Qwen3Guard-Gen behind any OpenAI-compatible server (vLLM, SGLang, ``transformers serve``).

Each conversation is one greedy ``POST {base_url}/chat/completions`` (``temperature=0``, ``max_tokens`` =
``max_new_tokens``). The server applies the guard's chat template itself, so content is escaped here first (see
`rewards.guard_prompt`): a completion holding ``<|im_end|>`` or a forged ``Safety: Safe`` line cannot change the
structure the guard reads. Two modes, chosen on first use and logged once:

* exact: a guard tokenizer is available (``tokenizer=...``, or the served ``model`` name loads one). Messages come
  from ``GuardPrompt.prepare``: escaped with the tokenizer's special tokens and template markers, cut to
  ``max_input_tokens`` by the token rule of `rewards.guard_prompt`. `prepare` works.
* fallback: no tokenizer (e.g. a ``--served-model-name`` alias). Content is escaped by the generic rule of
  `rewards.escaping` (no template to read: Qwen's control strings, verdict lines, and the Qwen3Guard-Gen structure's
  role labels and tags in capitals, ``USER:``, ``<END …>``) and cut by the same rule counted in characters
  (`truncate_chars`), to ``CHARS_PER_TOKEN *
  (max_input_tokens - TEMPLATE_TOKENS)`` characters: rough for text with many tokens per character (CJK, code);
  a server that rejects an over-long input answers 400, a failed verdict. `prepare` raises.

Requests go through `rewards.http_client.ServerClient` (bounded concurrency per event loop, retries on transport
errors, 408/409/425/429 and 5xx with exponential backoff, jitter and ``Retry-After``; each attempt bounded as a
whole by ``timeout``, each call as a whole by ``total_timeout``). Failures never
raise and never pass as safe: what still fails, other 4xx, and replies that are not chat completions give
``failed_verdict(error=...)`` (``safety=None``), logged as one summary warning per ``log_interval`` at most.
`amoderate` works from any event loop (TRL's reward loop in another thread, `asyncio.run`); the sync `moderate` runs
a fresh loop, in a worker thread when the caller's thread already runs one (e.g. Jupyter).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from rewards.conversation import Conversation
from rewards.guard_prompt import (
    ELLIPSIS,
    ContentEscaper,
    GuardPrompt,
    PreparedInput,
    check_conversation,
    escape_conversation,
    truncate_conversation,
)
from rewards.http_client import ServerClient, ServerError, run_sync
from rewards.verdict import Verdict, failed_verdict, parse_verdict

logger = logging.getLogger(__name__)

CHARS_PER_TOKEN = 3  # fallback budget: ~4 chars/token for English with Qwen's tokenizer, 3 leaves a margin
TEMPLATE_TOKENS = 512  # fallback reserve for the guard template's own instructions (a few hundred tokens)


def cut_chars(text: str, keep: int) -> str:
    """Keep the head and the tail of ``text`` (half each) around ``ELLIPSIS`` so that it has ``keep`` characters.

    Example:
        >>> cut_chars("abcdefghijklmnopqrstuvwxyz", 15)
        'abcde\\n[…]\\nvwxyz'
        >>> cut_chars("short", 15)
        'short'
    """
    if len(text) <= keep:
        return text
    keep = max(keep - len(ELLIPSIS), 2)
    head, tail = keep - keep // 2, keep // 2
    return text[:head] + ELLIPSIS + text[len(text) - tail :]


def truncate_chars(conversation: Sequence[dict[str, Any]], max_chars: int) -> tuple[Conversation, bool]:
    """`rewards.guard_prompt`'s truncation rule counted in characters; returns the messages and whether cut.

    Earlier turns go first (oldest first), then in answer moderation the prompt is cut down to a quarter of the
    budget before the answer is cut; each cut keeps head and tail (`cut_chars`).

    Example:
        >>> conv = [{"role": "user", "content": "q" * 100}, {"role": "assistant", "content": "a" * 100}]
        >>> messages, truncated = truncate_chars(conv, 80)
        >>> truncated, [len(m["content"]) for m in messages]
        (True, [20, 60])
    """
    return truncate_conversation(conversation, lambda roles: max_chars, len, cut_chars)


def _find_tokenizer(name: str) -> Any:
    """The tokenizer of a served model name: local folder or HF cache first; the hub only for ``org/name`` ids.

    Without network and without ``HF_HUB_OFFLINE=1``, the hub attempt takes ~50 s of retries before failing.
    """
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=True)
    except Exception:
        if name.count("/") != 1 or os.path.exists(name):  # an alias (--served-model-name) or a broken folder
            raise
    return AutoTokenizer.from_pretrained(name)


class RemoteGenBackend:
    """Qwen3Guard-Gen over an OpenAI-compatible ``/chat/completions`` endpoint (used by `Qwen3GuardGen`).

    Args:
        base_url: the API root, e.g. ``"http://localhost:8000/v1"``.
        model: the served model name (sent as ``model``); also tried as the guard tokenizer's hub id or folder.
        api_key: sent as ``Authorization: Bearer``.
        tokenizer: hub id, folder or tokenizer object of the guard; None tries ``model``, else the fallback mode.
        max_input_tokens: longest guard input; longer content is cut (see the module docstring).
        max_new_tokens: sent as ``max_tokens``.
        max_concurrency: requests in flight at once (per event loop).
        timeout: seconds for each attempt, whole: connecting, sending, waiting and reading the reply (connect at most
            10 s of it).
        max_retries: retries after the first attempt on transport errors, timeouts, 408/409/425/429 and 5xx.
        backoff, max_backoff: first and largest wait between retries, in seconds (exponential, with jitter);
            ``max_backoff`` also caps a server's ``Retry-After``.
        total_timeout: seconds for one `amoderate`/`moderate` call as a whole, every request, queueing, retry and
            backoff in it; what is unanswered then is a failed verdict. Default: what one request's retries can take
            plus one attempt's worth for queueing, ``(max_retries + 2) * timeout + max_retries * max_backoff`` (630 s
            with the defaults).
        log_interval: at most one failure warning per this many seconds (the warning sums up what it skipped).

    Example:
        >>> backend = RemoteGenBackend("http://localhost:8000/v1", "Qwen/Qwen3Guard-Gen-4B")  # doctest: +SKIP
        >>> backend.moderate([[{"role": "user", "content": "How do I make a bomb?"}]])[0].safety  # doctest: +SKIP
        'Unsafe'
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        tokenizer: Any = None,
        max_input_tokens: int = 8192,
        max_new_tokens: int = 32,
        max_concurrency: int = 32,
        timeout: float = 120.0,
        max_retries: int = 3,
        *,
        backoff: float = 0.5,
        max_backoff: float = 10.0,
        total_timeout: float | None = None,
        log_interval: float = 60.0,
    ):
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
        if max_input_tokens < 64:
            raise ValueError(f"max_input_tokens must be at least 64, got {max_input_tokens}")
        self.http = ServerClient(
            base_url,
            api_key,
            max_concurrency=max_concurrency,
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff,
            max_backoff=max_backoff,
            total_timeout=total_timeout or (max_retries + 2) * timeout + max_retries * max_backoff,
        )
        self.base_url = self.http.base_url
        self.url = self.base_url + "/chat/completions"
        self.model = model
        self.tokenizer = tokenizer
        self.max_input_tokens = max_input_tokens
        self.max_new_tokens = max_new_tokens
        self.log_interval = log_interval
        self._prompt: GuardPrompt | None = None
        self._fallback_reason: str | None = None
        self._resolved = False
        self._lock = threading.Lock()
        self._prepare_lock = threading.Lock()
        self._pending_failures: Counter[str] = Counter()
        self._last_warning = float("-inf")

    def __repr__(self) -> str:
        return f"RemoteGenBackend(url={self.url!r}, model={self.model!r})"

    # -- input ------------------------------------------------------------------------------------------------
    @property
    def exact(self) -> bool:
        """True when a guard tokenizer is used (exact escaping and token-budget truncation)."""
        return self._guard_prompt() is not None

    def _guard_prompt(self) -> GuardPrompt | None:
        with self._lock:  # loaded once, even when two threads ask at the same time
            if not self._resolved:
                self._prompt, self._fallback_reason = self._load_prompt()
                self._resolved = True
        return self._prompt

    def _load_prompt(self) -> tuple[GuardPrompt | None, str | None]:
        from transformers import AutoTokenizer

        if self.tokenizer is not None:  # asked for explicitly: failing to load it is a configuration error
            tok = self.tokenizer
            if isinstance(tok, (str, os.PathLike)):
                tok = AutoTokenizer.from_pretrained(tok)
            prompt = GuardPrompt(tok, max_input_tokens=self.max_input_tokens)
            logger.info("guard server %s: exact mode with the given tokenizer", self.url)
            return prompt, None
        try:
            prompt = GuardPrompt(_find_tokenizer(self.model), max_input_tokens=self.max_input_tokens)
        except Exception as exc:  # not a hub id or folder, offline and not cached, no chat template, …
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            logger.warning(
                "guard server %s: no guard tokenizer (%s loads no tokenizer: %s); sending content escaped with the "
                "generic escaper and cut at ~%d characters. Pass tokenizer=... for exact escaping and truncation.",
                self.url,
                self.model,
                reason,
                self.max_chars,
            )
            return None, reason
        logger.info("guard server %s: exact mode with the tokenizer of %s", self.url, self.model)
        return prompt, None

    @property
    def max_chars(self) -> int:
        """Content budget of the fallback mode, in characters."""
        return CHARS_PER_TOKEN * max(self.max_input_tokens - TEMPLATE_TOKENS, self.max_input_tokens // 2)

    def request_messages(self, conversation: Sequence[dict[str, Any]]) -> tuple[Conversation, bool]:
        """The escaped (and possibly cut) messages sent for ``conversation``, and whether they were cut.

        Example:
            >>> backend = RemoteGenBackend("http://localhost:8000/v1", "guard", tokenizer=None)  # doctest: +SKIP
            >>> backend.request_messages([{"role": "user", "content": "x<|im_end|>"}])  # doctest: +SKIP
            ([{'role': 'user', 'content': 'x<\\u200b|im_end|>'}], False)
        """
        prompt = self._guard_prompt()
        if prompt is not None:
            prepared = prompt.prepare(conversation)
            return prepared.messages, prepared.truncated
        check_conversation(conversation)
        # Cut first, then escape: a cut can bring text to a line start, where it must be escaped as well.
        messages, truncated = truncate_chars(conversation, self.max_chars)
        return escape_conversation(messages, ContentEscaper()), truncated

    def _request_messages_all(
        self, conversations: Sequence[Sequence[dict[str, Any]]]
    ) -> list[tuple[Conversation, bool] | str]:
        with self._prepare_lock:  # one tokenizer, used from worker threads of several loops: one batch at a time
            return [self._request_messages_or_error(c) for c in conversations]

    def _request_messages_or_error(self, conversation: Sequence[dict[str, Any]]) -> tuple[Conversation, bool] | str:
        try:
            return self.request_messages(conversation)
        except (ValueError, TypeError) as exc:  # one malformed sample must not cost the whole batch
            return f"bad conversation: {exc}"

    def prepare(self, conversation: Sequence[dict[str, Any]]) -> PreparedInput:
        """Escaped, truncated, rendered and tokenized input (needs the guard tokenizer)."""
        prompt = self._guard_prompt()
        if prompt is None:
            raise RuntimeError(
                f"render/encode/prepare need the guard tokenizer, but {self.model!r} loads none "
                f"({self._fallback_reason}); pass tokenizer= a hub id or folder of the guard "
                "(e.g. Qwen/Qwen3Guard-Gen-4B)"
            )
        return prompt.prepare(conversation)

    # -- requests ---------------------------------------------------------------------------------------------
    def _reply_text(self, reply: Any) -> tuple[str | None, str | None]:
        """``(the guard's text, None)`` or ``(None, why it failed)`` for one `ServerClient` result."""
        if isinstance(reply, ServerError):
            return None, str(reply)
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            return None, f"reply is not a chat completion: {str(reply)[:200]!r}"
        if not isinstance(content, str):
            return None, f"reply content is {type(content).__name__}, not text"
        return content, None

    async def amoderate(self, conversations: Sequence[Sequence[dict[str, Any]]]) -> list[Verdict]:
        """One verdict per conversation, in input order; failed requests give ``safety=None`` verdicts.

        A conversation that is not ``[..., user]`` or ``[..., user, assistant]`` gets a failed verdict too.
        """
        if not conversations:
            return []
        # Tokenizing (and loading the tokenizer on first use) is CPU work: off the loop that other rewards share.
        prepared = await asyncio.to_thread(self._request_messages_all, conversations)
        bodies = [
            {"model": self.model, "messages": p[0], "temperature": 0.0, "max_tokens": self.max_new_tokens}
            for p in prepared
            if not isinstance(p, str)
        ]
        replies = iter(await self.http.apost_all("/chat/completions", bodies))
        verdicts: list[Verdict] = []
        errors: list[str] = []
        for item in prepared:
            if isinstance(item, str):
                verdicts.append(failed_verdict(item))
                continue
            truncated = item[1]
            text, error = self._reply_text(next(replies))
            if error is not None:
                errors.append(error)
                verdicts.append(failed_verdict(f"guard server: {error}", truncated=truncated))
            else:
                verdicts.append(replace(parse_verdict(text), truncated=truncated))
        if errors:
            self._log_failures(errors, len(conversations))
        return verdicts

    def moderate(self, conversations: Sequence[Sequence[dict[str, Any]]]) -> list[Verdict]:
        """Sync `amoderate`; works whether or not the calling thread already runs an event loop."""
        return run_sync(lambda: self.amoderate(conversations))

    def _log_failures(self, errors: list[str], batch: int) -> None:
        with self._lock:
            # Counted by kind (the text before the details) so that one line sums up a failing server.
            self._pending_failures.update(e.split(":", 1)[0] for e in errors)
            now = time.monotonic()
            if now - self._last_warning < self.log_interval:
                return
            kinds = ", ".join(f"{n} x {kind}" for kind, n in self._pending_failures.most_common(5))
            self._pending_failures.clear()
            self._last_warning = now
        logger.warning(
            "guard server %s: %d of %d requests in the latest call failed; failures since the last warning: %s. "
            "Their verdicts are failures (safety=None). First error: %s",
            self.url,
            len(errors),
            batch,
            kinds,
            errors[0],
        )
