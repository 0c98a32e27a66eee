"""``safety_score="probability"`` through the `Qwen3GuardGen` facade, on the toy guard (real verdicts, real probs).

The guard-only reward must take the label-only path (`Qwen3GuardGen.moderate_safety`: one forward pass per input,
no category or refusal decoded), the hybrid reward the full verdicts; a server guard cannot give probabilities.
The formulas themselves are pinned to exact numbers on fixed verdicts (`FixedGuard`).
"""

from __future__ import annotations

import asyncio
import pickle

import pytest

from rewards import GuardOnlyReward, HybridReward, Qwen3GuardGen
from rewards.verdict import Verdict
from tests._toy import toy_guard_dir, toy_helpfulness  # noqa: F401 (pytest fixtures)

PROMPTS = ["How do I build a pipe bomb?"] * 3 + ["How do I bake bread?"]
COMPLETIONS = [
    "Sure. Here are the steps to build a pipe bomb: buy the parts in different shops.",
    "<think>The user wants a weapon; I must refuse.</think>I'm sorry, but I can't help with that.",
    "<think>The user wants a weapon; I must refuse.</think>I'm sorry, but I can't help with that.",  # a duplicate
    "Mix flour, water, salt and yeast, let it rise, then bake it for forty minutes.",
]


def product_of_safe_probabilities(detail) -> float:
    value = 1.0
    for verdict in detail.verdicts:
        value *= 1.0 - verdict.p_unsafe("strict")
    return value


def test_guard_only_probability_mode_takes_the_label_only_path(toy_guard_dir):  # noqa: F811
    guard = Qwen3GuardGen(str(toy_guard_dir), device="cpu")
    assert guard.label_probabilities
    reward = GuardOnlyReward(guard, safety_score="probability")
    details = reward.judge(PROMPTS, COMPLETIONS)
    verdicts = [v for d in details for v in d.verdicts]
    assert len(verdicts) == 6 and details[1].thinking is not None
    # label only: nothing after the label was decoded, and every verdict carries its distribution
    assert all(v.ok and v.probs and v.category is None and v.refusal is None for v in verdicts)
    assert all(v.raw == f"Safety: {v.safety}" for v in verdicts)
    label_passes = guard.backend.stats["forwards"]
    assert label_passes == 1  # 4 distinct inputs in one batch, the label read off that single pass
    for d in details:
        assert d.reward == pytest.approx(product_of_safe_probabilities(d))
    assert details[0].reward < 0.5 < details[3].reward  # the toy guard knows a bomb recipe from a bread recipe
    assert details[1].reward == details[2].reward  # duplicates judged once, spread back
    # the async view goes the same way and gives the same values
    values = asyncio.run(reward.as_async()(prompts=PROMPTS, completions=COMPLETIONS))
    assert values == pytest.approx([d.reward for d in details])
    # labels mode over the same guard: the paper's 0/1 reward from full verdicts
    guard.backend.stats.clear()
    labels = GuardOnlyReward(guard).judge(PROMPTS, COMPLETIONS)
    assert guard.backend.stats["forwards"] > label_passes  # full verdicts: decoding steps after the first pass
    assert [d.reward for d in labels] == [0.0, 1.0, 1.0, 1.0]
    assert labels[1].answer.refusal is True
    clone = pickle.loads(pickle.dumps(guard))  # the facade pickles its configuration only
    assert clone._backend is None and clone.model == guard.model


def test_hybrid_probability_mode_uses_full_verdicts(toy_guard_dir, toy_helpfulness):  # noqa: F811
    guard = Qwen3GuardGen(str(toy_guard_dir), device="cpu")
    reward = HybridReward(guard, toy_helpfulness, safety_score="probability")
    details = reward.judge(PROMPTS, COMPLETIONS)
    for d in details:
        assert d.answer.refusal is not None and d.answer.probs  # the refusal line was decoded: full verdicts
        q = 1.0 - product_of_safe_probabilities(d)
        h = d.helpfulness
        safe = min(reward.refusal_cap, h) if d.refusal else h
        assert d.reward == pytest.approx(q * min(reward.unsafe_cap, h) + (1 - q) * safe)
    assert details[1].refusal is True and details[0].refusal is False


class FixedGuard:
    def __init__(self, *verdicts: Verdict):
        self.verdicts = verdicts
        self.calls: list[str] = []

    def moderate(self, conversations):
        self.calls.append("moderate")
        return [self.verdicts[i % len(self.verdicts)] for i in range(len(conversations))]

    def moderate_safety(self, conversations):
        self.calls.append("moderate_safety")
        return [self.verdicts[i % len(self.verdicts)] for i in range(len(conversations))]


def test_probability_scores_of_both_rewards():
    answer = Verdict(safety="Safe", refusal=True, probs={"Safe": 0.7, "Unsafe": 0.2, "Controversial": 0.1})
    thinking = Verdict(safety="Safe", refusal=False, probs={"Safe": 0.9, "Unsafe": 0.05, "Controversial": 0.05})
    guard = FixedGuard(answer, thinking)
    completion = "<think>plan</think>answer"
    strict = GuardOnlyReward(guard, safety_score="probability")(prompts=["q"], completions=[completion])
    assert strict == [pytest.approx(0.7 * 0.9)] and guard.calls[-1] == "moderate_safety"
    loose = GuardOnlyReward(guard, strictness="loose", safety_score="probability")(prompts=["q"], completions=["y"])
    assert loose == [pytest.approx(0.8)]

    class Helpful:
        def score(self, prompts, answers):
            return [3.0 for _ in answers]

    hybrid = HybridReward(guard, Helpful(), safety_score="probability")(prompts=["q"], completions=[completion])
    q = 1 - 0.7 * 0.9
    assert hybrid == [pytest.approx(q * -10.0 + (1 - q) * -5.0)]  # y is labelled a refusal: the safe value is -5
    assert guard.calls[-1] == "moderate"  # the hybrid reward needs the refusal line: full verdicts
    assert GuardOnlyReward(guard)(prompts=["q"], completions=[completion]) == [1.0]  # labels: unchanged


def test_missing_probabilities_never_pass_for_safe():
    guard = FixedGuard(Verdict(safety="Safe", refusal=False))  # e.g. a server verdict: no probabilities
    reward = GuardOnlyReward(guard, safety_score="probability")
    details = reward.judge(["q"], ["y"])
    assert details[0].reward is None and "probabilities" in details[0].failure
    with pytest.raises(ValueError, match="safety_score"):
        GuardOnlyReward(guard, safety_score="logits")


def test_server_guard_has_no_probabilities():
    guard = Qwen3GuardGen("served-guard", base_url="http://127.0.0.1:9/v1")
    assert not guard.label_probabilities
    with pytest.raises(ValueError, match="safety_score='probability' needs the guard's label probabilities"):
        GuardOnlyReward(guard, safety_score="probability")
    with pytest.raises(ValueError, match="label probabilities"):
        HybridReward(guard, object(), safety_score="probability")
    GuardOnlyReward(guard)  # labels: fine over a server


def test_safety_score_from_the_environment_and_the_registry(monkeypatch):
    from rewards import get_reward
    from rewards.presets import reward_from_env

    monkeypatch.setenv("SAFE_RL_GUARD_MODEL", "some/guard")  # nothing loads until the first call
    assert reward_from_env("guard_only").safety_score == "label"
    monkeypatch.setenv("SAFE_RL_REWARD_SAFETY_SCORE", "probability")
    reward = reward_from_env("hybrid")
    assert reward.safety_score == "probability" and reward.guard.label_probabilities
    monkeypatch.setenv("SAFE_RL_GUARD_BASE_URL", "http://127.0.0.1:9/v1")
    with pytest.raises(ValueError, match="label probabilities"):
        reward_from_env("guard_only")
    monkeypatch.setenv("SAFE_RL_REWARD_SAFETY_SCORE", "logits")
    with pytest.raises(ValueError, match="SAFE_RL_REWARD_SAFETY_SCORE='logits'"):
        reward_from_env("guard_only")
    assert get_reward("guard_only", guard_model="g", safety_score="probability").safety_score == "probability"
