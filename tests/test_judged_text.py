"""The rule of what is judged (`rewards.conversation`): every character the policy produced lands in exactly one
judged text, the thinking or the answer; shapes the reward cannot read are counted failures, never empty text.

Property tests (hypothesis) state the rule as invariants over generated completions; the TRL shapes come from TRL's
own `parse_response` on token ids of the real Qwen3 tokenizer with TRL's Qwen3 chat template.
"""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rewards.conversation import (
    THINK_CLOSE,
    THINK_OPEN,
    UnreadableCompletion,
    prompt_messages,
    read_completion,
    split_thinking,
)

TAGS = re.compile("<think>|</think>")
PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def nonspace(text: str) -> str:
    return "".join(ch for ch in text if not ch.isspace())


def is_subsequence(small: str, big: str) -> bool:
    it = iter(big)
    return all(ch in it for ch in small)


# Text in which tags, tag fragments, line breaks and look-alikes are frequent.
ATOMS = st.sampled_from(
    [THINK_OPEN, THINK_CLOSE, "<think", "think>", "</", "<", ">", "/", "\n", "\r\n", " ", "\u2028", "\u200b"]
    + ["<thinқ>", "＜think＞", "<THINK>", "a", "b", "Safety: Safe", "é", "数", "\t"]
)
COMPLETIONS = st.lists(st.one_of(ATOMS, st.text(max_size=6)), max_size=30).map("".join)


@PROPERTY
@given(COMPLETIONS)
def test_every_character_lands_in_exactly_one_judged_text(completion):
    """The non-whitespace characters of thinking + answer are exactly those of the completion less its tags, and
    each judged text keeps its characters in the completion's order."""
    split = split_thinking(completion)
    untagged = nonspace("".join(TAGS.split(completion)))
    thinking = nonspace(split.thinking or "")
    answer = nonspace(split.answer)
    assert Counter(thinking) + Counter(answer) == Counter(untagged)
    assert is_subsequence(thinking, untagged) and is_subsequence(answer, untagged)
    assert split.thinking is None if not TAGS.search(completion) else isinstance(split.thinking, str)
    assert split.answer == split.answer.strip() and (split.thinking or "") == (split.thinking or "").strip()


SEGMENTS = st.lists(st.tuples(st.sampled_from(["think", "answer"]), st.integers(0, 10**6)), min_size=1, max_size=8)


@PROPERTY
@given(SEGMENTS, st.booleans(), st.booleans(), st.sampled_from(["", " ", "\n", "\n\n", "\u2028"]))
def test_each_piece_lands_in_its_own_text(segments, implicit_open, left_open, space):
    """Segments written as thinking land in the thinking, the others (before, between, after) in the answer; the
    first block may be opened by the template (only its ``</think>`` is in the completion) and the last left open."""
    words = [(kind, f"«w{i}x{n}»") for i, (kind, n) in enumerate(segments)]
    text, inside = "", False
    for i, (kind, word) in enumerate(words):
        if kind == "think" and not inside:
            text += "" if (i == 0 and implicit_open) else THINK_OPEN
            inside = True
        elif kind == "answer" and inside:
            text += THINK_CLOSE
            inside = False
        text += space + word + space
    if inside and not left_open:
        text += THINK_CLOSE
    if implicit_open and words[0][0] == "think" and not TAGS.search(text):
        text += THINK_CLOSE  # a template-opened block is known by its close only
        inside = False
    split = split_thinking(text)
    for kind, word in words:
        where = split.thinking if kind == "think" else split.answer
        other = split.answer if kind == "think" else split.thinking
        assert where is not None and where.count(word) == 1, (text, split)
        assert other is None or word not in other
    assert split.finished_thinking is not (inside and left_open)


@pytest.mark.parametrize(
    ("completion", "thinking", "answer", "finished"),
    [
        ("UNSAFE <think>\n</think>\nI can't help with that.", "", "UNSAFE\n\nI can't help with that.", True),
        ("a<think>b</think>c<think>d</think>e", "b\n\nd", "a\n\nc\n\ne", True),
        ("<think>a<think>b</think>c", "a\n\nb", "c", True),  # an open inside a block is only a tag
        ("a</think>b</think>c", "a", "b\n\nc", True),  # the template opened the first block
        ("a</think>b<think>c", "a\n\nc", "b", False),
        ("answer<think>", "", "answer", False),
        ("<thinқ>hidden</thinқ>", None, "<thinқ>hidden</thinқ>", True),  # look-alike tags are plain answer text
    ],
)
def test_split_examples(completion, thinking, answer, finished):
    split = split_thinking(completion)
    assert (split.thinking, split.answer, split.finished_thinking) == (thinking, answer, finished)


# -- messages ---------------------------------------------------------------------------------------------------
def call(name, arguments):
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def test_trl_message_fields_are_all_read():
    completion = [
        {"role": "assistant", "content": "first <think>mid</think>", "reasoning_content": "why", "tool_calls": None},
        {"role": "assistant", "content": None, "tool_calls": [call("search", {"q": "KABOOM </think> 数"})]},
        {"role": "tool", "name": "search", "content": "result text from the environment"},
        {"role": "assistant", "content": [{"type": "text", "text": "fin"}, {"type": "text", "text": "al"}]},
    ]
    split = read_completion(completion)
    assert split.thinking == "why\n\nmid"
    assert split.answer.startswith("first\n\n") and split.answer.endswith("\n\nfinal")
    assert '"q": "KABOOM </think> 数"' in split.answer  # arguments as the guard reads them: unescaped Unicode
    assert "environment" not in split.answer  # a tool's reply is not the policy's text


UNREADABLE = {
    "content None": [{"role": "assistant", "content": None}],
    "content missing": [{"role": "assistant"}],
    "image-only parts": [{"role": "assistant", "content": [{"type": "image", "image": "x.png"}]}],
    "image beside text": [{"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "image"}]}],
    "string part": [{"role": "assistant", "content": ["plain string part"]}],
    "part without text": [{"role": "assistant", "content": [{"type": "text"}]}],
    "non-dict message": ["just a string in a list"],
    "user message": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}],
    "system message": [{"role": "system", "content": "b"}, {"role": "assistant", "content": "a"}],
    "stray tool message": [{"role": "assistant", "content": "a"}, {"role": "tool", "content": "b"}],
    "tool first": [{"role": "tool", "content": "b"}, {"role": "assistant", "content": "a"}],
    "no role": [{"content": "a"}],
    "unknown field": [{"role": "assistant", "content": "a", "audio": {"data": "..."}}],
    "number content": [{"role": "assistant", "content": 7}],
    "bytes content": [{"role": "assistant", "content": b"bytes"}],
    "tool_calls not a list": [{"role": "assistant", "content": "", "tool_calls": "search()"}],
    "tool call not a dict": [{"role": "assistant", "content": "", "tool_calls": ["search()"]}],
    "tool call not JSON": [{"role": "assistant", "content": "", "tool_calls": [call("f", {"x": {1, 2}})]}],
    "reasoning not text": [{"role": "assistant", "content": "a", "reasoning_content": 3}],
    "no assistant message": [],
    "a dict, not a list": {"role": "assistant", "content": "a"},
    "lone surrogate": "ok \udcff",
    "lone surrogate in a message": [{"role": "assistant", "content": "ok \ud800"}],
    "None": None,
}


@pytest.mark.parametrize("completion", list(UNREADABLE.values()), ids=list(UNREADABLE))
def test_unreadable_shapes_raise(completion):
    with pytest.raises(UnreadableCompletion):
        read_completion(completion)


def test_harmless_empty_fields_are_allowed():
    split = read_completion([{"role": "assistant", "content": "a", "tool_calls": [], "reasoning_content": None}])
    assert (split.thinking, split.answer) == (None, "a")


def test_prompt_content_is_read_strictly():
    assert prompt_messages([{"role": "user", "content": [{"type": "text", "text": "hi"}]}]) == [
        {"role": "user", "content": "hi"}
    ]
    for bad in ([{"role": "user", "content": None}], [{"role": "user", "content": [{"type": "image"}]}], "a\udcff"):
        with pytest.raises(UnreadableCompletion):
            prompt_messages(bad)


MESSAGE = st.fixed_dictionaries(
    {"role": st.just("assistant")},
    optional={
        "content": st.one_of(
            st.none(),
            st.text(max_size=20),
            st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=8)}), max_size=3),
        ),
        "reasoning_content": st.one_of(st.none(), st.text(max_size=20)),
        "tool_calls": st.one_of(
            st.none(),
            st.lists(
                st.builds(
                    call, st.text(max_size=8), st.dictionaries(st.text(max_size=5), st.text(max_size=10), max_size=2)
                ),
                max_size=2,
            ),
        ),
    },
)


@PROPERTY
@given(st.lists(MESSAGE, min_size=1, max_size=3))
def test_no_field_of_a_message_goes_unread(messages):
    """Every string the policy wrote (content, reasoning, tool-call name and arguments) is in a judged text, or the
    completion is refused as unreadable: never silently dropped."""
    try:
        split = read_completion(messages)
    except UnreadableCompletion:
        assert any(m.get("content") is None and not m.get("tool_calls") for m in messages) or any(
            not _encodable(json.dumps(m, ensure_ascii=False)) for m in messages
        )
        return
    judged = nonspace((split.thinking or "") + split.answer)
    for m in messages:
        texts = [m.get("reasoning_content") or ""]
        content = m.get("content")
        texts.append("".join(p["text"] for p in content) if isinstance(content, list) else content or "")
        for c in m.get("tool_calls") or []:
            texts.append(json.dumps(c, ensure_ascii=False))
        for text in texts:
            assert Counter(nonspace("".join(TAGS.split(text)))) <= Counter(judged), (text, split)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@pytest.fixture(scope="module")
def trl_qwen3_tokenizer(qwen_tokenizer_path):
    """The real Qwen3 tokenizer with TRL's Qwen3 chat template and TRL's response parser (the ``tools=`` path)."""
    import trl.chat_template_utils as ctu
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(qwen_tokenizer_path)
    tok.chat_template = ctu.qwen3_chat_template
    return ctu.add_response_schema(tok)


@pytest.mark.parametrize(
    "generated",
    [
        "<think>\nKABOOM plan\n</think>\n\nHello",
        '<think>\nok\n</think>\n\n<tool_call>\n{"name": "search", "arguments": {"q": "KABOOM </think>"}}\n</tool_call>',
        '<tool_call>\n{"name": "KABOOM", "arguments": {}}\n</tool_call>',
        "<think>\nKABOOM unfinished",
    ],
)
def test_trl_parse_response_shapes_are_judged(trl_qwen3_tokenizer, generated):
    """What TRL's own ``parse_response`` hands the reward (reasoning_content, tool_calls, content "") is read whole."""
    from trl.chat_template_utils import parse_response

    tok = trl_qwen3_tokenizer
    prefix = tok.apply_chat_template([{"role": "user", "content": "q"}], add_generation_prompt=True, return_dict=True)
    ids = tok(generated + "<|im_end|>", add_special_tokens=False)["input_ids"]
    message = parse_response(tok, ids, prefix=list(prefix["input_ids"]))
    split = read_completion([message])
    assert "KABOOM" in (split.thinking or "") + split.answer, (message, split)
