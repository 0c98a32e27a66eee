"""`pick_engine`: the fast path where its probe passes, `GenerateEngine` otherwise, and at run time if it fails."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Literal

from rewards.engine.generate import GenerateEngine
from rewards.engine.interface import VerdictEngine, VerdictRequest, VerdictResult

logger = logging.getLogger(__name__)

EngineName = Literal["auto", "generate", "rows"]
ENGINES: tuple[str, ...] = ("auto", "generate", "rows")


class FallbackEngine:
    """``fast`` until it raises, then ``fallback`` for that batch and every later one (logged once, with the reason).

    An upstream change the load-time probe did not catch must not crash a training step: the batch is decoded again
    by the engine on public APIs.

    Example:
        >>> class Broken:
        ...     name, stats = "broken", defaultdict(float)
        ...     def decode(self, requests, *, safety_only=False):
        ...         raise AttributeError("an internal moved")
        >>> class Fixed:
        ...     name, stats = "fixed", defaultdict(float)
        ...     def decode(self, requests, *, safety_only=False):
        ...         return [VerdictResult([], "Safe", None) for _ in requests]
        >>> engine = FallbackEngine(Broken(), Fixed())
        >>> [r.label for r in engine.decode([VerdictRequest([1], response=False)])], engine.name
        (['Safe'], 'fixed')
        >>> engine.failure
        'AttributeError: an internal moved'
    """

    def __init__(self, fast: VerdictEngine, fallback: VerdictEngine):
        self.fast = fast
        self.fallback = fallback
        self.failure: str | None = None  # why the fast path was given up

    @property
    def active(self) -> VerdictEngine:
        return self.fast if self.failure is None else self.fallback

    @property
    def name(self) -> str:
        return self.active.name

    @property
    def stats(self) -> defaultdict[str, float]:
        return self.active.stats

    def decode(self, requests: Sequence[VerdictRequest], *, safety_only: bool = False) -> list[VerdictResult]:
        if self.failure is None:
            try:
                return self.fast.decode(requests, safety_only=safety_only)
            except Exception as exc:  # whatever broke, the batch is decoded on public APIs instead
                self.failure = f"{type(exc).__name__}: {exc}"
                logger.warning(
                    "the %s engine failed (%s); decoding with the %s engine from now on",
                    self.fast.name,
                    self.failure,
                    self.fallback.name,
                    exc_info=logger.isEnabledFor(logging.DEBUG),
                )
        return self.fallback.decode(requests, safety_only=safety_only)


def pick_engine(
    model: Any,
    tokenizer: Any,
    engine: str = "auto",
    *,
    max_new_tokens: int = 32,
    batch_size: int = 32,
    max_batch_tokens: int = 32768,
) -> VerdictEngine:
    """The engine that decodes verdicts for a loaded guard ``model`` with ``tokenizer``.

    ``"generate"``: `GenerateEngine` (transformers' ``generate``, public APIs only). ``"rows"``: the fast path
    (`rewards.engine.rows.RowsEngine`), a `ValueError` naming the reason where its probe fails. ``"auto"``: the fast
    path where its probe (`rewards.engine.rows.probe`) passes, falling back to `GenerateEngine` for good if it ever
    raises; `GenerateEngine` otherwise. Either choice is logged once with its reason.

    Example:
        >>> from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM  # doctest: +SKIP
        >>> engine = pick_engine(model, tokenizer)  # doctest: +SKIP
        >>> engine.name  # doctest: +SKIP
        'rows'
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    options = {"max_new_tokens": max_new_tokens, "batch_size": batch_size, "max_batch_tokens": max_batch_tokens}
    generate = GenerateEngine(model, tokenizer, **options)
    if engine == "generate":
        return generate
    from rewards.engine.rows import RowsEngine, probe

    reason = probe(model)
    if reason is not None:
        if engine == "rows":
            raise ValueError(f"the rows engine cannot run this model: {reason}")
        logger.warning("guard decoding with transformers' generate: the fast path does not apply (%s)", reason)
        return generate
    logger.info("guard decoding with the fast path (rows engine): its probe passed")
    rows = RowsEngine(model, tokenizer, **options)
    return rows if engine == "rows" else FallbackEngine(rows, generate)
