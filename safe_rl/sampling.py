"""Sampling answers from a chat policy: in-process with transformers (`sample_chat`) or with vLLM
(`sample_chat_vllm`, optional dependency). The rollout filter (`safe-rl prepare`), the evaluation of `safe-rl eval`
and the before/after evaluation of `safe-rl train` all sample here.

One seeding rule: a call draws with ``options.seed`` (transformers: the torch RNG is seeded with it for the call and
the caller's RNG state is restored afterwards; vLLM: ``SamplingParams(seed=...)``), so the same conversations, model
and options give the same answers. A caller that samples in batches passes the seed plus the index of the batch's
first prompt (`SamplingOptions.for_batch`); a server, asked one prompt at a time, gets the seed plus that prompt's
index.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

Conversation = list[dict[str, str]]


@dataclass(frozen=True)
class SamplingOptions:
    """How answers are sampled, whatever the backend.

    Example:
        >>> SamplingOptions(samples=8, max_new_tokens=1024, temperature=0.7, top_p=0.8, seed=3).for_batch(16).seed
        19
    """

    samples: int = field(default=1, metadata={"help": "Answers per prompt (prompt-major order in the output)."})
    max_new_tokens: int = field(default=256, metadata={"help": "Longest answer, in tokens."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature; 0 decodes greedily."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass (1: off)."})
    top_k: int = field(default=0, metadata={"help": "Sample the top k tokens only (0: all)."})
    seed: int = field(default=0, metadata={"help": "Seed of the call (see the module docstring)."})
    chat_template_kwargs: dict[str, Any] | None = field(
        default=None, metadata={"help": "Chat template switches, e.g. {'enable_thinking': False}."}
    )

    def __post_init__(self) -> None:
        if self.samples < 1 or self.max_new_tokens < 1:
            raise ValueError("samples and max_new_tokens must be positive")
        if self.temperature < 0:
            raise ValueError(f"temperature must not be negative, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must not be negative, got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def for_batch(self, first_index: int) -> SamplingOptions:
        """These options for the batch starting at prompt ``first_index``: seed + first_index."""
        return dataclasses.replace(self, seed=self.seed + first_index)


@dataclass(frozen=True)
class Generation:
    """One answer: the text (a thinking block included, special tokens removed), why it ended ("stop", "length",
    or None when unknown) and its length in tokens when known."""

    response: str
    finish_reason: str | None = None
    num_tokens: int | None = None


def chat_messages(prompt: str, system_prompt: str | None = None) -> Conversation:
    """The policy's input messages for a user prompt.

    Example:
        >>> chat_messages("Hi", "Be brief.")
        [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Hi'}]
    """
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*messages, {"role": "user", "content": prompt}]


def pad_token_id(tokenizer: Any) -> int:
    """The pad id, falling back to EOS (then UNK) for tokenizers that have none."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id):
        if candidate is not None:
            return int(candidate)
    raise ValueError("the tokenizer has no pad, eos or unk token to pad with")


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: Any = "cpu") -> tuple[Any, Any]:
    """Left-padded ids and attention mask of token id lists (generation continues every row at the same position).

    Example:
        >>> ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
        >>> ids.tolist(), mask.tolist()
        ([[5, 6, 7], [0, 0, 8]], [[1, 1, 1], [0, 0, 1]])
    """
    import torch
    from torch.nn.utils.rnn import pad_sequence

    tensors = [torch.tensor(list(r), dtype=torch.long) for r in rows]
    ids = pad_sequence(tensors, batch_first=True, padding_value=pad_id, padding_side="left")
    ones = [torch.ones(len(r), dtype=torch.long) for r in rows]
    mask = pad_sequence(ones, batch_first=True, padding_value=0, padding_side="left")
    return ids.to(device), mask.to(device)


class _GumbelTopK:
    """Sampling from the top-k tokens by the Gumbel-max trick, as a logits processor for greedy decoding.

    ``torch.multinomial`` over a 151k-token vocabulary dominates CPU decoding of tiny models; taking the top k
    logits, adding Gumbel noise to them and letting greedy decoding pick the maximum draws exactly from the top-k
    distribution at a fraction of the cost.
    """

    def __init__(self, k: int, temperature: float):
        self.k, self.temperature = k, temperature

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        values, indices = torch.topk(scores.float() / self.temperature, min(self.k, scores.shape[-1]), dim=-1)
        noise = torch.empty_like(values).exponential_().log().neg()
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(-1, indices, values + noise)


def _stop_ids(model: Any, tokenizer: Any) -> set[int]:
    ids = getattr(model.generation_config, "eos_token_id", None)
    stops = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        stops.add(int(tokenizer.eos_token_id))
    return stops


# transformers fills the fields a generation config leaves unset from the model's own (a checkpoint saved for sampling
# has e.g. top_k=0), then warns that greedy decoding ignores them: greedy decoding sets them to transformers' defaults.
_GREEDY = {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "top_k": 50}


def _decoding(options: SamplingOptions) -> tuple[dict[str, Any], list[Any]]:
    """(generation config fields, logits processors) for ``options``."""
    if options.greedy:
        return dict(_GREEDY), []
    if options.top_k > 0 and options.top_p >= 1.0:
        return dict(_GREEDY), [_GumbelTopK(options.top_k, options.temperature)]
    return {"do_sample": True, "temperature": options.temperature, "top_p": options.top_p, "top_k": options.top_k}, []


def sample_chat(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Conversation],
    options: SamplingOptions,
    *,
    batch_size: int = 64,
) -> list[Generation]:
    """``options.samples`` answers per conversation (prompt-major order) from a causal LM through its chat template.

    ``top_k > 0`` with ``top_p`` 1 samples the top-k tokens by the Gumbel-max trick (the same distribution, much
    faster on a CPU than sampling over the whole vocabulary); temperature 0 decodes greedily. Decoding stops at the
    model's end-of-turn token; the answer is decoded without special tokens (a thinking block, plain text in Qwen3's
    vocabulary, is kept).
    """
    import torch
    from transformers import GenerationConfig

    model_was_training = model.training
    model.eval()
    pad = pad_token_id(tokenizer)
    stops = _stop_ids(model, tokenizer)
    rows = [c for c in conversations for _ in range(options.samples)]
    fields, processors = _decoding(options)
    generation_config = GenerationConfig(
        max_new_tokens=options.max_new_tokens, pad_token_id=pad, eos_token_id=sorted(stops) or None, **fields
    )
    results: list[Generation] = []
    rng_state = torch.random.get_rng_state()
    torch.manual_seed(options.seed)
    try:
        for start in range(0, len(rows), batch_size):
            encoded = [
                tokenizer.apply_chat_template(
                    messages,
                    add_generation_prompt=True,
                    tokenize=True,
                    return_dict=True,
                    **(options.chat_template_kwargs or {}),
                )["input_ids"]
                for messages in rows[start : start + batch_size]
            ]
            ids, mask = left_pad(encoded, pad, model.device)
            with torch.inference_mode():
                out = model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    generation_config=generation_config,
                    logits_processor=processors,
                )
            for row in out[:, ids.shape[1] :].tolist():
                end = next((i for i, t in enumerate(row) if t in stops), None)
                tokens = row if end is None else row[:end]
                text = tokenizer.decode(tokens, skip_special_tokens=True)
                results.append(Generation(text, "length" if end is None else "stop", len(tokens)))
    finally:
        torch.random.set_rng_state(rng_state)
        model.train(model_was_training)
    return results


def load_vllm(model: str, seed: int = 0, **llm_kwargs: Any) -> Any:
    """A `vllm.LLM` for `sample_chat_vllm` (``pip install safe-rl[vllm]``); ``model`` may be a ``toy:`` name."""
    from rewards.loading import resolve_model_name

    try:
        from vllm import LLM
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise ImportError("vLLM rollouts need vllm: pip install 'safe-rl[vllm]'") from exc
    return LLM(model=resolve_model_name(model), seed=seed, **llm_kwargs)


def sample_chat_vllm(llm: Any, conversations: Sequence[Conversation], options: SamplingOptions) -> list[Generation]:
    """`sample_chat` with vLLM: one ``LLM.chat`` call, ``n=options.samples`` per conversation. ``llm``: a
    `vllm.LLM` (`load_vllm`) or a model name (an engine is built for this call only)."""
    from vllm import SamplingParams

    if isinstance(llm, str):
        llm = load_vllm(llm, seed=options.seed)
    params = SamplingParams(
        n=options.samples,
        temperature=options.temperature,
        top_p=options.top_p,
        top_k=options.top_k or -1,
        max_tokens=options.max_new_tokens,
        seed=options.seed,
    )
    outputs = llm.chat(
        list(conversations), params, chat_template_kwargs=options.chat_template_kwargs or {}, use_tqdm=False
    )
    return [
        Generation(choice.text, choice.finish_reason, len(choice.token_ids or []))
        for out in outputs
        for choice in out.outputs
    ]


def release_memory() -> None:
    """Return freed accelerator memory (after dropping the last reference to a model, before loading the next)."""
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass
