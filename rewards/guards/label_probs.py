"""Where Qwen3Guard-Gen's safety label sits in token space, and its probability distribution there.

The guard's answer starts with ``Safety:`` and the next token is the first token of the label. With the Qwen3
tokenizer that is ``Safety`` ``:`` then `` Safe`` / `` Unsafe`` / `` Cont`` (``rovers`` ``ial``): three distinct
first tokens, so the next-token distribution after ``Safety:`` is the guard's label distribution. `LabelTokens`
finds those ids for any tokenizer (and refuses one where two labels share a first token), and reads
``P(Safe), P(Unsafe), P(Controversial)`` off a score vector: softmax over the whole vocabulary, restricted to the
three first tokens and renormalised (a trained guard puts almost all its mass there; what it puts elsewhere is a
malformed answer, which greedy decoding would expose as a failed verdict anyway).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rewards.verdict import SAFETY_LABELS

SAFETY_PREFIX = "Safety:"


def encode(tokenizer: Any, text: str) -> list[int]:
    """The token ids of ``text`` as it stands: no special tokens added (a rendered chat template holds its own).

    Returns a plain ``list[int]``, whatever container the tokenizer returns its ``input_ids`` in.
    """
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@dataclass(frozen=True)
class LabelTokens:
    """The token ids of ``Safety:`` as the guard writes it and of each label's first token after it.

    Example:
        >>> from transformers import AutoTokenizer  # doctest: +SKIP
        >>> labels = LabelTokens.from_tokenizer(AutoTokenizer.from_pretrained("Qwen/Qwen3Guard-Gen-0.6B"))  # doctest: +SKIP
        >>> labels.probs(next_token_logits)  # read right after "Safety:"  # doctest: +SKIP
        {'Safe': 0.97, 'Unsafe': 0.02, 'Controversial': 0.01}
    """

    prefix: tuple[int, ...]
    first: tuple[int, ...]  # in SAFETY_LABELS order
    labels: tuple[str, ...] = SAFETY_LABELS

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> LabelTokens:
        prefix = encode(tokenizer, SAFETY_PREFIX)
        first = []
        for label in SAFETY_LABELS:
            ids = encode(tokenizer, f"{SAFETY_PREFIX} {label}")
            if ids[: len(prefix)] != prefix or len(ids) == len(prefix):
                raise ValueError(f"'{SAFETY_PREFIX} {label}' does not tokenize as '{SAFETY_PREFIX}' + label tokens")
            first.append(ids[len(prefix)])
        if len(set(first)) != len(first):
            raise ValueError(
                f"the safety labels share a first token with this tokenizer ({first}); use plain decoding"
            )
        return cls(prefix=tuple(prefix), first=tuple(first))

    def label_of(self, token_id: int) -> str | None:
        """The label whose first token is ``token_id``, or None."""
        try:
            return self.labels[self.first.index(token_id)]
        except ValueError:
            return None

    def probs(self, scores: torch.Tensor) -> dict[str, float] | None:
        """Label distribution from one next-token score vector read right after ``Safety:``."""
        return self.batch_probs(scores[None])[0]

    def batch_probs(self, scores: torch.Tensor) -> list[dict[str, float] | None]:
        """`probs` for each row of ``[rows, vocab]`` scores (one device round trip); None where no label can come.

        Example:
            >>> labels = LabelTokens(prefix=(7, 8), first=(0, 1, 2))  # ids of Safe, Unsafe, Controversial
            >>> inf = float("inf")
            >>> labels.batch_probs(torch.tensor([[0.0, -inf, -inf, 5.0], [-inf, -inf, -inf, 5.0]]))
            [{'Safe': 1.0, 'Unsafe': 0.0, 'Controversial': 0.0}, None]
        """
        # Renormalised over the three labels, the full-vocabulary softmax is the softmax of the three scores.
        picked = scores[:, list(self.first)].float()
        possible = (picked.amax(dim=-1) > -float("inf")).tolist()
        p = torch.softmax(picked, dim=-1).tolist()
        return [dict(zip(self.labels, row, strict=True)) if ok else None for row, ok in zip(p, possible, strict=True)]

    def at_label(self, generated: Sequence[int]) -> bool:
        """True when ``generated`` is exactly ``Safety:``: the next token is the label."""
        return tuple(generated) == self.prefix
