"""`rewards.guards.workspace.Workspace`: views that never overlap within a session, memory reused across sessions,
plain tensors wherever reuse would be unsafe (another thread's session, past the limit, off the CPU)."""

from __future__ import annotations

import threading

import torch

from rewards.guards.workspace import Workspace

LIKE = torch.zeros(1)


def spans(tensors: list[torch.Tensor]) -> list[tuple[int, int]]:
    return sorted((t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()) for t in tensors)


def test_views_of_a_session_are_disjoint_and_reused_by_the_next():
    ws = Workspace(limit=1 << 20)
    shapes = [(3, 5), (7,), (2, 2, 9), (1,)]
    with ws.session():
        first = [ws.empty(s, LIKE) for s in shapes]  # no buffer yet: plain tensors
    assert ws.held_ptr() is not None and ws.reused_bytes == 0
    with ws.session():
        views = [ws.empty(s, LIKE).fill_(i) for i, s in enumerate(shapes)]
        ends = spans(views)
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(ends, ends[1:], strict=False))
        assert all(v.untyped_storage().data_ptr() == ws.held_ptr() for v in views)
        assert [v.unique().tolist() for v in views] == [[float(i)] for i in range(len(shapes))]  # none overwritten
        assert [v.shape for v in views] == [f.shape for f in first]
        assert all(v.data_ptr() % 64 == 0 for v in views)
        assert ws.empty((4,), torch.zeros(1, dtype=torch.bfloat16)).dtype == torch.bfloat16
    assert ws.reused_bytes > 0


def test_another_threads_session_gets_plain_tensors_a_nested_one_shares():
    ws = Workspace(limit=1 << 20)
    with ws.session():
        ws.empty((64,), LIKE), ws.empty((16,), LIKE)
    seen = {}
    inside, done = threading.Event(), threading.Event()

    def other():
        inside.wait()
        with ws.session():  # the first thread's session is still open
            seen["t"] = ws.empty((64,), LIKE)
            seen["s"] = ws.scratch("x", (64,), LIKE)
        done.set()

    thread = threading.Thread(target=other)
    thread.start()
    with ws.session():
        mine = ws.empty((64,), LIKE)
        with ws.session():  # nested in the same thread: shares the open session, after what it handed out
            nested = ws.empty((16,), LIKE)
        inside.set()
        done.wait(10)
    thread.join()
    assert mine.untyped_storage().data_ptr() == ws.held_ptr() == nested.untyped_storage().data_ptr()
    assert nested.data_ptr() >= mine.data_ptr() + mine.numel() * 4
    assert all(t.untyped_storage().data_ptr() != ws.held_ptr() for t in seen.values())
    assert ws.empty((64,), LIKE).untyped_storage().data_ptr() != ws.held_ptr()  # outside any session: plain


def test_limit_bounds_what_is_kept_and_requests_past_it_are_plain():
    ws = Workspace(limit=1024)
    with ws.session():
        ws.empty((1000,), LIKE)  # 4000 bytes asked
    assert ws.held_bytes() == 1024
    with ws.session():
        small, big = ws.empty((100,), LIKE), ws.empty((1000,), LIKE)
        assert small.untyped_storage().data_ptr() == ws.held_ptr()
        assert big.untyped_storage().data_ptr() != ws.held_ptr()
        assert ws.scratch("s", (1000,), LIKE).untyped_storage().data_ptr() != ws.held_ptr()  # no room left
    assert ws.held_bytes() == 1024
    ws.release()
    assert ws.held_bytes() == 0 and ws.held_ptr() is None
    assert Workspace(limit=0).empty((3,), LIKE).shape == (3,)


def test_scratch_is_one_buffer_per_name_grown_as_needed():
    ws = Workspace(limit=1 << 20)
    with ws.session():
        a = ws.scratch("logits", (4, 8), LIKE)
        b = ws.scratch("logits", (2, 8), LIKE)  # fits: the same memory
        assert a.data_ptr() == b.data_ptr()
        c = ws.scratch("logits", (16, 8), LIKE)  # grows
        d = ws.scratch("other", (2, 8), LIKE)
        assert c.data_ptr() != d.data_ptr() and c.shape == (16, 8)
    assert ws.held_bytes() == 16 * 8 * 4 + 64  # both kept (the 64 rounds up to a cache line)
    meta = torch.empty(1, device="meta")
    with ws.session():
        assert ws.empty((2,), meta).device.type == "meta" and ws.scratch("logits", (2,), meta).device.type == "meta"
