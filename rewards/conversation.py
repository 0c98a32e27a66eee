"""Turning what a trainer passes (plain strings or chat messages) into the conversations a guard reads.

A conversation is a list of ``{"role": ..., "content": ...}`` messages: ``[user]`` asks the guard about the prompt,
``[user, assistant]`` about the answer. Thinking is split off the answer here, so that the thinking ``t`` and the
answer ``y`` are judged separately, as in the Qwen3Guard report (§3.5).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Message = dict[str, str]
Conversation = list[Message]

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


@dataclass(frozen=True, slots=True)
class SplitCompletion:
    """A completion split into thinking and answer.

    ``thinking`` is None when the completion has no thinking block, "" when the block is empty (non-think mode
    renders ``<think>\\n\\n</think>``); ``finished_thinking`` is False when ``</think>`` never came (the rollout was
    cut inside its thinking), in which case ``answer`` is "".
    """

    thinking: str | None
    answer: str
    finished_thinking: bool = True


def split_thinking(completion: str) -> SplitCompletion:
    """Split ``<think>t</think>y`` into t and y.

    The opening tag may be missing (chat templates that put ``<think>`` in the prompt). The split is at the first
    ``</think>``: anything after it is the answer, even if it contains more tags, and both parts are judged.

    Example:
        >>> split_thinking("<think>\\nplan\\n</think>\\n\\nHello")
        SplitCompletion(thinking='plan', answer='Hello', finished_thinking=True)
        >>> split_thinking("Hello")
        SplitCompletion(thinking=None, answer='Hello', finished_thinking=True)
        >>> split_thinking("<think>still thinking")
        SplitCompletion(thinking='still thinking', answer='', finished_thinking=False)
    """
    if not isinstance(completion, str):
        raise TypeError(f"completion must be a string, got {type(completion).__name__}")
    head, sep, tail = completion.partition(THINK_CLOSE)
    if sep:
        start = head.find(THINK_OPEN)
        thinking = head[start + len(THINK_OPEN) :] if start >= 0 else head
        return SplitCompletion(thinking=thinking.strip(), answer=tail.strip())
    stripped = completion.lstrip()
    if stripped.startswith(THINK_OPEN):
        return SplitCompletion(thinking=stripped[len(THINK_OPEN) :].strip(), answer="", finished_thinking=False)
    return SplitCompletion(thinking=None, answer=completion.strip())


def _text_of(content: Any) -> str:
    # Multimodal-style content blocks: keep the text parts only.
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "".join(part.get("text", "") for part in content if isinstance(part, Mapping))
    if content is None:
        return ""
    raise TypeError(f"message content must be text, got {type(content).__name__}")


def prompt_messages(prompt: str | Sequence[Mapping[str, Any]]) -> Conversation:
    """The user/assistant turns of a prompt, as the guard should see them.

    A plain string becomes one user turn. For chat prompts, system messages are dropped (the guard has its own
    instructions; a policy's system prompt is not what is being judged) and the turns must end with a user turn.

    Example:
        >>> prompt_messages([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
        [{'role': 'user', 'content': 'Hi'}]
    """
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    turns = [
        {"role": str(m["role"]), "content": _text_of(m.get("content"))}
        for m in prompt
        if m.get("role") in ("user", "assistant")
    ]
    if not turns or turns[-1]["role"] != "user":
        raise ValueError("a prompt must contain a user turn and end with it")
    return turns


def completion_text(completion: str | Sequence[Mapping[str, Any]]) -> str:
    """The assistant text of a completion in TRL's plain (str) or conversational (list of messages) format.

    Example:
        >>> completion_text([{"role": "assistant", "content": "Sure."}])
        'Sure.'
    """
    if isinstance(completion, str):
        return completion
    return "".join(_text_of(m.get("content")) for m in completion if m.get("role", "assistant") == "assistant")


def response_conversation(prompt: str | Sequence[Mapping[str, Any]], answer: str) -> Conversation:
    """``[user, assistant]`` (after any earlier turns) for moderating ``answer`` as a reply to ``prompt``.

    Example:
        >>> response_conversation("Hi", "Hello!")
        [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello!'}]
    """
    return [*prompt_messages(prompt), {"role": "assistant", "content": answer}]


def is_response_moderation(conversation: Sequence[Mapping[str, Any]]) -> bool:
    """True when the conversation ends with an assistant turn (the guard judges the answer).

    Example:
        >>> is_response_moderation([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}])
        True
        >>> is_response_moderation([{"role": "user", "content": "Hi"}])
        False
    """
    return bool(conversation) and conversation[-1].get("role") == "assistant"
