"""Stream guard in RL: stopping `generate` at the first flagged token of a real tiny policy, and the stream rewards."""

from __future__ import annotations

import pytest
import torch
from _stream import one_torch_thread, write_tiny_stream_checkpoint  # noqa: F401

from rewards.guards.stream import Qwen3GuardStream
from rewards.guards.stream.rule import first_flag
from rewards.registry import get_reward
from rewards.stream_rl import StreamGuardOnlyReward, StreamHybridReward, early_unsafe_penalty
from rewards.verdict import Verdict

PROMPTS = ["How do I make a cake?", "Tell me a story about a dragon and a knight."]
MAX_NEW = 24


@pytest.fixture(scope="module")
def policy(qwen_tokenizer_path):
    """A tiny random Qwen3 policy, the real tokenizer (left padding), and its unconstrained greedy rollouts."""
    from _tiny import tiny_config
    from transformers import AutoTokenizer, Qwen3ForCausalLM

    qwen_tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer_path)  # our own copy: padding side changes

    torch.manual_seed(0)
    # Untied and widely initialised: varied greedy rollouts (a tied 0.02-init model repeats its last token).
    config = tiny_config(len(qwen_tokenizer), initializer_range=0.5, tie_word_embeddings=False)
    model = Qwen3ForCausalLM(config).eval()
    qwen_tokenizer.padding_side = "left"
    texts = [
        qwen_tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True, enable_thinking=False
        )
        for p in PROMPTS
    ]
    inputs = qwen_tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    kwargs = {
        "max_new_tokens": MAX_NEW,
        "do_sample": False,
        "pad_token_id": qwen_tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": qwen_tokenizer.convert_tokens_to_ids("<|im_end|>"),
    }
    free = model.generate(**inputs, **kwargs)[:, inputs["input_ids"].shape[1] :].tolist()
    return model, inputs, kwargs, free


@pytest.fixture(scope="module")
def stream_guard(tmp_path_factory, qwen_tokenizer_path, qwen_tokenizer, policy):
    """Guard rigged on token ids: two tokens of rollout 0 are Unsafe, two of rollout 1 Controversial, plus ' bomb'."""
    _, _, _, free = policy
    bomb = qwen_tokenizer(" bomb", add_special_tokens=False)["input_ids"][0]
    unsafe, contro = {free[0][5], free[0][6], bomb}, {free[1][10], free[1][11]}
    assert not unsafe & contro
    folder = write_tiny_stream_checkpoint(
        tmp_path_factory.mktemp("stream") / "rl",
        tokenizer_dir=qwen_tokenizer_path,
        unsafe_ids=tuple(unsafe),
        controversial_ids=tuple(contro),
    )
    return Qwen3GuardStream(str(folder), device="cpu"), unsafe, contro


def _expected(rollout, unsafe, contro, strictness):
    labels = ["Unsafe" if t in unsafe else "Controversial" if t in contro else "Safe" for t in rollout]
    tracker_labels, stop = [], None
    for i, label in enumerate(labels):
        tracker_labels.append(label)
        safety, at = first_flag(tracker_labels)
        if safety == "Unsafe" or (safety == "Controversial" and strictness == "strict"):
            stop = i
            break
    return stop, first_flag(tracker_labels)


@pytest.mark.parametrize("strictness", ["strict", "loose"])
def test_generate_stops_at_the_first_flagged_token(policy, stream_guard, qwen_tokenizer, strictness):
    from transformers import StoppingCriteriaList

    from rewards.stream_rl import StreamStoppingCriteria

    model, inputs, kwargs, free = policy
    guard, unsafe, contro = stream_guard
    stop = StreamStoppingCriteria(guard, PROMPTS, strictness=strictness, policy_tokenizer=qwen_tokenizer)
    out = model.generate(**inputs, **kwargs, stopping_criteria=StoppingCriteriaList([stop]))
    generated = out[:, inputs["input_ids"].shape[1] :].tolist()
    verdicts = stop.verdicts()
    assert len(stop.query_verdicts) == 2
    for r, rollout in enumerate(free):
        at, (safety, flagged_at) = _expected(rollout, unsafe, contro, strictness)
        if at is None:  # never flagged under this strictness: the rollout runs to its end, as without the guard
            assert generated[r][: len(rollout)] == rollout
            assert verdicts[r].answer_tokens == MAX_NEW
        else:  # ends right after the flagged token; generate pads the rest
            assert generated[r][: at + 1] == rollout[: at + 1]
            assert set(generated[r][at + 1 :]) <= {kwargs["pad_token_id"]}
            assert verdicts[r].answer_tokens == at + 1
        assert stop.flagged_at[r] == flagged_at == verdicts[r].flagged_at
        assert verdicts[r].safety == safety
    # rollout 0 is flagged Unsafe at its 7th token under both policies; rollout 1 only flags (Controversial) when strict
    assert stop.flagged_at[0] == 6 and verdicts[0].category == "Violent"
    assert (verdicts[1].safety, stop.flagged_at[1]) == ("Controversial", 11)
    # once every rollout is flagged or finished, generate itself ends early
    assert len(generated[0]) == (12 if strictness == "strict" else MAX_NEW)


def test_stopping_criterion_checks_its_inputs(stream_guard, qwen_tokenizer):
    from transformers import AutoTokenizer

    from rewards.stream_rl import StreamStoppingCriteria

    guard, _, _ = stream_guard
    with pytest.raises(ValueError, match="prompts must not be empty"):
        StreamStoppingCriteria(guard, [])
    other = AutoTokenizer.from_pretrained(qwen_tokenizer.name_or_path)
    other.add_tokens(["<extra_policy_token>"])
    with pytest.raises(ValueError, match="tokenizer differs"):
        StreamStoppingCriteria(guard, PROMPTS, policy_tokenizer=other)
    stop = StreamStoppingCriteria(guard, PROMPTS)
    with pytest.raises(RuntimeError, match="not called"):
        stop.verdicts()
    with pytest.raises(ValueError, match="2 prompts for 3 rows"):
        stop(torch.ones((3, 5), dtype=torch.long), None)
    # one prompt per group of num_return_sequences rows is expanded in place
    expanded = StreamStoppingCriteria(guard, PROMPTS, prompt_length=4)
    flags = expanded(torch.full((4, 6), 9707), None)
    assert flags.tolist() == [False] * 4 and expanded.verdicts()[3].answer_tokens == 2


def test_early_unsafe_penalty():
    assert early_unsafe_penalty(-10.0, 1, 5, 0.5) == pytest.approx(-14.0)
    assert early_unsafe_penalty(-10.0, 4, 5, 0.5) == pytest.approx(-11.0)
    assert early_unsafe_penalty(-10.0, 4, 5, 0.0) == -10.0
    assert early_unsafe_penalty(-10.0, None, 5, 1.0) == -10.0
    earlier = [early_unsafe_penalty(-10.0, i, 100, 1.0) for i in range(1, 100)]
    assert earlier == sorted(earlier) and all(p <= -10.0 for p in earlier)  # harsher the earlier, never milder
    with pytest.raises(ValueError, match="strength"):
        early_unsafe_penalty(-10.0, 1, 5, -0.1)
    with pytest.raises(ValueError, match="outside an answer of 5"):
        early_unsafe_penalty(-10.0, 5, 5, 0.5)


class ConstantHelpfulness:
    def score(self, prompts, answers):
        return [2.0 for _ in answers]


class RefusalJudge:
    """Stands in for a refusal-labelling guard (Qwen3Guard-Gen): refusal = the answer starts with 'Sorry'."""

    def moderate(self, conversations):
        return [Verdict(safety="Safe", refusal=c[-1]["content"].startswith("Sorry")) for c in conversations]


def test_stream_rewards_take_a_model_id(tmp_path):
    """A model id or folder becomes a Qwen3GuardStream of it (loaded on first use), in the classes and builders."""
    folder = str(tmp_path / "stream-guard")
    for reward in (
        StreamGuardOnlyReward(folder),
        StreamHybridReward(folder, ConstantHelpfulness()),
        get_reward("stream_guard_only", guard_model=folder),
    ):
        assert isinstance(reward.guard, Qwen3GuardStream) and reward.guard.model == folder
    with pytest.raises(ValueError, match="in-process only"):
        get_reward("stream_guard_only", guard_base_url="http://localhost:8000/v1")


def test_stream_rewards_with_the_real_stream_guard(stream_guard):
    guard, _, _ = stream_guard
    prompts = ["How?"] * 4
    early, late = "A bomb bomb and then some more words here", "Some more words here and then a bomb bomb"
    completions = [early, late, "Sorry, I cannot help with that.", "<think>\nA bomb bomb\n</think>\n\nHello!"]
    trl_kwargs = {"completion_ids": [[1]] * 4, "trainer_state": None}
    assert StreamGuardOnlyReward(guard)(prompts=prompts, completions=completions, **trl_kwargs) == [0.0, 0.0, 1.0, 0.0]
    plain = StreamHybridReward(guard, ConstantHelpfulness())
    assert plain(prompts=prompts, completions=completions, **trl_kwargs) == [-10.0, -10.0, 2.0, -10.0]
    shaped = StreamHybridReward(guard, ConstantHelpfulness(), early_strength=1.0)
    rewards = shaped(prompts=prompts, completions=completions)
    details = shaped.judge(prompts, completions)
    assert rewards[0] < rewards[1] < -10.0 and rewards[2] == 2.0
    flagged = details[0].answer
    assert rewards[0] == pytest.approx(early_unsafe_penalty(-10.0, flagged.flagged_at, flagged.answer_tokens, 1.0))
    with_refusals = StreamHybridReward(guard, ConstantHelpfulness(), refusal_guard=RefusalJudge())
    assert with_refusals(prompts=prompts, completions=completions) == [-10.0, -10.0, -5.0, -10.0]
    built = get_reward("stream_hybrid", guard=guard, helpfulness=ConstantHelpfulness(), early_strength=1.0)
    assert built(prompts=prompts, completions=completions) == rewards
    with pytest.raises(ValueError, match="in-process only"):
        get_reward("stream_guard_only", guard_base_url="http://localhost:8000/v1")


def test_async_stream_reward_merges_refusals(stream_guard):
    import asyncio

    guard, _, _ = stream_guard
    reward = StreamHybridReward(guard, ConstantHelpfulness(), refusal_guard=RefusalJudge()).as_async()
    got = asyncio.run(reward(prompts=["How?", "How?"], completions=["Sorry, no.", "Sure, here is a cake."]))
    assert got == [-5.0, 2.0]
