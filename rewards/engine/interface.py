"""The seam between the guard's text side and the engines that run it: requests of token ids in, tokens and label
probabilities out."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

Stats = defaultdict  # an engine's counters: name -> count or seconds, 0 when absent (``Stats(float)``)


def tally(stats: defaultdict[str, float], values: Mapping[str, float]) -> None:
    """Add ``values`` to ``stats``.

    Example:
        >>> stats = Stats(float)
        >>> tally(stats, {"forwards": 2}); tally(stats, {"forwards": 1, "decode_s": 0.5})
        >>> dict(stats)
        {'forwards': 3.0, 'decode_s': 0.5}
    """
    for key, value in values.items():
        stats[key] += value


@dataclass(frozen=True)
class VerdictRequest:
    """One guard input to decode a verdict for.

    Attributes:
        ids: the rendered guard input's token ids (chat template included, generation prompt at the end).
        response: answer moderation (``[user, assistant]``: a 3-line verdict) rather than prompt moderation (2 lines).
        group: requests with equal groups share a prompt (a GRPO group's answers): an engine may compute the
            keys/values of their common prefix once. None: a group of its own.

    Example:
        >>> VerdictRequest(ids=[1, 2, 3], response=True, group="prompt-7").response
        True
    """

    ids: Sequence[int]
    response: bool
    group: Hashable | None = None


@dataclass(frozen=True)
class VerdictResult:
    """What an engine decoded for one request.

    Attributes:
        generated: the greedy tokens, up to and including the one the row stopped at (an end-of-turn token, the
            newline that completed the verdict, the label's first token with ``safety_only``, or the last allowed).
        label: the safety label whose first token followed ``Safety:``; None where the output did not start so.
        probs: P(Safe), P(Unsafe), P(Controversial) read right after ``Safety:``; None where it was not reached or
            the tokenizer has no distinct label tokens.

    Example:
        >>> VerdictResult(generated=[9, 10, 11], label="Safe", probs={"Safe": 0.9, "Unsafe": 0.1, "Controversial": 0.0}).label
        'Safe'
    """

    generated: list[int]
    label: str | None
    probs: Mapping[str, float] | None


@runtime_checkable
class VerdictEngine(Protocol):
    """Decodes verdicts greedily for batches of requests; see `rewards.engine.pick_engine`.

    ``decode`` returns one result per request, in order. With ``safety_only`` a row stops right after its label's
    first token (one forward pass per input for an engine that reads ``Safety:`` with the input). ``stats`` counts
    work (``forwards``, ``batches``, tokens, seconds) for benchmarks; ``name`` says which engine it is.

    Example:
        >>> class Fixed:
        ...     name, stats = "fixed", Stats(float)
        ...     def decode(self, requests, *, safety_only=False):
        ...         return [VerdictResult([], "Safe", None) for _ in requests]
        >>> isinstance(Fixed(), VerdictEngine)
        True
    """

    @property
    def name(self) -> str: ...

    @property
    def stats(self) -> defaultdict[str, float]: ...

    def decode(self, requests: Sequence[VerdictRequest], *, safety_only: bool = False) -> list[VerdictResult]: ...
