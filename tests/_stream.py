"""Test helpers for Qwen3Guard-Stream: tiny checkpoints in the released layout, and a plain reference forward.

`write_tiny_stream_checkpoint` writes ``config.json`` + ``model.safetensors`` (+ the real Qwen3 tokenizer files)
exactly as the released Stream checkpoints are laid out: ``model.*`` for the backbone and the eight head tensors.
With ``unsafe_ids`` / ``controversial_ids`` its weights are set so that the answer risk head labels a token Unsafe
(resp. Controversial) exactly when its id is in the set: the embedding of those ids carries a large component on a
dimension the decoder layers neither read nor write, the final norm keeps it, and the heads read that dimension.

`reference_logits` recomputes every head output from the files with plain float64 tensor code (embedding, RMSNorm,
per-head q/k norm, rotary embedding, grouped causal attention, SiLU MLP, final norm, heads), independent of
transformers and of `rewards.guards.stream.model`.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

VOCAB = 151669  # len() of the real Qwen3 tokenizer
TINY = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 128,
}
INNER = 32
FLAG_DIMS = {"unsafe": 0, "controversial": 1, "constant": 2, "query_unsafe": 3}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Run a module's tests on one torch thread, then restore the setting.

    On this project's 2-core machines a multi-threaded GEMM of a few rows costs ~45 ms (thread wake-up), against
    microseconds on one thread; tiny-model tests are all such GEMMs. Import this fixture into a test module to use it.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(vocab_size: int = VOCAB, **overrides) -> dict:
    config = {
        "architectures": ["Qwen3ForGuardModel"],
        "auto_map": {"AutoModel": "modeling_qwen3_guard.Qwen3ForGuardModel"},
        "model_type": "qwen3",
        **TINY,
        "vocab_size": vocab_size,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000,
        "rope_scaling": None,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "attention_bias": False,
        "hidden_act": "silu",
        "guard_inner_size": INNER,
        "num_risk_level": 3,
        "num_category": 8,
        "num_query_risk_level": 3,
        "num_query_category": 9,
        "response_risk_level_map": {"0": "Safe", "1": "Unsafe", "2": "Controversial"},
        "query_risk_level_map": {"0": "Safe", "1": "Unsafe", "2": "Controversial"},
        # Written as config.json holds it (string index -> name), not taken from the model code's defaults, so
        # that label tests check the code against the file; the rigged tests rely on 0 Violent, 6 Non-violent.
        "response_category_map": {
            "0": "Violent",
            "1": "Sexual Content or Sexual Acts",
            "2": "Suicide & Self-Harm",
            "3": "Politically Sensitive Topics",
            "4": "PII",
            "5": "Copyright Violation",
            "6": "Non-violent Illegal Acts",
            "7": "Unethical Acts",
        },
    }
    config["query_category_map"] = {**config["response_category_map"], "8": "Jailbreak"}
    config.update(overrides)
    return config


def _backbone_shapes(c: dict) -> dict[str, tuple[int, ...]]:
    h, d, i = c["hidden_size"], c["head_dim"], c["intermediate_size"]
    nq, nkv = c["num_attention_heads"] * d, c["num_key_value_heads"] * d
    shapes = {"model.embed_tokens.weight": (c["vocab_size"], h), "model.norm.weight": (h,)}
    for layer in range(c["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        shapes.update(
            {
                p + "input_layernorm.weight": (h,),
                p + "post_attention_layernorm.weight": (h,),
                p + "self_attn.q_proj.weight": (nq, h),
                p + "self_attn.k_proj.weight": (nkv, h),
                p + "self_attn.v_proj.weight": (nkv, h),
                p + "self_attn.o_proj.weight": (h, nq),
                p + "self_attn.q_norm.weight": (d,),
                p + "self_attn.k_norm.weight": (d,),
                p + "mlp.gate_proj.weight": (i, h),
                p + "mlp.up_proj.weight": (i, h),
                p + "mlp.down_proj.weight": (h, i),
            }
        )
    return shapes


def _random(shape: tuple[int, ...], gen: torch.Generator, name: str) -> torch.Tensor:
    if len(shape) == 1:  # norm weights
        return 1.0 + 0.1 * torch.randn(shape, generator=gen)
    if "embed_tokens" in name:
        return torch.randn(shape, generator=gen)
    return torch.randn(shape, generator=gen) / math.sqrt(shape[1])


def write_tiny_stream_checkpoint(
    folder: Path,
    *,
    tokenizer_dir: Path | None = None,
    seed: int = 0,
    unsafe_ids: tuple[int, ...] = (),
    controversial_ids: tuple[int, ...] = (),
    query_unsafe_ids: tuple[int, ...] = (),
    unsafe_category: int = 0,
    controversial_category: int = 6,
    query_category: int = 8,
    config_overrides: dict | None = None,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    drop_tensors: tuple[str, ...] = (),
) -> Path:
    """A tiny Qwen3Guard-Stream checkpoint in the released layout (random, or rigged by token id; see module doc)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = tiny_config(**(config_overrides or {}))
    gen = torch.Generator().manual_seed(seed)
    tensors = {name: _random(shape, gen, name) for name, shape in _backbone_shapes(config).items()}
    h, inner = config["hidden_size"], config["guard_inner_size"]
    sizes = {"": (3, config["num_category"]), "query_": (3, config["num_query_category"])}
    for prefix, (n_risk, n_cat) in sizes.items():
        tensors[f"{prefix}risk_level_category_pre.weight"] = torch.randn((inner, h), generator=gen) / math.sqrt(h)
        tensors[f"{prefix}risk_level_category_layernorm.weight"] = 1.0 + 0.1 * torch.randn((inner,), generator=gen)
        tensors[f"{prefix}risk_level_head.weight"] = torch.randn((n_risk, inner), generator=gen) / math.sqrt(inner)
        tensors[f"{prefix}category_head.weight"] = torch.randn((n_cat, inner), generator=gen) / math.sqrt(inner)
    if unsafe_ids or controversial_ids or query_unsafe_ids:
        _rig(
            tensors,
            config,
            unsafe_ids,
            controversial_ids,
            query_unsafe_ids,
            unsafe_category,
            controversial_category,
            query_category,
        )
    for name in drop_tensors:
        tensors.pop(name)
    tensors.update(extra_tensors or {})
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    if tokenizer_dir is not None:
        for file in Path(tokenizer_dir).iterdir():
            shutil.copy(file, folder / file.name)
    return folder


def _rig(tensors, config, unsafe_ids, controversial_ids, query_unsafe_ids, unsafe_cat, controversial_cat, query_cat):
    u, c, k, q = (FLAG_DIMS[n] for n in ("unsafe", "controversial", "constant", "query_unsafe"))
    flag = slice(0, 4)
    emb = tensors["model.embed_tokens.weight"]
    emb[:, flag] = 0.0
    emb[:, k] = 1.0
    for ids, dim in ((unsafe_ids, u), (controversial_ids, c), (query_unsafe_ids, q)):
        emb[list(ids), dim] = 50.0
    for name, t in tensors.items():
        if any(part in name for part in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")):
            t[:, flag] = 0.0  # layers never read the flag dimensions...
        elif "o_proj" in name or "down_proj" in name:
            t[flag, :] = 0.0  # ...nor write them, so they reach the final norm unchanged
    tensors["model.norm.weight"][flag] = 1.0
    inner = config["guard_inner_size"]

    def pair(prefix, reads, risk_rows, category_rows, n_cat):
        pre = torch.zeros((inner, config["hidden_size"]))
        for row, dim in enumerate(reads):
            pre[row, dim] = 1.0
        risk = torch.zeros((3, inner))
        for label, row in risk_rows.items():
            risk[label, row] = 1.0 if label == 0 else 2.0
        cat = torch.zeros((n_cat, inner))
        for index, row in category_rows.items():
            cat[index, row] = 1.0
        tensors[f"{prefix}risk_level_category_pre.weight"] = pre
        tensors[f"{prefix}risk_level_category_layernorm.weight"] = torch.ones(inner)
        tensors[f"{prefix}risk_level_head.weight"] = risk
        tensors[f"{prefix}category_head.weight"] = cat

    # pre rows: 0 <- unsafe dim, 1 <- controversial dim, 2 <- constant dim; Safe reads row 2, Unsafe row 0, ...
    pair("", (u, c, k), {0: 2, 1: 0, 2: 1}, {unsafe_cat: 0, controversial_cat: 1}, config["num_category"])
    pair("query_", (q, q, k), {0: 2, 1: 0}, {query_cat: 0}, config["num_query_category"])


def reference_logits(folder: Path, ids: list[int]) -> dict[str, torch.Tensor]:
    """Every head's logits for every position of ``ids``, from the files, in float64 with plain tensor code.

    Written out on purpose (explicit softmax, SiLU and rotation, one attention head at a time) rather than with the
    library calls the model uses, so that a mistake shared by the two cannot hide.
    """
    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text())
    w = {k: v.double() for k, v in load_file(str(folder / "model.safetensors")).items()}
    n, d, eps = len(ids), cfg["head_dim"], cfg["rms_norm_eps"]
    n_heads, n_kv, half = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"] // 2

    def rms(v, weight):
        return v / torch.sqrt((v * v).mean(-1, keepdim=True) + eps) * weight

    def linear(v, name):  # checkpoint weights are [out, in]
        return v @ w[name].T

    def softmax(scores):
        e = torch.exp(scores - scores.max(-1, keepdim=True).values)
        return e / e.sum(-1, keepdim=True)

    # Rotary embedding, rotate-half layout: dimension i turns together with i + d/2, by angle pos * theta^(-2i/d).
    freq = cfg["rope_theta"] ** (-2.0 * torch.arange(half, dtype=torch.float64) / d)
    angle = torch.arange(n, dtype=torch.float64)[:, None] * freq[None, :]
    cos, sin = angle.cos(), angle.sin()

    def rotate(t):  # [n, d]
        a, b = t[:, :half], t[:, half:]
        return torch.cat([a * cos - b * sin, b * cos + a * sin], -1)

    future = torch.ones(n, n, dtype=torch.bool).triu(1)
    x = w["model.embed_tokens.weight"][ids]
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        h = rms(x, w[p + "input_layernorm.weight"])
        q = rms(linear(h, p + "self_attn.q_proj.weight").view(n, n_heads, d), w[p + "self_attn.q_norm.weight"])
        k = rms(linear(h, p + "self_attn.k_proj.weight").view(n, n_kv, d), w[p + "self_attn.k_norm.weight"])
        v = linear(h, p + "self_attn.v_proj.weight").view(n, n_kv, d)
        outputs = []
        for head in range(n_heads):
            kv = head // (n_heads // n_kv)  # grouped-query attention: consecutive query heads share a kv head
            scores = rotate(q[:, head]) @ rotate(k[:, kv]).T / math.sqrt(d)
            scores[future] = float("-inf")
            outputs.append(softmax(scores) @ v[:, kv])
        x = x + linear(torch.cat(outputs, -1), p + "self_attn.o_proj.weight")
        h = rms(x, w[p + "post_attention_layernorm.weight"])
        gate, up = linear(h, p + "mlp.gate_proj.weight"), linear(h, p + "mlp.up_proj.weight")
        x = x + linear(gate / (1.0 + torch.exp(-gate)) * up, p + "mlp.down_proj.weight")
    x = rms(x, w["model.norm.weight"])
    out = {}
    for prefix in ("", "query_"):
        pair = f"{prefix}risk_level_"
        y = rms(linear(x, pair + "category_pre.weight"), w[pair + "category_layernorm.weight"])
        out[f"{prefix}risk"] = linear(y, pair + "head.weight")
        out[f"{prefix}category"] = linear(y, f"{prefix}category_head.weight")
    return out
