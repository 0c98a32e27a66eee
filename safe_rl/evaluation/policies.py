"""Policies: where the answers come from. A model run in-process with transformers (hub id, local folder or
``toy:`` name; batched), an OpenAI-compatible server (``--base-url``), or a file of responses produced elsewhere.

Think and non-think modes are the chat template's ``enable_thinking`` switch (Qwen3), sent to the template
in-process and as ``chat_template_kwargs`` to a server. The sampling settings actually used are returned by
``describe()`` and recorded with the results.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from safe_rl.evaluation.benchmarks import EvalPrompt
from safe_rl.sampling import Generation, SamplingOptions, chat_messages

logger = logging.getLogger(__name__)

# Qwen3's recommended sampling per mode (model card), used when a setting is left unset.
QWEN3_SAMPLING = {
    True: {"temperature": 0.6, "top_p": 0.95, "top_k": 20},
    False: {"temperature": 0.7, "top_p": 0.8, "top_k": 20},
}
RESPONSE_COLUMNS = ("response", "completion", "output", "answer")


@dataclass
class SamplingConfig:
    """How the policy decodes. Unset (None) values take Qwen3's recommended settings for the mode; a temperature of
    0 decodes greedily. ``seed`` follows `safe_rl.sampling`'s rule: in-process, a batch draws with the seed plus the
    index of its first prompt; a server is sent the seed plus each prompt's index."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_new_tokens: int = 2048
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k must not be negative, got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be positive, got {self.max_new_tokens}")

    def resolved(self, think: bool) -> dict[str, Any]:
        """The settings in force for ``think`` mode (defaults filled in)."""
        defaults = QWEN3_SAMPLING[think]
        values = {k: getattr(self, k) if getattr(self, k) is not None else v for k, v in defaults.items()}
        return {
            **values,
            "max_new_tokens": self.max_new_tokens,
            "seed": self.seed,
            "greedy": values["temperature"] == 0,
        }

    def options(self, think: bool, samples: int = 1) -> SamplingOptions:
        """The in-process sampling options for ``think`` mode."""
        s = self.resolved(think)
        return SamplingOptions(
            samples=samples,
            max_new_tokens=s["max_new_tokens"],
            temperature=s["temperature"],
            top_p=s["top_p"],
            top_k=s["top_k"],
            seed=s["seed"],
            chat_template_kwargs={"enable_thinking": think},
        )


class Policy(Protocol):
    """Answers prompts; the runner calls `generate` with ``chunk_size`` prompts at a time and writes each chunk.

    ``generate`` returns None for a prompt it could not answer (a server failing after its retries): nothing is
    written for it and a resumed run asks again.
    """

    chunk_size: int

    def generate(self, items: Sequence[EvalPrompt]) -> list[Generation | None]: ...

    def describe(self) -> dict[str, Any]: ...


class TransformersPolicy:
    """A causal LM answering through its chat template in left-padded batches (`safe_rl.sampling.sample_chat`):
    loaded from a hub id, a local folder or a ``toy:`` name (`rewards.loading.load_causal_lm`), or given loaded
    (``lm`` and ``tokenizer``, as the training run evaluates the model it trained)."""

    def __init__(
        self,
        model: str,
        *,
        think: bool = False,
        sampling: SamplingConfig | None = None,
        batch_size: int = 8,
        device: str | None = None,
        dtype: str = "auto",
        system_prompt: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        lm: Any = None,
        tokenizer: Any = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.model = model
        self.think = think
        self.sampling = sampling or SamplingConfig()
        self.chunk_size = batch_size
        self.device = device
        self.dtype = dtype
        self.system_prompt = system_prompt
        self.model_kwargs = dict(model_kwargs or {})
        self._lm: Any = None
        self._tokenizer: Any = tokenizer
        self.think_switch: bool | None = None  # whether the chat template reacts to enable_thinking (once loaded)
        if lm is not None:
            self._lm = lm
            self._check_template()

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "transformers",
            "model": self.model,
            "think": self.think,
            "template_reacts_to_enable_thinking": self.think_switch,
            "sampling": self.sampling.resolved(self.think),
            "batch_size": self.chunk_size,
            "system_prompt": self.system_prompt,
        }

    def _render(self, think: bool) -> str:
        return self._tokenizer.apply_chat_template(
            chat_messages("x", self.system_prompt), tokenize=False, add_generation_prompt=True, enable_thinking=think
        )

    def _check_template(self) -> None:
        if getattr(self._tokenizer, "chat_template", None) is None:
            raise ValueError(f"{self.model}: the tokenizer has no chat template; a chat policy is needed")
        self.think_switch = self._render(True) != self._render(False)
        if not self.think_switch and self.think:
            logger.warning("%s: the chat template ignores enable_thinking; --think makes no difference", self.model)

    def _load(self) -> None:
        from rewards.loading import load_causal_lm, load_tokenizer

        self._tokenizer = load_tokenizer(self.model, what="policy tokenizer")
        self._lm = load_causal_lm(self.model, what="policy", device=self.device, dtype=self.dtype, **self.model_kwargs)
        self._check_template()

    def generate(self, items: Sequence[EvalPrompt]) -> list[Generation | None]:
        from safe_rl.sampling import sample_chat

        if self._lm is None:
            self._load()
        options = self.sampling.options(self.think).for_batch(items[0].index if items else 0)
        conversations = [chat_messages(p.prompt, self.system_prompt) for p in items]
        return list(sample_chat(self._lm, self._tokenizer, conversations, options, batch_size=self.chunk_size))

    def close(self) -> None:
        """Drop the model (before the judge loads)."""
        from safe_rl.sampling import release_memory

        self._lm = None
        release_memory()


class ServerPolicy:
    """A chat model behind an OpenAI-compatible ``/chat/completions`` (vLLM, SGLang, ``transformers serve``).

    Sends ``chat_template_kwargs={"enable_thinking": think}`` and ``top_k`` (vLLM/SGLang extensions); a server's
    separate reasoning field is put back as ``<think>…</think>`` in front of the answer.
    """

    def __init__(
        self,
        model: str,
        base_url: str,
        *,
        think: bool = False,
        sampling: SamplingConfig | None = None,
        api_key: str | None = None,
        system_prompt: str | None = None,
        max_concurrency: int = 16,
        timeout: float = 600.0,
        max_retries: int = 3,
        extra_body: dict[str, Any] | None = None,
    ):
        self.model = model
        self.base_url = base_url
        self.think = think
        self.sampling = sampling or SamplingConfig()
        self.api_key = api_key
        self.system_prompt = system_prompt
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.extra_body = dict(extra_body or {})
        self.chunk_size = max_concurrency * 4

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "server",
            "model": self.model,
            "base_url": self.base_url,
            "think": self.think,
            "sampling": self.sampling.resolved(self.think),
            "system_prompt": self.system_prompt,
            "extra_body": self.extra_body,
        }

    def generate(self, items: Sequence[EvalPrompt]) -> list[Generation | None]:
        from safe_rl.evaluation.openai_http import message_text, post_each

        def generation(reply: dict[str, Any]) -> Generation:
            text, finish = message_text(reply)
            return Generation(text, finish, (reply.get("usage") or {}).get("completion_tokens"))

        s = self.sampling.resolved(self.think)
        base = {
            "model": self.model,
            "max_tokens": s["max_new_tokens"],
            "temperature": s["temperature"],
            "top_p": s["top_p"],
            "top_k": s["top_k"],
            "chat_template_kwargs": {"enable_thinking": self.think},
            **self.extra_body,
        }
        payloads = [
            {**base, "seed": s["seed"] + p.index, "messages": chat_messages(p.prompt, self.system_prompt)}
            for p in items
        ]
        return post_each(self, "/chat/completions", payloads, generation, "policy server call")


class ResponsesFilePolicy:
    """Answers read from a JSONL/CSV/Parquet file (a ``response``, ``completion``, ``output`` or ``answer``
    column), matched to the benchmark by ``id`` when the file has one, else by the exact prompt text."""

    def __init__(self, path: str):
        from safe_rl.io import load_rows

        rows = [dict(r) for r in load_rows(path)]
        if not rows:
            raise ValueError(f"responses file {path}: no rows")
        column = next((c for c in RESPONSE_COLUMNS if c in rows[0]), None)
        if column is None:
            raise ValueError(
                f"responses file {path}: needs one of the columns {RESPONSE_COLUMNS}; found {sorted(rows[0])}"
            )
        self.path = path
        self.column = column
        self.by_id = {str(r["id"]): r for r in rows if r.get("id") not in (None, "")}
        self.by_prompt = {str(r["prompt"]): r for r in rows if "prompt" in r}
        self.chunk_size = 256

    def describe(self) -> dict[str, Any]:
        return {"kind": "responses_file", "path": self.path, "column": self.column}

    def _find(self, item: EvalPrompt) -> dict[str, Any] | None:
        return self.by_id.get(item.id) if self.by_id else self.by_prompt.get(item.prompt)

    def check(self, items: Sequence[EvalPrompt]) -> None:
        """Raise unless every prompt has a response (checked before anything is written)."""
        missing = [p.id for p in items if self._find(p) is None]
        if missing:
            key = "id" if self.by_id else "prompt text"
            raise ValueError(
                f"{self.path}: no response (matched by {key}) for {len(missing)} prompt(s), e.g. ids {missing[:5]}"
            )

    def generate(self, items: Sequence[EvalPrompt]) -> list[Generation | None]:
        self.check(items)
        results: list[Generation | None] = []
        for item in items:
            row = self._find(item) or {}
            value = row.get(self.column)
            results.append(Generation("" if value is None else str(value), row.get("finish_reason") or None, None))
        return results
