"""Qwen3Guard-Gen's verdict format in token space: where the label sits, when a verdict is complete, greedy settings.

Both engines stop a row by the same rule (`VerdictFormat.stop`) and read the label distribution at the same place:

* The guard's answer starts with ``Safety:`` and the next token is the first token of the label. With the Qwen3
  tokenizer that is `` Safe`` / `` Unsafe`` / `` Cont`` (``rovers`` ``ial``): three distinct first tokens, so the
  next-token distribution after ``Safety:`` is the guard's label distribution. `LabelTokens` reads
  ``P(Safe), P(Unsafe), P(Controversial)`` off a score vector: softmax over the whole vocabulary restricted to the
  three first tokens and renormalised (what a trained guard puts elsewhere is a malformed answer, which greedy
  decoding exposes as a failed verdict anyway).
* A row ends at an end-of-turn token, after ``max_new_tokens`` tokens, or once it holds the complete non-blank lines
  its verdict needs (2 for a prompt, 3 for an answer); with ``safety_only`` also right after the label's first token.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rewards.verdict import CATEGORIES, SAFETY_LABELS

SAFETY_PREFIX = "Safety:"
PROMPT_LINES = 2  # Safety, Categories
RESPONSE_LINES = 3  # Safety, Categories, Refusal


def encode(tokenizer: Any, text: str) -> list[int]:
    """The token ids of ``text`` as it stands: no special tokens added (a rendered chat template holds its own).

    Example:
        >>> class Chars:  # a stand-in tokenizer: one id per character
        ...     def __call__(self, text, add_special_tokens=True):
        ...         return {"input_ids": [ord(c) for c in text]}
        >>> encode(Chars(), "ab")
        [97, 98]
    """
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def verdict_texts(response: bool) -> list[str]:
    """Every well-formed verdict: 2 lines for a prompt, 3 for an answer (any label with any category or None).

    Example:
        >>> len(verdict_texts(False)), verdict_texts(True)[0]
        (30, 'Safety: Safe\\nCategories: Violent\\nRefusal: Yes')
    """
    lines = [
        [f"{SAFETY_PREFIX} {label}" for label in SAFETY_LABELS],
        [f"Categories: {c}" for c in (*CATEGORIES, "None")],
    ]
    if response:
        lines.append(["Refusal: Yes", "Refusal: No"])
    return ["\n".join(parts) for parts in itertools.product(*lines)]


def complete_lines(text: str) -> int:
    """Non-blank lines ended by a newline.

    Example:
        >>> complete_lines("Safety: Safe\\nCategories: None\\nRef")
        2
    """
    return sum(1 for line in text.split("\n")[:-1] if line.strip())


@dataclass(frozen=True)
class LabelTokens:
    """The token ids of ``Safety:`` as the guard writes it and of each label's first token after it.

    Example:
        >>> labels = LabelTokens(prefix=(7, 8), first=(0, 1, 2))  # ids of Safe, Unsafe, Controversial
        >>> labels.label_of(1), labels.at_label([7, 8]), labels.at_label([7])
        ('Unsafe', True, False)
    """

    prefix: tuple[int, ...]
    first: tuple[int, ...]  # in SAFETY_LABELS order
    labels: tuple[str, ...] = SAFETY_LABELS

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> LabelTokens:
        """The ids for ``tokenizer``; `ValueError` where ``Safety: <label>`` does not split as prefix + label tokens
        or two labels share a first token (then there is no label distribution to read)."""
        prefix = encode(tokenizer, SAFETY_PREFIX)
        first = []
        for label in SAFETY_LABELS:
            ids = encode(tokenizer, f"{SAFETY_PREFIX} {label}")
            if ids[: len(prefix)] != prefix or len(ids) == len(prefix):
                raise ValueError(f"'{SAFETY_PREFIX} {label}' does not tokenize as '{SAFETY_PREFIX}' + label tokens")
            first.append(ids[len(prefix)])
        if len(set(first)) != len(first):
            raise ValueError(f"the safety labels share a first token with this tokenizer ({first})")
        return cls(prefix=tuple(prefix), first=tuple(first))

    def label_of(self, token_id: int) -> str | None:
        """The label whose first token is ``token_id``, or None."""
        return self.labels[self.first.index(token_id)] if token_id in self.first else None

    def batch_probs(self, scores: torch.Tensor) -> list[dict[str, float] | None]:
        """The label distribution of each row of ``[rows, vocab]`` scores read right after ``Safety:`` (one device
        round trip); None where no label can come.

        Example:
            >>> labels = LabelTokens(prefix=(7, 8), first=(0, 1, 2))
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


def guard_eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """The ids that end a guard's turn: the checkpoint's own, ``<|im_end|>``, ``<|endoftext|>`` and the tokenizer's
    end-of-sequence token, where the tokenizer has them."""
    eos = model.generation_config.eos_token_id
    ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    for token in ("<|im_end|>", "<|endoftext|>", tokenizer.eos_token):
        idx = tokenizer.convert_tokens_to_ids(token) if token else None
        if isinstance(idx, int) and idx >= 0 and idx != tokenizer.unk_token_id and idx not in ids:
            ids.append(idx)
    return ids


def greedy_config(model: Any, tokenizer: Any, max_new_tokens: int) -> Any:
    """The checkpoint's generation config made greedy: a verdict must be reproducible, and guard checkpoints ship
    sampling defaults for chat use. Ends at the guard's end-of-turn ids (`guard_eos_ids`)."""
    config = copy.deepcopy(model.generation_config)
    config.do_sample = False
    config.temperature = config.top_p = config.top_k = config.min_p = None  # sampling only; unset, no warning
    config.num_beams = 1
    config.repetition_penalty = 1.0  # score changes the fast path does not make
    config.no_repeat_ngram_size = 0
    config.max_new_tokens = max_new_tokens
    config.eos_token_id = guard_eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else config.pad_token_id
    config.pad_token_id = pad if pad is not None else config.eos_token_id[0]  # padding is masked: any id will do
    return config


def newline_ids(tokenizer: Any) -> frozenset[int]:
    """Ids of the tokens that hold a newline (byte-level BPE vocabularies write "\\n" as "Ċ")."""
    return frozenset(idx for token, idx in tokenizer.get_vocab().items() if "\u010a" in token or "\n" in token)


class VerdictFormat:
    """What both engines need of the tokenizer and the checkpoint to decode verdicts: label tokens (None where the
    tokenizer has no distinct label tokens), end-of-turn and newline ids, the stopping rule.

    Example:
        >>> from transformers import AutoTokenizer  # doctest: +SKIP
        >>> fmt = VerdictFormat(model, AutoTokenizer.from_pretrained("Qwen/Qwen3Guard-Gen-0.6B"), 32)  # doctest: +SKIP
        >>> fmt.stop(ids_of("Safety: Safe\\nCategories: None\\n"), response=False, safety_only=False)  # doctest: +SKIP
        (True, 'Safe')
    """

    def __init__(self, model: Any, tokenizer: Any, max_new_tokens: int):
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.eos_ids = frozenset(guard_eos_ids(model, tokenizer))
        self.newline_ids = newline_ids(tokenizer)
        try:
            self.labels: LabelTokens | None = LabelTokens.from_tokenizer(tokenizer)
        except ValueError:
            self.labels = None  # no label distribution and no label-only stop; decoding itself is unaffected

    def label(self, generated: Sequence[int]) -> str | None:
        """The label whose first token follows ``Safety:`` at the start of ``generated``, if any."""
        n = len(self.labels.prefix) if self.labels is not None else 0
        if self.labels is None or len(generated) <= n or not self.labels.at_label(generated[:n]):
            return None
        return self.labels.label_of(generated[n])

    def stop(self, generated: Sequence[int], *, response: bool, safety_only: bool) -> tuple[bool, str | None]:
        """Whether a row ends with its last token, and the label it wrote (None where it has not written one).

        ``safety_only`` ends a row on the label's first token; any other row ends at an end-of-turn token, after
        ``max_new_tokens`` tokens or when its verdict lines are complete.
        """
        label = self.label(generated)
        t = generated[-1]
        if t in self.eos_ids or len(generated) >= self.max_new_tokens:
            return True, label
        if (
            safety_only
            and label is not None
            and self.labels is not None
            and len(generated) == len(self.labels.prefix) + 1
        ):
            return True, label
        if t in self.newline_ids:
            text = self.tokenizer.decode(list(generated), skip_special_tokens=True)
            if complete_lines(text) >= (RESPONSE_LINES if response else PROMPT_LINES):
                return True, label
        return False, label
