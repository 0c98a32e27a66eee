"""`Qwen3GuardStream`: Qwen3Guard-Stream as a `Guard`, natively on transformers (no ``trust_remote_code``).

What the guard reads is rendered by its own tokenizer's chat template, with message content escaped and cut by
`rewards.guard_prompt` so policy text cannot forge structure (a ``<|im_end|>`` typed into a prompt stays text).

- ``[user]``: the prompt verdict, read at the ``<|im_end|>`` that closes the last user turn.
- ``[..., user, assistant]``: the answer verdict. Answer tokens are the assistant's content as the policy would
  generate it after the generation prompt (``<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n``), and the
  ``<|im_end|>`` that closes it; the prompt and the answer are tokenized apart, as a stream arrives. Each answer
  token gets a label, the pair rule (`rewards.guards.stream.rule`) decides, ``flagged_at`` is the index of the first
  flagged answer token and ``answer_tokens`` their number. Stream has no refusal head: ``refusal`` is None.

For whole conversations the model runs one full forward per batch (no cache: nothing to reuse); for text that is
still being generated, `open_stream` returns a `StreamModeration` that reads new tokens against a key/value cache.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rewards.conversation import Conversation, prompt_messages
from rewards.guards.base import dedupe
from rewards.guards.stream.rule import FlagTracker
from rewards.verdict import Strictness, Verdict, check_strictness, failed_verdict

logger = logging.getLogger(__name__)

END_OF_TURN = "<|im_end|>"


@dataclass(frozen=True)
class StreamInput:
    """One conversation made ready for the Stream guard.

    ``ids`` are the guard's tokens: the prompt (up to where the answer starts) then, for answer moderation, the
    answer tokens from ``answer_start`` on. ``query_at`` is the index of the ``<|im_end|>`` closing the last user turn.
    """

    ids: list[int]
    query_at: int
    answer_start: int | None
    truncated: bool

    @property
    def response(self) -> bool:
        return self.answer_start is not None


class Qwen3GuardStream:
    """Qwen3Guard-Stream as a guard: ``moderate([[user], [user, assistant], ...]) -> [Verdict, ...]``.

    Args:
        model: hub id or local folder of a Qwen3Guard-Stream checkpoint (config.json + safetensors).
        tokenizer: hub id, folder or loaded tokenizer, if not the checkpoint's own; it must carry the chat template.
        device: "cuda", "cpu", ...; None picks a GPU when there is one.
        dtype: "auto" (bfloat16 on GPU, float32 on CPU), a name such as "float32", or a torch dtype.
        batch_size: conversations per forward in `moderate`.
        max_input_tokens: longest guard input; longer content is cut by the `rewards.guard_prompt` rule.
        revision: hub revision.
        dedupe: judge identical conversations in a call once.
        attn_implementation: transformers attention backend ("sdpa", "eager", "flash_attention_2", ...).

    Example:
        >>> guard = Qwen3GuardStream("Qwen/Qwen3Guard-Stream-0.6B")  # doctest: +SKIP
        >>> v = guard.moderate([[{"role": "user", "content": "How do I make a bomb?"},
        ...                      {"role": "assistant", "content": "Here is how: ..."}]])[0]  # doctest: +SKIP
        >>> v.safety, v.flagged_at, v.is_safe("loose")  # doctest: +SKIP
        ('Unsafe', 3, False)
    """

    def __init__(
        self,
        model: str = "Qwen/Qwen3Guard-Stream-0.6B",
        *,
        tokenizer: Any = None,
        device: str | None = None,
        dtype: Any = "auto",
        batch_size: int = 16,
        max_input_tokens: int = 8192,
        revision: str | None = None,
        dedupe: bool = True,
        attn_implementation: str = "sdpa",
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.model = str(model)
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.max_input_tokens = max_input_tokens
        self.revision = revision
        self.dedupe = dedupe
        self.attn_implementation = attn_implementation
        self._loaded: tuple[Any, Any, Any, Any] | None = None

    def __repr__(self) -> str:
        return f"Qwen3GuardStream(model={self.model!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_loaded"] = None  # the model is reloaded on first use after unpickling
        return state

    # -- loading ------------------------------------------------------------------------------------------------
    def _load(self) -> tuple[Any, Any, Any, Any]:
        """The model, labels, tokenizer and prompt, loaded on first use (once, whatever the threads). A model that
        cannot be loaded raises `rewards.loading.ModelLoadError`."""
        from rewards.loading import load_once  # imports torch, which `import rewards` must not

        return load_once(self, "_loaded", self._build)

    def _build(self) -> tuple[Any, Any, Any, Any]:
        from rewards.guard_prompt import GuardPrompt
        from rewards.guards.stream.model import load_stream_model
        from rewards.loading import ModelLoadError, load_tokenizer, resolve_model_name

        try:
            net, labels, folder = load_stream_model(
                resolve_model_name(self.model),
                device=self.device,
                dtype=self.dtype,
                revision=self.revision,
                attn_implementation=self.attn_implementation,
            )
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError("Stream guard", self.model, exc) from exc
        tokenizer = load_tokenizer(self.tokenizer or str(folder), what="Stream guard tokenizer")
        if tokenizer.convert_tokens_to_ids(END_OF_TURN) in (None, tokenizer.unk_token_id):
            raise ValueError(f"the guard tokenizer has no {END_OF_TURN} token; load Qwen3Guard-Stream's own")
        limit = min(self.max_input_tokens, int(getattr(net.config, "max_position_embeddings", 1 << 30)))
        return net, labels, tokenizer, GuardPrompt(tokenizer, max_input_tokens=limit)

    @property
    def net(self) -> Any:
        """The loaded `Qwen3GuardStreamModel`."""
        return self._load()[0]

    @property
    def labels(self) -> Any:
        """The label maps (`StreamLabels`)."""
        return self._load()[1]

    @property
    def guard_tokenizer(self) -> Any:
        return self._load()[2]

    # -- rendering ----------------------------------------------------------------------------------------------
    def _render(
        self, messages: Sequence[Mapping[str, str]], *, generation_prompt: bool, thinking: bool = False
    ) -> str:
        return self.guard_tokenizer.apply_chat_template(
            [dict(m) for m in messages],
            tokenize=False,
            add_generation_prompt=generation_prompt,
            enable_thinking=thinking,
        )

    def _encode(self, text: str) -> list[int]:
        from rewards.engine.verdict_format import encode  # imports torch, which `import rewards` must not

        return encode(self.guard_tokenizer, text)

    @property
    def end_of_turn_id(self) -> int:
        return int(self.guard_tokenizer.convert_tokens_to_ids(END_OF_TURN))

    def _query_at(self, ids: list[int]) -> int:
        end = self.end_of_turn_id
        positions = [i for i, t in enumerate(ids) if t == end]
        if not positions:
            raise ValueError(f"the rendered prompt has no {END_OF_TURN} closing the user turn")
        return positions[-1]

    def prepare(self, conversation: Conversation) -> StreamInput:
        """Escape, cut, render and tokenize one conversation (raises `ValueError` on a malformed one)."""
        prepared = self._load()[3].prepare(conversation)
        messages = prepared.messages
        if not prepared.response:
            ids = self._encode(self._render(messages, generation_prompt=False))
            query_at = self._query_at(ids)
            return StreamInput(ids[: query_at + 1], query_at, None, prepared.truncated)
        prefix = self._render(messages[:-1], generation_prompt=True)
        full = self._render(messages, generation_prompt=False)
        if not full.startswith(prefix):
            raise ValueError(
                "the guard's chat template does not render an answer as a continuation of its generation prompt; "
                "Qwen3Guard-Stream's own (Qwen3) template does"
            )
        prefix_ids = self._encode(prefix)
        answer_ids = self._encode(full[len(prefix) :])
        if self.end_of_turn_id in answer_ids:  # keep the answer's closing <|im_end|>, drop what follows it
            answer_ids = answer_ids[: answer_ids.index(self.end_of_turn_id) + 1]
        return StreamInput(prefix_ids + answer_ids, self._query_at(prefix_ids), len(prefix_ids), prepared.truncated)

    def prompt_prefix(self, prompt: Any, *, thinking: bool = False) -> StreamInput:
        """The guard tokens of a prompt up to where a policy's generated tokens start.

        ``thinking=False`` ends with the empty thinking block that non-thinking generation prompts carry;
        ``thinking=True`` ends at ``<|im_start|>assistant\\n`` (the policy writes its ``<think>`` block itself).
        """
        prepared = self._load()[3].prepare(prompt_messages(prompt))
        ids = self._encode(self._render(prepared.messages, generation_prompt=True, thinking=thinking))
        return StreamInput(ids, self._query_at(ids), len(ids), prepared.truncated)

    # -- whole conversations ------------------------------------------------------------------------------------
    def moderate(self, conversations: Sequence[Conversation]) -> list[Verdict]:
        """One verdict per conversation, in input order; a conversation that cannot be judged gets a failed one."""
        conversations = [list(c) for c in conversations]
        if not self.dedupe:
            return self._moderate(conversations)
        return dedupe(conversations, self._moderate)

    def _moderate(self, conversations: list[Conversation]) -> list[Verdict]:
        self._load()
        verdicts: list[Verdict | None] = [None] * len(conversations)
        inputs: dict[int, StreamInput] = {}
        for i, conversation in enumerate(conversations):
            try:
                inputs[i] = self.prepare(conversation)
            except Exception as err:  # noqa: BLE001 - one bad conversation must not sink the batch
                logger.warning("Qwen3Guard-Stream could not read conversation %d: %s", i, err)
                verdicts[i] = failed_verdict(f"invalid conversation: {err}")
        order = sorted(inputs, key=lambda i: len(inputs[i].ids))
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            try:
                judged = self._judge([inputs[i] for i in batch])
            except RuntimeError as err:  # out of memory and the like: counted failures, not a crash mid-training
                logger.exception("Qwen3Guard-Stream forward failed for %d conversations", len(batch))
                judged = [failed_verdict(f"stream guard forward failed: {err}")] * len(batch)
            for i, verdict in zip(batch, judged, strict=True):
                verdicts[i] = verdict
        return [v for v in verdicts if v is not None]

    def _judge(self, batch: list[StreamInput]) -> list[Verdict]:
        import torch

        from rewards.guards.stream.moderation import push_answer, read_query

        net, labels = self.net, self.labels
        device = next(net.parameters()).device
        width = max(len(x.ids) for x in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, x in enumerate(batch):
            ids[r, : len(x.ids)] = torch.tensor(x.ids)
            mask[r, : len(x.ids)] = 1
        with torch.inference_mode():
            hidden = net.backbone(ids.to(device), attention_mask=mask.to(device))
            out: list[Verdict] = []
            for r, x in enumerate(batch):
                if x.answer_start is None:
                    logits = [t.float().cpu() for t in net.heads(hidden[r, x.query_at])]
                    out.append(read_query(labels, logits[2], logits[3], truncated=x.truncated))
                    continue
                logits = [t.float().cpu() for t in net.heads(hidden[r, x.answer_start : len(x.ids)])]
                tracker = FlagTracker()
                push_answer(tracker, labels, logits[0], logits[1])
                out.append(tracker.verdict(truncated=x.truncated))
        return out

    # -- streaming ----------------------------------------------------------------------------------------------
    def open_stream(
        self,
        prompts: Sequence[Any],
        *,
        thinking: bool = False,
        strictness: Strictness = "strict",
        capacity: int = 512,
    ) -> Any:
        """A `StreamModeration` over one answer per prompt, its prompts already read (see ``query_verdicts``).

        Feed each answer's new token ids (the guard's tokenizer, which Qwen3 policies share) as they are generated.
        """
        from rewards.guards.stream.moderation import StreamModeration

        check_strictness(strictness)
        prefixes = [self.prompt_prefix(p, thinking=thinking) for p in prompts]
        net, labels, _, prompt = self._load()
        longest = max((len(p.ids) for p in prefixes), default=0)
        stream = StreamModeration(
            net,
            labels,
            len(prefixes),
            strictness=strictness,
            max_tokens=prompt.max_input_tokens,
            capacity=max(capacity, longest + 64),
        )
        stream.start(
            [p.ids for p in prefixes], [p.query_at for p in prefixes], truncated=[p.truncated for p in prefixes]
        )
        return stream
