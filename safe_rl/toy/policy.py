"""The toy policy: a tiny Qwen3 chat model that samples a mixture of unsafe, refusing and safe helpful answers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from safe_rl.toy.cache import cached_build
from safe_rl.toy.data import POLICY_MIX, policy_weights, toy_answers, toy_prompts

POLICY_RECIPE: dict[str, Any] = {
    "seed": 0,
    "shape": {"hidden_size": 64, "num_hidden_layers": 2},
    "steps": 300,
    "batch_size": 8,  # prompts per step, each with all its weighted answers
    "lr": 1e-2,
    "mix": POLICY_MIX,
}

# The toy policy answers in Qwen3's non-thinking mode (the chat template's `enable_thinking=False`).
CHAT_TEMPLATE_KWARGS: dict[str, Any] = {"enable_thinking": False}


def policy_prompt_ids(tokenizer, prompt_text: str) -> list[int]:
    """The token ids the policy is prompted with (Qwen3 chat template, non-thinking mode)."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt_text}],
        tokenize=True,
        add_generation_prompt=True,
        return_dict=True,
        **CHAT_TEMPLATE_KWARGS,
    )["input_ids"]


def _build_policy(folder: Path, recipe: dict[str, Any]) -> None:
    import torch

    from safe_rl.toy.tiny_lm import load_qwen_tokenizer, train_and_save_causal_lm

    torch.manual_seed(recipe["seed"])
    tok = load_qwen_tokenizer()
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    seqs: list[tuple[list[int], int, float]] = []
    groups: list[list[int]] = []
    vocab_ids = {eos}
    for p in toy_prompts():
        prompt_ids = policy_prompt_ids(tok, p.text)
        vocab_ids |= set(prompt_ids)
        for a in toy_answers(p):
            vocab_ids |= set(tok(a.text, add_special_tokens=False)["input_ids"])
        if p.split != "train":
            continue
        group = []
        for answer, weight in policy_weights(p):
            group.append(len(seqs))
            seqs.append(
                (prompt_ids + tok(answer.text, add_special_tokens=False)["input_ids"] + [eos], len(prompt_ids), weight)
            )
        groups.append(group)
    # Plain sampling at temperature 1: the trained mixture, as the rollouts see it.
    generation = {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0}
    train_and_save_causal_lm(folder, tok, seqs, vocab_ids, recipe, generation=generation, groups=groups)


def build_toy_policy(cache_dir: str | os.PathLike | None = None, **overrides: Any) -> Path:
    """A folder with the toy policy (tiny Qwen3ForCausalLM + the real Qwen3 tokenizer and chat template).

    Sampled at temperature 1 in non-thinking mode it answers harmful prompts with a mixture of unsafe compliance,
    refusals and safe helpful answers, and benign prompts mostly helpfully (`safe_rl.toy.data.POLICY_MIX`).
    Cached (see `safe_rl.toy.cache`); ``overrides`` change the recipe (and so the cache key).

    Example:
        >>> from transformers import pipeline  # doctest: +SKIP
        >>> chat = pipeline("text-generation", str(build_toy_policy()))  # doctest: +SKIP
    """
    recipe = {**POLICY_RECIPE, **overrides}
    from safe_rl.threads import torch_threads

    def build(folder: Path) -> None:
        with torch_threads(1):
            _build_policy(folder, recipe)

    return cached_build("policy", recipe, build, cache_dir)
