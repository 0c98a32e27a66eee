"""`StreamStoppingCriteria`: end each `generate` rollout at its first flagged token, with Qwen3Guard-Stream."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers.generation.stopping_criteria import StoppingCriteria

from rewards.verdict import Strictness, Verdict, check_strictness


class StreamStoppingCriteria(StoppingCriteria):
    """Moderates the tokens `generate` produces as they come, and stops a rollout at its first flagged token.

    The guard reads each prompt (escaped, through its own chat template) and then every generated token against a
    key/value cache: one small guard step per generation step, whatever the length so far. A rollout stops right
    after the token that completes a flagged pair (an Unsafe pair; under "strict" also a Controversial pair), so the
    trainer stops paying for an answer already known to be unsafe. A rollout that emits an end-of-turn token is
    judged up to and including it (as `Qwen3GuardStream.moderate` judges a whole answer), then left alone.

    Token ids are fed to the guard as they are: the policy must share the guard's tokenizer (all Qwen3 models do;
    pass ``policy_tokenizer`` to have this checked).

    Args:
        guard: a `rewards.Qwen3GuardStream`.
        prompts: one prompt per batch row (text or chat messages), or one per prompt when ``generate`` expands each
            into ``num_return_sequences`` rows (each prompt is then repeated in place, as ``generate`` does).
        strictness: "strict" or "loose" (see above).
        thinking: the policy writes a ``<think>`` block itself (thinking-mode generation prompt); False when the
            generation prompt already holds the empty thinking block (``enable_thinking=False``).
        prompt_length: the width of the ``input_ids`` given to ``generate``; by default read off the first call.
        eos_token_id: end-of-turn ids; default the guard tokenizer's ``<|im_end|>`` and ``<|endoftext|>``.
        policy_tokenizer: if given, checked to have the guard tokenizer's vocabulary.

    After ``generate``: ``flagged_at[r]`` is the index (among row r's generated tokens) of its first flagged token
    or None, ``verdicts()`` the answer verdicts (with ``flagged_at`` and ``answer_tokens``), ``query_verdicts`` the
    prompt verdicts. Use a new instance per ``generate`` call.

    Example:
        >>> stop = StreamStoppingCriteria(guard, prompts)  # doctest: +SKIP
        >>> out = policy.generate(**inputs, stopping_criteria=StoppingCriteriaList([stop]))  # doctest: +SKIP
        >>> stop.flagged_at  # doctest: +SKIP
        [None, 17]
    """

    def __init__(
        self,
        guard: Any,
        prompts: Sequence[Any],
        *,
        strictness: Strictness = "strict",
        thinking: bool = False,
        prompt_length: int | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        policy_tokenizer: Any = None,
    ):
        if not prompts:
            raise ValueError("prompts must not be empty")
        self.guard = guard
        self.prompts = list(prompts)
        self.strictness = check_strictness(strictness)
        self.thinking = thinking
        self.prompt_length = prompt_length
        tokenizer = guard.guard_tokenizer
        if eos_token_id is None:
            eos = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
        else:
            eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        self.eos = {int(t) for t in eos if t is not None}
        if policy_tokenizer is not None and policy_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise ValueError("the policy's tokenizer differs from the guard's; token ids cannot be fed as they are")
        self.stream: Any = None
        self._seen = 0
        self._ended: list[bool] = []

    def _open(self, input_ids: torch.Tensor) -> None:
        rows = input_ids.shape[0]
        prompts = self.prompts
        if len(prompts) != rows:
            if rows % len(prompts):
                raise ValueError(f"{len(prompts)} prompts for {rows} rows: give one per row or per prompt")
            prompts = [p for p in prompts for _ in range(rows // len(prompts))]
        self.stream = self.guard.open_stream(prompts, thinking=self.thinking, strictness=self.strictness)
        self._seen = self.prompt_length if self.prompt_length is not None else input_ids.shape[1] - 1
        self._ended = [False] * rows

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor | None = None, **kwargs: Any
    ) -> torch.BoolTensor:
        if self.stream is None:
            self._open(input_ids)
        new = input_ids[:, self._seen :].tolist()
        self._seen = input_ids.shape[1]
        feed: list[list[int]] = []
        for r, row in enumerate(new):
            if self._ended[r]:
                feed.append([])
                continue
            for j, token in enumerate(row):
                if token in self.eos:
                    row = row[: j + 1]
                    self._ended[r] = True
                    break
            feed.append(row)
        flagged = self.stream.feed(feed)
        for r, is_flagged in enumerate(flagged):
            self._ended[r] = self._ended[r] or is_flagged
        return torch.tensor(flagged, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]

    def _require_stream(self) -> Any:
        if self.stream is None:
            raise RuntimeError("generate has not called this stopping criterion yet")
        return self.stream

    @property
    def flagged_at(self) -> list[int | None]:
        """Per row: index of the first flagged generated token, None if none."""
        return self._require_stream().flagged_at

    @property
    def query_verdicts(self) -> list[Verdict]:
        return self._require_stream().query_verdicts

    def verdicts(self) -> list[Verdict]:
        """Per row: the answer verdict over the generated tokens the guard read."""
        return self._require_stream().verdicts()
