"""Guard-only and hybrid rewards: the combination table, failures, metrics, TRL formats, pickling, async.

The guard here is a scripted stand-in for the external Qwen3Guard model (it answers with official verdict text
chosen by a marker in the judged content), so that every row of the combination table can be pinned exactly.
The in-process and server backends are tested end to end in their own modules and in the TRL trainer test.
"""

import asyncio
import pickle

import pytest

from rewards import GuardOnlyReward, HybridReward, parse_verdict

SAFE = "Safety: Safe\nCategories: None\nRefusal: No"
REFUSE = "Safety: Safe\nCategories: None\nRefusal: Yes"
UNSAFE = "Safety: Unsafe\nCategories: Violent\nRefusal: No"
CONTRO = "Safety: Controversial\nCategories: Politically Sensitive Topics\nRefusal: No"
NOREF = "Safety: Safe\nCategories: None"
GARBLE = "I am not sure."
MARKERS = {
    "[safe]": SAFE,
    "[refuse]": REFUSE,
    "[unsafe]": UNSAFE,
    "[contro]": CONTRO,
    "[noref]": NOREF,
    "[garble]": GARBLE,
}


class ScriptedGuard:
    """Answers each conversation with the verdict text named by a marker in its last message."""

    def __init__(self):
        self.calls = []

    def moderate(self, conversations):
        self.calls.append(conversations)
        out = []
        for conv in conversations:
            text = next((v for k, v in MARKERS.items() if k in conv[-1]["content"]), GARBLE)
            out.append(parse_verdict(text))
        return out


class RaisingGuard:
    def moderate(self, conversations):
        raise RuntimeError("CUDA out of memory")


class ConstantHelpfulness:
    def __init__(self, value=2.0):
        self.value = value
        self.seen = []

    def score(self, prompts, answers):
        self.seen.extend(answers)
        return [self.value] * len(answers)


def think(t, y):
    return f"<think>\n{t}\n</think>\n\n{y}"


HYBRID_TABLE = [
    ("[safe]", 2.0, None),
    ("[refuse]", -5.0, None),
    ("[unsafe]", -10.0, None),
    ("[contro]", -10.0, None),  # strict: Controversial is unsafe
    (think("[unsafe] plan", "[safe]"), -10.0, None),  # unsafe thinking makes the sample unsafe
    (think("[safe] plan", "[refuse]"), -5.0, None),
    (think("[garble]", "[unsafe]"), -10.0, None),  # unsafe answer decides even if the thinking is unreadable
    (think("[garble]", "[safe]"), None, "guard"),  # outcome depends on the unreadable thinking
    ("[garble]", None, "guard"),
    ("[noref]", None, "Refusal"),  # safe, but refusal unknown: cannot choose between H and min(-5, H)
    (think("", "[safe]"), 2.0, None),  # empty thinking block (non-think mode) is not judged
]


@pytest.mark.parametrize(("completion", "expected", "failure"), HYBRID_TABLE)
def test_hybrid_table(completion, expected, failure):
    reward = HybridReward(ScriptedGuard(), ConstantHelpfulness(2.0))
    [detail] = reward.judge(["prompt"], [completion])
    assert detail.reward == expected
    assert (detail.failure is None) if failure is None else (failure in detail.failure)


GUARD_ONLY_TABLE = [
    ("[safe]", 1.0),
    ("[refuse]", 1.0),  # guard-only does not see refusals: the paper's over-refusal failure mode
    ("[unsafe]", 0.0),
    ("[contro]", 0.0),
    (think("[unsafe]", "[safe]"), 0.0),
    (think("[safe]", "[safe]"), 1.0),
    ("[noref]", 1.0),  # refusal is not needed here
    ("[garble]", None),
]


@pytest.mark.parametrize(("completion", "expected"), GUARD_ONLY_TABLE)
def test_guard_only_table(completion, expected):
    assert GuardOnlyReward(ScriptedGuard())(prompts=["p"], completions=[completion]) == [expected]


def test_loose_policy_counts_controversial_as_safe():
    assert GuardOnlyReward(ScriptedGuard(), strictness="loose")(["p"], ["[contro]"]) == [1.0]
    assert HybridReward(ScriptedGuard(), ConstantHelpfulness(3.0), strictness="loose")(["p"], ["[contro]"]) == [3.0]


def test_helpfulness_below_the_cap_is_kept():
    reward = HybridReward(ScriptedGuard(), ConstantHelpfulness(-12.0))
    assert reward(["p", "p", "p"], ["[unsafe]", "[refuse]", "[safe]"]) == [-12.0, -12.0, -12.0]


def test_one_batched_guard_call_per_step_with_thinking_and_answer():
    guard = ScriptedGuard()
    GuardOnlyReward(guard)(["p"] * 3, [think("[safe]", "[safe]"), "[safe]", think("[safe]", "[unsafe]")])
    assert len(guard.calls) == 1 and len(guard.calls[0]) == 5
    assert all(conv[0] == {"role": "user", "content": "p"} for conv in guard.calls[0])


def test_helpfulness_scores_the_answer_without_thinking():
    helpful = ConstantHelpfulness()
    HybridReward(ScriptedGuard(), helpful)(["p"], [think("secret plan [safe]", "[safe] the answer")])
    assert helpful.seen == ["[safe] the answer"]


def test_conversational_format():
    prompts = [[{"role": "system", "content": "sys"}, {"role": "user", "content": "q"}]]
    completions = [[{"role": "assistant", "content": "[refuse]"}]]
    assert HybridReward(ScriptedGuard(), ConstantHelpfulness())(prompts=prompts, completions=completions) == [-5.0]


def test_guard_exception_gives_none_not_a_crash(caplog):
    rewards = HybridReward(RaisingGuard(), ConstantHelpfulness())(["p", "p"], ["[safe]", "[unsafe]"])
    assert rewards == [None, None]
    assert "guard raised" in caplog.text or "the guard raised" in caplog.text


def test_helpfulness_exception_gives_none():
    class Broken:
        def score(self, prompts, answers):
            raise ValueError("bad input")

    assert HybridReward(ScriptedGuard(), Broken())(["p"], ["[safe]"]) == [None]


def test_bad_sample_is_counted_not_raised():
    details = GuardOnlyReward(ScriptedGuard()).judge(
        [[{"role": "system", "content": "no user"}], "p"], ["[safe]", "[safe]"]
    )
    assert details[0].reward is None and "bad sample" in details[0].failure
    assert details[1].reward == 1.0


def test_constructor_validation():
    with pytest.raises(TypeError):
        GuardOnlyReward(object())
    with pytest.raises(TypeError):
        HybridReward(ScriptedGuard(), object())
    with pytest.raises(ValueError):
        GuardOnlyReward(ScriptedGuard(), strictness="lenient")


def test_metrics_reach_log_metric_and_log_extra():
    logged, extra = {}, {}
    reward = HybridReward(ScriptedGuard(), ConstantHelpfulness())
    completions = ["[safe]", "[refuse]", "[unsafe]", "[contro]", "[garble]", think("[safe]", "[safe]")]
    reward(
        ["p"] * 6,
        completions,
        log_metric=lambda name, value: logged.setdefault(name, value),
        log_extra=lambda col, values: extra.setdefault(col, values),
        trainer_state=None,
        extra_dataset_column=[0] * 6,
    )
    assert logged["guard/safety_rate"] == pytest.approx(3 / 5)  # 5 samples with a known outcome
    assert logged["guard/refusal_rate"] == pytest.approx(1 / 5)  # 5 readable answers
    assert logged["guard/controversial_rate"] == pytest.approx(1 / 6)
    assert logged["guard/failure_rate"] == pytest.approx(1 / 6)
    assert logged["guard/parse_failure_rate"] == pytest.approx(1 / 7)  # 7 verdicts (one thinking)
    assert logged["guard/category/Violent"] == 1 and logged["guard/category/Politically Sensitive Topics"] == 1
    assert logged["guard/category/PII"] == 0 and logged["guard/truncated"] == 0
    assert extra["guard_answer"] == ["Safe", "Safe", "Unsafe", "Controversial", None, "Safe"]


def test_names_pickling_and_async():
    guard_only = GuardOnlyReward(ScriptedGuard())
    hybrid = HybridReward(ScriptedGuard(), ConstantHelpfulness())
    assert guard_only.__name__ == "guard_only_reward" and hybrid.__name__ == "hybrid_reward"
    clone = pickle.loads(pickle.dumps(hybrid))
    assert clone.__name__ == "hybrid_reward" and clone(["p"], ["[refuse]"]) == [-5.0]
    async_reward = hybrid.as_async()
    assert async_reward.__name__ == "hybrid_reward"
    from trl.trainer.utils import get_callable_name, is_async_callable

    assert is_async_callable(async_reward) and not is_async_callable(hybrid)
    assert get_callable_name(hybrid) == "hybrid_reward"
    assert asyncio.run(async_reward(prompts=["p", "p"], completions=["[safe]", "[unsafe]"])) == [2.0, -10.0]


def test_env_presets_are_lazy_and_named(monkeypatch):
    import rewards

    assert rewards.hybrid_reward.__name__ == "hybrid_reward" and rewards.hybrid_reward._reward is None
    clone = pickle.loads(pickle.dumps(rewards.guard_only_reward))
    assert clone.__name__ == "guard_only_reward"
    monkeypatch.setenv("SAFE_RL_REWARD_STRICTNESS", "lenient")
    with pytest.raises(ValueError, match="SAFE_RL_REWARD_STRICTNESS='lenient'"):
        rewards.presets.EnvReward("guard_only")(["p"], ["c"])
