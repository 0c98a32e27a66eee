"""OpenRLHF's remote reward protocol (``--reward.remote_url http://host:port/get_reward``) over the guard rewards.

OpenRLHF 0.11 posts one sample per request, ``{"query": [q], "prompts": [p], "labels": [l]}``: ``p`` is the prompt as
rendered by the policy's chat template and ``q`` is the prompt's and the response's tokens decoded WITH special tokens
(so ``q`` starts with ``p`` and ends with ``<|im_end|>``). The reply is ``{"rewards": [...], "scores": [...],
"extra_logs": {...}}``; OpenRLHF turns every value into a tensor, so every value here is a number (no None, no NaN).

How a request is read:

* the response is ``q`` after ``p`` (a ``p`` that is not a prefix of ``q`` is refused, `BadRequest`), without the
  end-of-turn tokens that close it;
* ``p``'s ChatML turns are the conversation; its final open assistant turn (the generation prompt) is not a turn: its
  text, e.g. the empty ``<think>\\n\\n</think>\\n\\n`` that Qwen3's template adds with ``enable_thinking=False``, is the
  start of the response (`split_prompt`), so non-thinking rollouts are judged as answers with an empty thinking;
* a ``p`` without ChatML is one user turn.

Samples that could not be judged get `failure_score` (pessimistic) and ``judged=0`` in ``extra_logs``
(`rewards.integrations.common.sample_logs`). The HTTP side (auth, limits, health) is `rewards.integrations.reward_server`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from rewards.integrations.common import failure_score, sample_logs

_TURN = re.compile(r"<\|im_start\|>([a-z_]+)\n(.*?)(<\|im_end\|>|\Z)", re.DOTALL)
_END_TOKENS = ("<|im_end|>", "<|endoftext|>", "</s>")


class BadRequest(ValueError):
    """A request OpenRLHF's protocol does not allow (answered 422 with this message)."""


def split_prompt(prompt: str) -> tuple[list[dict[str, str]] | str, str]:
    """(turns, start of the response) of a rendered prompt.

    The turns are the ChatML turns before the final open assistant turn (the text itself when there is no ChatML
    user turn); the start of the response is the text of that open assistant turn ("" when there is none).

    Example:
        >>> head = "<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n"
        >>> split_prompt(head)
        ([{'role': 'user', 'content': 'Hi'}], '')
        >>> split_prompt(head + "<think>\\n\\n</think>\\n\\n")  # Qwen3, enable_thinking=False
        ([{'role': 'user', 'content': 'Hi'}], '<think>\\n\\n</think>\\n\\n')
        >>> split_prompt("Question: 2+2?")
        ('Question: 2+2?', '')
    """
    turns = [(role, content, bool(end)) for role, content, end in _TURN.findall(prompt)]
    start = ""
    if turns and turns[-1][0] == "assistant" and not turns[-1][2]:
        start = turns.pop()[1]
    messages = [{"role": role, "content": content} for role, content, _ in turns]
    if not any(m["role"] == "user" for m in messages):
        return prompt, ""
    return messages, start


def parse_chatml(prompt: str) -> list[dict[str, str]] | str:
    """The turns of a ChatML-formatted prompt (see `split_prompt`), or the text itself when it is not ChatML.

    Example:
        >>> parse_chatml("<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n")
        [{'role': 'user', 'content': 'Hi'}]
    """
    return split_prompt(prompt)[0]


def split_query(query: str, prompt: str) -> str:
    """The response in an OpenRLHF query: the text after ``prompt`` (which must be its prefix), preceded by the open
    assistant turn of the prompt (`split_prompt`) and without the end-of-turn tokens that close it.

    Example:
        >>> prompt = "<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n"
        >>> split_query(prompt + "Hello!<|im_end|>", prompt)
        'Hello!'
        >>> split_query("<|im_start|>user\\nHo<|im_end|>", prompt)
        Traceback (most recent call last):
        ...
        rewards.integrations.openrlhf.BadRequest: the prompt is not a prefix of the query (they differ from character 18)
    """
    if not query.startswith(prompt):
        differ = next(
            (i for i, (a, b) in enumerate(zip(query, prompt, strict=False)) if a != b), min(len(query), len(prompt))
        )
        raise BadRequest(f"the prompt is not a prefix of the query (they differ from character {differ})")
    response = split_prompt(prompt)[1] + query[len(prompt) :]
    stripped = response.rstrip()
    while stripped.endswith(_END_TOKENS):
        for token in _END_TOKENS:
            stripped = stripped.removesuffix(token).rstrip()
    return stripped


def parse_request(body: Any) -> tuple[list[Any], list[str]]:
    """(prompts for the reward, responses) of a request body, or `BadRequest` saying what is wrong.

    Example:
        >>> parse_request({"query": ["<|im_start|>user\\nHi<|im_end|>\\nHello"], "prompts": ["<|im_start|>user\\nHi<|im_end|>\\n"]})
        ([[{'role': 'user', 'content': 'Hi'}]], ['Hello'])
        >>> parse_request({"query": ["x"]})
        Traceback (most recent call last):
        ...
        rewards.integrations.openrlhf.BadRequest: 'prompts' must be a list of strings, one per query
    """
    if not isinstance(body, dict):
        raise BadRequest(f"the body must be a JSON object with 'query' and 'prompts', got {type(body).__name__}")
    queries, prompts = body.get("query"), body.get("prompts")
    if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
        raise BadRequest("'query' must be a list of strings")
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts) or len(prompts) != len(queries):
        raise BadRequest("'prompts' must be a list of strings, one per query")
    responses = []
    for i, (query, prompt) in enumerate(zip(queries, prompts, strict=True)):
        try:
            responses.append(split_query(query, prompt))
        except BadRequest as exc:
            raise BadRequest(f"sample {i}: {exc}") from None
    return [parse_chatml(p) for p in prompts], responses


def reply(reward: Any, details: Sequence[Any], failure: float | None = None) -> dict[str, Any]:
    """OpenRLHF's reply for judged samples: numbers only, one per sample in every list.

    Example:
        >>> from rewards.judgement import RewardDetail
        >>> reply(object(), [RewardDetail(reward=1.0, unsafe=False, refusal=False), RewardDetail(reward=None)])
        {'rewards': [1.0, 0.0], 'scores': [1.0, 0.0], 'extra_logs': {'judged': [1.0, 0.0], 'unsafe': [0.0, 0.0], 'refusal': [0.0, 0.0]}}
    """
    fallback = failure_score(reward, failure)
    values = [float(d.reward) if d.reward is not None else fallback for d in details]
    logs = [sample_logs(d) for d in details]
    extra = {key: [log[key] for log in logs] for key in ("judged", "unsafe", "refusal")}
    return {"rewards": values, "scores": list(values), "extra_logs": extra}


def score_queries(
    reward: Any, queries: Sequence[str], prompts: Sequence[str], failure: float | None = None
) -> dict[str, Any]:
    """OpenRLHF's reply for a batch of queries, judged in one call (no server needed).

    Example:
        >>> from rewards import GuardOnlyReward, Verdict
        >>> class FixedGuard:
        ...     def moderate(self, conversations):
        ...         return [Verdict(safety="Unsafe") for _ in conversations]
        >>> prompt = "<|im_start|>user\\nHow do I pick a lock?<|im_end|>\\n<|im_start|>assistant\\n"
        >>> out = score_queries(GuardOnlyReward(FixedGuard()), [prompt + "First, ...<|im_end|>"], [prompt])
        >>> out["rewards"], out["extra_logs"]["unsafe"]
        ([0.0], [1.0])
    """
    conversations, responses = parse_request({"query": list(queries), "prompts": list(prompts)})
    return reply(reward, reward.judge(conversations, responses), failure)
