"""The last decoder layer computed only where logits are read: keys/values for every token, the rest for a few.

A guard pass reads next-token scores at a handful of columns per row (``Safety:``'s position and the draft tokens
after it), yet a stock forward pass runs every layer over every token. Below the last layer every token's output
feeds the next layer's keys and values, so it is needed; in the last layer only the keys and values of every token
are (later passes attend to them), while its queries, attention, output projection and MLP matter only at the
columns whose logits are read. `last_positions` runs the last layer that way for one forward pass: the model's
output then holds just those columns, in order. On the 4-layer CPU benchmark shape that is about a fifth of the
first pass; on the public 28- and 36-layer shapes about 3%.

Each kept column is computed exactly as the full layer computes it (same modules, same rotary formula, the same
attention over the same keys), so results equal the stock pass up to float summation order. Qwen3 layers only;
an attention mask this module does not know (e.g. flash-attention's 2-D one) runs the stock layer and keeps the
columns from its output. This is for transformers' own forward pass (eager attention, another dtype or model);
where `rewards.guards.rows_forward` runs, it does the same inside its own pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.models.qwen3.modeling_qwen3 import rotate_half


def supports(model: Any) -> bool:
    """Whether `last_positions` applies: a Qwen3 causal LM whose layers are all full attention.

    Example:
        >>> from transformers import Qwen3Config, Qwen3ForCausalLM
        >>> supports(Qwen3ForCausalLM(Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64,
        ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16)))
        True
    """
    config = model.config
    layers = getattr(getattr(model, "model", None), "layers", None)
    return (
        config.model_type == "qwen3"
        and layers is not None
        and len(layers) == config.num_hidden_layers
        and all(t == "full_attention" for t in (getattr(config, "layer_types", None) or ["full_attention"]))
    )


@contextmanager
def last_positions(model: Any, index: torch.Tensor) -> Iterator[None]:
    """Inside the block, a forward pass outputs only chunk columns ``index`` ``[rows, keep]`` (``keep`` may be 0).

    Pass ``logits_to_keep=index.shape[1]`` (or 0 for none) so that the LM head takes them all. Not re-entrant, and
    the model must not run in another thread meanwhile (the last layer's ``forward`` is swapped for the block).

    Example:
        >>> import torch
        >>> from transformers import Qwen3Config, Qwen3ForCausalLM
        >>> model = Qwen3ForCausalLM(Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64,
        ...     num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16)).eval()
        >>> ids, mask = torch.randint(1, 64, (2, 9)), torch.ones(2, 9, dtype=torch.long)
        >>> mask[1, :4] = 0  # left padding in row 1
        >>> with torch.no_grad():
        ...     full = model(ids, attention_mask=mask).logits[:, -2:]
        ...     with last_positions(model, torch.tensor([[7, 8], [7, 8]])):
        ...         kept = model(ids, attention_mask=mask, logits_to_keep=2).logits
        >>> kept.shape, torch.allclose(kept, full, atol=1e-5)
        (torch.Size([2, 2, 64]), True)
    """
    layer = model.model.layers[-1]
    layer.forward = partial(_tail_forward, layer, index)
    try:
        yield
    finally:
        del layer.forward  # back to the class's forward


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The rotary embedding as transformers' Qwen3 applies it (``cos``/``sin`` ``[rows, tokens, head_dim]``)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (x * cos) + (rotate_half(x) * sin)


def _columns(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[r, index[r, j]]`` for ``x`` ``[rows, tokens, dim]``."""
    return x.gather(1, index[:, :, None].expand(-1, -1, x.shape[-1]))


def _tail_forward(
    layer: Any,
    index: torch.Tensor,
    hidden_states: torch.Tensor,
    attention_mask: Any = None,
    position_ids: torch.Tensor | None = None,
    past_key_values: Any = None,
    use_cache: bool | None = False,
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    if not (isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 4):
        out = type(layer).forward(
            layer,
            hidden_states,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            position_embeddings=position_embeddings,
            **kwargs,
        )
        return _columns(out, index)
    attn = layer.self_attn
    rows, width, _ = hidden_states.shape
    keep = index.shape[1]
    x = layer.input_layernorm(hidden_states)
    cos, sin = position_embeddings
    key = attn.k_norm(attn.k_proj(x).view(rows, width, -1, attn.head_dim)).transpose(1, 2)
    value = attn.v_proj(x).view(rows, width, -1, attn.head_dim).transpose(1, 2)
    key = _rotate(key, cos, sin)
    if past_key_values is not None:
        key, value = past_key_values.update(key, value, attn.layer_idx)
    if keep == 0:
        return hidden_states[:, :0]
    xq = _columns(x, index)
    query = attn.q_norm(attn.q_proj(xq).view(rows, keep, -1, attn.head_dim)).transpose(1, 2)
    cos, sin = cos.expand(rows, -1, -1), sin.expand(rows, -1, -1)  # one row for all without position ids
    query = _rotate(query, _columns(cos, index), _columns(sin, index))
    full = attention_mask.expand(rows, *attention_mask.shape[1:])  # a mask may come with one row for all
    mask = full.gather(2, index[:, None, :, None].expand(rows, full.shape[1], keep, full.shape[-1]))
    out, _ = sdpa_attention_forward(attn, query, key, value, mask, dropout=0.0, scaling=attn.scaling)
    h = _columns(hidden_states, index) + attn.o_proj(out.reshape(rows, keep, -1))
    return h + layer.mlp(layer.post_attention_layernorm(h))
