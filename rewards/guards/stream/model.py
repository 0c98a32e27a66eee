"""Qwen3Guard-Stream as a plain PyTorch module on transformers' `Qwen3Model`, loaded strictly from the released files.

No remote code: the backbone is transformers' own `Qwen3Model` (registered as ``model``, its final norm applied),
and the two head pairs are rebuilt from the checkpoint's tensors. Checkpoint layout (as released, and as vLLM's and
SGLang's ``Qwen3ForGuardModel`` read it):

- ``model.*``: the Qwen3 backbone;
- ``risk_level_category_pre.weight`` (inner × hidden, no bias), ``risk_level_category_layernorm.weight`` (RMSNorm,
  inner), ``risk_level_head.weight`` (3 × inner), ``category_head.weight`` (8 × inner): the answer heads;
- the same four prefixed ``query_``: the prompt heads (9 categories, with Jailbreak).

For every token: ``x = RMSNorm(W_pre · h)``, ``risk = W_risk · x``, ``category = W_cat · x`` (no activation, no
bias). There is no ``lm_head``. Risk index 0 is Safe, 1 Unsafe, 2 Controversial unless the config says otherwise.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from rewards.devices import resolve_dtype
from rewards.verdict import CATEGORIES, SAFETY_LABELS

logger = logging.getLogger(__name__)

HEAD_PREFIXES: tuple[str, ...] = ("", "query_")
HEAD_PARTS: tuple[str, ...] = (
    "risk_level_category_pre",
    "risk_level_category_layernorm",
    "risk_level_head",
    "category_head",
)
# The label maps the official evaluation script (QwenLM/Qwen3Guard eval/eval_stream.py) hard-codes; used only when
# the checkpoint's config.json has no ``*_map`` entries of its own.
DEFAULT_RISK_LEVELS: tuple[str, ...] = ("Safe", "Unsafe", "Controversial")
DEFAULT_RESPONSE_CATEGORIES: tuple[str, ...] = (
    "Violent",
    "Sexual Content or Sexual Acts",
    "Suicide & Self-Harm",
    "Politically Sensitive Topics",
    "PII",
    "Copyright Violation",
    "Non-violent Illegal Acts",
    "Unethical Acts",
)
DEFAULT_QUERY_CATEGORIES: tuple[str, ...] = (*DEFAULT_RESPONSE_CATEGORIES, "Jailbreak")
# Tensors a re-export may carry that Stream never reads (tied generation head).
IGNORED_TENSORS: frozenset[str] = frozenset({"lm_head.weight"})

_LABELS = {label.lower(): label for label in SAFETY_LABELS}
_CATEGORY_LOOKUP = {c.lower(): c for c in CATEGORIES}


class CheckpointMismatchError(ValueError):
    """The files are not a Qwen3Guard-Stream checkpoint in the released layout."""


class StreamLogits(NamedTuple):
    """Head outputs for a run of tokens, each ``[..., n_labels]``."""

    risk: torch.Tensor
    category: torch.Tensor
    query_risk: torch.Tensor
    query_category: torch.Tensor


@dataclass(frozen=True)
class StreamLabels:
    """Names of the head outputs by index: risk levels (Safe/Unsafe/Controversial) and categories.

    Example:
        >>> labels = StreamLabels.from_config({}, n_category=8, n_query_category=9)
        >>> labels.risk, labels.query_category[-1]
        (('Safe', 'Unsafe', 'Controversial'), 'Jailbreak')
    """

    risk: tuple[str, ...] = DEFAULT_RISK_LEVELS
    category: tuple[str, ...] = DEFAULT_RESPONSE_CATEGORIES
    query_risk: tuple[str, ...] = DEFAULT_RISK_LEVELS
    query_category: tuple[str, ...] = DEFAULT_QUERY_CATEGORIES

    @classmethod
    def from_config(cls, config: Any, *, n_category: int, n_query_category: int, n_risk: int = 3) -> StreamLabels:
        """Read ``response_risk_level_map`` & co. from a config (object or dict), else use the documented defaults."""
        get = config.get if isinstance(config, dict) else (lambda key, default=None: getattr(config, key, default))
        maps = {
            "risk": ("response_risk_level_map", DEFAULT_RISK_LEVELS, n_risk, True),
            "category": ("response_category_map", DEFAULT_RESPONSE_CATEGORIES, n_category, False),
            "query_risk": ("query_risk_level_map", DEFAULT_RISK_LEVELS, n_risk, True),
            "query_category": ("query_category_map", DEFAULT_QUERY_CATEGORIES, n_query_category, False),
        }
        out = {}
        for field, (key, default, size, is_risk) in maps.items():
            raw = get(key, None)
            names = _read_map(key, raw, size) if raw else default
            if len(names) != size:
                raise CheckpointMismatchError(f"{key} has {len(names)} labels but the checkpoint's head has {size}")
            out[field] = tuple(_risk_label(key, n) for n in names) if is_risk else tuple(map(_category, names))
        return cls(**out)


def label_distribution(logits: torch.Tensor, names: tuple[str, ...]) -> dict[str, float]:
    """Softmax of one token's logits as ``{label: probability}``.

    Example:
        >>> label_distribution(torch.tensor([0.0, 0.0, -float("inf")]), DEFAULT_RISK_LEVELS)
        {'Safe': 0.5, 'Unsafe': 0.5, 'Controversial': 0.0}
    """
    probs = torch.softmax(logits.float(), dim=-1).tolist()
    return {name: float(p) for name, p in zip(names, probs, strict=True)}


def _read_map(key: str, raw: Any, size: int) -> tuple[str, ...]:
    if isinstance(raw, (list, tuple)):
        return tuple(str(v) for v in raw)
    if not isinstance(raw, dict):
        raise CheckpointMismatchError(f"{key} must map indices to names, got {type(raw).__name__}")
    try:
        by_index = {int(k): str(v) for k, v in raw.items()}
    except ValueError as err:
        raise CheckpointMismatchError(f"{key} has a non-integer index: {err}") from None
    if sorted(by_index) != list(range(len(by_index))):
        raise CheckpointMismatchError(f"{key} must name indices 0..{size - 1}, got {sorted(by_index)}")
    return tuple(by_index[i] for i in range(len(by_index)))


def _risk_label(key: str, name: str) -> str:
    label = _LABELS.get(name.strip().lower())
    if label is None:
        raise CheckpointMismatchError(f"{key} names {name!r}, which is not one of {SAFETY_LABELS}")
    return label


def _category(name: str) -> str:
    clean = name.strip().strip("\"'").strip()
    return _CATEGORY_LOOKUP.get(clean.lower(), clean)


class Qwen3GuardStreamModel(nn.Module):
    """Backbone (``model``: transformers' `Qwen3Model`) plus the answer and prompt head pairs.

    Args:
        config: a `Qwen3Config` carrying ``guard_inner_size``, ``num_risk_level``, ``num_category``,
            ``num_query_risk_level`` and ``num_query_category``.

    Example:
        >>> from transformers import Qwen3Config
        >>> config = Qwen3Config(
        ...     vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        ...     num_attention_heads=2, num_key_value_heads=1, head_dim=16, guard_inner_size=16,
        ...     num_risk_level=3, num_category=8, num_query_risk_level=3, num_query_category=9,
        ... )
        >>> logits = Qwen3GuardStreamModel(config)(torch.tensor([[1, 2, 3]]))
        >>> tuple(logits.risk.shape), tuple(logits.query_category.shape)  # [batch, tokens, labels]
        ((1, 3, 3), (1, 3, 9))
    """

    def __init__(self, config: Any):
        super().__init__()
        from transformers.models.qwen3.modeling_qwen3 import Qwen3Model, Qwen3RMSNorm

        self.config = config
        self.model = Qwen3Model(config)
        inner, eps = config.guard_inner_size, config.rms_norm_eps
        sizes = {
            "": (config.num_risk_level, config.num_category),
            "query_": (config.num_query_risk_level, config.num_query_category),
        }
        for prefix, (n_risk, n_category) in sizes.items():
            self.add_module(f"{prefix}risk_level_category_pre", nn.Linear(config.hidden_size, inner, bias=False))
            self.add_module(f"{prefix}risk_level_category_layernorm", Qwen3RMSNorm(inner, eps=eps))
            self.add_module(f"{prefix}risk_level_head", nn.Linear(inner, n_risk, bias=False))
            self.add_module(f"{prefix}category_head", nn.Linear(inner, n_category, bias=False))

    def _pair(self, prefix: str, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = getattr(self, f"{prefix}risk_level_category_layernorm")(
            getattr(self, f"{prefix}risk_level_category_pre")(hidden)
        )
        return getattr(self, f"{prefix}risk_level_head")(x), getattr(self, f"{prefix}category_head")(x)

    def heads(self, hidden: torch.Tensor) -> StreamLogits:
        """Both head pairs on final hidden states ``[..., hidden]`` (the backbone's norm already applied)."""
        risk, category = self._pair("", hidden)
        query_risk, query_category = self._pair("query_", hidden)
        return StreamLogits(risk, category, query_risk, query_category)

    def backbone(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
    ) -> torch.Tensor:
        """Final hidden states ``[batch, seq, hidden]``; with ``past_key_values`` the cache is extended in place."""
        cache = {cache_keyword(self.model): past_key_values} if past_key_values is not None else {}
        with attention_backends(input_ids.device):
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=past_key_values is not None,
                **cache,
            )
        return out.last_hidden_state

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
    ) -> StreamLogits:
        return self.heads(self.backbone(input_ids, attention_mask, position_ids, past_key_values))


def cache_keyword(model: nn.Module) -> str:
    """The keyword a transformers model's ``forward`` takes its key/value cache by: ``cache`` in recent releases,
    ``past_key_values`` before (still accepted, with a deprecation warning, for a while).

    Example:
        >>> cache_keyword(torch.nn.Linear(1, 1))  # a forward that takes neither: the older name
        'past_key_values'
    """
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def attention_backends(device: torch.device) -> contextlib.AbstractContextManager:
    """SDPA kernels for the guard: on CUDA, everything but cuDNN (no change elsewhere).

    cuDNN attention builds an execution plan per key length, and a stream's key length changes at every token: the
    planning's host time per layer and token dwarfs the step's GPU time.
    """
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


# -- loading ------------------------------------------------------------------------------------------------------


def resolve_checkpoint(model: str | Path, revision: str | None = None) -> Path:
    """A local folder as is; otherwise a hub id, fetched (or read from the cache) with `huggingface_hub`."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{model} is a file; pass the checkpoint's folder (config.json + *.safetensors)")
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.txt", "*.jinja", "tokenizer*"]
    return Path(snapshot_download(str(model), revision=revision, allow_patterns=patterns))


def checkpoint_shards(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder (sharded or not).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     (Path(tmp) / "model.safetensors").touch()
        ...     [path.name for path in checkpoint_shards(Path(tmp))]
        ['model.safetensors']
    """
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [folder / name for name in sorted(set(weight_map.values()))]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    found = sorted(folder.glob("*.safetensors"))
    if found:
        return found
    raise CheckpointMismatchError(f"no *.safetensors weights in {folder} (only safetensors checkpoints are read)")


def _tensor_shapes(shards: list[Path]) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for shard in shards:
        with safe_open(str(shard), framework="pt") as f:
            for name in f.keys():
                shapes[name] = tuple(f.get_slice(name).get_shape())
    return shapes


def stream_config(folder: Path, shapes: dict[str, tuple[int, ...]]) -> Any:
    """The backbone config from config.json, with the head sizes checked against the tensors themselves."""
    from transformers import Qwen3Config

    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointMismatchError(f"no config.json in {folder}")
    raw = json.loads(config_file.read_text())
    if raw.get("model_type") not in (None, "qwen3"):
        raise CheckpointMismatchError(f"expected a Qwen3 backbone (model_type 'qwen3'), got {raw.get('model_type')!r}")
    missing = [f"{p}{part}.weight" for p in HEAD_PREFIXES for part in HEAD_PARTS if f"{p}{part}.weight" not in shapes]
    if missing:
        raise CheckpointMismatchError(
            f"{folder} is not a Qwen3Guard-Stream checkpoint: missing head tensors {missing} "
            "(a Qwen3Guard-Gen or plain Qwen3 checkpoint has no classification heads)"
        )
    inferred = {
        "guard_inner_size": shapes["risk_level_category_pre.weight"][0],
        "num_risk_level": shapes["risk_level_head.weight"][0],
        "num_category": shapes["category_head.weight"][0],
        "num_query_risk_level": shapes["query_risk_level_head.weight"][0],
        "num_query_category": shapes["query_category_head.weight"][0],
    }
    for key, size in inferred.items():
        if key in raw and raw[key] != size:
            raise CheckpointMismatchError(
                f"config.json says {key}={raw[key]} but the checkpoint's tensors give {size}"
            )
    config = Qwen3Config.from_pretrained(str(folder))
    for key, size in inferred.items():
        setattr(config, key, size)
    for key in ("num_risk_level", "num_query_risk_level"):
        if inferred[key] != 3:
            raise CheckpointMismatchError(f"{key} must be 3 (Safe, Unsafe, Controversial), got {inferred[key]}")
    return config


def load_stream_model(
    model: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "auto",
    revision: str | None = None,
    attn_implementation: str = "sdpa",
) -> tuple[Qwen3GuardStreamModel, StreamLabels, Path]:
    """Build the module, load every tensor strictly, and read the label maps.

    Every tensor of the module must be in the checkpoint with the same shape, and the checkpoint may hold nothing
    else (save ``lm_head.weight``, which Stream never reads); anything off raises `CheckpointMismatchError`.
    """
    from safetensors.torch import load_file
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

    folder = resolve_checkpoint(model, revision)
    shards = checkpoint_shards(folder)
    shapes = _tensor_shapes(shards)
    config = stream_config(folder, shapes)
    config._attn_implementation = attn_implementation
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch_dtype = resolve_dtype(dtype, device)

    with torch.device("meta"):
        net = Qwen3GuardStreamModel(config)
    expected = {name: tuple(t.shape) for name, t in net.state_dict().items()}
    check_tensors(expected, shapes, where=str(folder))
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update({k: v for k, v in load_file(str(shard)).items() if k not in IGNORED_TENSORS})
    net.load_state_dict(state, strict=True, assign=True)
    del state
    # Rotary frequencies are computed, not stored: rebuild them off the meta device, and again after the cast so
    # that they stay float32 as transformers keeps them.
    net.model.rotary_emb = Qwen3RotaryEmbedding(config)
    net.to(device=device, dtype=torch_dtype)
    net.model.rotary_emb = Qwen3RotaryEmbedding(config).to(device)
    meta = [name for name, t in [*net.named_parameters(), *net.named_buffers()] if t.is_meta]
    if meta:
        raise CheckpointMismatchError(f"tensors left unloaded: {meta[:5]}")
    net.eval().requires_grad_(False)
    labels = StreamLabels.from_config(
        config, n_category=config.num_category, n_query_category=config.num_query_category
    )
    logger.info("loaded Qwen3Guard-Stream from %s on %s (%s)", folder, device, torch_dtype)
    return net, labels, folder


def check_tensors(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], *, where: str) -> None:
    """Raise `CheckpointMismatchError` listing missing, unexpected and mis-shaped tensors.

    Example:
        >>> check_tensors({"w": (2, 3)}, {"w": (2, 3), "lm_head.weight": (9, 2)}, where="ckpt")  # lm_head is ignored
        >>> try:
        ...     check_tensors({"w": (2, 3)}, {"w": (3, 2), "v": (1,)}, where="ckpt")
        ... except CheckpointMismatchError as err:
        ...     print(str(err).split("; ", 1)[1])
        unexpected: ['v']; wrong shape: ['w: checkpoint (3, 2) vs model (2, 3)']
    """
    found = {k: v for k, v in found.items() if k not in IGNORED_TENSORS}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shaped = sorted(
        f"{k}: checkpoint {found[k]} vs model {expected[k]}"
        for k in set(expected) & set(found)
        if found[k] != expected[k]
    )
    if missing or unexpected or shaped:
        parts = []
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shaped)):
            if items:
                more = f" (+{len(items) - 8} more)" if len(items) > 8 else ""
                parts.append(f"{title}: {items[:8]}{more}")
        raise CheckpointMismatchError(f"{where} does not match the Qwen3Guard-Stream layout; " + "; ".join(parts))
