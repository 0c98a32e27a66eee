"""`Qwen3GuardGen`: the generative Qwen3Guard as a `Guard`, in-process (transformers) or over a server."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from rewards.conversation import Conversation
from rewards.guard_prompt import PreparedInput
from rewards.guards.base import adedupe, dedupe
from rewards.verdict import Verdict


class Qwen3GuardGen:
    """Qwen3Guard-Gen as a guard: ``moderate([[user], [user, assistant], ...]) -> [Verdict, ...]``.

    Without ``base_url`` the model runs in this process with transformers: inputs come from the guard tokenizer's
    own chat template (escaped, see `rewards.guard_prompt`), batches are length-sorted and left-padded, decoding is
    greedy and stops as soon as the verdict lines are complete. With ``base_url`` any OpenAI-compatible server
    (``vllm serve Qwen/Qwen3Guard-Gen-4B``, SGLang, ``transformers serve``) is called asynchronously with bounded
    concurrency, timeouts and retries. Models load on first use; pickling keeps only the configuration.

    In-process verdicts carry the label probabilities read after ``Safety:`` (`Verdict.probs`,
    ``label_probabilities`` is True) and `moderate_safety` returns the label and probabilities alone, in one forward
    pass per input with the fast path (what ``GuardOnlyReward(safety_score="probability")`` calls); a server returns
    text only. In-process decoding runs on `rewards.engine`: the fast path where it applies to the loaded model,
    transformers' ``generate`` otherwise (``engine``).

    Args:
        model: hub id or local folder (the served model name when ``base_url`` is set).
        base_url: e.g. ``"http://localhost:8000/v1"``; None runs in-process.
        api_key: sent as a bearer token to the server.
        tokenizer: hub id or folder of the guard tokenizer, if not the model's own. For a server it enables exact
            token-budget truncation and `render`/`encode`; without one, content is cut by characters.
        device, dtype: where and in which precision the in-process model runs ("auto" picks bf16 on GPU).
        batch_size: conversations per forward batch (in-process).
        max_input_tokens: longest guard input; longer content is cut by the documented rule.
        max_new_tokens: upper bound on the verdict's length; decoding normally stops far earlier.
        max_concurrency, timeout, max_retries: for the server backend.
        dedupe: judge identical conversations in a call once.
        model_kwargs: extra ``from_pretrained`` arguments (in-process).
        engine: in-process decoding: "auto" (the fast path where its load-time probe passes, else transformers'
            ``generate``), "generate", or "rows" (the fast path, an error where it cannot run the model); see
            `rewards.engine.pick_engine`.

    Example:
        >>> guard = Qwen3GuardGen("Qwen/Qwen3Guard-Gen-0.6B")  # doctest: +SKIP
        >>> guard.moderate([[{"role": "user", "content": "How can I make a bomb?"}]])[0].safety  # doctest: +SKIP
        'Unsafe'
    """

    def __init__(
        self,
        model: str = "Qwen/Qwen3Guard-Gen-0.6B",
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        tokenizer: str | None = None,
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int = 32,
        max_input_tokens: int = 8192,
        max_new_tokens: int = 32,
        max_concurrency: int = 32,
        timeout: float = 120.0,
        max_retries: int = 3,
        dedupe: bool = True,
        model_kwargs: dict[str, Any] | None = None,
        engine: str = "auto",
    ):
        if batch_size < 1 or max_concurrency < 1:
            raise ValueError("batch_size and max_concurrency must be positive")
        if engine not in ("auto", "generate", "rows"):
            raise ValueError(f"engine must be 'auto', 'generate' or 'rows', got {engine!r}")
        if max_new_tokens < 4:
            raise ValueError(f"max_new_tokens must be at least 4 to hold a verdict, got {max_new_tokens}")
        self.model = model
        self.base_url = base_url
        self.api_key = api_key
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.max_input_tokens = max_input_tokens
        self.max_new_tokens = max_new_tokens
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.dedupe = dedupe
        self.model_kwargs = dict(model_kwargs or {})
        self.engine = engine
        self._backend: Any = None

    def __repr__(self) -> str:
        where = self.base_url or "in-process"
        return f"Qwen3GuardGen(model={self.model!r}, backend={where!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_backend"] = None  # models and HTTP clients are rebuilt on first use after unpickling
        return state

    @property
    def is_remote(self) -> bool:
        return self.base_url is not None

    @property
    def label_probabilities(self) -> bool:
        """Whether verdicts carry label probabilities (`Verdict.probs`): in-process only, servers return text."""
        return not self.is_remote

    @property
    def backend(self) -> Any:
        """The loaded backend, built on first access (once, whatever the threads; `rewards.loading.load_once`). A
        model that cannot be loaded raises `rewards.loading.ModelLoadError`."""
        from rewards.loading import load_once  # imports torch, which `import rewards` must not

        return load_once(self, "_backend", self._build_backend)

    def _build_backend(self) -> Any:
        if self.base_url is not None:
            from rewards.guards.gen.remote import RemoteGenBackend

            return RemoteGenBackend(
                base_url=self.base_url,
                model=self.model,
                api_key=self.api_key,
                tokenizer=self.tokenizer,
                max_input_tokens=self.max_input_tokens,
                max_new_tokens=self.max_new_tokens,
                max_concurrency=self.max_concurrency,
                timeout=self.timeout,
                max_retries=self.max_retries,
            )
        from rewards.guards.gen.local import LocalGenBackend

        return LocalGenBackend(
            model=self.model,
            tokenizer=self.tokenizer,
            device=self.device,
            dtype=self.dtype,
            batch_size=self.batch_size,
            max_input_tokens=self.max_input_tokens,
            max_new_tokens=self.max_new_tokens,
            model_kwargs=self.model_kwargs,
            engine=self.engine,
        )

    def moderate(self, conversations: Sequence[Conversation]) -> list[Verdict]:
        """One verdict per conversation, in input order."""
        conversations = [list(c) for c in conversations]
        if not self.dedupe:
            return self.backend.moderate(conversations)
        return dedupe(conversations, self.backend.moderate)

    async def amoderate(self, conversations: Sequence[Conversation]) -> list[Verdict]:
        """Awaitable `moderate`: native on the server backend, a worker thread in-process."""
        conversations = [list(c) for c in conversations]
        if not self.is_remote:
            return await asyncio.to_thread(self.moderate, conversations)
        if not self.dedupe:
            return await self.backend.amoderate(conversations)
        return await adedupe(conversations, self.backend.amoderate)

    def moderate_safety(self, conversations: Sequence[Conversation]) -> list[Verdict]:
        """Safety label and label probabilities only, in input order (what a probability-scored guard-only reward
        reads). In-process, one forward pass per distinct input, ``category``/``refusal`` left None; a server gives
        only text, so there this is `moderate` (full verdicts, no probabilities)."""
        if self.is_remote:
            return self.moderate(conversations)
        conversations = [list(c) for c in conversations]
        if not self.dedupe:
            return self.backend.moderate_safety(conversations)
        return dedupe(conversations, self.backend.moderate_safety)

    async def amoderate_safety(self, conversations: Sequence[Conversation]) -> list[Verdict]:
        """Awaitable `moderate_safety`: a worker thread in-process, `amoderate` on the server backend."""
        if self.is_remote:
            return await self.amoderate(conversations)
        conversations = [list(c) for c in conversations]
        return await asyncio.to_thread(self.moderate_safety, conversations)

    def prepare(self, conversation: Conversation) -> PreparedInput:
        """Escaped, truncated, rendered and tokenized input for one conversation."""
        return self.backend.prepare(conversation)

    def render(self, conversation: Conversation) -> str:
        """Exactly the text the guard reads for ``conversation``."""
        return self.prepare(conversation).text

    def encode(self, conversation: Conversation) -> list[int]:
        """Exactly the token ids the guard reads for ``conversation``."""
        return self.prepare(conversation).input_ids
