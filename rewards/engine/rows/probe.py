"""Whether the fast path may run a given model: the modules it reads are there, and its passes give the model's
own numbers on a probe input. Checked once, at load (`rewards.engine.pick_engine`); a version string proves
nothing, an upstream change in what a module holds or computes shows up here."""

from __future__ import annotations

from typing import Any

import torch

from rewards.engine.rows.attention import SPLIT_MIN
from rewards.engine.rows.kv_cache import gather_rows
from rewards.engine.rows.qwen3_forward import extend, extend_batches

# Module attributes the forward pass reads, below ``model.get_decoder()`` and in every decoder layer.
BODY = ("embed_tokens", "layers", "norm.weight", "norm.variance_epsilon", "rotary_emb")
LAYER = (
    "input_layernorm.variance_epsilon",
    "post_attention_layernorm.variance_epsilon",
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "self_attn.q_norm.variance_epsilon",
    "self_attn.k_norm.variance_epsilon",
    "self_attn.scaling",
    "self_attn.head_dim",
    "self_attn.config",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)
# Largest difference from the model's own logits, relative to their largest magnitude, by dtype: float summation
# order alone stays far below these; a changed computation (a norm, the rotary embedding, a mask) lands far above.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2}


def _missing(obj: Any, path: str) -> bool:
    for name in path.split("."):
        if not hasattr(obj, name):
            return True
        obj = getattr(obj, name)
    return False


def structure(model: Any) -> str | None:
    """None where the model is a Qwen3 causal LM the fast path can read, else why not.

    Example:
        >>> from transformers import Qwen3Config, Qwen3ForCausalLM
        >>> model = Qwen3ForCausalLM(Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64,
        ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16))
        >>> structure(model) is None, structure(model.half())
        (True, 'dtype torch.float16 (the fast path runs float32 and bfloat16)')
    """
    config = model.config
    if getattr(config, "model_type", None) != "qwen3":
        return f"model type {getattr(config, 'model_type', None)!r} (the fast path runs Qwen3)"
    if any(t != "full_attention" for t in (getattr(config, "layer_types", None) or ["full_attention"])):
        return "layers other than full attention (sliding window)"
    if getattr(config, "hidden_act", None) != "silu":
        return f"activation {getattr(config, 'hidden_act', None)!r}"
    if model.dtype not in TOLERANCE:
        return f"dtype {model.dtype} (the fast path runs float32 and bfloat16)"
    if len(set((getattr(model, "hf_device_map", None) or {}).values())) > 1:
        return "weights split over devices (device_map)"
    body = model.get_decoder()
    missing = [name for name in BODY if _missing(body, name)]
    layers = getattr(body, "layers", [])
    missing += sorted({name for layer in layers for name in LAYER if _missing(layer, name)})
    if missing or model.get_output_embeddings() is None:
        return f"modules not found where the fast path reads them: {missing or ['output embeddings']}"
    if len(layers) != config.num_hidden_layers:
        return f"{len(layers)} decoder layers for num_hidden_layers={config.num_hidden_layers}"
    return None


@torch.inference_mode()
def numbers(model: Any) -> str | None:
    """None where the fast path's logits equal the model's own forward pass on a probe input, else the gap.

    The probe goes through what a guard call does: a shared prefix, rows of different lengths stacked on it with
    spare slots, a long first chunk (right-padded, split attention on the CPU), a rejected draft's slots masked, and
    two batches in one short decoding pass.
    """
    vocab = int(model.config.vocab_size)
    gen = torch.Generator().manual_seed(0)

    def tokens(n: int) -> list[int]:
        return torch.randint(1, vocab, (n,), generator=gen).tolist()

    prefix, rows = tokens(12), [tokens(SPLIT_MIN + 6), tokens(SPLIT_MIN + 2)]
    base, _ = extend(model, None, [prefix], pad_id=0, keep=0)
    cache = gather_rows([(base, [0, 0])], room=SPLIT_MIN + 16)
    cache, first = extend(model, cache, rows, pad_id=0, keep=2)
    cache.drop_last_slots(0, 1)  # a rejected draft
    histories = [prefix + rows[0][:-1], prefix + rows[1]]
    other_ids = tokens(5)
    other, _ = extend(model, None, [other_ids], pad_id=0, keep=0)
    feeds = [[tokens(2), tokens(3)], [tokens(1)]]
    _, hidden = extend_batches(model, [cache, other], feeds, [2, 1], pad_id=0)
    head = model.get_output_embeddings()
    ours = [first[0, -1], first[1], head(hidden[0][0]), head(hidden[0][1]), head(hidden[1][0])]
    full = [
        prefix + rows[0],
        prefix + rows[1],
        histories[0] + feeds[0][0],
        histories[1] + feeds[0][1],
        other_ids + feeds[1][0],
    ]
    keeps = [1, 2, 2, 2, 1]
    worst = 0.0
    for mine, ids, keep in zip(ours, full, keeps, strict=True):
        reference = model(input_ids=torch.tensor([ids], device=model.device)).logits[0, -keep:].float()
        mine = mine.float().reshape(reference.shape)
        worst = max(worst, float((mine - reference).abs().max() / reference.abs().max().clamp(min=1.0)))
    if not worst <= TOLERANCE[model.dtype]:  # (NaN fails too)
        return f"its logits differ from the model's own by {worst:.2g} (relative; allowed {TOLERANCE[model.dtype]:g})"
    return None


def probe(model: Any) -> str | None:
    """None where `rewards.engine.rows.RowsEngine` may run ``model``, else the reason it may not (`structure`,
    then `numbers`; an exception on the way is a reason too).

    Example:
        >>> from transformers import Qwen3Config, Qwen3ForCausalLM
        >>> model = Qwen3ForCausalLM(Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64,
        ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16)).eval()
        >>> probe(model) is None
        True
    """
    try:
        return structure(model) or numbers(model)
    except Exception as exc:  # any failure of the fast path on the probe rules it out
        return f"the probe raised {type(exc).__name__}: {exc}"
