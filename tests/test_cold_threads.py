"""A fresh process whose first reward calls come from 16 threads at once (TRL's dotted-path reward, verl's per-sample
function): every sample judged, models loaded once, transformers' class attributes left as they were."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, sys, threading
from transformers import PreTrainedModel
from safe_rl.toy.data import toy_answers, toy_prompts

target = sys.argv[1]
prompts = [p.text for p in toy_prompts("train", harmful=True)[:4]]
samples = [(p, a.text) for p in prompts for a in toy_answers(next(q for q in toy_prompts("train") if q.text == p))]
barrier = threading.Barrier(16)
results, errors = [None] * 16, []

def work(i):
    prompt, answer = samples[i % len(samples)]
    barrier.wait()
    try:
        if target == "trl":
            import rewards
            results[i] = rewards.hybrid_reward(prompts=[prompt, prompt], completions=[answer, answer])
        else:
            from rewards.integrations.verl import compute_score
            out = compute_score("wildjailbreak", answer, None, {"prompt": prompt})
            results[i] = [out["score"] if out["judged"] else None]
    except Exception as exc:
        errors.append(repr(exc))

threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
for t in threads: t.start()
for t in threads: t.join()
from rewards import presets
print(json.dumps({
    "results": results, "errors": errors,
    "tie_weights": PreTrainedModel.tie_weights.__qualname__,
    "rewards_built": len(presets._SHARED),
}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("target", ["trl", "verl"])
def test_first_calls_from_16_threads_are_all_judged(target):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "SAFE_RL_GUARD_MODEL": "toy:guard",
        "SAFE_RL_HELPFULNESS_MODEL": "toy:helpfulness",
        "SAFE_RL_GUARD_DEVICE": "cpu",
        "SAFE_RL_HELPFULNESS_DEVICE": "cpu",
    }
    proc = subprocess.run([sys.executable, "-c", SCRIPT, target], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["errors"] == []
    assert all(r is not None and None not in r for r in out["results"]), out["results"]
    assert out["tie_weights"] == "PreTrainedModel.tie_weights"  # not left replaced by a concurrent load
    assert out["rewards_built"] == 1
