"""The toy helpfulness model: a tiny Qwen3ForSequenceClassification that prefers answering to refusing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from safe_rl.toy.cache import cached_build
from safe_rl.toy.data import HELPFULNESS_TARGET, toy_answers, toy_prompts

HELPFULNESS_RECIPE: dict[str, Any] = {
    "seed": 0,
    "shape": {"hidden_size": 64, "num_hidden_layers": 2},
    "steps": 60,
    "batch_size": 32,
    "lr": 3e-3,
    "targets": HELPFULNESS_TARGET,
}


def helpfulness_text(tokenizer, prompt: str, answer: str) -> str:
    """What `rewards.HelpfulnessRM` scores: the [user, assistant] chat rendered by the model's chat template."""
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return tokenizer.apply_chat_template(messages, tokenize=False)


def _build_helpfulness(folder: Path, recipe: dict[str, Any]) -> None:
    import torch
    from transformers import Qwen3ForSequenceClassification

    from safe_rl.toy.tiny_lm import (
        CompactVocab,
        TinyShape,
        expand_vocab,
        load_qwen_tokenizer,
        optimizer_step,
        pad_batch,
    )

    torch.manual_seed(recipe["seed"])
    gen = torch.Generator().manual_seed(recipe["seed"])
    tok = load_qwen_tokenizer()
    rows: list[tuple[list[int], float]] = []
    vocab_ids = {tok.pad_token_id}
    for p in toy_prompts():
        for a in toy_answers(p):
            ids = tok(helpfulness_text(tok, p.text, a.text), add_special_tokens=False)["input_ids"]
            vocab_ids |= set(ids)
            if p.split == "train":
                rows.append((ids, recipe["targets"][a.behaviour]))
                rows.append((ids[:-1], recipe["targets"][a.behaviour]))  # also without the template's final newline
    vocab = CompactVocab(vocab_ids, len(tok))
    shape = TinyShape(**recipe["shape"])
    pad = vocab.encode([tok.pad_token_id])[0]
    model = Qwen3ForSequenceClassification(shape.config(len(vocab), num_labels=1, pad_token_id=pad))
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=0.0)
    steps = recipe["steps"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10) * max(0.0, 1 - s / steps))
    losses: list[float] = []
    model.train()
    order: list[int] = []
    for _ in range(steps):
        if len(order) < recipe["batch_size"]:
            order += torch.randperm(len(rows), generator=gen).tolist()
        batch, order = order[: recipe["batch_size"]], order[recipe["batch_size"] :]
        ids, mask = pad_batch([vocab.encode(rows[i][0]) for i in batch], pad)
        target = torch.tensor([rows[i][1] for i in batch])
        loss = torch.nn.functional.mse_loss(model(input_ids=ids, attention_mask=mask).logits[:, 0], target)
        optimizer_step(model, opt, sched, loss, losses)
    model.eval()
    full = Qwen3ForSequenceClassification(shape.config(len(tok), num_labels=1, pad_token_id=tok.pad_token_id))
    expand_vocab(model, full, vocab)
    full.save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / "train_loss.txt").write_text("\n".join(f"{x:.5f}" for x in losses))


def build_toy_helpfulness(cache_dir: str | os.PathLike | None = None, **overrides: Any) -> Path:
    """A folder with the toy helpfulness reward model (``AutoModelForSequenceClassification``, one output).

    It scores a chat-rendered (prompt, answer) about +2 for a safe helpful answer, +1.5 for unsafe compliance (it
    did answer) and -1 for a refusal (`safe_rl.toy.data.HELPFULNESS_TARGET`). Cached; ``overrides`` change the
    recipe (and so the cache key).

    Example:
        >>> from rewards import HelpfulnessRM  # doctest: +SKIP
        >>> HelpfulnessRM(str(build_toy_helpfulness())).score(["How do I start running?"], ["I'm sorry, but I can't help with that."])  # doctest: +SKIP
        [-1.0]
    """
    recipe = {**HELPFULNESS_RECIPE, **overrides}
    from safe_rl.threads import torch_threads

    def build(folder: Path) -> None:
        with torch_threads(1):
            _build_helpfulness(folder, recipe)

    return cached_build("helpfulness", recipe, build, cache_dir)
