"""Coalescing per-sample reward calls into batches: verl's reward loop and OpenRLHF score one sample per call.

verl 0.9's reward loop calls the reward function once per sample, many at a time (sync functions on an executor's
threads, ``async def`` ones on its event loop); OpenRLHF posts one sample per request. A guard judges a batch far
faster than the same samples one by one, so `JudgeCoalescer` gathers the samples that arrive within ``window``
seconds of the first (up to ``max_batch``) and judges them with ONE ``reward.judge(prompts, completions)`` call:
the guard and the helpfulness model both see the whole batch, in a single dispatcher thread. Callers block
(`judge_one`, `judge_many`) or await (`ajudge_one`, `ajudge_many`); each gets its own samples' results.

* While a batch is being judged the next one gathers, so the batches grow with the load and the window only adds
  latency when the reward is idle.
* One batch at a time: the guard never sees more than ``max_batch`` samples at once, whatever the number of callers
  (the server's global concurrency limit rests on this).
* A failing sample fails alone: per-sample faults are already ``None`` in `RewardDetail`; if the batch call itself
  raises, its samples are judged one by one so that only the culprit gets the exception. Configuration errors
  (`rewards.loading.ModelLoadError`, `rewards.circuit_breaker.TrainingOnNothingError`) go to every caller.
* Fork-safe and picklable: the dispatcher thread and queue are rebuilt lazily in each process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from rewards.circuit_breaker import TrainingOnNothingError
from rewards.loading import ModelLoadError

logger = logging.getLogger(__name__)

DEFAULT_WINDOW = 0.005  # seconds to wait for more samples after the first one of a batch
DEFAULT_MAX_BATCH = 256  # samples per batch at most
_FATAL = (ModelLoadError, TrainingOnNothingError)


@dataclass
class _Job:
    prompts: list[Any]
    completions: list[Any]
    future: Future = field(default_factory=Future)


class JudgeCoalescer:
    """Batches concurrent single-sample (or small) ``judge`` calls of ``reward`` (see the module docstring).

    Args:
        reward: a `rewards.GuardOnlyReward` / `rewards.HybridReward` (anything with ``judge(prompts, completions)``).
        window: seconds a batch waits for more samples after its first (0: take only what is already queued).
        max_batch: samples per batch at most (a caller's samples are never split across batches, so one large
            call may exceed it).

    Example:
        >>> from concurrent.futures import ThreadPoolExecutor
        >>> from rewards import GuardOnlyReward, Verdict
        >>> class CountingGuard:
        ...     calls = 0
        ...     def moderate(self, conversations):
        ...         CountingGuard.calls += 1
        ...         return [Verdict(safety="Unsafe" if "bomb" in c[-1]["content"] else "Safe") for c in conversations]
        >>> coalescer = JudgeCoalescer(GuardOnlyReward(CountingGuard()), window=0.05)
        >>> with ThreadPoolExecutor(8) as pool:
        ...     details = list(pool.map(coalescer.judge_one, ["Hi"] * 8, ["Hello!", "a bomb"] * 4))
        >>> [d.reward for d in details], CountingGuard.calls < 8
        ([1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0], True)
    """

    def __init__(self, reward: Any, *, window: float = DEFAULT_WINDOW, max_batch: int = DEFAULT_MAX_BATCH):
        if window < 0 or max_batch < 1:
            raise ValueError(f"window must be >= 0 and max_batch >= 1, got {window}, {max_batch}")
        self.reward = reward
        self.window = window
        self.max_batch = max_batch
        self.batches = 0  # batches judged, for logs and benchmarks
        self._start_lock = threading.Lock()
        self._pid: int | None = None
        self._queue: queue.SimpleQueue[_Job] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_start_lock=None, _pid=None, _queue=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._start_lock = threading.Lock()

    # -- submitting ---------------------------------------------------------------------------------------------
    def submit(self, prompts: Sequence[Any], completions: Sequence[Any]) -> Future:
        """Queue samples for the next batch; the future gives their `RewardDetail` list, in order."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        job = _Job(list(prompts), list(completions))
        if not job.prompts:
            job.future.set_result([])
        else:
            self._jobs().put(job)
        return job.future

    def judge_many(self, prompts: Sequence[Any], completions: Sequence[Any]) -> list[Any]:
        """`RewardDetail` of each (prompt, completion), judged in a shared batch (blocks until done)."""
        return self.submit(prompts, completions).result()

    def judge_one(self, prompt: Any, completion: Any) -> Any:
        """The `RewardDetail` of one sample, judged in a shared batch (blocks until done)."""
        return self.judge_many([prompt], [completion])[0]

    async def ajudge_many(self, prompts: Sequence[Any], completions: Sequence[Any]) -> list[Any]:
        """Awaitable `judge_many`: the event loop stays free while the batch is judged."""
        return await asyncio.wrap_future(self.submit(prompts, completions))

    async def ajudge_one(self, prompt: Any, completion: Any) -> Any:
        """Awaitable `judge_one`."""
        return (await self.ajudge_many([prompt], [completion]))[0]

    # -- dispatching --------------------------------------------------------------------------------------------
    def _jobs(self) -> queue.SimpleQueue[_Job]:
        if self._pid != os.getpid():  # first use in this process (or a forked child: the thread did not come along)
            with self._start_lock:
                if self._pid != os.getpid():
                    self._queue = queue.SimpleQueue()
                    thread = threading.Thread(
                        target=self._run, args=(self._queue,), name="safe-rl-judge-coalescer", daemon=True
                    )
                    thread.start()
                    self._pid = os.getpid()
        return self._queue  # type: ignore[return-value]

    def _gather(self, jobs: queue.SimpleQueue[_Job]) -> list[_Job]:
        batch = [jobs.get()]
        size = len(batch[0].prompts)
        deadline = time.monotonic() + self.window
        while size < self.max_batch:
            try:
                job = jobs.get(timeout=max(deadline - time.monotonic(), 0.0)) if self.window else jobs.get_nowait()
            except queue.Empty:
                break
            batch.append(job)
            size += len(job.prompts)
        return batch

    def _run(self, jobs: queue.SimpleQueue[_Job]) -> None:
        while True:
            # A caller that gave up (a cancelled future: an asyncio timeout, a closed connection) is dropped here;
            # the others' futures cannot be cancelled from now on.
            batch = [job for job in self._gather(jobs) if job.future.set_running_or_notify_cancel()]
            if not batch:
                continue
            try:
                self._judge(batch)
            except BaseException as exc:  # never let the dispatcher die with callers waiting
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)

    def _judge(self, batch: list[_Job]) -> None:
        prompts = [p for job in batch for p in job.prompts]
        completions = [c for job in batch for c in job.completions]
        self.batches += 1
        try:
            details = self.reward.judge(prompts, completions)
        except _FATAL as exc:
            for job in batch:
                job.future.set_exception(exc)
            return
        except Exception:
            if len(batch) == 1:
                raise
            logger.exception("judging a batch of %d samples raised; judging its callers one by one", len(prompts))
            for job in batch:
                try:
                    self._judge([job])
                except Exception as exc:
                    job.future.set_exception(exc)
            return
        start = 0
        for job in batch:
            job.future.set_result(details[start : start + len(job.prompts)])
            start += len(job.prompts)
