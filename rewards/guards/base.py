"""The `Guard` protocol every reward in this package calls, and the de-duplication every backend shares."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from rewards.conversation import Conversation
from rewards.verdict import Verdict


@runtime_checkable
class Guard(Protocol):
    """Anything that judges conversations: ``[user]`` (the prompt) or ``[user, assistant]`` (the answer).

    ``moderate`` is batched and returns one `Verdict` per conversation, in input order. A backend failure is a
    verdict with ``safety=None`` and an ``error``, never an exception mid-training and never "Safe".

    Example:
        >>> class AlwaysSafe:
        ...     def moderate(self, conversations):
        ...         return [Verdict(safety="Safe") for _ in conversations]
        >>> isinstance(AlwaysSafe(), Guard), isinstance(object(), Guard)
        (True, False)
    """

    def moderate(self, conversations: Sequence[Conversation]) -> list[Verdict]: ...


@runtime_checkable
class AsyncGuard(Protocol):
    """A guard that can also be awaited (remote backends); used by the async reward variants.

    Example:
        >>> import asyncio
        >>> class AlwaysSafe:
        ...     async def amoderate(self, conversations):
        ...         return [Verdict(safety="Safe") for _ in conversations]
        >>> isinstance(AlwaysSafe(), AsyncGuard)
        True
        >>> asyncio.run(AlwaysSafe().amoderate([[{"role": "user", "content": "hi"}]]))[0].safety
        'Safe'
    """

    async def amoderate(self, conversations: Sequence[Conversation]) -> list[Verdict]: ...


def conversation_key(conversation: Sequence[dict[str, Any]]) -> str:
    """A hashable key for a conversation (role and content of every message).

    Example:
        >>> conversation_key([{"role": "user", "content": "hi"}])
        '[["user", "hi"]]'
    """
    return json.dumps([[m["role"], m["content"]] for m in conversation], ensure_ascii=False)


def dedupe(
    conversations: Sequence[Conversation], judge: Callable[[list[Conversation]], list[Verdict]]
) -> list[Verdict]:
    """Judge each distinct conversation once and spread the verdicts back in input order.

    GRPO often samples the same refusal many times in a group; those are judged once.

    Example:
        >>> calls = []
        >>> def judge(batch):
        ...     calls.append(len(batch))
        ...     return [Verdict(safety="Safe") for _ in batch]
        >>> conv = [{"role": "user", "content": "hi"}]
        >>> len(dedupe([conv, conv, conv], judge)), calls
        (3, [1])
    """
    unique, positions = _unique(conversations)
    return _spread(judge(unique) if unique else [], unique, positions)


async def adedupe(
    conversations: Sequence[Conversation], judge: Callable[[list[Conversation]], Awaitable[list[Verdict]]]
) -> list[Verdict]:
    """`dedupe` for an async ``judge``.

    Example:
        >>> import asyncio
        >>> calls = []
        >>> async def judge(batch):
        ...     calls.append(len(batch))
        ...     return [Verdict(safety="Safe") for _ in batch]
        >>> conv = [{"role": "user", "content": "hi"}]
        >>> len(asyncio.run(adedupe([conv, conv, conv], judge))), calls
        (3, [1])
    """
    unique, positions = _unique(conversations)
    return _spread(await judge(unique) if unique else [], unique, positions)


def _unique(conversations: Sequence[Conversation]) -> tuple[list[Conversation], list[int]]:
    index: dict[str, int] = {}
    unique: list[Conversation] = []
    positions: list[int] = []
    for conversation in conversations:
        key = conversation_key(conversation)
        if key not in index:
            index[key] = len(unique)
            unique.append(list(conversation))
        positions.append(index[key])
    return unique, positions


def _spread(verdicts: list[Verdict], unique: list[Conversation], positions: list[int]) -> list[Verdict]:
    if len(verdicts) != len(unique):
        raise RuntimeError(f"guard backend returned {len(verdicts)} verdicts for {len(unique)} conversations")
    return [verdicts[i] for i in positions]
