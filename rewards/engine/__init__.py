"""Where text stops and tensors start: guard inputs as token ids in, greedy verdict tokens and label probabilities out.

`pick_engine` chooses the engine for a loaded model: `GenerateEngine` (transformers' ``generate``, public APIs only:
the fallback and the test oracle) or the fast path of `rewards.engine.rows`, where its probe passes.

Example:
    >>> from rewards.engine import VerdictRequest
    >>> VerdictRequest(ids=[1, 2, 3], response=False).group is None
    True
"""

from rewards.engine.generate import GenerateEngine
from rewards.engine.interface import VerdictEngine, VerdictRequest, VerdictResult
from rewards.engine.pick import ENGINES, FallbackEngine, pick_engine

__all__ = [
    "ENGINES",
    "FallbackEngine",
    "GenerateEngine",
    "VerdictEngine",
    "VerdictRequest",
    "VerdictResult",
    "pick_engine",
]
