"""Live Qwen3Guard-Stream moderation of many answers: prompt verdicts first, then answer tokens as they arrive."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rewards.guards.stream.model import Qwen3GuardStreamModel, StreamLabels, label_distribution
from rewards.guards.stream.rule import FlagTracker, query_verdict
from rewards.guards.stream.session import StreamSession
from rewards.verdict import Strictness, Verdict, check_strictness


def read_query(
    labels: StreamLabels, risk: torch.Tensor, category: torch.Tensor, *, truncated: bool = False
) -> Verdict:
    """The prompt verdict from the query heads' logits at the ``<|im_end|>`` closing the last user turn.

    Example:
        >>> inf = float("inf")
        >>> verdict = read_query(StreamLabels(), torch.tensor([-inf, 0.0, -inf]), torch.arange(9.0))
        >>> verdict.safety, verdict.category, verdict.probs["Unsafe"]
        ('Unsafe', 'Jailbreak', 1.0)
    """
    return query_verdict(
        labels.query_risk[int(risk.argmax())],
        labels.query_category[int(category.argmax())],
        label_distribution(risk, labels.query_risk),
        truncated=truncated,
    )


def push_answer(tracker: FlagTracker, labels: StreamLabels, risk: torch.Tensor, category: torch.Tensor) -> None:
    """Push the labels of answer tokens, from the response heads' logits (``[tokens, labels]``), into ``tracker``.

    Example:
        >>> tracker = FlagTracker()
        >>> risk = torch.tensor([[9.0, 0.0, 0.0], [0.0, 9.0, 0.0], [0.0, 9.0, 0.0]])  # Safe, then an Unsafe pair
        >>> push_answer(tracker, StreamLabels(), risk, torch.zeros(3, 8))
        >>> tracker.safety, tracker.flagged_at, tracker.verdict().category
        ('Unsafe', 2, 'Violent')
    """
    for logits, ri, ci in zip(risk, risk.argmax(-1).tolist(), category.argmax(-1).tolist(), strict=True):
        tracker.push(labels.risk[ri], labels.category[ci], label_distribution(logits, labels.risk))


class StreamModeration:
    """Live moderation of B answers: prompts first (query verdicts), then answer tokens as they are generated.

    Args:
        net, labels: the loaded model and its label maps.
        strictness: "strict" (a Controversial pair also flags) or "loose" (only an Unsafe pair flags); decides `flagged`.
        max_tokens: most tokens a stream may hold (prompt + answer); answer tokens beyond it are not judged and the
            verdict is marked ``truncated``.
        capacity: initial cache slots.

    Example:
        >>> stream = guard.open_stream(["How do I bake bread?"])  # doctest: +SKIP
        >>> stream.feed([[8420]])  # doctest: +SKIP
        [False]
        >>> stream.verdicts()[0].answer_tokens  # doctest: +SKIP
        1
    """

    def __init__(
        self,
        net: Qwen3GuardStreamModel,
        labels: StreamLabels,
        batch_size: int,
        *,
        strictness: Strictness = "strict",
        max_tokens: int | None = None,
        capacity: int = 256,
    ):
        self.strictness = check_strictness(strictness)
        self.labels = labels
        self.session = StreamSession(net, batch_size, capacity=capacity)
        self.max_tokens = max_tokens
        self.trackers = [FlagTracker() for _ in range(batch_size)]
        self.truncated = [False] * batch_size
        self.query_verdicts: list[Verdict] = []
        self._started = False

    @property
    def batch_size(self) -> int:
        return self.session.batch_size

    def start(
        self, prefixes: Sequence[Sequence[int]], query_at: Sequence[int], *, truncated: Sequence[bool] = ()
    ) -> list[Verdict]:
        """Feed each stream's prompt tokens (ending where the answer starts); returns the prompt verdicts."""
        if self._started:
            raise RuntimeError("start() was already called for this stream")
        if len(query_at) != len(prefixes):
            raise ValueError("one query position per prefix is needed")
        for r, (prefix, q) in enumerate(zip(prefixes, query_at, strict=True)):
            if not 0 <= q < len(prefix):
                raise ValueError(f"query position {q} is outside stream {r}'s prompt of {len(prefix)} tokens")
        self._started = True
        if truncated:
            self.truncated = [bool(t) for t in truncated]
        out = self.session.feed(prefixes)
        self.query_verdicts = []
        for r, (logits, q) in enumerate(zip(out, query_at, strict=True)):
            self.query_verdicts.append(
                read_query(self.labels, logits.query_risk[q], logits.query_category[q], truncated=self.truncated[r])
            )
        return list(self.query_verdicts)

    def feed(self, tokens: Sequence[Sequence[int]]) -> list[bool]:
        """Add answer tokens per stream; returns, per stream, whether its answer is now flagged under the strictness."""
        if not self._started:
            raise RuntimeError("call start() with the prompts first")
        if self.max_tokens is not None:
            kept = []
            for r, row in enumerate(tokens):
                room = max(self.max_tokens - self.session.lengths[r], 0)
                if len(row) > room:
                    self.truncated[r] = True
                kept.append(list(row)[:room])
            tokens = kept
        out = self.session.feed(tokens)
        for tracker, logits in zip(self.trackers, out, strict=True):
            if logits.risk.numel() == 0:
                continue
            push_answer(tracker, self.labels, logits.risk, logits.category)
        return self.flagged()

    def flagged(self) -> list[bool]:
        """Per stream: the answer can no longer end up safe under the strictness."""
        return [t.flagged(self.strictness) for t in self.trackers]

    @property
    def flagged_at(self) -> list[int | None]:
        """Per stream: index (among its answer tokens) of the first flagged token, None if none."""
        return [t.flagged_at for t in self.trackers]

    @property
    def answer_tokens(self) -> list[int]:
        return [t.count for t in self.trackers]

    def verdicts(self) -> list[Verdict]:
        """The answer verdicts over the tokens fed so far."""
        return [t.verdict(truncated=tr) for t, tr in zip(self.trackers, self.truncated, strict=True)]
