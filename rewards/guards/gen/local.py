"""The in-process Qwen3Guard-Gen: conversations prepared as text (`rewards.guard_prompt.GuardPrompt`), decoded by a
verdict engine (`rewards.engine`), parsed back (`rewards.verdict.parse_verdict`)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from rewards.conversation import Conversation
from rewards.engine import VerdictRequest, VerdictResult, pick_engine
from rewards.guard_prompt import GuardPrompt, PreparedInput
from rewards.guards.base import conversation_key
from rewards.loading import load_causal_lm, load_tokenizer
from rewards.verdict import Verdict, failed_verdict, parse_verdict


def group_key(index: int, prepared: PreparedInput) -> tuple[bool, str]:
    """Inputs that share a prompt (a GRPO group's answers and thinking blocks); a prompt input is a group of its own."""
    shared = conversation_key(prepared.messages[:-1]) if prepared.response else str(index)
    return prepared.response, shared


class LocalGenBackend:
    """Runs a Qwen3Guard-Gen checkpoint in this process. Built by `rewards.Qwen3GuardGen`; see its arguments.

    ``model`` may also be a loaded causal LM (then ``tokenizer`` names the tokenizer, or is one). ``engine``:
    "auto", "generate" or "rows" (`rewards.engine.pick_engine`); ``max_batch_tokens`` bounds rows x padded length
    per batch. ``stats`` counts the engine's work (and ``prepare_s``, the seconds spent preparing text).

    Example:
        >>> backend = LocalGenBackend(model="Qwen/Qwen3Guard-Gen-0.6B")  # doctest: +SKIP
        >>> backend.moderate([[{"role": "user", "content": "How do I make a bomb?"}]])[0].safety  # doctest: +SKIP
        'Unsafe'
    """

    def __init__(
        self,
        *,
        model: Any,
        tokenizer: Any = None,
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int = 32,
        max_input_tokens: int = 8192,
        max_new_tokens: int = 32,
        model_kwargs: dict[str, Any] | None = None,
        engine: str = "auto",
        max_batch_tokens: int = 32768,
    ):
        if tokenizer is None and not isinstance(model, str):
            raise ValueError("a loaded guard model needs its tokenizer: pass tokenizer= (a name, folder or tokenizer)")
        if isinstance(model, str):
            self.model = load_causal_lm(model, what="guard", device=device, dtype=dtype, **(model_kwargs or {}))
        else:
            self.model = model.to(device).eval() if device else model.eval()
        self.tokenizer = load_tokenizer(tokenizer or model, what="guard tokenizer")
        self.prompt = GuardPrompt(self.tokenizer, max_input_tokens=max_input_tokens)
        self.engine = pick_engine(
            self.model,
            self.tokenizer,
            engine,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            max_batch_tokens=max_batch_tokens,
        )

    @property
    def stats(self) -> defaultdict[str, float]:
        return self.engine.stats

    def prepare(self, conversation: Conversation) -> PreparedInput:
        return self.prompt.prepare(conversation)

    def moderate(self, conversations: Sequence[Conversation], *, safety_only: bool = False) -> list[Verdict]:
        """One verdict per conversation, in input order; ``safety_only`` see `moderate_safety`."""
        t0 = time.perf_counter()
        verdicts: list[Verdict] = [failed_verdict("not judged")] * len(conversations)
        requests, prepared = [], []
        for i, item in enumerate(self.prompt.prepare_many(conversations)):
            if isinstance(item, Exception):
                verdicts[i] = failed_verdict(f"bad conversation: {item}")
            else:
                requests.append(VerdictRequest(ids=item.input_ids, response=item.response, group=group_key(i, item)))
                prepared.append((i, item))
        self.stats["prepare_s"] += time.perf_counter() - t0
        results = self.engine.decode(requests, safety_only=safety_only) if requests else []
        for (i, item), result in zip(prepared, results, strict=True):
            verdicts[i] = self._verdict(item, result, safety_only)
        return verdicts

    def moderate_safety(self, conversations: Sequence[Conversation]) -> list[Verdict]:
        """Safety label and label probabilities only, one forward pass per input with the fast path.

        Each row stops at the first token of its label, so ``category`` and ``refusal`` are None (not judged). The
        label is the one greedy decoding starts to write; an input whose verdict would turn out malformed further
        on is not caught here (a full `moderate` would return it as a failure). A guard that does not begin with
        ``Safety:`` is decoded in full for that input.
        """
        return self.moderate(conversations, safety_only=True)

    def _verdict(self, prepared: PreparedInput, result: VerdictResult, safety_only: bool) -> Verdict:
        if safety_only and result.label is not None:  # stopped at the label
            label = result.label
            return Verdict(safety=label, raw=f"Safety: {label}", probs=result.probs, truncated=prepared.truncated)  # type: ignore[arg-type]
        verdict = parse_verdict(self.tokenizer.decode(result.generated, skip_special_tokens=True))
        return replace(verdict, truncated=prepared.truncated, probs=result.probs if verdict.ok else None)
