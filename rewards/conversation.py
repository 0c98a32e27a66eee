"""What is judged: turning what a trainer passes (plain strings or chat messages) into the texts the judges read.

The rule: **every character the policy produced lands in exactly one judged text**, the thinking ``t`` or the answer
``y`` (judged separately, as in the Qwen3Guard report §3.5; the helpfulness model scores the same ``y``).

* A completion is read left to right. ``<think>`` opens a think block (inside one it is only a tag), ``</think>``
  closes it (outside one it is only a tag). Text inside think blocks is thinking; all other text, before, between
  and after the blocks, is answer. A ``<think>`` never closed makes the rest thinking (``finished_thinking`` is
  False). When the first tag is ``</think>``, the text before it is thinking: the chat template put ``<think>`` in
  the prompt (Qwen3's thinking models do). The tags themselves are dropped; the pieces of each kind are stripped
  of surrounding whitespace and joined, in order, by a blank line. So, precisely: the non-whitespace characters of
  ``t`` and ``y`` together are those of the completion less its ``<think>``/``</think>`` tags, each once, in order
  within each text.
* A completion given as messages (TRL's conversational format; with ``tools=`` or a tokenizer response template,
  TRL's ``parse_response`` gives ``{"role": "assistant", "content", "reasoning_content", "tool_calls"}``) is read
  message by message: in each assistant message, ``reasoning_content`` (or ``reasoning``/``thinking``) is thinking,
  ``content`` is read by the rule above (a list of parts is joined: text parts only), and every tool call (the whole
  call, name and arguments, as JSON) is answer. ``tool`` messages that follow an assistant message with tool calls
  are the environment's replies (TRL appends them to the completion in its tool loop): not the policy's text, not
  judged.
* Anything else is a shape the reward cannot read, and the sample gets ``None`` (counted), never empty text: content
  None or missing without tool calls, a part that is not a text part (an image, a plain string), a message that is
  not a dict, a ``user``/``system`` message or a stray ``tool`` message inside a completion, an unknown non-empty
  field, a completion with no assistant message, text that is not valid Unicode (a lone surrogate).

A conversation for the guard is a list of ``{"role": ..., "content": ...}`` messages: ``[user]`` asks the guard
about the prompt, ``[user, assistant]`` about the answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Message = dict[str, str]
Conversation = list[Message]

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
THINKING_FIELDS: tuple[str, ...] = ("reasoning_content", "reasoning", "thinking")

_TAG = re.compile(f"{re.escape(THINK_OPEN)}|{re.escape(THINK_CLOSE)}")
_PIECE_SEPARATOR = "\n\n"
_ASSISTANT_FIELDS = frozenset({"role", "content", "tool_calls", "name", *THINKING_FIELDS})
_TOOL_FIELDS = frozenset({"role", "content", "name", "tool_call_id"})


class UnreadableCompletion(ValueError):
    """A completion (or prompt) in a shape the reward cannot read; its sample is a counted failure."""


@dataclass(frozen=True, slots=True)
class SplitCompletion:
    """A completion split into thinking and answer (see the module docstring for the rule).

    ``thinking`` is None when the completion has no thinking at all, "" when its blocks are empty (non-think mode
    renders ``<think>\\n\\n</think>``); ``finished_thinking`` is False when a block was never closed (the rollout was
    cut inside its thinking).
    """

    thinking: str | None
    answer: str
    finished_thinking: bool = True


def _join(pieces: Sequence[str]) -> str:
    return _PIECE_SEPARATOR.join(p.strip() for p in pieces if p.strip())


def _checked(text: Any, what: str) -> str:
    if not isinstance(text, str):
        raise UnreadableCompletion(f"{what} is {type(text).__name__}, not text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UnreadableCompletion(f"{what} is not valid Unicode text ({exc.reason} at {exc.start})") from None
    return text


def _split_pieces(text: str) -> tuple[list[str], list[str], bool, bool]:
    """(thinking pieces, answer pieces, any tag seen, block still open) of one text, by the module's rule."""
    thinking: list[str] = []
    answer: list[str] = []
    tags = list(_TAG.finditer(text))
    inside = bool(tags) and tags[0].group() == THINK_CLOSE  # the block was opened by the prompt
    pos = 0
    for tag in tags:
        (thinking if inside else answer).append(text[pos : tag.start()])
        inside = tag.group() == THINK_OPEN
        pos = tag.end()
    (thinking if inside else answer).append(text[pos:])
    return thinking, answer, bool(tags), inside


def split_thinking(completion: str) -> SplitCompletion:
    """Split a completion's text into its thinking and its answer (the rule is in the module docstring).

    Example:
        >>> split_thinking("<think>\\nplan\\n</think>\\n\\nHello")
        SplitCompletion(thinking='plan', answer='Hello', finished_thinking=True)
        >>> split_thinking("Hello")
        SplitCompletion(thinking=None, answer='Hello', finished_thinking=True)
        >>> split_thinking("<think>still thinking")
        SplitCompletion(thinking='still thinking', answer='', finished_thinking=False)
        >>> split_thinking("Before <think>t1</think> between <think>t2</think> after")
        SplitCompletion(thinking='t1\\n\\nt2', answer='Before\\n\\nbetween\\n\\nafter', finished_thinking=True)
        >>> split_thinking("plan</think>Hello")  # the template opened the block
        SplitCompletion(thinking='plan', answer='Hello', finished_thinking=True)
    """
    if not isinstance(completion, str):
        raise TypeError(f"completion must be a string, got {type(completion).__name__}")
    thinking, answer, tagged, open_block = _split_pieces(completion)
    return SplitCompletion(
        thinking=_join(thinking) if tagged else None, answer=_join(answer), finished_thinking=not open_block
    )


def _content_text(content: Any, what: str) -> str:
    """The text of a message content: a string, or a list of text parts joined."""
    if isinstance(content, str):
        return _checked(content, what)
    if isinstance(content, Sequence) and not isinstance(content, (bytes, bytearray)):
        texts = []
        for i, part in enumerate(content):
            if not isinstance(part, Mapping) or part.get("type", "text") != "text" or "text" not in part:
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise UnreadableCompletion(f"{what} part {i} is not a text part ({kind!r})")
            texts.append(_checked(part["text"], f"{what} part {i}"))
        return "".join(texts)
    raise UnreadableCompletion(f"{what} is {type(content).__name__}, not text")


def _tool_call_texts(message: Mapping[str, Any], what: str) -> list[str]:
    calls = message.get("tool_calls")
    if calls is None:
        return []
    if not isinstance(calls, Sequence) or isinstance(calls, (str, bytes)):
        raise UnreadableCompletion(f"{what} tool_calls is {type(calls).__name__}, not a list")
    texts = []
    for i, call in enumerate(calls):
        if not isinstance(call, Mapping):
            raise UnreadableCompletion(f"{what} tool call {i} is {type(call).__name__}, not a dict")
        try:  # the whole call, so that no field of it goes unread; unescaped Unicode, so that the guard reads it
            texts.append(_checked(json.dumps(dict(call), ensure_ascii=False), f"{what} tool call {i}"))
        except (TypeError, ValueError) as exc:
            raise UnreadableCompletion(f"{what} tool call {i} is not JSON: {exc}") from None
    return texts


def _unknown_fields(message: Mapping[str, Any], known: frozenset[str], what: str) -> None:
    for key, value in message.items():
        if key not in known and value not in (None, "", [], {}):
            raise UnreadableCompletion(f"{what} has a field the reward cannot judge: {key!r}")


def _assistant_pieces(message: Mapping[str, Any], what: str) -> tuple[list[str], list[str], bool, bool]:
    """(thinking pieces, answer pieces, has thinking, block still open) of one assistant message."""
    _unknown_fields(message, _ASSISTANT_FIELDS, what)
    thinking: list[str] = []
    for name in THINKING_FIELDS:
        value = message.get(name)
        if value is not None:
            thinking.append(_content_text(value, f"{what} {name}"))
    calls = _tool_call_texts(message, what)
    content = message.get("content")
    if content is None and not calls:
        raise UnreadableCompletion(f"{what} has no content and no tool calls")
    text = "" if content is None else _content_text(content, f"{what} content")
    think, answer, tagged, open_block = _split_pieces(text)
    has_thinking = tagged or any(p.strip() for p in thinking)
    return [*thinking, *think], [*answer, *calls], has_thinking, open_block


def read_completion(completion: str | Sequence[Mapping[str, Any]]) -> SplitCompletion:
    """The thinking and the answer of a completion in TRL's plain (str) or conversational (messages) format.

    Raises `UnreadableCompletion` (a `ValueError`) for a shape the reward cannot read (see the module docstring).

    Example:
        >>> read_completion([{"role": "assistant", "content": "Sure.", "reasoning_content": "easy"}])
        SplitCompletion(thinking='easy', answer='Sure.', finished_thinking=True)
        >>> call = {"type": "function", "function": {"name": "search", "arguments": {"q": "weather"}}}
        >>> read_completion([{"role": "assistant", "content": None, "tool_calls": [call]}]).answer
        '{"type": "function", "function": {"name": "search", "arguments": {"q": "weather"}}}'
        >>> read_completion([{"role": "assistant", "content": None}])
        Traceback (most recent call last):
        ...
        rewards.conversation.UnreadableCompletion: completion message 0 has no content and no tool calls
    """
    if isinstance(completion, str):
        split = split_thinking(_checked(completion, "completion"))
        return split
    if not isinstance(completion, Sequence):
        raise UnreadableCompletion(f"completion is {type(completion).__name__}, not text or a list of messages")
    thinking: list[str] = []
    answer: list[str] = []
    has_thinking, finished, after_tool_calls, assistants = False, True, False, 0
    for i, message in enumerate(completion):
        what = f"completion message {i}"
        if not isinstance(message, Mapping):
            raise UnreadableCompletion(f"{what} is {type(message).__name__}, not a dict")
        role = message.get("role")
        if role == "tool" and after_tool_calls:  # the environment's reply to the calls just made: not judged
            _unknown_fields(message, _TOOL_FIELDS, what)
            continue
        if role != "assistant":
            raise UnreadableCompletion(f"{what} has role {role!r}; a completion holds assistant messages")
        think, said, tagged, open_block = _assistant_pieces(message, what)
        thinking += think
        answer += said
        has_thinking |= tagged
        finished &= not open_block
        after_tool_calls = bool(message.get("tool_calls"))
        assistants += 1
    if not assistants:
        raise UnreadableCompletion("completion has no assistant message")
    return SplitCompletion(_join(thinking) if has_thinking else None, _join(answer), finished)


def completion_text_of_ids(ids: Sequence[int], tokenizer: Any) -> str:
    """The text of a completion's token ids, every non-special token kept (as TRL decodes plain completions).

    TRL's ``parse_response`` path hands the reward parsed messages, and its parsers drop text they do not expect
    (before ``<think>``, before a tool call); the ids hold everything the policy generated.

    Example:
        >>> class Chars:  # a tokenizer whose ids are character codes
        ...     def decode(self, ids, skip_special_tokens):
        ...         return "".join(map(chr, ids))
        >>> completion_text_of_ids([104, 105], Chars())
        'hi'
    """
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    try:
        text = tokenizer.decode(list(ids), skip_special_tokens=True)
    except Exception as exc:
        raise UnreadableCompletion(f"completion ids cannot be decoded: {type(exc).__name__}: {exc}") from None
    return _checked(text, "decoded completion")


def _turn_text(message: Mapping[str, Any], what: str) -> str:
    if message.get("role") == "assistant":
        _, answer, _, _ = _assistant_pieces(message, what)
        return _join(answer)  # an earlier answer as the guard should see it: without its thinking
    return _content_text(message.get("content"), f"{what} content")


def prompt_messages(prompt: str | Sequence[Mapping[str, Any]]) -> Conversation:
    """The user/assistant turns of a prompt, as the guard should see them.

    A plain string becomes one user turn. For chat prompts, system and tool messages are dropped (the guard has its
    own instructions; a policy's system prompt is not what is being judged) and the turns must end with a user turn.
    Content is read as in `read_completion`: a shape that cannot be read raises `UnreadableCompletion`.

    Example:
        >>> prompt_messages([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
        [{'role': 'user', 'content': 'Hi'}]
    """
    if isinstance(prompt, str):
        return [{"role": "user", "content": _checked(prompt, "prompt")}]
    turns = []
    for i, m in enumerate(prompt):
        if not isinstance(m, Mapping):
            raise UnreadableCompletion(f"prompt message {i} is {type(m).__name__}, not a dict")
        if m.get("role") in ("user", "assistant"):
            turns.append({"role": str(m["role"]), "content": _turn_text(m, f"prompt message {i}")})
    if not turns or turns[-1]["role"] != "user":
        raise ValueError("a prompt must contain a user turn and end with it")
    return turns


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
