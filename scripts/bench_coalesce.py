"""Per-sample reward calls, coalesced, against one batched call: the cost of verl's and OpenRLHF's calling pattern.

verl 0.9's reward loop calls the reward once per sample, many at a time; OpenRLHF posts one sample per request. Our
adapters coalesce those calls into guard batches (`rewards.coalesce.JudgeCoalescer`). This script times, in one
process on the same reward and the same 256 GRPO-like samples (32 toy prompts x 8 answers, a third with a thinking
block), interleaved ``--rounds`` times:

1. batched: ONE ``reward.judge(prompts, completions)`` call of 256 samples (what TRL does; the baseline);
2. threads: 256 threads, each calling ``coalescer.judge_one`` for one sample at once (verl's sync
   ``compute_score`` on executor threads, a threaded server);
3. asyncio: 256 coroutines awaiting ``coalescer.ajudge_one`` on one event loop (verl's ``compute_score_async``,
   the OpenRLHF server);
4. uncoalesced (``--uncoalesced``): 256 one-sample ``reward.judge`` calls in a row (what per-sample calls cost
   without coalescing).

Reward: the hybrid reward (or ``--reward guard_only``) on the toy guard and toy helpfulness model in-process (Qwen3
architecture, hidden size 64, 2 layers, the real Qwen3 tokenizer; trained to answer in Qwen3Guard-Gen's verdict
format, so verdicts end as a real guard's do). Throughput = samples / wall seconds; the last line reads
``coalesced/batched: threads X%, asyncio Y%``.

    python scripts/bench_coalesce.py --rounds 5 --output coalesce.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def samples(n: int) -> tuple[list[str], list[str]]:
    """``n`` (prompt, completion) pairs: groups of 8 answers per toy prompt, a third with a thinking block."""
    from safe_rl.toy.data import toy_answers, toy_prompts

    prompts, completions = [], []
    for p in toy_prompts():
        answers = toy_answers(p)
        for k in range(8):
            answer = answers[k % len(answers)].text
            completion = f"<think>\nDraft {k}: is this request safe?\n</think>\n\n{answer}" if k % 3 == 0 else answer
            prompts.append(p.text)
            completions.append(completion)
            if len(prompts) == n:
                return prompts, completions
    raise ValueError(f"only {len(prompts)} toy samples")


def batched(reward, prompts, completions) -> float:
    started = time.perf_counter()
    details = reward.judge(prompts, completions)
    assert all(d.reward is not None for d in details), [d.failure for d in details if d.reward is None][:3]
    return time.perf_counter() - started


def threads(coalescer, prompts, completions, pool) -> float:
    gate = threading.Barrier(len(prompts) + 1)

    def one(i: int):
        gate.wait()
        return coalescer.judge_one(prompts[i], completions[i])

    futures = [pool.submit(one, i) for i in range(len(prompts))]
    gate.wait()
    started = time.perf_counter()
    details = [f.result() for f in futures]
    elapsed = time.perf_counter() - started
    assert all(d.reward is not None for d in details)
    return elapsed


def coroutines(coalescer, prompts, completions) -> float:
    async def main():
        started = time.perf_counter()
        details = await asyncio.gather(
            *(coalescer.ajudge_one(p, c) for p, c in zip(prompts, completions, strict=True))
        )
        assert all(d.reward is not None for d in details)
        return time.perf_counter() - started

    return asyncio.run(main())


def uncoalesced(reward, prompts, completions) -> float:
    started = time.perf_counter()
    for p, c in zip(prompts, completions, strict=True):
        reward.judge([p], [c])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reward", choices=("hybrid", "guard_only"), default="hybrid")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--window-ms", type=float, default=5.0, help="coalescing window")
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--uncoalesced", action="store_true", help="also time one-sample calls without coalescing")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()

    import torch

    from rewards import HelpfulnessRM, JudgeCoalescer, Qwen3GuardGen, get_reward
    from rewards.warmup import load_reward_models
    from safe_rl.toy import build_toy_models

    toy = build_toy_models()
    guard = Qwen3GuardGen(str(toy.guard), device="cpu")
    extra = {"helpfulness": HelpfulnessRM(str(toy.helpfulness), device="cpu")} if args.reward == "hybrid" else {}
    reward = load_reward_models(get_reward(args.reward, guard=guard, unjudged_limit=None, **extra))
    coalescer = JudgeCoalescer(reward, window=args.window_ms / 1000, max_batch=args.max_batch)
    prompts, completions = samples(args.samples)
    batched(reward, prompts, completions)  # warm-up: allocator, workspace, tokenizer threads
    coroutines(coalescer, prompts[:32], completions[:32])

    times: dict[str, list[float]] = {"batched": [], "threads": [], "asyncio": []}
    batches: dict[str, list[int]] = {"threads": [], "asyncio": []}
    if args.uncoalesced:
        times["uncoalesced"] = []
    with ThreadPoolExecutor(args.samples) as pool:
        for _ in range(args.rounds):
            times["batched"].append(batched(reward, prompts, completions))
            before = coalescer.batches
            times["threads"].append(threads(coalescer, prompts, completions, pool))
            batches["threads"].append(coalescer.batches - before)
            before = coalescer.batches
            times["asyncio"].append(coroutines(coalescer, prompts, completions))
            batches["asyncio"].append(coalescer.batches - before)
            if args.uncoalesced:
                times["uncoalesced"].append(uncoalesced(reward, prompts, completions))

    median = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "torch_threads": torch.get_num_threads(),
        "reward": args.reward,
        "samples": args.samples,
        "window_ms": args.window_ms,
        "max_batch": args.max_batch,
        "seconds": times,
        "median_seconds": median,
        "samples_per_second": {k: args.samples / v for k, v in median.items()},
        "ratio_to_batched": {k: median["batched"] / v for k, v in median.items()},
        "coalesced_batches_per_round": batches,
    }
    print(json.dumps(result, indent=2))
    if args.output:
        args.output.write_text(json.dumps(result, indent=2))
    ratio = result["ratio_to_batched"]
    print(f"coalesced/batched: threads {ratio['threads']:.0%}, asyncio {ratio['asyncio']:.0%}")


if __name__ == "__main__":
    main()
