"""Session 8 (docs/benchmarks.md): what each deleted piece of the 3b3ec91 engine was worth on a Qwen3Guard-Gen-0.6B-
shaped model with fewer layers, each switched off in turn in one process, timed interleaved.

The code measured is commit 3b3ec91 (``git archive 3b3ec91 | tar -x -C /tmp/old-engine``) with one patch to
``rewards/guards/rows_forward.py`` that lets the run switch its shortened last layer off::

    FULL_LAST = os.environ.get('FULL_LAST') == '1'             # after PIECE_GPU
    attn, last = layer.self_attn, li == len(layers) - 1 and not FULL_LAST
    if FULL_LAST: h = h[read]                                   # before the final norm

Switches: ``full_last`` (the last layer computed at every token), ``plain_head`` (the model's LM head instead of
the blocked one, `lm_head.py`), ``no_workspace`` (``workspace_bytes=0``: fresh memory, `workspace.py`), ``none``.

    python docs/results/session8_engine_pieces.py --layers 8 --prompts 3 --repeats 4
"""

import argparse
import pathlib
import resource
import statistics
import sys
import tempfile
import time

OLD = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--old=")), "/tmp/old-engine")
sys.path[:0] = [OLD, f"{OLD}/scripts"]  # the old tree's `rewards` and bench helpers, ahead of this checkout's

import rewards.guards.lm_head as lm_head  # noqa: E402
import torch  # noqa: E402
from _bench_guard_inputs import (  # noqa: E402
    BENCH_TEMPLATE,
    SHAPES,
    VERDICT,
    ForcedVerdict,
    build_model,
    grpo_step,
    timed,
    tokenizer_dir,
)
from rewards.guards.gen_local import LocalGenBackend  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from rewards.guards import prefix_cache, rows_forward, verdict_decode  # noqa: E402
from rewards.guards.base import dedupe  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--layers", type=int, default=4)
p.add_argument("--prompts", type=int, default=3)
p.add_argument("--repeats", type=int, default=2)
p.add_argument("--names", default="all,full_last,plain_head,no_workspace,none")
p.add_argument("--shape", default="0.6b")
p.add_argument("--old", default=OLD, help="the 3b3ec91 tree, patched (see above)")
a = p.parse_args()
print("rewards from", rows_forward.__file__)
torch.set_grad_enabled(False)
SHAPES["x"] = {**SHAPES[a.shape], "num_hidden_layers": a.layers}
work = pathlib.Path(tempfile.mkdtemp())
tok = AutoTokenizer.from_pretrained(tokenizer_dir(None))
tok.chat_template = BENCH_TEMPLATE
tok.save_pretrained(work / "tok")
model = build_model("x", tok, torch.device("cpu"), torch.float32, 0)
convs = grpo_step(tok, prompts=a.prompts, rollouts=8, seed=0)
forced = ForcedVerdict(tok(VERDICT, add_special_tokens=False)["input_ids"], tok.convert_tokens_to_ids("<|im_end|>"))


def mk(ws):
    b = LocalGenBackend(
        model=model,
        tokenizer=str(work / "tok"),
        batch_size=32,
        max_batch_tokens=16384,
        processor_context=32,
        workspace_bytes=ws,
    )
    b.logits_processor = forced
    return b


with_ws, no_ws = mk(None), mk(0)
blocked = lm_head.head_logits


def plain_head(model, hidden, empty=None):
    return model.get_output_embeddings()(hidden)


def config(name):
    rows_forward.FULL_LAST = name in ("full_last", "none")
    f = plain_head if name in ("plain_head", "none") else blocked
    verdict_decode.head_logits = f
    prefix_cache.head_logits = f
    return no_ws if name in ("no_workspace", "none") else with_ws


names = a.names.split(",")
for n in names:
    config(n).moderate(convs[:4])
secs = {n: [] for n in names}
cpu = {n: [] for n in names}
flt = {n: [] for n in names}
out = {}
for r in range(a.repeats):
    for n in names[r % len(names) :] + names[: r % len(names)]:
        b = config(n)
        c0 = time.process_time()
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t, out[n] = timed(lambda b=b: dedupe(convs, b.moderate), torch.device("cpu"))
        secs[n].append(t)
        cpu[n].append(time.process_time() - c0)
        flt[n].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    print(f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in secs.items()), flush=True)
base, cbase, bbase = statistics.median(secs["all"]), statistics.median(cpu["all"]), min(secs["all"])
for n in names:
    m, c, b = statistics.median(secs[n]), statistics.median(cpu[n]), min(secs[n])
    print(
        f"{n:<14} wall median {m:7.2f}s ({m / base - 1:+.1%})  best {b:7.2f}s ({b / bbase - 1:+.1%})  cpu median {c:7.2f}s ({c / cbase - 1:+.1%})  walls {[round(x, 2) for x in secs[n]]}  faults {int(statistics.median(flt[n]))}"
    )
assert all([v.raw for v in out[n]] == [v.raw for v in out["all"]] for n in names)
print("inputs", len(convs), "layers", a.layers)
