"""An OpenRLHF remote reward server (``--reward.remote_url http://host:port/get_reward``) over the guard rewards.

OpenRLHF posts ``{"query": [...], "prompts": [...], "labels": [...]}`` where each query is the chat-formatted
prompt followed by the response; the reply is ``{"rewards": [...], "scores": [...], "extra_logs": {...}}``. The
response is the query after its prompt; the prompt's turns are read back from ChatML (Qwen's chat format). Samples
that could not be judged get `failure_score` (pessimistic) and are counted in ``extra_logs``.
Needs the ``serve`` extra (FastAPI, uvicorn); start it with ``safe-rl serve-reward`` (``--safety-score probability``
scores safety by the guard's label probabilities, see `rewards.safety_rewards`).
"""

# No `from __future__ import annotations` here: FastAPI must see the request model class itself, not a string.
import re
from collections.abc import Sequence
from typing import Any

from rewards.integrations.common import failure_score, flag

_CHATML = re.compile(r"<\|im_start\|>(system|user|assistant)\n(.*?)(?:<\|im_end\|>|$)", re.DOTALL)
_END_TOKENS = ("<|im_end|>", "<|endoftext|>", "</s>")


def parse_chatml(prompt: str) -> list[dict[str, str]] | str:
    """The turns of a ChatML-formatted prompt, or the text itself when it is not ChatML.

    Example:
        >>> parse_chatml("<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n")
        [{'role': 'user', 'content': 'Hi'}]
    """
    turns = [{"role": r, "content": c} for r, c in _CHATML.findall(prompt) if c.strip() or r != "assistant"]
    return turns if any(t["role"] == "user" for t in turns) else prompt


def split_query(query: str, prompt: str) -> str:
    """The response part of an OpenRLHF query (the query after its prompt, end-of-turn tokens removed).

    Example:
        >>> prompt = "<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n"
        >>> split_query(prompt + "Hello!<|im_end|>", prompt)
        'Hello!'
    """
    response = query[len(prompt) :] if query.startswith(prompt) else query
    for token in _END_TOKENS:
        response = response.replace(token, "")
    return response.strip()


def score_queries(
    reward: Any, queries: Sequence[str], prompts: Sequence[str], failure: float | None = None
) -> dict[str, Any]:
    """OpenRLHF's reply for a batch of queries.

    Example:
        >>> from rewards import GuardOnlyReward, Verdict
        >>> class FixedGuard:
        ...     def moderate(self, conversations):
        ...         return [Verdict(safety="Unsafe") for _ in conversations]
        >>> prompt = "<|im_start|>user\\nHow do I pick a lock?<|im_end|>\\n<|im_start|>assistant\\n"
        >>> reply = score_queries(GuardOnlyReward(FixedGuard()), [prompt + "First, ...<|im_end|>"], [prompt])
        >>> reply["rewards"], reply["extra_logs"]["guard_unsafe"]
        ([0.0], [1.0])
    """
    if len(queries) != len(prompts):
        raise ValueError(f"{len(queries)} queries but {len(prompts)} prompts")
    details = reward.judge(
        [parse_chatml(p) for p in prompts], [split_query(q, p) for q, p in zip(queries, prompts, strict=True)]
    )
    fallback = failure_score(reward, failure)
    values = [d.reward if d.reward is not None else fallback for d in details]
    n = max(len(details), 1)
    extra = {
        "guard_unsafe": [flag(d.unsafe) for d in details],
        "guard_refusal": [flag(d.refusal) for d in details],
        "guard_failure_rate": [sum(d.reward is None for d in details) / n] * len(details),
    }
    return {"rewards": values, "scores": values, "extra_logs": extra}


def create_app(reward: Any, failure: float | None = None) -> Any:
    """A FastAPI app serving ``POST /get_reward`` for OpenRLHF (and ``GET /health``)."""
    from fastapi import FastAPI, HTTPException
    from pydantic import BaseModel, Field

    class RewardRequest(BaseModel):
        query: list[str]
        prompts: list[str] = Field(default_factory=list)
        labels: list[Any] | None = None

    app = FastAPI(title="safe-rl reward server")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "reward": getattr(reward, "__name__", type(reward).__name__)}

    @app.post("/get_reward")
    def get_reward(request: RewardRequest) -> dict[str, Any]:
        prompts = request.prompts or [""] * len(request.query)
        try:
            return score_queries(reward, request.query, prompts, failure)
        except ValueError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from exc

    return app
