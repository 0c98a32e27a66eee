"""Policies: where the answers come from. A model run in-process with transformers (hub id or local folder,
batched), an OpenAI-compatible server (``--base-url``), or a file of responses produced elsewhere.

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
    0 decodes greedily. ``seed`` seeds torch in-process and is sent per request to a server."""

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


@dataclass(frozen=True)
class Generation:
    """One policy answer: the raw text (thinking included), why it ended ("stop", "length" or None when unknown),
    and its length in tokens when known."""

    response: str
    finish_reason: str | None = None
    num_tokens: int | None = None


class Policy(Protocol):
    """Answers prompts; the runner calls `generate` with ``chunk_size`` prompts at a time and writes each chunk.

    ``generate`` returns None for a prompt it could not answer (a server failing after its retries): nothing is
    written for it and a resumed run asks again.
    """

    chunk_size: int

    def generate(self, items: Sequence[EvalPrompt]) -> list[Generation | None]: ...

    def describe(self) -> dict[str, Any]: ...


def chat_messages(prompt: str, system_prompt: str | None = None) -> list[dict[str, str]]:
    """The policy's input messages."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*messages, {"role": "user", "content": prompt}]


class TransformersPolicy:
    """A causal LM from a hub id or local folder, answering through its chat template in left-padded batches."""

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
        self.think_switch: bool | None = (
            None  # whether the chat template reacts to enable_thinking (known once loaded)
        )

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

    def _render(self, prompt: str, think: bool) -> str:
        return self._tokenizer.apply_chat_template(
            chat_messages(prompt, self.system_prompt),
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=think,
        )

    def _load(self) -> None:
        import torch

        from safe_rl.evaluation.hf import load_causal_lm

        torch.manual_seed(self.sampling.seed)
        self._lm, self._tokenizer, self._device = load_causal_lm(
            self.model, device=self.device, dtype=self.dtype, model_kwargs=self.model_kwargs
        )
        if getattr(self._tokenizer, "chat_template", None) is None:
            raise ValueError(f"{self.model}: the tokenizer has no chat template; a chat policy is needed")
        self.think_switch = self._render("x", True) != self._render("x", False)
        if not self.think_switch:
            logger.warning(
                "%s: the chat template ignores enable_thinking; think/no-think makes no difference", self.model
            )

    def _stop_ids(self) -> set[int]:
        ids = self._lm.generation_config.eos_token_id
        ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
        if self._tokenizer.eos_token_id is not None:
            ids.add(self._tokenizer.eos_token_id)
        return ids

    def generate(self, items: Sequence[EvalPrompt]) -> list[Generation | None]:
        import torch

        from safe_rl.evaluation.hf import left_pad, pad_token_id

        if self._lm is None:
            self._load()
        settings = self.sampling.resolved(self.think)
        encoded = [
            self._tokenizer(self._render(p.prompt, self.think), add_special_tokens=False)["input_ids"] for p in items
        ]
        pad = pad_token_id(self._tokenizer)
        ids, mask = left_pad(encoded, pad, self._device)
        kwargs: dict[str, Any] = {"max_new_tokens": settings["max_new_tokens"], "pad_token_id": pad}
        if settings["greedy"]:
            kwargs["do_sample"] = False
        else:
            kwargs.update(
                do_sample=True, temperature=settings["temperature"], top_p=settings["top_p"], top_k=settings["top_k"]
            )
        with torch.inference_mode():
            out = self._lm.generate(input_ids=ids, attention_mask=mask, **kwargs)
        stops = self._stop_ids()
        results: list[Generation | None] = []
        for row in out[:, ids.shape[1] :].tolist():
            end = next((i for i, t in enumerate(row) if t in stops), None)
            tokens = row if end is None else row[:end]
            text = self._tokenizer.decode(tokens, skip_special_tokens=True)
            results.append(Generation(text, "length" if end is None else "stop", len(tokens)))
        return results

    def close(self) -> None:
        """Drop the model (before the judge loads)."""
        from safe_rl.evaluation.hf import release_memory

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
            "seed": s["seed"],
            "chat_template_kwargs": {"enable_thinking": self.think},
            **self.extra_body,
        }
        payloads = [{**base, "messages": chat_messages(p.prompt, self.system_prompt)} for p in items]
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
