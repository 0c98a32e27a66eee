"""rewards: Qwen3Guard verdicts turned into safety-RL rewards for TRL, verl and OpenRLHF.

Example:
    >>> from rewards import GuardOnlyReward, HybridReward, Qwen3GuardGen, HelpfulnessRM, parse_verdict
    >>> parse_verdict("Safety: Controversial\\nCategories: Violent").is_unsafe("strict")
    True
"""

from rewards.circuit_breaker import TrainingOnNothingError, UnjudgedBreaker
from rewards.coalesce import JudgeCoalescer
from rewards.conversation import split_thinking
from rewards.guard_prompt import GuardPrompt
from rewards.guards.base import AsyncGuard, Guard
from rewards.guards.gen import Qwen3GuardGen
from rewards.guards.stream import Qwen3GuardStream
from rewards.helpfulness import HelpfulnessRM, HelpfulnessScorer
from rewards.judgement import RewardDetail
from rewards.presets import guard_only_reward, guard_only_reward_async, hybrid_reward, hybrid_reward_async
from rewards.registry import get_reward, register
from rewards.safety_rewards import AsyncSafetyReward, GuardOnlyReward, HybridReward
from rewards.stream_rl import StreamGuardOnlyReward, StreamHybridReward, early_unsafe_penalty
from rewards.verdict import CATEGORIES, Strictness, Verdict, parse_verdict

__all__ = [
    "CATEGORIES",
    "AsyncGuard",
    "AsyncSafetyReward",
    "Guard",
    "GuardOnlyReward",
    "GuardPrompt",
    "HelpfulnessRM",
    "HelpfulnessScorer",
    "HybridReward",
    "JudgeCoalescer",
    "Strictness",
    "Qwen3GuardGen",
    "Qwen3GuardStream",
    "RewardDetail",
    "StreamGuardOnlyReward",
    "StreamHybridReward",
    "TrainingOnNothingError",
    "UnjudgedBreaker",
    "Verdict",
    "early_unsafe_penalty",
    "get_reward",
    "guard_only_reward",
    "guard_only_reward_async",
    "hybrid_reward",
    "hybrid_reward_async",
    "parse_verdict",
    "register",
    "split_thinking",
]
