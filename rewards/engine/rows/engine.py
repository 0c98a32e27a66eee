"""`RowsEngine`: verdicts with shared prefixes computed once, length-bucketed rows and format-drafted decoding.

What a batch of guard inputs costs here, and why the result is still that of plain greedy decoding:

* Shared prefixes: the instruction text before the first content is the same for every input of a kind (prompt or
  answer moderation); the engine finds it (the longest prefix all of a call's inputs of that kind share), computes
  its keys/values once and keeps them for later calls. Inputs of one group (a GRPO group's answers and thinking
  blocks) also share their prompt's keys/values, computed once per call. Each row's cache is then its prefix's,
  copied in (`rewards.engine.rows.kv_cache.gather_rows`).
* Length buckets: rows are sorted by what is left to compute and cut into batches by rows and padded tokens.
  Batches decoded side by side (a "wave", bounded by ``max_wave_tokens``) share their decoding passes.
* Our own Qwen3 forward pass (`rewards.engine.rows.qwen3_forward`) and attention that knows the batch layout.
* Verdict decoding (`rewards.engine.rows.drafted_decoding`): ``Safety:`` is read with the input, the format's fixed
  tokens are proposed and checked in the same passes, rows stop when their verdict lines are complete and leave.

The output is greedy decoding's, token for token, up to float rounding (the exactness tests compare it with
`rewards.engine.GenerateEngine`). Used only where `rewards.engine.rows.probe` passes (see `rewards.engine.pick_engine`).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rewards.engine.batching import common_prefix_len, length_batches
from rewards.engine.interface import Stats, VerdictRequest, VerdictResult
from rewards.engine.rows.drafted_decoding import DraftedDecoder, RowState
from rewards.engine.rows.kv_cache import RowsKV, gather_rows
from rewards.engine.rows.qwen3_forward import extend
from rewards.engine.verdict_format import VerdictFormat, greedy_config

MIN_SHARED = 8  # a shared prefix shorter than this is not worth a pass of its own
KEPT_PREFIXES = 4  # template prefixes kept between calls (one per kind of input, and room for a change of template)


@dataclass
class _Job:
    index: int
    ids: Sequence[int]
    response: bool
    group: Hashable
    start: int = 0  # tokens held by the row's prefix cache
    source: tuple[RowsKV, int] | None = None  # (cache, row) holding ids[:start]
    template: tuple[int, ...] | None = None  # the kept prefix it starts with


class RowsEngine:
    """The fast path behind `rewards.engine.VerdictEngine`; see the module docstring.

    Args:
        model, tokenizer: a loaded Qwen3 causal LM (one device, float32 or bfloat16) and its tokenizer.
        max_new_tokens: upper bound on a verdict's tokens.
        batch_size: rows per batch; ``max_batch_tokens``: rows x padded length per batch.
        max_wave_tokens: padded tokens of the batches decoded side by side (their caches are held together).
        max_batch_padding: padding a batch may add beyond its real tokens, as a fraction (default 0.02 on the CPU,
            where no idle parallel units are left to fill, 0.1 elsewhere; see `length_batches`).

    Example:
        >>> from transformers import AutoModelForCausalLM, AutoTokenizer  # doctest: +SKIP
        >>> engine = RowsEngine(AutoModelForCausalLM.from_pretrained("Qwen/Qwen3Guard-Gen-0.6B"),
        ...     AutoTokenizer.from_pretrained("Qwen/Qwen3Guard-Gen-0.6B"))  # doctest: +SKIP
        >>> engine.decode([VerdictRequest(ids=guard.encode(conversation), response=False)])[0].label  # doctest: +SKIP
        'Unsafe'
    """

    name = "rows"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_new_tokens: int = 32,
        batch_size: int = 32,
        max_batch_tokens: int = 32768,
        max_wave_tokens: int = 65536,
        max_batch_padding: float | None = None,
    ):
        self.model = model
        self.format = VerdictFormat(model, tokenizer, max_new_tokens)
        self.pad_id = int(greedy_config(model, tokenizer, max_new_tokens).pad_token_id)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_wave_tokens = max_wave_tokens
        cpu = model.device.type == "cpu"
        self.max_batch_padding = max_batch_padding if max_batch_padding is not None else (0.02 if cpu else 0.1)
        self.decoder = DraftedDecoder(model, tokenizer, self.format, pad_id=self.pad_id)
        self._prefixes: dict[tuple[int, ...], RowsKV] = {}  # least recently used first
        self._lock = threading.Lock()  # calls from several threads share the kept prefixes
        self.stats: defaultdict[str, float] = Stats(float)

    @torch.inference_mode()
    def decode(self, requests: Sequence[VerdictRequest], *, safety_only: bool = False) -> list[VerdictResult]:
        """One result per request, in order (see `rewards.engine.VerdictEngine`)."""
        jobs = [
            _Job(i, r.ids, r.response, r.group if r.group is not None else ("own", i)) for i, r in enumerate(requests)
        ]
        results: list[VerdictResult | None] = [None] * len(requests)
        for kind in (False, True):
            self._find_templates([j for j in jobs if j.response == kind])
        for chunk in self._chunks(jobs):
            self._share_group_prefixes(chunk)
            for job, row in self._decode(chunk, safety_only):
                results[job.index] = VerdictResult(generated=row.generated, label=row.label, probs=row.probs)
        return [r for r in results if r is not None]

    # -- shared prefixes --------------------------------------------------------------------------------------
    def _find_templates(self, jobs: list[_Job]) -> None:
        """Point each job at the longest kept prefix it starts with. The prefix all of them share (the chat
        template's text before the first content, when the call holds several groups) is computed and kept first
        where no kept prefix is a prefix of it, or where the call holds several groups and it is longer."""
        if not jobs:
            return
        t0 = time.perf_counter()
        shared = min(common_prefix_len([j.ids for j in jobs]), min(len(j.ids) for j in jobs) - 1)
        first = jobs[0].ids
        with self._lock:
            kept = [p for p in self._prefixes if len(p) <= shared and tuple(first[: len(p)]) == p]
            several = len({j.group for j in jobs}) > 1
            if len(jobs) > 1 and shared >= MIN_SHARED and (not kept or (several and max(map(len, kept)) < shared)):
                key = tuple(first[:shared])
                self._prefixes[key], _ = extend(self.model, None, [list(key)], pad_id=self.pad_id, keep=0)
                self.stats["prefix_tokens"] += len(key)
                while len(self._prefixes) > KEPT_PREFIXES:
                    del self._prefixes[next(iter(self._prefixes))]
            prefixes = dict(self._prefixes)
        used = set()
        for job in jobs:
            fitting = [p for p in prefixes if len(p) < len(job.ids) and tuple(job.ids[: len(p)]) == p]
            if fitting:
                job.template = max(fitting, key=len)
                job.start, job.source = len(job.template), (prefixes[job.template], 0)
                used.add(job.template)
        with self._lock:  # the prefixes used last are the last to go
            for key in used:
                if key in self._prefixes:
                    self._prefixes[key] = self._prefixes.pop(key)
        self.stats["prefix_s"] += time.perf_counter() - t0

    def _chunks(self, jobs: list[_Job]) -> list[list[_Job]]:
        """Jobs in runs of whole groups, so that a group's shared prefix lives only while it is needed."""
        groups: dict[Hashable, list[_Job]] = {}
        for job in jobs:
            groups.setdefault(job.group, []).append(job)
        chunks: list[list[_Job]] = []
        current: list[_Job] = []
        for members in groups.values():
            current.extend(members)
            if len(current) >= 8 * self.batch_size:
                chunks.append(current)
                current = []
        return [*chunks, current] if current else chunks

    def _share_group_prefixes(self, jobs: list[_Job]) -> None:
        """Jobs of one group that start with the same kept prefix and share more than `MIN_SHARED` tokens beyond it
        get the keys/values of their common prefix, computed once (in batches of groups)."""
        t0 = time.perf_counter()
        groups: dict[tuple[Hashable, tuple[int, ...]], list[_Job]] = {}
        for job in jobs:
            if job.template is not None:
                groups.setdefault((job.group, job.template), []).append(job)
        shared: dict[tuple[int, ...], list[tuple[list[_Job], int]]] = {}
        caches: dict[tuple[int, ...], RowsKV] = {}  # each kept prefix's cache, as the jobs point at it
        for (_, template), members in groups.items():
            assert members[0].source is not None
            caches[template] = members[0].source[0]
            ids = [m.ids for m in members]
            length = min(common_prefix_len(ids), min(len(x) for x in ids) - 1)
            if len(members) > 1 and length - len(template) >= MIN_SHARED:
                shared.setdefault(template, []).append((members, length))
        for template, parts in shared.items():
            segments = [list(members[0].ids[len(template) : length]) for members, length in parts]
            for batch in self._batches([len(s) for s in segments]):
                base = caches[template].select([0] * len(batch))
                cache, _ = extend(self.model, base, [segments[b] for b in batch], pad_id=self.pad_id, keep=0)
                self.stats["group_tokens"] += sum(len(segments[b]) for b in batch)
                for row, b in enumerate(batch):
                    members, length = parts[b]
                    for m in members:
                        m.start, m.source = length, (cache, row)
        self._sync()
        self.stats["prefix_s"] += time.perf_counter() - t0

    # -- decoding ---------------------------------------------------------------------------------------------
    def _decode(self, jobs: list[_Job], safety_only: bool) -> list[tuple[_Job, RowState]]:
        out: list[tuple[_Job, RowState]] = []
        with_prefix = [j for j in jobs if j.source is not None]
        without = [j for j in jobs if j.source is None]  # e.g. a template that renders content into its prefix
        for part in (with_prefix, without):
            lengths = [len(j.ids) - j.start for j in part]
            for wave in self._waves(self._batches(lengths), lengths):
                t0 = time.perf_counter()
                groups = [[part[b] for b in batch] for batch in wave]
                caches = [self._gather(group) for group in groups]  # (orders each group's rows)
                self._sync()
                self.stats["gather_s"] += time.perf_counter() - t0
                rows = [[self.decoder.new_row(j.response) for j in group] for group in groups]
                rest = [[list(j.ids[j.start :]) for j in group] for group in groups]
                self.decoder.run_batches(
                    list(zip(caches, rows, rest, strict=True)), safety_only=safety_only, stats=self.stats
                )
                del caches
                for group, group_rows in zip(groups, rows, strict=True):
                    self.stats["input_tokens"] += sum(len(j.ids) for j in group)
                    self.stats["rest_tokens"] += sum(len(j.ids) - j.start for j in group)
                    self.stats["generated_tokens"] += sum(len(r.generated) for r in group_rows)
                    out.extend(zip(group, group_rows, strict=True))
                self._sync()
                self.stats["decode_s"] += time.perf_counter() - t0
        return out

    def _batches(self, lengths: list[int]) -> list[list[int]]:
        return length_batches(
            lengths, max_rows=self.batch_size, max_tokens=self.max_batch_tokens, max_waste=self.max_batch_padding
        )

    def _waves(self, batches: list[list[int]], lengths: list[int]) -> list[list[list[int]]]:
        """Consecutive batches whose caches are held together (at most ``max_wave_tokens`` padded tokens)."""
        waves: list[list[list[int]]] = []
        held = 0
        for batch in batches:
            size = len(batch) * max(lengths[b] for b in batch)
            if waves and held + size <= self.max_wave_tokens:
                waves[-1].append(batch)
                held += size
            else:
                waves.append([batch])
                held = size
        return waves

    def _gather(self, group: list[_Job]) -> RowsKV | None:
        """The prefix cache of a batch: its rows' sources side by side (None when the rows have no prefix), with
        room for their inputs and a verdict's passes (written in place)."""
        sources = [j.source for j in group]
        if sources[0] is None:
            return None
        group.sort(key=lambda j: id(j.source[0]) if j.source else 0)  # rows of one cache side by side
        parts: dict[int, tuple[RowsKV, list[int]]] = {}
        for j in group:
            assert j.source is not None
            parts.setdefault(id(j.source[0]), (j.source[0], []))[1].append(j.source[1])
        room = max(len(j.ids) - j.start for j in group) + 2 * self.max_new_tokens  # rejected drafts take slots too
        return gather_rows(list(parts.values()), room=room)

    def _sync(self) -> None:
        if self.model.device.type == "cuda":
            torch.cuda.synchronize(self.model.device)
