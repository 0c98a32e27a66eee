"""Helpfulness scores H from any sequence-classification reward model (the hybrid reward's H).

The Qwen3Guard report uses WorldPM-72B-HelpSteer2; smaller drop-ins are the Skywork-Reward-V2 Qwen3 series. Any
``AutoModelForSequenceClassification`` checkpoint with one output and a chat template works.

What the reward model reads is policy text as data: message content is escaped with the reward model's *own*
tokenizer's special tokens (`rewards.escaping.ContentEscaper`), so an injected ``<|im_end|>…<|im_start|>user…`` adds
no special token to its input and cannot end the answer early. A pair that cannot be rendered or encoded (e.g. a
lone surrogate) gets ``None`` alone; the rest of the batch is scored.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from rewards.conversation import prompt_messages
from rewards.devices import resolve_device
from rewards.escaping import ContentEscaper, tokenizer_specials
from rewards.loading import load_once, load_pretrained, load_tokenizer

logger = logging.getLogger(__name__)


@runtime_checkable
class HelpfulnessScorer(Protocol):
    """Anything with ``score(prompts, answers) -> list[float | None]`` (None = could not score).

    Example:
        >>> class AnswerLength:
        ...     def score(self, prompts, answers):
        ...         return [float(len(a)) for a in answers]
        >>> isinstance(AnswerLength(), HelpfulnessScorer), AnswerLength().score(["Hi"], ["Hello!"])
        (True, [6.0])
    """

    def score(self, prompts: Sequence[Any], answers: Sequence[str]) -> list[float | None]: ...


class HelpfulnessRM:
    """Scores (prompt, answer) pairs with a reward model, chat-templated and batched.

    Args:
        model: hub id or local folder, e.g. ``"Skywork/Skywork-Reward-V2-Qwen3-0.6B"``.
        tokenizer: the tokenizer's hub id or folder when it is not the model's.
        device, dtype: where and how the model runs ("auto": bf16 on GPU, fp32 on CPU).
        batch_size: pairs per forward pass (pairs are length-sorted first).
        max_length: longest input; longer inputs lose their *start* (the answer is what is scored).
        model_kwargs: extra ``from_pretrained`` arguments.

    Example:
        >>> rm = HelpfulnessRM("Skywork/Skywork-Reward-V2-Qwen3-0.6B")  # doctest: +SKIP
        >>> rm.score(["How do I boil an egg?"], ["Simmer it for 9 minutes, then cool it in water."])  # doctest: +SKIP
        [2.8]
    """

    def __init__(
        self,
        model: str,
        *,
        tokenizer: str | None = None,
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int = 16,
        max_length: int = 4096,
        model_kwargs: dict[str, Any] | None = None,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        self.model_name = model
        self.tokenizer_name = tokenizer
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.max_length = max_length
        self.model_kwargs = dict(model_kwargs or {})
        self._loaded: tuple[Any, Any, Any] | None = None
        self._escaper: ContentEscaper | None = None

    def __repr__(self) -> str:
        return f"HelpfulnessRM(model={self.model_name!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_loaded"] = None
        state["_escaper"] = None
        return state

    def _load(self) -> tuple[Any, Any, Any]:
        return load_once(self, "_loaded", self._build)

    def _build(self) -> tuple[Any, Any, Any]:
        from transformers import AutoModelForSequenceClassification

        device = resolve_device(self.device)
        tokenizer = load_tokenizer(self.tokenizer_name or self.model_name, what="helpfulness tokenizer")
        tokenizer.truncation_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = load_pretrained(
            AutoModelForSequenceClassification,
            self.model_name,
            what="helpfulness model",
            device=device,
            dtype=self.dtype,
            num_labels=1,
            **self.model_kwargs,
        )
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        if getattr(tokenizer, "chat_template", None) is None:
            logger.warning("%s has no chat template; scoring 'prompt\\n\\nanswer' as plain text", self.model_name)
        self._escaper = ContentEscaper(specials=tokenizer_specials(tokenizer), lines=False)
        return tokenizer, model, device

    def load(self) -> HelpfulnessRM:
        """Load the model now (it loads on first use otherwise); raises `rewards.loading.ModelLoadError`."""
        self._load()
        return self

    def _text(self, tokenizer: Any, prompt: str | Sequence[Mapping[str, Any]], answer: str) -> str:
        escape = self._escaper or ContentEscaper(lines=False)
        messages = [*prompt_messages(prompt), {"role": "assistant", "content": answer}]
        messages = [{"role": m["role"], "content": escape(m["content"])} for m in messages]
        if getattr(tokenizer, "chat_template", None) is None:
            return "\n\n".join(m["content"] for m in messages)
        return tokenizer.apply_chat_template(messages, tokenize=False)

    def _encode(self, tokenizer: Any, texts: list[str]) -> tuple[Any, list[bool]]:
        """The padded batch of the texts that encode, and which did; one text that cannot costs only itself."""
        options = {"padding": True, "truncation": True, "max_length": self.max_length, "add_special_tokens": False}
        try:
            return tokenizer(texts, return_tensors="pt", **options), [True] * len(texts)
        except Exception:  # find the culprits one by one, then encode the rest together
            ok = []
            for text in texts:
                try:
                    tokenizer(text, add_special_tokens=False)
                    ok.append(True)
                except Exception as exc:
                    logger.warning("%s: a pair cannot be encoded (%s); it gets no score", self.model_name, exc)
                    ok.append(False)
            good = [t for t, fine in zip(texts, ok, strict=True) if fine]
            return (tokenizer(good, return_tensors="pt", **options) if good else None), ok

    def score(self, prompts: Sequence[Any], answers: Sequence[str]) -> list[float | None]:
        """One score per (prompt, answer); None where the pair could not be read or encoded, or the model gave a
        non-finite value."""
        import torch

        if len(prompts) != len(answers):
            raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
        tokenizer, model, device = self._load()
        texts: list[str | None] = []
        for prompt, answer in zip(prompts, answers, strict=True):
            try:
                texts.append(self._text(tokenizer, prompt, answer))
            except Exception as exc:  # one unreadable pair costs only itself
                logger.warning("%s: a pair cannot be rendered (%s); it gets no score", self.model_name, exc)
                texts.append(None)
        readable = {i: text for i, text in enumerate(texts) if text is not None}
        order = sorted(readable, key=lambda i: len(readable[i]), reverse=True)
        scores: list[float | None] = [None] * len(texts)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            batch, ok = self._encode(tokenizer, [readable[i] for i in rows])
            if batch is None:
                continue
            rows = [i for i, fine in zip(rows, ok, strict=True) if fine]
            with torch.inference_mode():
                logits = model(**batch.to(device)).logits[:, 0].float().tolist()
            for i, value in zip(rows, logits, strict=True):
                scores[i] = value if math.isfinite(value) else None
        return scores
