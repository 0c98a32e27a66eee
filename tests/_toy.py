"""Session-wide toy models for any test module: ``from _toy import toy_models, toy_guard_dir, ...``.

Importing a fixture name into a test module is enough for pytest to use it. The models come from the toy cache
(``$SAFE_RL_CACHE/toy``, default ``~/.cache/safe-rl/toy``): built once per machine and code version (tens of
seconds on 2 cores), then loaded instantly.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from safe_rl.toy import ToyModels, build_toy_models


@pytest.fixture(scope="session")
def toy_models() -> ToyModels:
    """Folders of the toy guard, policy and helpfulness model."""
    return build_toy_models()


# Each fixture stands alone (no fixture arguments), so a module imports just the names it uses.
@pytest.fixture(scope="session")
def toy_guard_dir() -> Path:
    return build_toy_models().guard


@pytest.fixture(scope="session")
def toy_policy_dir() -> Path:
    return build_toy_models().policy


@pytest.fixture(scope="session")
def toy_helpfulness_dir() -> Path:
    return build_toy_models().helpfulness


@pytest.fixture(scope="session")
def toy_guard():
    """A `rewards.Qwen3GuardGen` running the toy guard in-process."""
    from rewards import Qwen3GuardGen

    return Qwen3GuardGen(str(build_toy_models().guard), device="cpu")


@pytest.fixture(scope="session")
def toy_helpfulness():
    """A `rewards.HelpfulnessRM` running the toy helpfulness model."""
    from rewards import HelpfulnessRM

    return HelpfulnessRM(str(build_toy_models().helpfulness), device="cpu")


def sample_policy(policy_dir: Path, prompts: list[str], *, rounds: int = 1, seed: int = 0, max_new_tokens: int = 48):
    """``rounds`` answers per prompt from the toy policy at temperature 1 (non-thinking mode), prompt-major order."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from safe_rl.threads import torch_threads
    from safe_rl.toy.policy import policy_prompt_ids

    tok = AutoTokenizer.from_pretrained(policy_dir)
    model = AutoModelForCausalLM.from_pretrained(policy_dir).eval()
    ids = [policy_prompt_ids(tok, p) for p in prompts for _ in range(rounds)]
    width = max(map(len, ids))
    input_ids = torch.tensor([[tok.pad_token_id] * (width - len(x)) + x for x in ids])
    torch.manual_seed(seed)
    with torch.no_grad(), torch_threads(1):
        out = model.generate(
            input_ids=input_ids,
            attention_mask=(input_ids != tok.pad_token_id).long(),
            max_new_tokens=max_new_tokens,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
        )
    return [tok.decode(row[width:], skip_special_tokens=True) for row in out]
