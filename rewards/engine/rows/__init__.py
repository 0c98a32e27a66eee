"""The fast path: format-drafted verdict decoding on our own Qwen3 forward pass over rows of shared prefixes.

It reads the model's modules directly and uses private torch operators where they pay, so it runs only where
`probe` passes (see `rewards.engine.pick_engine`).
"""

from rewards.engine.rows.engine import RowsEngine
from rewards.engine.rows.probe import probe

__all__ = ["RowsEngine", "probe"]
