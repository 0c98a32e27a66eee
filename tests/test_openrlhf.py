"""OpenRLHF 0.11.2's own remote-reward client against ``safe-rl serve-reward`` (a subprocess on loopback).

What is OpenRLHF's: ``SingleTurnAgentExecutor`` (openrlhf.utils.agent) tokenizes each prompt, asks an engine for the
response, decodes prompt + response WITH special tokens into the query and posts one sample per request through its
aiohttp client (``_fetch_rewards_via_http``: 5 tries, errors swallowed), and ``Experience.concat_experiences``
merges the per-sample tensors. What is not: the engine, a stand-in for vLLM (no CPU build) that answers fixed token
ids; and the few lines of ``SamplesGenerator._process_response_into_experience`` that turn a reply into tensors,
restated here because its module imports vLLM at top level.
"""

import asyncio
import math
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("openrlhf", reason="pip install -e '.[integrations]' && pip install --no-deps openrlhf==0.11.2")

from _reward_server import serve_reward  # noqa: E402

KEY = "cluster-key"


class FixedEngine:
    """Stands in for OpenRLHF's vLLM engine: answers each prompt with the token ids of a fixed completion."""

    def __init__(self, tokenizer, completions: dict[str, str]):
        self.tokenizer = tokenizer
        self.by_prompt = {tuple(tokenizer.encode(p, add_special_tokens=False)): c for p, c in completions.items()}

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        text = self.by_prompt[tuple(prompt_token_ids)]
        ids = self.tokenizer.encode(text, add_special_tokens=False) + [self.tokenizer.eos_token_id]
        return SimpleNamespace(
            outputs=[SimpleNamespace(token_ids=ids, text=text, finish_reason="stop", logprobs=None)]
        )


def experience(output, tokenizer):
    """OpenRLHF's `_process_response_into_experience` (samples_generator.py, imports vLLM), its tensor lines."""
    from openrlhf.trainer.ppo_utils.experience import Experience

    info = {"reward": torch.tensor([output["reward"]]), "score": torch.tensor([output["scores"]])}
    for key, value in output["extra_logs"].items():
        info[key] = torch.tensor([value])
    sequences = torch.tensor(output["observation_tokens"])
    return Experience(
        sequences=sequences.unsqueeze(0),
        attention_mask=torch.ones_like(sequences).unsqueeze(0),
        rewards=torch.tensor([output["reward"]]),
        scores=torch.tensor([output["scores"]]),
        info=info,
    )


def samples(tokenizer):
    from safe_rl.toy.data import toy_answers, toy_prompts

    rows = []  # (messages, completion the policy wrote, rendered prompt)
    for i, p in enumerate(toy_prompts("train", harmful=True)[:3] + toy_prompts("train", harmful=False)[:1]):
        messages = [{"role": "user", "content": p.text}]
        answers = toy_answers(p)
        for thinking in (False, True):
            answer = answers[(i + thinking) % len(answers)].text
            completion = f"<think>\nI should check the request.\n</think>\n\n{answer}" if thinking else answer
            prompt = tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False, enable_thinking=thinking
            )
            rows.append((messages, completion, prompt))
    return rows


@pytest.mark.slow
def test_openrlhf_client_against_serve_reward(tmp_path, toy_models):  # noqa: F811
    from openrlhf.trainer.ppo_utils.experience import Experience
    from openrlhf.utils.agent import SingleTurnAgentExecutor
    from transformers import AutoTokenizer

    from rewards import HelpfulnessRM, HybridReward, Qwen3GuardGen

    tokenizer = AutoTokenizer.from_pretrained(toy_models.policy)
    rows = samples(tokenizer)
    assert any(p.endswith("<think>\n\n</think>\n\n") for _, _, p in rows)  # non-thinking prompts (Qwen3 template)
    with serve_reward(tmp_path, "--reward_kind", "hybrid", SAFE_RL_SERVE_API_KEY=KEY) as server:
        cold = server.wait_ready()
        url = f"http://openrlhf:{KEY}@127.0.0.1:{server.port}/get_reward"  # aiohttp sends it as HTTP Basic
        executor = SingleTurnAgentExecutor(remote_rm_url=url)
        engine = FixedEngine(tokenizer, {p: c for _, c, p in rows})
        params = SimpleNamespace(max_tokens=64, logprobs=None)

        async def first_requests():  # all at once, the server's first
            rollouts = [executor.execute(p, None, params, 512, tokenizer, engine) for _, _, p in rows]
            # A sample no model can encode (a lone surrogate) reaches the server through the same client.
            broken = executor._fetch_rewards_via_http([rows[0][2] + "\udcff<|im_end|>"], [rows[0][2]], [None])
            return await asyncio.gather(*rollouts, broken)

        *outputs, broken = asyncio.run(first_requests())
        log = server.log()

    assert "Request error" not in log
    expected = HybridReward(
        Qwen3GuardGen(str(toy_models.guard), device="cpu"), HelpfulnessRM(str(toy_models.helpfulness), device="cpu")
    ).judge([m for m, _, _ in rows], [c for _, c, _ in rows])
    for (_, completion, _), output, detail in zip(rows, outputs, expected, strict=True):
        assert detail.reward is not None, detail.failure
        assert output["reward"] == [pytest.approx(detail.reward, abs=1e-4)], (completion, output)
        assert output["extra_logs"]["judged"] == [1.0]
    # the unjudgeable sample: a number (the unsafe cap), flagged unjudged, never null
    assert broken[0]["rewards"] == [-10.0] and broken[0]["extra_logs"] == {
        "judged": [0.0],
        "unsafe": [0.0],
        "refusal": [0.0],
    }
    # OpenRLHF's tensors: every value a finite number, the same keys for every sample, merged by its own code
    merged = Experience.concat_experiences([experience(o, tokenizer) for o in outputs], tokenizer.pad_token_id)
    for key in ("reward", "score", "judged", "unsafe", "refusal"):
        values = merged.info[key].flatten().tolist()
        assert len(values) == len(rows) and all(math.isfinite(v) for v in values), key
    print(f"serve-reward ready {cold:.1f} s after start")


from _toy import toy_models  # noqa: E402, F401 (pytest fixture)
