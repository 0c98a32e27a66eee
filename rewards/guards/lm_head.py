"""The LM head over a few hundred positions and a 151k vocabulary, computed in vocabulary blocks on the CPU.

``hidden @ weight.T`` with a ``[151669, hidden]`` weight and a few hundred rows is a wide, shallow product; on the
CPU, BLAS does it faster one block of 1,024 vocabulary rows at a time, writing into the full output (each block's
weights and outputs stay in cache), than as one call: 1.3-1.5x alone, ~20% less head time inside the guard (on the
scripts/bench_reward.py inputs, interleaved). The values are the same dot products (bit-identical here). Elsewhere
(a GPU, a head that is not a plain bias-free linear layer, gradients) the model's own head runs.
"""

from __future__ import annotations

from typing import Any

import torch

from rewards.guards.workspace import Empty, new_empty

BLOCK = 1024


def head_logits(model: Any, hidden: torch.Tensor, empty: Empty = new_empty) -> torch.Tensor:
    """``model.get_output_embeddings()(hidden)`` for ``hidden`` ``[positions, hidden_size]``: ``[positions, vocab]``,
    into a tensor ``empty`` makes where the blocked CPU product runs (e.g. a `rewards.guards.workspace` view).

    Example:
        >>> import torch
        >>> from transformers import Qwen3Config, Qwen3ForCausalLM
        >>> model = Qwen3ForCausalLM(Qwen3Config(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        ...     num_attention_heads=2, num_key_value_heads=1, head_dim=8, vocab_size=3000))
        >>> hidden = torch.randn(5, 16)
        >>> with torch.no_grad():  # the guard runs without gradients
        ...     torch.equal(head_logits(model, hidden), model.lm_head(hidden))
        True
    """
    head = model.get_output_embeddings()
    if hidden.device.type != "cpu" or type(head) is not torch.nn.Linear or head.bias is not None:
        return head(hidden)
    weight = head.weight
    if torch.is_grad_enabled() and (weight.requires_grad or hidden.requires_grad):
        return head(hidden)  # ``out=`` has no gradient
    out = empty((hidden.shape[0], weight.shape[0]), hidden)
    for start in range(0, weight.shape[0], BLOCK):
        torch.mm(hidden, weight[start : start + BLOCK].T, out=out[:, start : start + BLOCK])
    return out
