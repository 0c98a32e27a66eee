"""Memory kept between guard calls on the CPU for the large tensors each call makes and drops.

On the CPU a fresh tensor of a few MB or more comes from pages the kernel must map and zero on first touch: glibc
hands large blocks back to the system when they are freed (above 32 MB it always maps them anew), so the next call
faults them in again. A guard call makes hundreds of MB of such tensors, the key/value buffers of its batches
(`rewards.guards.kv_rows.stack`) and the LM head's scores over a 151k vocabulary: ~400k page faults and ~1 s of a
9 s call on scripts/bench_reward.py's inputs. A `Workspace` keeps one buffer and hands out views of it during a
`Workspace.session`; the calls after the first touch no new page. GPUs have PyTorch's caching allocator for this:
there, and outside a session, these are plain allocations.

A view is valid until its session ends (`empty`), or until the next request of the same name (`scratch`): only
tensors that die with the call may come from here. A session opened by another thread while one is open gets plain
allocations (one nested in the same thread shares the open one), as does a request past the buffer's end; at its
end the buffer grows to what the session asked for, up to ``limit`` bytes, which is what stays allocated between
calls.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

ALIGN = 64  # bytes; every view starts on a cache line (and on its dtype's size)

# Makes an uninitialised tensor of a shape with the dtype and device of a given one: `new_empty`, `Workspace.empty`.
Empty = Callable[[Sequence[int], torch.Tensor], torch.Tensor]


def new_empty(shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """A plain allocation (the `Empty` used where no workspace is given).

    Example:
        >>> new_empty((2, 3), torch.zeros(1, dtype=torch.bfloat16)).dtype
        torch.bfloat16
    """
    return like.new_empty(shape)


def _nbytes(shape: Sequence[int], like: torch.Tensor) -> int:
    return -(-math.prod(shape) * like.element_size() // ALIGN) * ALIGN


class Workspace:
    """Reusable CPU memory for one call at a time; see the module docstring.

    Example:
        >>> ws = Workspace(limit=1 << 20)
        >>> like = torch.zeros(1)
        >>> with ws.session():
        ...     a = ws.empty((4, 8), like)  # the first session has no buffer yet: a plain tensor
        >>> with ws.session():
        ...     b = ws.empty((4, 8), like)  # now a view of the buffer
        ...     b.untyped_storage().data_ptr() == ws.held_ptr()
        True
        >>> ws.held_bytes()
        128
    """

    def __init__(self, limit: int):
        self.limit = limit
        self._arena: torch.Tensor | None = None  # uint8; `empty` views, handed out front to back
        self._scratch: dict[str, torch.Tensor] = {}  # uint8; one reused view per name
        self._offset = 0
        self._asked = 0
        self._owner: int | None = None  # the thread whose session is open
        self._lock = threading.Lock()
        self.reused_bytes = 0  # handed out from kept memory, over all sessions

    @contextmanager
    def session(self) -> Iterator[None]:
        """Views handed out inside are valid until it ends; see the module docstring for concurrent sessions."""
        if self.limit <= 0 or not self._lock.acquire(blocking=False):
            yield
            return
        self._owner, self._offset, self._asked = threading.get_ident(), 0, 0
        try:
            yield
        finally:
            self._owner = None
            room = self.limit - sum(s.numel() for s in self._scratch.values())
            want = min(self._asked, max(room, 0))
            if self._arena is None or self._arena.numel() < want:
                self._arena = None  # give the old one back before taking the new one
                self._arena = torch.empty(want, dtype=torch.uint8) if want else None
            self._lock.release()

    def _active(self, like: torch.Tensor) -> bool:
        return self._owner == threading.get_ident() and like.device.type == "cpu"

    def empty(self, shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
        """An uninitialised ``shape`` tensor with ``like``'s dtype and device, valid until the session ends."""
        if not self._active(like):
            return like.new_empty(shape)
        size = _nbytes(shape, like)
        start, self._offset = self._offset, self._offset + size
        self._asked = max(self._asked, self._offset)
        if self._arena is None or self._offset > self._arena.numel():
            return like.new_empty(shape)
        self.reused_bytes += size
        return self._view(self._arena, start, shape, like)

    def scratch(self, name: str, shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
        """As `empty`, but valid only until the next ``scratch(name, ...)``: one buffer per name, grown as needed
        (within ``limit``)."""
        if not self._active(like):
            return like.new_empty(shape)
        size = _nbytes(shape, like)
        held = self._scratch.get(name)
        if held is None or held.numel() < size:
            self._scratch.pop(name, None)
            if size + self.held_bytes() > self.limit:
                return like.new_empty(shape)
            held = self._scratch[name] = torch.empty(size, dtype=torch.uint8)
        else:
            self.reused_bytes += size
        return self._view(held, 0, shape, like)

    @staticmethod
    def _view(buffer: torch.Tensor, start: int, shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
        count = math.prod(shape) * like.element_size()
        return buffer[start : start + count].view(like.dtype).view(*shape)

    def held_bytes(self) -> int:
        """Bytes kept between calls."""
        return (self._arena.numel() if self._arena is not None else 0) + sum(s.numel() for s in self._scratch.values())

    def held_ptr(self) -> int | None:
        """Where the `empty` buffer starts (None without one)."""
        return self._arena.data_ptr() if self._arena is not None else None

    def release(self) -> None:
        """Frees what is kept (the next calls build it again). Not during a session."""
        with self._lock:
            self._arena = None
            self._scratch.clear()
