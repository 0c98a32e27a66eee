"""Torch's thread count for a block of work."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Run torch on ``n`` threads inside the block, then restore the count.

    The toy models' ops are so small that one thread is faster than several, and one thread does not slow down to a
    crawl when other processes share the cores (smoke.yaml's ``env: {OMP_NUM_THREADS: 1}``; figures in the file).

    Example:
        >>> import torch
        >>> before = torch.get_num_threads()
        >>> with torch_threads(1):
        ...     torch.get_num_threads()
        1
        >>> torch.get_num_threads() == before
        True
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
