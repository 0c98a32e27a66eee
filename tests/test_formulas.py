"""The paper's reward formulas and the thinking/answer split."""

import pytest

from rewards.conversation import prompt_messages, read_completion, response_conversation, split_thinking
from rewards.formulas import guard_only_value, hybrid_value


@pytest.mark.parametrize(
    ("h", "unsafe", "refusal", "expected"),
    [
        (3.0, False, False, 3.0),
        (-7.0, False, False, -7.0),
        (3.0, True, False, -10.0),
        (-12.5, True, False, -12.5),  # min(-10, H) keeps an even worse H
        (3.0, False, True, -5.0),
        (-6.0, False, True, -6.0),
        (3.0, True, True, -10.0),  # unsafe takes precedence over refusal
    ],
)
def test_hybrid_value(h, unsafe, refusal, expected):
    assert hybrid_value(h, unsafe=unsafe, refusal=refusal) == expected


def test_hybrid_custom_caps():
    assert hybrid_value(0.0, unsafe=True, refusal=False, unsafe_cap=-2.0, refusal_cap=-1.0) == -2.0
    assert hybrid_value(0.0, unsafe=False, refusal=True, unsafe_cap=-2.0, refusal_cap=-1.0) == -1.0


def test_guard_only_value():
    assert guard_only_value(False) == 1.0 and guard_only_value(True) == 0.0


@pytest.mark.parametrize(
    ("completion", "thinking", "answer", "finished"),
    [
        ("Plain answer.", None, "Plain answer.", True),
        ("<think>\nreason\n</think>\n\nAnswer", "reason", "Answer", True),
        ("reason</think>Answer", "reason", "Answer", True),  # opening tag was in the prompt
        ("<think>\n\n</think>\n\nAnswer", "", "Answer", True),  # non-think mode's empty block
        ("<think>cut off mid-thought", "cut off mid-thought", "", False),
        ("<think>a</think>b</think>c", "a", "b\n\nc", True),  # a close outside a block is only a tag
        ("Lead <think>a</think> tail", "a", "Lead\n\ntail", True),  # text before the block is answer too
        ("", None, "", True),
    ],
)
def test_split_thinking(completion, thinking, answer, finished):
    split = split_thinking(completion)
    assert (split.thinking, split.answer, split.finished_thinking) == (thinking, answer, finished)


def test_trl_formats():
    assert read_completion([{"role": "assistant", "content": "hi"}]).answer == "hi"
    assert read_completion("hi").answer == "hi"
    chat = [{"role": "system", "content": "sys"}, {"role": "user", "content": "q"}]
    assert prompt_messages(chat) == [{"role": "user", "content": "q"}]
    assert response_conversation(chat, "a")[-1] == {"role": "assistant", "content": "a"}
    with pytest.raises(ValueError):
        prompt_messages([{"role": "system", "content": "only a system prompt"}])
