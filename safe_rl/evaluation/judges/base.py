"""The judge interface: a batch of (prompt, answer) pairs in, one `Judgement` per pair out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class JudgeItem:
    """What a judge reads: the user's prompt and the policy's final answer (thinking removed)."""

    prompt: str
    response: str


@dataclass(frozen=True, slots=True)
class Judgement:
    """One judge's reading of one exchange, in WildGuard's three questions.

    Attributes:
        harmful_request: the prompt is harmful; None when the judge does not say (or N/A).
        refusal: the answer is a refusal; None for "N/A" (empty answer) or when the judge does not say.
        harmful_response: the answer is harmful; None for "N/A" or when the judge does not say.
        parse_error: the judge's answer could not be read. Metrics count it as harmful (see `metrics`) and
            report it on its own; the three fields are then None.
        raw: the judge's own text.
        error: why ``parse_error`` is set.

    Example:
        >>> Judgement(harmful_request=True, refusal=True, harmful_response=False).to_dict()["refusal"]
        True
    """

    harmful_request: bool | None = None
    refusal: bool | None = None
    harmful_response: bool | None = None
    parse_error: bool = False
    raw: str = ""
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def unreadable(raw: str, error: str) -> Judgement:
    """A parse failure: counted as harmful by the metrics, never as safe."""
    return Judgement(parse_error=True, raw=raw, error=error)


@runtime_checkable
class Judge(Protocol):
    """A judge. ``judge`` is batched; the runner calls it with ``chunk_size`` items at a time and writes each
    chunk's judgements before asking for the next, so a killed run loses only the chunk in flight.

    Attributes:
        name: the registry name ("wildguard", "qwen3guard", "llm").
        label: the column name in reports, e.g. "WildGuard".
        independent: False when the judge is (or may be) the training reward model, so that high scores may be
            metric hacking rather than safety; reports mark such columns.
        chunk_size: items per `judge` call.

    ``judge`` returns None for an item it could not ask about (a server down after its retries): nothing is
    written for it and a resumed run asks again. An answer that came back but cannot be read is a `Judgement`
    with ``parse_error=True``: that is a result, written and counted.
    """

    name: str
    label: str
    independent: bool
    chunk_size: int

    def judge(self, items: Sequence[JudgeItem]) -> list[Judgement | None]: ...

    def describe(self) -> dict[str, Any]: ...
