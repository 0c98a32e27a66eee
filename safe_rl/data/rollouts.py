"""Sampling answers from a chat policy, for the rollout filter and the before/after evaluation: in-process
(transformers, left-padded batches) or with vLLM (`sample_answers_vllm`, optional dependency). Both backends take the
same `SamplingOptions`.

Seeds, one rule for both backends: a call draws with ``options.seed`` (transformers: the torch RNG is seeded with it
for the call and restored afterwards; vLLM: ``SamplingParams(seed=...)``), so the same prompts, model and options give
the same answers. A caller that samples in batches passes a different seed per batch (`SamplingOptions.for_batch`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SamplingOptions:
    """How answers are sampled, whatever the backend.

    Example:
        >>> SamplingOptions(samples=8, max_new_tokens=1024, temperature=0.7, top_p=0.8, seed=3).for_batch(16).seed
        19
    """

    samples: int = field(metadata={"help": "Answers per prompt (prompt-major order in the output)."})
    max_new_tokens: int = field(metadata={"help": "Longest answer, in tokens."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (> 0)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass (1: off)."})
    top_k: int = field(default=0, metadata={"help": "Sample the top k tokens only (0: all)."})
    chat_template_kwargs: dict[str, Any] | None = field(
        default=None, metadata={"help": "Chat template switches, e.g. {'enable_thinking': False}."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the call (see the module docstring)."})

    def __post_init__(self) -> None:
        if self.samples < 1 or self.max_new_tokens < 1:
            raise ValueError("samples and max_new_tokens must be positive")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")

    def for_batch(self, first_index: int) -> SamplingOptions:
        """These options for the batch starting at prompt ``first_index``: seed + first_index."""
        return dataclasses.replace(self, seed=self.seed + first_index)


class _GumbelTopK:
    """Sampling from the top-k tokens by the Gumbel-max trick, as a logits processor for greedy decoding.

    ``torch.multinomial`` over a 151k-token vocabulary dominates CPU decoding of tiny models; taking the top k
    logits, adding Gumbel noise to them and letting greedy decoding pick the maximum draws exactly from the top-k
    distribution at a fraction of the cost.
    """

    def __init__(self, k: int, temperature: float, generator: Any = None):
        self.k, self.temperature, self.generator = k, temperature, generator

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        values, indices = torch.topk(scores.float() / self.temperature, min(self.k, scores.shape[-1]), dim=-1)
        noise = torch.empty_like(values).exponential_(generator=self.generator).log().neg()
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(-1, indices, values + noise)


def sample_answers(
    model: Any, tokenizer: Any, prompts: Sequence[str], options: SamplingOptions, *, batch_size: int = 64
) -> list[str]:
    """``options.samples`` answers per prompt (prompt-major order), through the chat template, with special tokens
    removed (a thinking block, being plain text in Qwen3's vocabulary, is kept). ``top_k > 0`` (with ``top_p`` 1)
    samples the top-k tokens by the Gumbel-max trick, much faster on a CPU than sampling over the whole vocabulary.
    """
    import torch

    model_was_training = model.training
    model.eval()
    tokenizer.padding_side = "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = [p for p in prompts for _ in range(options.samples)]
    answers: list[str] = []
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(options.seed)
    try:
        for start in range(0, len(rows), batch_size):
            ids = [
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}],
                    add_generation_prompt=True,
                    tokenize=True,
                    return_dict=True,
                    **(options.chat_template_kwargs or {}),
                )["input_ids"]
                for p in rows[start : start + batch_size]
            ]
            width = max(map(len, ids))
            input_ids = torch.tensor([[pad] * (width - len(x)) + list(x) for x in ids], device=model.device)
            mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=model.device)
            if options.top_k > 0 and options.top_p >= 1.0:
                sampling = {"do_sample": False, "logits_processor": [_GumbelTopK(options.top_k, options.temperature)]}
            else:
                sampling = {
                    "do_sample": True,
                    "temperature": options.temperature,
                    "top_p": options.top_p,
                    "top_k": options.top_k or None,
                }
            with torch.no_grad():
                out = model.generate(
                    input_ids=input_ids,
                    attention_mask=mask,
                    max_new_tokens=options.max_new_tokens,
                    pad_token_id=pad,
                    **sampling,
                )
            answers += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    finally:
        torch.random.set_rng_state(generator_state)
        model.train(model_was_training)
    return answers


def load_vllm(model: str, seed: int = 0, **llm_kwargs: Any) -> Any:
    """A `vllm.LLM` for `sample_answers_vllm` (``pip install safe-rl[vllm]``); build it once, sample many batches."""
    try:
        from vllm import LLM
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise ImportError("vLLM rollouts need vllm: pip install 'safe-rl[vllm]'") from exc
    return LLM(model=model, seed=seed, **llm_kwargs)


def sample_answers_vllm(llm: Any, prompts: Sequence[str], options: SamplingOptions) -> list[str]:
    """`sample_answers` with vLLM: one ``LLM.chat`` call, ``n=options.samples`` per prompt. ``llm``: a `vllm.LLM`
    (`load_vllm`) or a model name (an engine is built for this call only)."""
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
        [[{"role": "user", "content": p}] for p in prompts],
        params,
        chat_template_kwargs=options.chat_template_kwargs or {},
        use_tqdm=False,
    )
    return [choice.text for out in outputs for choice in out.outputs]
