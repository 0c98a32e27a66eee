"""What the guard reads: chat-template rendering that keeps policy text as data, and the truncation rule.

The instruction text always comes from the guard tokenizer's own chat template. Before rendering, message content
is *escaped* by the rule of `rewards.escaping` (a zero-width space after the first character of every special-token
string, and of every content line shaped like a verdict line of `rewards.verdict.parse_verdict` or like a line of
the template). Here that rule is given what it needs from the guard itself, when `GuardPrompt` is made: the
tokenizer's special and added tokens, and the template's structure lines, read off a rendering of the template
(whole lines, and the text around each content slot, e.g. ``USER:``). After rendering, a last check counts the
special-token strings of the rendered text: a conversation whose text holds any more than the template's own is
refused (a counted failure), so no token id of the template's structure can come from content, whether the text is
tokenized here or by a server (vLLM, SGLang, ``transformers serve``) that applies the template itself.

Truncation rule (``max_input_tokens``), applied to content only, never to the template:
1. earlier turns (before the last user turn) are dropped first, oldest first;
2. in answer moderation the prompt is then cut, down to a quarter of the content budget, before the answer;
3. a cut keeps the head and the tail of the text (half each) joined by ``ELLIPSIS``: refusals and disclaimers sit
   at the start, harmful payloads often after them, so both ends carry the verdict.
A cut conversation is marked ``truncated`` and counted in the reward metrics.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from rewards.conversation import Conversation, is_response_moderation
from rewards.escaping import (
    ZWSP,
    ContentEscaper,
    escape_conversation,
    structure_lines,
    tokenizer_specials,
)

__all__ = [
    "ELLIPSIS",
    "ZWSP",
    "ContentEscaper",
    "GuardPrompt",
    "PreparedInput",
    "check_conversation",
    "escape_conversation",
    "truncate_conversation",
]

ELLIPSIS = "\n[…]\n"
_SENTINEL = "\x00SAFE_RL_CONTENT_{}\x00"


def truncate_conversation(
    conversation: Sequence[dict[str, Any]],
    budget: Callable[[tuple[str, ...]], int],
    count: Callable[[str], int],
    cut: Callable[[str, int], str],
) -> tuple[Conversation, bool]:
    """The truncation rule of this module, in any unit; returns a copy of the messages and whether they were cut.

    ``budget(roles)`` is the content budget of a conversation with those roles, ``count(text)`` the size of a text
    and ``cut(text, keep)`` the text cut (head and tail) to ``keep``; a cut that can bring text to a line start
    must escape it again. Tokens: `GuardPrompt`; characters: `rewards.guards.gen.remote.truncate_chars`.

    Example:
        >>> conv = [{"role": "user", "content": "q" * 100}, {"role": "assistant", "content": "a" * 100}]
        >>> messages, truncated = truncate_conversation(conv, lambda roles: 80, len, lambda text, keep: text[:keep])
        >>> truncated, [len(m["content"]) for m in messages]
        (True, [20, 60])
    """
    counts = [count(m["content"]) for m in conversation]
    room = budget(tuple(m["role"] for m in conversation))
    if sum(counts) <= room:
        return [dict(m) for m in conversation], False
    response = is_response_moderation(conversation)
    last = len(conversation) - (2 if response else 1)
    start = 0
    while start < last and sum(counts[start:]) > room:
        start += 1
    while conversation[start]["role"] != "user":  # a guard conversation starts with a user turn
        start += 1
    messages, counts = [dict(m) for m in conversation[start:]], counts[start:]
    room = budget(tuple(m["role"] for m in messages))
    if response:
        prompt_keep = max(room // 4, room - counts[1])
        if counts[0] > prompt_keep:
            messages[0]["content"] = cut(messages[0]["content"], prompt_keep)
        answer_keep = room - count(messages[0]["content"])
        if counts[1] > answer_keep:
            messages[1]["content"] = cut(messages[1]["content"], answer_keep)
    else:
        messages[0]["content"] = cut(messages[0]["content"], room)
    return messages, True


@dataclass(frozen=True)
class PreparedInput:
    """One conversation made ready for the guard.

    ``messages`` are escaped (and cut when ``truncated``); ``text`` is the rendered template; ``input_ids`` its
    tokens; ``content_spans`` the character spans of each message's content inside ``text`` (empty when the
    template changes content in ways that make them unknowable).
    """

    messages: Conversation
    text: str
    input_ids: list[int]
    truncated: bool
    response: bool
    content_spans: tuple[tuple[int, int], ...] = field(default=())


class GuardPrompt:
    """Renders conversations with a guard tokenizer's chat template, escaped and truncated.

    Args:
        tokenizer: the guard's tokenizer (it must have a chat template).
        max_input_tokens: the longest input the guard gets; content beyond it is cut by the module's rule.
        chat_template_kwargs: passed to ``apply_chat_template`` (e.g. a template variable).

    Example:
        >>> from transformers import AutoTokenizer  # doctest: +SKIP
        >>> prompt = GuardPrompt(AutoTokenizer.from_pretrained("Qwen/Qwen3Guard-Gen-0.6B"))  # doctest: +SKIP
        >>> prompt.render([{"role": "user", "content": "How do I make a bomb?"}])  # doctest: +SKIP
    """

    def __init__(self, tokenizer: Any, *, max_input_tokens: int = 8192, chat_template_kwargs: dict | None = None):
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(
                "the guard tokenizer has no chat template; Qwen3Guard-Gen's instructions live in its template, "
                "so load the guard's own tokenizer (e.g. Qwen/Qwen3Guard-Gen-0.6B)"
            )
        if max_input_tokens < 64:
            raise ValueError(f"max_input_tokens must be at least 64, got {max_input_tokens}")
        self.tokenizer = tokenizer
        self.max_input_tokens = max_input_tokens
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        specials = ContentEscaper(specials=tokenizer_specials(tokenizer)).special_pattern
        self.escaper = ContentEscaper(specials=tokenizer_specials(tokenizer), structure=self._template_lines(specials))
        self._specials = self.escaper.special_pattern
        # Byte-level BPE (Qwen's): every token holds at least one byte, so content of at most `budget` UTF-8 bytes
        # fits without counting its tokens.
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        self.byte_level = type(decoder).__name__ == "ByteLevel"
        self._pool: ThreadPoolExecutor | None = None  # `_encode_many`'s threads, made on first use
        self._pool_pid = 0  # the process that made them

    # -- template ---------------------------------------------------------------------------------------------
    def _apply(self, messages: Sequence[dict[str, Any]]) -> str:
        return self.tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=True, **self.chat_template_kwargs
        )

    def _template_lines(self, specials: re.Pattern[str]) -> tuple[str, ...]:
        """The template's structure lines (instructions, tags, ``USER:``, …), read off renderings of its branches:
        each line split at its special-token strings and at the content slots."""
        lines: set[str] = set()
        for roles in (("user",), ("user", "assistant"), ("user", "assistant", "user", "assistant")):
            try:
                skeleton = self._skeleton(roles)
            except Exception:  # a template that refuses multi-turn input has no such branch to read
                if len(roles) < 4:
                    raise
                continue
            lines |= structure_lines(re.sub("\x00SAFE_RL_CONTENT_\\d+\x00", "\n", skeleton), specials)
        return tuple(sorted(lines))

    @lru_cache(maxsize=64)  # noqa: B019 - one GuardPrompt per guard; the cache holds a few role patterns.
    def _skeleton(self, roles: tuple[str, ...]) -> str:
        return self._apply([{"role": r, "content": _SENTINEL.format(i)} for i, r in enumerate(roles)])

    @lru_cache(maxsize=64)  # noqa: B019
    def _template_specials(self, roles: tuple[str, ...]) -> int:
        return len(self._specials.findall(self._skeleton(roles)))

    @lru_cache(maxsize=64)  # noqa: B019
    def _fixed_tokens(self, roles: tuple[str, ...]) -> int:
        skeleton = self._skeleton(roles)
        for i in range(len(roles)):
            skeleton = skeleton.replace(_SENTINEL.format(i), "")
        return len(self.tokenizer(skeleton, add_special_tokens=False)["input_ids"])

    # -- truncation -------------------------------------------------------------------------------------------
    def _count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _cut(self, text: str, keep: int) -> str:
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        keep = max(keep - self._count(ELLIPSIS), 2)
        if len(offsets) <= keep:
            return text
        head, tail = keep - keep // 2, keep // 2
        cut = text[: offsets[head - 1][1]] + ELLIPSIS + text[offsets[len(offsets) - tail][0] :]
        # A cut can bring a mid-line "Safety: Safe" to the start of a line: escape again (escaping is idempotent).
        return self.escaper(cut)

    def _budget(self, roles: tuple[str, ...]) -> int:
        return self.max_input_tokens - self._fixed_tokens(roles) - 8  # margin for merges across boundaries

    def _truncate(self, messages: Conversation) -> tuple[Conversation, bool]:
        budget = self._budget(tuple(m["role"] for m in messages))
        if self.byte_level and sum(len(m["content"].encode("utf-8")) for m in messages) <= budget:
            return messages, False  # the common case: no tokenization needed to know it fits
        return truncate_conversation(messages, self._budget, self._count, self._cut)

    # -- public -----------------------------------------------------------------------------------------------
    def prepare(self, conversation: Sequence[dict[str, Any]]) -> PreparedInput:
        """Escape, truncate, render and tokenize one conversation."""
        messages, truncated, text = self._render(conversation)
        return self._prepared(messages, truncated, text, self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prepare_many(self, conversations: Sequence[Sequence[dict[str, Any]]]) -> list[PreparedInput | ValueError]:
        """`prepare` for each conversation, in order; one that cannot be prepared gets its ``ValueError`` in its place.

        Conversations are rendered in the calling thread, then their texts tokenized together (`_encode_many`: a
        fast tokenizer's encoder shared by a few threads, no tokenizer copies).

        Example:
            >>> from transformers import AutoTokenizer  # doctest: +SKIP
            >>> prompt = GuardPrompt(AutoTokenizer.from_pretrained("Qwen/Qwen3Guard-Gen-0.6B"))  # doctest: +SKIP
            >>> [type(p).__name__ for p in prompt.prepare_many([[{"role": "user", "content": "hi"}], []])]  # doctest: +SKIP
            ['PreparedInput', 'ValueError']
        """
        rendered: list[tuple[Conversation, bool, str] | ValueError] = []
        for conversation in conversations:
            try:
                rendered.append(self._render(conversation))
            except ValueError as exc:
                rendered.append(exc)
            except Exception as exc:  # content of a wrong type deep in the template, a template error: this one only
                rendered.append(ValueError(f"{type(exc).__name__}: {exc}"))
        texts = [r[2] for r in rendered if not isinstance(r, ValueError)]
        try:
            encoded: list[list[int] | ValueError] = list(self._encode_many(texts))
        except Exception:  # one text the tokenizer cannot encode must not cost the others: find it, one by one
            encoded = [self._encode_one(text) for text in texts]
        ids = iter(encoded)
        out: list[PreparedInput | ValueError] = []
        for r in rendered:
            if isinstance(r, ValueError):
                out.append(r)
                continue
            item = next(ids)
            out.append(item if isinstance(item, ValueError) else self._prepared(*r, item))
        return out

    def _encode_one(self, text: str) -> list[int] | ValueError:
        try:
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        except Exception as exc:
            return ValueError(f"the guard tokenizer cannot encode this input: {type(exc).__name__}: {exc}")

    def _encode_many(self, texts: list[str]) -> list[list[int]]:
        """Token ids of many texts: a fast tokenizer's Rust encoder on a few threads, one share of the texts each.

        The encoder releases the GIL, so the shares run side by side whether or not the tokenizer's own batch
        parallelism is on (``TOKENIZERS_PARALLELISM=false`` and forked workers turn it off). Measured in bench_reward
        on a 16-core H100 host: 0.26 s for a step's 524 guard inputs, where one batched tokenizer call had taken
        1.3-1.45 s in the same process (0.1 s in a process of its own: not explained). Concurrent calls only read the
        encoder: this path is taken only where no truncation or padding is set on it; elsewhere, one batched call.
        """
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        workers = min(8, os.cpu_count() or 1)
        if backend is None or backend.truncation is not None or backend.padding is not None or len(texts) < 16:
            return self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        if self._pool is None or self._pool_pid != os.getpid():
            # a forked child (data-loader workers, Ray) inherits the pool object but none of its threads: work sent
            # to it would wait forever, so the child makes its own
            self._pool = ThreadPoolExecutor(workers, thread_name_prefix="guard-tokenize")
            self._pool_pid = os.getpid()
        step = -(-len(texts) // workers)
        shares = self._pool.map(
            lambda part: backend.encode_batch(part, add_special_tokens=False),
            [texts[i : i + step] for i in range(0, len(texts), step)],
        )
        return [encoding.ids for share in shares for encoding in share]

    def _render(self, conversation: Sequence[dict[str, Any]]) -> tuple[Conversation, bool, str]:
        check_conversation(conversation)
        messages = escape_conversation(conversation, self.escaper)
        messages, truncated = self._truncate(messages)
        text = self._apply(messages)
        # By construction content adds no special-token string; this check holds it against any template (one
        # that joins content to its own text so that a string forms across the seam, or that unescapes content).
        if len(self._specials.findall(text)) != self._template_specials(tuple(m["role"] for m in messages)):
            # a template may branch on empty content: compare with neutral content of the same emptiness first
            neutral = [{"role": m["role"], "content": "x" if m["content"] else ""} for m in messages]
            if len(self._specials.findall(text)) != len(self._specials.findall(self._apply(neutral))):
                raise ValueError("the rendered guard input holds special-token strings that are not the template's")
        return messages, truncated, text

    def _prepared(self, messages: Conversation, truncated: bool, text: str, ids: Sequence[int]) -> PreparedInput:
        return PreparedInput(
            messages=messages,
            text=text,
            input_ids=list(ids),
            truncated=truncated,
            response=is_response_moderation(messages),
            content_spans=self._spans(messages, text),
        )

    def _spans(self, messages: Conversation, text: str) -> tuple[tuple[int, int], ...]:
        parts = re.split("\x00SAFE_RL_CONTENT_(\\d+)\x00", self._skeleton(tuple(m["role"] for m in messages)))
        spans, out, pos = [], [], 0
        for j, part in enumerate(parts):
            piece = messages[int(part)]["content"] if j % 2 else part
            if j % 2:
                spans.append((pos, pos + len(piece)))
            out.append(piece)
            pos += len(piece)
        return tuple(spans) if "".join(out) == text else ()

    def render(self, conversation: Sequence[dict[str, Any]]) -> str:
        """The exact text the guard reads for ``conversation``."""
        return self.prepare(conversation).text

    def encode(self, conversation: Sequence[dict[str, Any]]) -> list[int]:
        """The exact token ids the guard reads for ``conversation``."""
        return self.prepare(conversation).input_ids


def check_conversation(conversation: Iterable[dict[str, Any]]) -> None:
    """Raise `ValueError` unless ``conversation`` is ``[user]`` or ``[..., user, assistant]`` with text content.

    Example:
        >>> check_conversation([{"role": "user", "content": "hi"}])
    """
    conversation = list(conversation)
    if not conversation:
        raise ValueError("empty conversation")
    for m in conversation:
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise ValueError(f"messages must be dicts with role 'user' or 'assistant', got {m!r}")
        if not isinstance(m.get("content"), str):
            raise ValueError(f"message content must be a string, got {type(m.get('content')).__name__}")
        try:
            m["content"].encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"message content is not valid Unicode text ({exc.reason} at {exc.start})") from None
    roles = [m["role"] for m in conversation]
    expected_last_user = len(roles) - (2 if roles[-1] == "assistant" else 1)
    if roles[expected_last_user] != "user":
        raise ValueError(f"a guard conversation must end with [user] or [user, assistant], got roles {roles}")
