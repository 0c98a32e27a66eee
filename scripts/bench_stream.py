"""Cost per token of Qwen3Guard-Stream moderation: our key/value-cache session vs re-reading the whole sequence.

For each length N, "ours" is the time to judge one more token when the stream already holds N tokens
(`rewards.guards.stream.session.StreamSession.feed` with one token, head logits copied back to the host, as a
stopping criterion needs them; on CUDA the step is a replayed CUDA graph unless ``--no-graphs``); "naive" is what
the official ``stream_moderate_from_ids`` does per token: a full forward over all N tokens, then the heads of the
last one. Same model, same process, random weights (timing does not depend on them).

Shapes: ``cpu`` = Qwen3-0.6B's layer geometry with 2 layers (so a CPU run ends in a few minutes); ``0.6b`` =
Qwen3Guard-Stream-0.6B (hidden 1024, 28 layers, 16/8 heads, head_dim 128, MLP 3072, head inner size 512); ``4b`` =
Qwen3Guard-Stream-4B's backbone (hidden 2560, 36 layers, 32/8 heads, head_dim 128, MLP 9728; inner size 512 assumed,
the heads cost well under 0.1% of a token either way).

    python scripts/bench_stream.py --output bench_stream_cpu.json
    python scripts/bench_stream.py --device cuda --shape 0.6b --output bench_stream_0.6b.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {
    "cpu": {"hidden_size": 1024, "num_hidden_layers": 2, "num_attention_heads": 16, "num_key_value_heads": 8,
            "head_dim": 128, "intermediate_size": 3072, "guard_inner_size": 512},
    "0.6b": {"hidden_size": 1024, "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
             "head_dim": 128, "intermediate_size": 3072, "guard_inner_size": 512},
    "4b": {"hidden_size": 2560, "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
           "head_dim": 128, "intermediate_size": 9728, "guard_inner_size": 512},
}  # fmt: skip


def build(shape: str, device, dtype):
    import torch
    from transformers import Qwen3Config

    from rewards.guards.stream.model import Qwen3GuardStreamModel

    config = Qwen3Config(
        vocab_size=151936,
        rms_norm_eps=1e-6,
        rope_theta=1000000,
        max_position_embeddings=40960,
        tie_word_embeddings=True,
        num_risk_level=3,
        num_category=8,
        num_query_risk_level=3,
        num_query_category=9,
        **SHAPES[shape],
    )
    config._attn_implementation = "sdpa"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            net = Qwen3GuardStreamModel(config)
    finally:
        torch.set_default_dtype(previous)
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

    net.model.rotary_emb = Qwen3RotaryEmbedding(config).to(device)  # float32 frequencies, as when loading
    return net.eval().requires_grad_(False), config


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def time_ours(
    net, device, length: int, tokens: int, batch: int, vocab: int, seed: int, graphs: bool = True
) -> list[float]:
    import torch

    from rewards.guards.stream.session import StreamSession

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, length + tokens + 2), generator=gen).tolist()
    session = StreamSession(net, batch, capacity=length + tokens + 8, static_steps=None if graphs else False)
    session.feed([row[:length] for row in ids])
    for i in range(2):  # warm-up at this length
        session.feed([[row[length + i]] for row in ids])
    times = []
    for i in range(tokens):
        sync(device)
        start = time.perf_counter()
        out = session.feed([[row[length + 2 + i]] for row in ids])
        _ = [int(o.risk.argmax()) for o in out]  # the label a stopping criterion reads
        times.append(time.perf_counter() - start)
    return times


def time_naive(net, device, length: int, steps: int, batch: int, vocab: int, seed: int) -> list[float]:
    import torch

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, length + steps), generator=gen)
    times = []
    for i in range(steps + 1):  # the first step is a warm-up at this length
        x = ids[:, : length + i].to(device)
        sync(device)
        start = time.perf_counter()
        with torch.inference_mode():
            hidden = net.backbone(x)
            risk = net.heads(hidden[:, -1]).risk.float().cpu()
        _ = risk.argmax(-1).tolist()
        elapsed = time.perf_counter() - start
        if i:
            times.append(elapsed)
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None, help="default: cpu on CPU, 0.6b on GPU")
    parser.add_argument("--dtype", default="auto", help="auto = bfloat16 on GPU, float32 on CPU")
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 1024, 4096])
    parser.add_argument("--tokens", type=int, default=32, help="timed single-token feeds per length (ours)")
    parser.add_argument(
        "--naive-steps", type=int, default=None, help="timed full re-reads per length (default 2 CPU, 5 GPU)"
    )
    parser.add_argument("--batch", type=int, default=1, help="streams judged together (rollouts)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-graphs", action="store_true", help="ours without static steps / CUDA graphs")
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    import torch
    import transformers

    from rewards.devices import resolve_dtype

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shape = args.shape or ("cpu" if device.type == "cpu" else "0.6b")
    dtype = resolve_dtype(args.dtype, device)
    naive_steps = args.naive_steps or (2 if device.type == "cpu" else 5)
    net, config = build(shape, device, dtype)
    time_naive(net, device, 16, 1, args.batch, config.vocab_size, 0)  # process-wide warm-up

    rows = []
    for length in sorted(args.lengths):
        ours = time_ours(net, device, length, args.tokens, args.batch, config.vocab_size, length, not args.no_graphs)
        naive = time_naive(net, device, length, naive_steps, args.batch, config.vocab_size, length + 1)
        row = {
            "length": length,
            "ours_ms_per_token": 1e3 * statistics.mean(ours),
            "ours_ms_median": 1e3 * statistics.median(ours),
            "naive_ms_per_token": 1e3 * statistics.mean(naive),
            "naive_ms_median": 1e3 * statistics.median(naive),
        }
        row["speedup"] = row["naive_ms_per_token"] / row["ours_ms_per_token"]
        rows.append(row)
        print(f"  measured length {length}", file=sys.stderr, flush=True)

    first, last = rows[0], rows[-1]
    result = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "shape": shape,
        "config": SHAPES[shape],
        "dtype": str(dtype).replace("torch.", ""),
        "batch": args.batch,
        "cuda_graphs": device.type == "cuda" and not args.no_graphs,
        "threads": torch.get_num_threads(),
        "tokens_timed": args.tokens,
        "naive_steps": naive_steps,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "results": rows,
        "flatness_ours": last["ours_ms_per_token"] / first["ours_ms_per_token"],
        "flatness_naive": last["naive_ms_per_token"] / first["naive_ms_per_token"],
    }
    print(
        f"Qwen3Guard-Stream cost per token, shape {shape}, {result['device_name']}, {result['dtype']}, "
        f"batch {args.batch}, {result['threads']} threads{', CUDA graphs' if result['cuda_graphs'] else ''}"
    )
    print(f"{'length':>7} | {'ours ms/token':>13} | {'naive ms/token':>14} | {'naive/ours':>10}")
    for row in rows:
        print(
            f"{row['length']:>7} | {row['ours_ms_per_token']:>13.2f} | {row['naive_ms_per_token']:>14.2f} | "
            f"{row['speedup']:>9.1f}x"
        )
    print(
        f"flatness ours: {result['flatness_ours']:.2f}x across {first['length']}..{last['length']}; "
        f"naive: {result['flatness_naive']:.2f}x"
    )
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
