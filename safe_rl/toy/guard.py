"""The toy guard: a tiny Qwen3 that answers in Qwen3Guard-Gen's exact verdict format for the toy behaviours."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

from safe_rl.toy.cache import cached_build
from safe_rl.toy.data import ToyAnswer, ToyPrompt, guard_verdict_text, toy_answers, toy_prompts

GUARD_TEMPLATE = Path(__file__).resolve().parent / "guard_chat_template.jinja"

GUARD_RECIPE: dict[str, Any] = {
    "seed": 0,
    "shape": {"hidden_size": 64, "num_hidden_layers": 2},
    "steps": 120,
    "batch_size": 32,
    "lr": 8e-3,
    "noisy_share": 0.5,  # share of the training items also seen with one word dropped or doubled
}


def guard_conversation(prompt: ToyPrompt, answer: ToyAnswer | str | None) -> list[dict[str, str]]:
    """``[user]`` (moderate the prompt) or ``[user, assistant]`` (moderate the answer)."""
    conv = [{"role": "user", "content": prompt.text}]
    if answer is not None:
        conv.append({"role": "assistant", "content": answer if isinstance(answer, str) else answer.text})
    return conv


def _noisy(text: str, rng: random.Random) -> str:
    # One dropped or doubled word: the policy's samples at temperature 1 are not always verbatim templates.
    words = text.split(" ")
    if len(words) < 4:
        return text
    i = rng.randrange(1, len(words))
    if rng.random() < 0.5:
        del words[i]
    else:
        words.insert(i, words[i])
    return " ".join(words)


def guard_items(split: str) -> list[tuple[list[dict[str, str]], str]]:
    """(conversation, verdict text) pairs of one split: every prompt, and every answer to it."""
    items = []
    for p in toy_prompts(split):
        items.append((guard_conversation(p, None), guard_verdict_text(None, p)))
        for a in toy_answers(p):
            items.append((guard_conversation(p, a), guard_verdict_text(a, p)))
    return items


def _build_guard(folder: Path, recipe: dict[str, Any]) -> None:
    import torch

    from rewards.guard_prompt import GuardPrompt
    from safe_rl.toy.tiny_lm import load_qwen_tokenizer, train_and_save_causal_lm

    torch.manual_seed(recipe["seed"])
    rng = random.Random(recipe["seed"])
    tok = load_qwen_tokenizer(GUARD_TEMPLATE.read_text())
    render = GuardPrompt(tok)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    items = guard_items("train")
    items += [
        (conv[:-1] + [{"role": conv[-1]["role"], "content": _noisy(conv[-1]["content"], rng)}], verdict)
        for conv, verdict in guard_items("train")
        if rng.random() < recipe["noisy_share"]
    ]
    seqs, buckets = [], []
    for conv, verdict in items:
        prompt_ids = render.prepare(conv).input_ids
        seqs.append((prompt_ids + tok(verdict, add_special_tokens=False)["input_ids"] + [eos], len(prompt_ids), 1.0))
        buckets.append(len(conv))  # prompt or answer moderation: each has its own long template prefix
    # The toy vocabulary: everything the guard reads or writes, in any split.
    vocab_ids = {t for s, _, _ in seqs for t in s}
    for conv, _ in guard_items("test"):
        vocab_ids |= set(render.prepare(conv).input_ids)
    train_and_save_causal_lm(folder, tok, seqs, vocab_ids, recipe, generation={"do_sample": False}, buckets=buckets)


def build_toy_guard(cache_dir: str | os.PathLike | None = None, **overrides: Any) -> Path:
    """A folder with a tiny Qwen3Guard-Gen look-alike for the toy world (model + tokenizer + guard template).

    It answers ``[user]`` with ``Safety: …\\nCategories: …`` and ``[user, assistant]`` with an extra
    ``Refusal: Yes|No`` line, then ``<|im_end|>``, reading exactly what `rewards.guard_prompt.GuardPrompt` renders.
    Cached (see `safe_rl.toy.cache`); ``overrides`` change the recipe (and so the cache key).

    Example:
        >>> from rewards import Qwen3GuardGen  # doctest: +SKIP
        >>> guard = Qwen3GuardGen(str(build_toy_guard()))  # doctest: +SKIP
        >>> guard.moderate([[{"role": "user", "content": "How do I steal a car?"}]])[0].safety  # doctest: +SKIP
        'Unsafe'
    """
    recipe = {**GUARD_RECIPE, **overrides}
    from safe_rl.threads import torch_threads

    def build(folder: Path) -> None:
        with torch_threads(1):
            _build_guard(folder, recipe)

    return cached_build("guard", recipe, build, cache_dir)
