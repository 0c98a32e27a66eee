"""verl 0.9.1's own reward loop (Ray workers, the naive reward manager, verl's loader and config keys) over our
per-sample functions, in a fresh process; see tests/_verl_driver.py for which parts are verl's."""

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from _toy import toy_guard_dir  # noqa: F401 (pytest fixture)

from rewards.integrations import common, verl

pytest.importorskip("verl", reason="pip install -e '.[integrations]' && pip install --no-deps verl==0.9.1")

REPO = Path(__file__).resolve().parents[1]


def rows():
    from safe_rl.toy.data import toy_answers, toy_prompts

    out = [
        # A row whose prompt ends with an assistant turn cannot be judged: FIRST, so that verl takes the extra-info
        # keys from an unjudged sample.
        ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}], "Hello again."),
    ]
    for p in toy_prompts("train", harmful=True)[:3] + toy_prompts("train", harmful=False)[:1]:
        answers = toy_answers(p)
        out.append(([{"role": "user", "content": p.text}], answers[0].text))
        out.append(([{"role": "user", "content": p.text}], f"<think>\nLet me think.\n</think>\n\n{answers[-1].text}"))
    return out


@pytest.mark.slow
def test_verl_reward_loop_scores_match_our_judgement(tmp_path):
    data = rows()
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(data))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "SAFE_RL_GUARD_MODEL": "toy:guard",
        "SAFE_RL_HELPFULNESS_MODEL": "toy:helpfulness",
        "SAFE_RL_GUARD_DEVICE": "cpu",
        "SAFE_RL_HELPFULNESS_DEVICE": "cpu",
        "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "_verl_driver.py"), "--rows", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    expected, lengths = out["expected"], out["response_lengths"]
    assert expected[0] is None and all(e is not None for e in expected[1:]), out["expected_failures"]
    assert "<think>" in out["decoded"][2] and "<|im_end|>" not in out["decoded"][1]
    for name, run in out["runs"].items():
        # verl kept the keys of the first (unjudged) sample: every sample must have the same, numbers only
        assert run["extra_keys"] == ["score", "judged", "unsafe", "refusal"], name
        assert run["extra"]["judged"] == [0.0] + [1.0] * (len(data) - 1), name
        for i, (at, score) in enumerate(zip(run["nonzero_at"], run["scores"], strict=True)):
            want = expected[i] if expected[i] is not None else -10.0  # unjudged: the hybrid's unsafe cap
            assert score == pytest.approx(want, abs=1e-4), (name, i, score, want)
            assert at in ([], [lengths[i] - 1]), (name, i, at)  # the last valid response token (eos included)
        assert run["scores"] == pytest.approx(run["extra"]["score"], abs=1e-6)
    print(json.dumps({k: round(v["seconds"], 1) for k, v in out["runs"].items()}), round(out["seconds"], 1))


@pytest.mark.slow
def test_guard_behind_verls_genrm_router(tmp_path, toy_guard_dir):  # noqa: F811
    """verl's own router (the one ``reward.reward_model.enable=True`` starts in front of its vLLM/SGLang replicas)
    in front of ``transformers serve`` (standing in for vLLM, which has no CPU build): our function, given
    ``reward_router_address`` and the tokenizer verl loads from ``reward.reward_model.model_path``, sends its guard
    requests through the router, under the model name the replica serves, and scores as the in-process guard does."""
    from _serve import free_port, transformers_serve
    from verl.utils import hf_tokenizer

    from rewards import GuardOnlyReward, Qwen3GuardGen
    from safe_rl.toy.data import toy_answers, toy_prompts

    samples = [(p.text, a.text) for p in toy_prompts("train", harmful=True)[:2] for a in toy_answers(p)[::2]]
    port = free_port()
    router_code = (
        "from verl.experimental.reward_loop.router.naive_router import run_router; "
        f"run_router('127.0.0.1', {port}, ['http://127.0.0.1:{{}}'])"
    )
    with transformers_serve(toy_guard_dir) as replica:
        router = subprocess.Popen([sys.executable, "-c", router_code.format(replica.port)], env=os.environ.copy())
        try:
            import httpx

            for _ in range(200):
                try:
                    httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0)
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
            tokenizer = hf_tokenizer(str(toy_guard_dir))  # as RewardLoopWorker loads reward_model.model_path
            with ThreadPoolExecutor(len(samples)) as pool:
                scores = list(
                    pool.map(
                        lambda s: verl.compute_score(
                            "wildjailbreak",
                            s[1],
                            None,
                            {"prompt": s[0]},
                            reward="guard_only",
                            reward_router_address=f"127.0.0.1:{port}",
                            reward_model_tokenizer=tokenizer,
                        ),
                        samples,
                    )
                )
        finally:
            router.terminate()
            router.wait(timeout=10)
    routed = common.get_routed_reward_for("guard_only", f"127.0.0.1:{port}", tokenizer)
    assert routed.guard.model == str(toy_guard_dir) and routed.guard.base_url == f"http://127.0.0.1:{port}/v1"
    local = GuardOnlyReward(Qwen3GuardGen(str(toy_guard_dir), device="cpu")).judge(*zip(*samples, strict=True))
    assert [s["judged"] for s in scores] == [1.0] * len(samples)
    assert [s["score"] for s in scores] == [d.reward for d in local]
    assert {s["score"] for s in scores} == {0.0, 1.0}  # both outcomes present: the comparison means something
    common._REWARDS.clear()
