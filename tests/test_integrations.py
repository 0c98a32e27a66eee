"""The adapters' own logic with a scripted guard: verl's functions, OpenRLHF's request parsing, coalescing, the circuit
breaker, settings that name their variable. The frameworks' real clients are driven in test_verl.py,
test_openrlhf.py, test_trl_cli.py and test_reward_server.py."""

import asyncio
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from rewards import GuardOnlyReward, HybridReward, JudgeCoalescer, TrainingOnNothingError, Verdict
from rewards.integrations import common, verl
from rewards.integrations.openrlhf import BadRequest, parse_request, split_prompt, split_query
from rewards.loading import ModelLoadError
from rewards.presets import SettingError, reward_from_env
from rewards.step_metrics import step_metrics
from tests.test_rewards import ConstantHelpfulness, ScriptedGuard

USER = "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture
def hybrid():
    reward = HybridReward(ScriptedGuard(), ConstantHelpfulness(2.0))
    common.use_reward(reward, "hybrid")
    yield reward
    common._REWARDS.clear()


# -- verl ---------------------------------------------------------------------------------------------------------
def test_verl_functions_give_the_same_keys_for_every_sample(hybrid):
    infos = [{"prompt": "q"}, {"prompt": [{"role": "user", "content": "q"}]}, {"prompt": "q"}, {"prompt": "q"}]
    texts = ["[safe] sure", "[refuse]", "[unsafe]", "[garble]"]
    batch = verl.compute_score_batch(["wj"] * 4, texts, [None] * 4, infos)
    single = [verl.compute_score("wj", t, None, i) for t, i in zip(texts, infos, strict=True)]
    awaited = asyncio.run(
        _gather([verl.compute_score_async("wj", t, None, i) for t, i in zip(texts, infos, strict=True)])
    )
    for results in (batch, single, awaited):
        assert [r["score"] for r in results] == [2.0, -5.0, -10.0, -10.0]  # unjudged: pessimistic, never safe
        assert [r["judged"] for r in results] == [1.0, 1.0, 1.0, 0.0]
        assert [r["refusal"] for r in results] == [0.0, 1.0, 0.0, 0.0]
        assert all(list(r) == ["score", "judged", "unsafe", "refusal"] for r in results)
    assert verl.compute_score("wj", "[garble]", None, {"prompt": "q"}, failure=-3.0)["score"] == -3.0


async def _gather(coroutines):
    return await asyncio.gather(*coroutines)


def test_verl_row_without_prompt_is_a_configuration_error(hybrid):
    with pytest.raises(verl.MissingPromptError, match=r"extra_info\['prompt'\]"):
        verl.compute_score("wj", "[safe]", None, {"index": 0})
    with pytest.raises(verl.MissingPromptError):
        verl.compute_score_batch(["wj"], ["[safe]"], [None], [None])


def test_verl_guard_only_failure_is_zero():
    common.use_reward(GuardOnlyReward(ScriptedGuard()), "guard_only")
    try:
        out = verl.compute_score_batch(
            ["x"] * 2, ["[safe]", "[garble]"], [None] * 2, [{"prompt": "q"}] * 2, reward="guard_only"
        )
        assert [r["score"] for r in out] == [1.0, 0.0]
    finally:
        common._REWARDS.clear()


def test_served_guard_name_follows_the_tokenizer_verl_passes(monkeypatch):
    monkeypatch.setenv("SAFE_RL_GUARD_MODEL", "my/guard")
    assert common.served_guard_name(None) == "my/guard"
    reward = common.get_routed_reward_for("guard_only", "10.0.0.1:8000", None)
    assert reward.guard.base_url == "http://10.0.0.1:8000/v1" and reward.guard.model == "my/guard"
    assert common.get_routed_reward_for("guard_only", "10.0.0.1:8000", None) is reward  # once per process
    common._REWARDS.clear()


# -- OpenRLHF -----------------------------------------------------------------------------------------------------
def test_prompts_rendered_without_thinking_are_parsed_right():
    no_think = USER + "<think>\n\n</think>\n\n"
    assert split_prompt(no_think) == ([{"role": "user", "content": "q"}], "<think>\n\n</think>\n\n")
    assert split_query(no_think + "Answer.<|im_end|>", no_think) == "<think>\n\n</think>\n\nAnswer."
    system = "<|im_start|>system\nBe nice.<|im_end|>\n" + USER
    assert split_prompt(system)[0][-1] == {"role": "user", "content": "q"}
    assert split_prompt("plain text prompt") == ("plain text prompt", "")


def test_only_the_closing_end_tokens_are_removed():
    assert split_query(USER + "a<|im_end|>b<|im_end|>\n<|endoftext|>", USER) == "a<|im_end|>b"  # the rest is judged


def test_parse_request_refuses_what_the_protocol_does_not_allow():
    assert parse_request({"query": [USER + "hi"], "prompts": [USER], "labels": [None]})[1] == ["hi"]
    for body, says in [
        ({"query": ["x" + USER], "prompts": [USER]}, "sample 0: the prompt is not a prefix"),
        ({"query": [USER], "prompts": [USER, USER]}, "one per query"),
        ({"query": [1], "prompts": ["1"]}, "'query'"),
        ("text", "JSON object"),
    ]:
        with pytest.raises(BadRequest, match=says):
            parse_request(body)


# -- coalescing ---------------------------------------------------------------------------------------------------
class CountingGuard(ScriptedGuard):
    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()

    def moderate(self, conversations):
        with self.lock:
            return super().moderate(conversations)


def test_concurrent_single_calls_are_batched_and_answered_to_their_caller():
    guard = CountingGuard()
    coalescer = JudgeCoalescer(HybridReward(guard, ConstantHelpfulness(2.0)), window=0.05, max_batch=64)
    texts = ["[safe]", "[refuse]", "[unsafe]", "[garble]"] * 16
    with ThreadPoolExecutor(64) as pool:
        details = list(pool.map(lambda t: coalescer.judge_one("q", t), texts))
    assert [d.reward for d in details] == [2.0, -5.0, -10.0, None] * 16
    assert len(guard.calls) < 8 and coalescer.batches == len(guard.calls)


def test_async_callers_share_batches_too():
    coalescer = JudgeCoalescer(GuardOnlyReward(ScriptedGuard()), window=0.05)

    async def main():
        return await asyncio.gather(*(coalescer.ajudge_one("q", t) for t in ["[safe]", "[unsafe]"] * 20))

    assert [d.reward for d in asyncio.run(main())] == [1.0, 0.0] * 20
    assert coalescer.batches <= 2


def test_a_failing_caller_fails_alone_and_configuration_errors_reach_everyone():
    class BoomReward(GuardOnlyReward):
        def judge(self, prompts, completions):
            if "[boom]" in completions:
                raise RuntimeError("boom")
            return super().judge(prompts, completions)

    coalescer = JudgeCoalescer(BoomReward(ScriptedGuard()), window=0.05)
    futures = [coalescer.submit(["q"], [t]) for t in ["[safe]", "[boom]", "[unsafe]"]]
    assert futures[0].result()[0].reward == 1.0 and futures[2].result()[0].reward == 0.0
    with pytest.raises(RuntimeError, match="boom"):
        futures[1].result()

    class Unloadable(GuardOnlyReward):
        def judge(self, prompts, completions):
            raise ModelLoadError("guard", "no/guard", OSError("missing"))

    coalescer = JudgeCoalescer(Unloadable(ScriptedGuard()), window=0.05)
    futures = [coalescer.submit(["q"], ["[safe]"]) for _ in range(3)]
    for future in futures:
        with pytest.raises(ModelLoadError, match="no/guard"):
            future.result()


def test_a_caller_that_gives_up_does_not_disturb_the_others():
    import time

    class Slow(ScriptedGuard):
        def moderate(self, conversations):
            time.sleep(0.2)
            return super().moderate(conversations)

    coalescer = JudgeCoalescer(GuardOnlyReward(Slow()), window=0)
    first = coalescer.submit(["q"], ["[safe]"])
    time.sleep(0.05)  # the first batch is being judged
    gave_up = coalescer.submit(["q"], ["[safe]"])
    assert gave_up.cancel()
    waiting = coalescer.submit(["q"], ["[unsafe]"])
    assert first.result()[0].reward == 1.0 and waiting.result()[0].reward == 0.0


def test_the_dispatcher_is_rebuilt_after_pickling():
    import pickle

    coalescer = JudgeCoalescer(GuardOnlyReward(ScriptedGuard()))
    assert coalescer.judge_one("q", "[safe]").reward == 1.0
    clone = pickle.loads(pickle.dumps(coalescer))
    assert clone.judge_one("q", "[unsafe]").reward == 0.0


# -- no training on nothing ---------------------------------------------------------------------------------------
def test_the_breaker_stops_after_three_mostly_unjudged_calls_and_names_the_reasons():
    reward = GuardOnlyReward(ScriptedGuard())
    prompts, mostly_bad = ["q"] * 8, ["[garble]"] * 5 + ["[safe]"] * 3
    reward(prompts, mostly_bad)
    reward(prompts, mostly_bad)
    reward(prompts, ["[safe]"] * 8)  # a good call resets the count
    reward(prompts, mostly_bad)
    reward(prompts, mostly_bad)
    with pytest.raises(TrainingOnNothingError, match=r"3 checks in a row \(last: 5/8\).*no 'Safety:' line.*\(5\)"):
        reward(prompts, mostly_bad)
    with pytest.raises(TrainingOnNothingError):  # stays stopped
        reward(prompts, ["[safe]"] * 8)


def test_the_breaker_pools_small_calls_and_can_be_turned_off():
    reward = GuardOnlyReward(ScriptedGuard())
    for _ in range(3 * 8 - 1):  # single-sample calls (coalesced trickles) are checked by groups of 8
        reward(["q"], ["[garble]"])
    with pytest.raises(TrainingOnNothingError):
        reward(["q"], ["[garble]"])
    off = GuardOnlyReward(ScriptedGuard(), unjudged_limit=None)
    for _ in range(10):
        assert off(["q"] * 8, ["[garble]"] * 8) == [None] * 8  # per-sample failures stay None, counted


def test_the_breaker_is_set_by_environment(monkeypatch):
    monkeypatch.setenv("SAFE_RL_REWARD_UNJUDGED_LIMIT", "off")
    assert reward_from_env("guard_only", guard=ScriptedGuard()).breaker.limit is None
    monkeypatch.setenv("SAFE_RL_REWARD_UNJUDGED_LIMIT", "0.2")
    monkeypatch.setenv("SAFE_RL_REWARD_UNJUDGED_PATIENCE", "5")
    breaker = reward_from_env("guard_only", guard=ScriptedGuard()).breaker
    assert (breaker.limit, breaker.patience) == (0.2, 5)
    monkeypatch.setenv("SAFE_RL_REWARD_UNJUDGED_LIMIT", "1.5")
    with pytest.raises(SettingError, match="SAFE_RL_REWARD_UNJUDGED_LIMIT"):
        reward_from_env("guard_only", guard=ScriptedGuard())


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SAFE_RL_REWARD_UNSAFE_CAP", "abc"),
        ("SAFE_RL_GUARD_BATCH_SIZE", "x"),
        ("SAFE_RL_REWARD_STRICTNESS", "lenient"),
        ("SAFE_RL_REWARD_JUDGE_THINKING", "maybe"),
        ("SAFE_RL_REWARD_UNJUDGED_PATIENCE", "0"),
        ("SAFE_RL_FAILURE_SCORE", "low"),
        ("SAFE_RL_COALESCE_WINDOW_MS", "soon"),
    ],
)
def test_bad_environment_values_name_the_variable(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingError, match=f"{variable}={value!r}"):
        reward = reward_from_env("hybrid", guard=ScriptedGuard(), helpfulness=ConstantHelpfulness())
        common.failure_score(reward)
        common.coalescer_for(reward)


def test_parse_failure_rate_counts_only_unreadable_answers():
    class Down:
        def moderate(self, conversations):
            return [Verdict(safety=None, error="guard server: ConnectError") for _ in conversations]

    details = GuardOnlyReward(Down(), unjudged_limit=None).judge(["q"] * 4, ["a"] * 4)
    metrics = step_metrics(details)
    assert (
        metrics["guard/failure_rate"] == 1.0
        and metrics["guard/parse_failure_rate"] != metrics["guard/parse_failure_rate"]
    )
    details = GuardOnlyReward(ScriptedGuard()).judge(["q"] * 4, ["[garble]", "[safe]", "[safe]", "[safe]"])
    assert step_metrics(details)["guard/parse_failure_rate"] == 0.25


@pytest.mark.slow
def test_score_exits_with_one_line_when_the_guard_cannot_load(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "q", "response": "a"}\n')
    proc = subprocess.run(
        [sys.executable, "-m", "safe_rl.cli", "score", str(rows), "--output", str(tmp_path / "out.jsonl"),
         "--guard-model", str(tmp_path / "missing")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and not (tmp_path / "out.jsonl").exists()
    assert proc.stderr.strip().splitlines()[-1] == f"error: no such guard folder: {tmp_path}/missing"


def test_the_reward_server_answers_503_once_the_run_would_train_on_nothing():
    from fastapi.testclient import TestClient

    from rewards.integrations.reward_server import create_app

    class Down:
        def moderate(self, conversations):
            return [Verdict(safety=None, error="guard server: ConnectError") for _ in conversations]

    client = TestClient(create_app(GuardOnlyReward(Down(), unjudged_patience=1)))
    body = {"query": [USER + f"a{i}" for i in range(8)], "prompts": [USER] * 8}
    reply = client.post("/get_reward", json=body)
    assert reply.status_code == 503 and "ConnectError" in reply.json()["detail"]
    assert client.get("/health").status_code == 503 and client.get("/health").json()["status"] == "stopped"
    assert client.post("/get_reward", json=body).status_code == 503
