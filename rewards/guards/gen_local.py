"""In-process Qwen3Guard-Gen with transformers: shared prefixes computed once, length-bucketed, exact greedy verdicts.

What a batch of guard inputs costs here, and why the result is still that of plain greedy decoding:

* Shared prefixes (`rewards.guards.prefix_cache`): the instruction text before the first content is the same for
  every ``[user]`` input and for every ``[user, assistant]`` input; its keys/values are computed once per backend
  and copied into each row. Inputs that also share their prompt (a GRPO group's answers and thinking blocks) share
  the prompt's keys/values too, computed once per call.
* Length buckets: rows are sorted by what is left to compute and cut into batches by rows and padded tokens.
  A Qwen3 guard with SDPA (CPU or GPU) runs our own forward pass (`rewards.guards.rows_forward`): attention reads
  the cache without copying key/value heads (and on the CPU skips the causal half of each row's new tokens),
  element-wise work is fused, and the decoding passes of all batches run as one.
* The last decoder layer runs in full only at the positions whose scores are read; elsewhere it computes just the
  keys and values later passes attend to (`rewards.guards.last_layer`).
* Batches decoded side by side (a "wave", bounded by ``max_wave_tokens``) share one LM-head call per pass, and
  the head runs only at the positions rows read.
* Verdict decoding (`rewards.guards.verdict_decode`): ``Safety:`` is read with the input, the format's fixed
  tokens are proposed and checked in the same passes, rows stop when their verdict lines are complete (or at the
  end of the turn) and leave the batch. Token for token greedy decoding's output.
* On the CPU, each wave's key/value buffers and the LM head's scores reuse memory kept from the call before
  (`rewards.guards.workspace`) instead of pages the kernel maps and zeroes anew on every call.
* Label probabilities (`rewards.guards.label_probs`): P(Safe/Unsafe/Controversial) after ``Safety:`` lands on
  `Verdict.probs`; `moderate_safety` stops each row right there (one forward pass per input) when only the label
  is needed.

Duplicates are removed before this backend by `rewards.Qwen3GuardGen` (see `rewards.guards.base.dedupe`).
"""

from __future__ import annotations

import copy
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria

from rewards.conversation import Conversation
from rewards.devices import resolve_device, resolve_dtype
from rewards.guard_prompt import GuardPrompt, PreparedInput
from rewards.guards.base import conversation_key
from rewards.guards.kv_rows import KVRows, stack
from rewards.guards.prefix_cache import common_prefix_len, extend, length_batches
from rewards.guards.verdict_decode import RowState, VerdictDecoder, complete_lines
from rewards.guards.workspace import Workspace
from rewards.verdict import Verdict, failed_verdict, parse_verdict

logger = logging.getLogger(__name__)

MIN_SHARED = 8  # a group prefix shorter than this (beyond the template's) is not worth a separate pass
# Kept between calls on the CPU for a wave's key/value buffers and the LM head's scores (`rewards.guards.workspace`).
# The bench_reward inputs need ~0.9 GB of it; a larger wave reuses this much and allocates the rest.
WORKSPACE_BYTES = 2 << 30


def newline_counts(tokenizer: Any) -> torch.Tensor:
    """How many newlines each token id decodes to (byte-level BPE vocabularies write "\\n" as "Ċ")."""
    size = max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)
    counts = torch.zeros(size, dtype=torch.long)
    for token, idx in tokenizer.get_vocab().items():
        n = token.count("\u010a") + token.count("\n")
        if n:
            counts[idx] = n
    return counts


class VerdictComplete(StoppingCriteria):
    """For ``generate``: stops a row once it has produced the complete, non-blank lines its verdict needs.

    The in-process backend decodes with `rewards.guards.verdict_decode` and the same rule; this criterion gives
    plain ``generate`` the same stopping point (the exactness tests compare the two).
    """

    def __init__(self, tokenizer: Any, prompt_length: int, needed_lines: list[int], counts: torch.Tensor):
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.needed_lines = needed_lines
        self.counts = counts
        self.done = torch.zeros(len(needed_lines), dtype=torch.bool)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        counts = self.counts.to(input_ids.device)
        last = input_ids[:, -1].clamp(max=counts.numel() - 1)
        for row in (counts[last] > 0).nonzero().flatten().tolist():
            text = self.tokenizer.decode(input_ids[row, self.prompt_length :], skip_special_tokens=True)
            if complete_lines(text) >= self.needed_lines[row]:
                self.done[row] = True
        return self.done.to(input_ids.device)


@dataclass
class _Job:
    index: int
    prepared: PreparedInput
    ids: list[int]
    group: str  # inputs that share a prompt group (answers to one prompt); a prompt input is a group of its own
    start: int = 0  # tokens held by the row's prefix state
    source: tuple[KVRows, int] | None = None  # (state, row) holding ids[:start]


def _group_key(index: int, prepared: PreparedInput) -> str:
    messages = prepared.messages
    return f"{prepared.response}:{conversation_key(messages[:-1]) if prepared.response else index}"


class LocalGenBackend:
    """Runs a Qwen3Guard-Gen checkpoint in this process. Built by `rewards.Qwen3GuardGen`; see its arguments.

    ``model`` may also be a loaded causal LM (then ``tokenizer`` names the tokenizer); ``max_batch_tokens`` bounds
    rows x padded length per forward batch; ``max_wave_tokens`` bounds the padded tokens of the batches decoded side by
    side (their states are held together; each decoding pass puts them through the LM head in one call);
    ``max_batch_padding`` is the padding a batch may add beyond its real tokens, as a fraction (default 0.02 on the
    CPU, 0.1 elsewhere; see `rewards.guards.prefix_cache.length_batches`);
    ``logits_processor`` (a transformers ``LogitsProcessor`` or list) is
    applied wherever the decoder reads next-token scores, as ``generate`` would apply it (benchmarks force a fixed
    verdict on random-weight models with it) and sees the last ``processor_context`` input tokens (None: all).
    Inputs are rendered in the calling thread and tokenized on a few threads sharing the tokenizer's encoder
    (`GuardPrompt.prepare_many`). ``workspace_bytes``: memory kept between calls for each wave's key/value buffers
    and the LM head's scores (`rewards.guards.workspace`; default 2 GiB on the CPU, where it spares the page faults
    of fresh memory, and 0 elsewhere; ``self.workspace.release()`` frees it). ``stats`` accumulates tokens and
    seconds per phase.
    """

    def __init__(
        self,
        *,
        model: Any,
        tokenizer: str | None = None,
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int = 32,
        max_input_tokens: int = 8192,
        max_new_tokens: int = 32,
        model_kwargs: dict[str, Any] | None = None,
        max_batch_tokens: int = 32768,
        max_wave_tokens: int = 65536,
        max_batch_padding: float | None = None,
        logits_processor: Any = None,
        processor_context: int | None = None,
        workspace_bytes: int | None = None,
    ):
        loaded = not isinstance(model, str)
        self.device = resolve_device(device) if device or not loaded else model.device
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or model)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if loaded:
            self.model = model
        else:
            self.model = AutoModelForCausalLM.from_pretrained(
                model, dtype=resolve_dtype(dtype, self.device), **(model_kwargs or {})
            )
        self.model.to(self.device).eval()
        self.prompt = GuardPrompt(self.tokenizer, max_input_tokens=max_input_tokens)
        self.max_input_tokens = max_input_tokens
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_wave_tokens = max_wave_tokens
        # Padding costs like real tokens. On the CPU (no idle parallel units to fill) tighter buckets were faster on
        # the bench_reward inputs, interleaved: 0.02 against 0.1, label only -12%, full verdicts -2.5% (more batches
        # cost more later passes). Elsewhere fuller batches keep the device busy.
        self.max_batch_padding = (
            max_batch_padding if max_batch_padding is not None else (0.02 if self.device.type == "cpu" else 0.1)
        )
        self.max_new_tokens = max_new_tokens
        self.generation_config = self._greedy_config()
        if workspace_bytes is None:
            workspace_bytes = WORKSPACE_BYTES if self.device.type == "cpu" else 0
        self.workspace = Workspace(workspace_bytes)
        self.decoder = VerdictDecoder(
            self.model,
            self.tokenizer,
            max_new_tokens=max_new_tokens,
            eos_ids=self.generation_config.eos_token_id,
            newline_ids=set((newline_counts(self.tokenizer) > 0).nonzero().flatten().tolist()),
            pad_id=self.tokenizer.pad_token_id,
            logits_processor=logits_processor,
            processor_context=processor_context,
            workspace=self.workspace,
        )
        self._templates: dict[bool, tuple[list[int], KVRows]] = {}
        self.stats: Counter = Counter()

    @property
    def logits_processor(self) -> Any:
        return self.decoder.logits_processor

    @logits_processor.setter
    def logits_processor(self, value: Any) -> None:
        self.decoder.logits_processor = value

    def _greedy_config(self) -> Any:
        config = copy.deepcopy(self.model.generation_config)
        # Guard checkpoints ship sampling defaults for chat use; a verdict must be greedy and reproducible.
        config.do_sample = False
        config.temperature = config.top_p = config.top_k = config.min_p = None
        config.num_beams = 1
        config.max_new_tokens = self.max_new_tokens
        config.pad_token_id = self.tokenizer.pad_token_id
        eos = config.eos_token_id if config.eos_token_id is not None else []
        eos = [eos] if isinstance(eos, int) else list(eos)
        for token in ("<|im_end|>", "<|endoftext|>", self.tokenizer.eos_token):
            idx = self.tokenizer.convert_tokens_to_ids(token) if token else None
            if isinstance(idx, int) and idx >= 0 and idx != self.tokenizer.unk_token_id and idx not in eos:
                eos.append(idx)
        config.eos_token_id = eos
        return config

    def prepare(self, conversation: Conversation) -> PreparedInput:
        return self.prompt.prepare(conversation)

    def moderate(self, conversations: Sequence[Conversation], *, safety_only: bool = False) -> list[Verdict]:
        """One verdict per conversation, in input order; ``safety_only`` see `moderate_safety`."""
        results: list[Verdict | None] = [None] * len(conversations)
        jobs: list[_Job] = []
        t0 = time.perf_counter()
        for i, prepared in enumerate(self.prompt.prepare_many(conversations)):
            if isinstance(prepared, Exception):
                results[i] = failed_verdict(f"bad conversation: {prepared}")
            else:
                jobs.append(_Job(index=i, prepared=prepared, ids=prepared.input_ids, group=_group_key(i, prepared)))
        self.stats["prepare_s"] += time.perf_counter() - t0
        for chunk in self._chunks(jobs):
            self._share_prefixes(chunk)
            for job, verdict in self._decode(chunk, safety_only):
                results[job.index] = verdict
        self.stats.update(self.decoder.stats)
        self.decoder.stats.clear()
        return [v if v is not None else failed_verdict("not judged") for v in results]

    def moderate_safety(self, conversations: Sequence[Conversation]) -> list[Verdict]:
        """Safety label and label probabilities only, one forward pass per input.

        Each row stops at the first token of its label, so ``category`` and ``refusal`` are None (not judged). The
        label is the one greedy decoding starts to write; an input whose verdict would turn out malformed further
        on is not caught here (a full `moderate` would return it as a failure). A guard that does not begin with
        ``Safety:`` is decoded in full for that input.
        """
        return self.moderate(conversations, safety_only=True)

    # -- planning ---------------------------------------------------------------------------------------------
    def _chunks(self, jobs: list[_Job]) -> list[list[_Job]]:
        """Jobs in runs of whole prompt groups, so that a group's shared prefix lives only while it is needed."""
        groups: dict[str, list[_Job]] = {}
        for job in jobs:
            groups.setdefault(job.group, []).append(job)
        chunks, current, limit = [], [], 8 * self.batch_size
        for members in groups.values():
            current.extend(members)
            if len(current) >= limit:
                chunks.append(current)
                current = []
        return [*chunks, current] if current else chunks

    def _template(self, response: bool) -> tuple[list[int], KVRows]:
        """Token ids (and their keys/values) of the template text before the first content, for a kind of input."""
        if response not in self._templates:
            probes = [
                [{"role": "user", "content": c}, {"role": "assistant", "content": c}][: 2 if response else 1]
                for c in ("x", "y")
            ]
            ids = [self.prompt.prepare(p).input_ids for p in probes]
            prefix = ids[0][: common_prefix_len(ids)]
            state, _ = extend(self.model, None, [prefix], pad_id=self.tokenizer.pad_token_id, keep=0)
            self.stats["prefix_tokens"] += len(prefix)
            self._templates[response] = (prefix, state)
        return self._templates[response]

    @torch.inference_mode()
    def _share_prefixes(self, jobs: list[_Job]) -> None:
        """Point each job at the longest prefix state it can use: its group's, else its kind's template."""
        t0 = time.perf_counter()
        for job in jobs:
            prefix, state = self._template(job.prepared.response)
            if len(job.ids) > len(prefix) and job.ids[: len(prefix)] == prefix:
                job.start, job.source = len(prefix), (state, 0)
        groups: dict[str, list[_Job]] = {}
        for job in jobs:
            if job.source is not None and job.prepared.response:
                groups.setdefault(job.group, []).append(job)
        shared = []
        for members in groups.values():
            ids = [m.ids for m in members]
            length = min(common_prefix_len(ids), min(len(x) for x in ids) - 1)
            if len(members) > 1 and length - members[0].start >= MIN_SHARED:
                shared.append((members, length))
        segments = [members[0].ids[members[0].start : length] for members, length in shared]
        lengths = [len(s) for s in segments]
        for batch in self._batches(lengths):
            base = self._template(True)[1].select([0] * len(batch))  # every group is of answers
            state, _ = extend(
                self.model, base, [segments[b] for b in batch], pad_id=self.tokenizer.pad_token_id, keep=0
            )
            self.stats["group_tokens"] += sum(len(segments[b]) for b in batch)
            for row, b in enumerate(batch):
                members, length = shared[b]
                for m in members:
                    m.start, m.source = length, (state, row)
        self._sync()
        self.stats["prefix_s"] += time.perf_counter() - t0

    # -- decoding ---------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def _decode(self, jobs: list[_Job], safety_only: bool) -> list[tuple[_Job, Verdict]]:
        out = []
        with_prefix = [j for j in jobs if j.source is not None]
        without = [j for j in jobs if j.source is None]  # a template that renders content into its prefix
        for part in (with_prefix, without):
            lengths = [len(j.ids) - j.start for j in part]
            batches = self._batches(lengths)
            for wave in self._waves(batches, lengths):
                t0 = time.perf_counter()
                groups = [[part[b] for b in batch] for batch in wave]
                with self.workspace.session():  # the wave's states live in it: none outlives the session
                    states = [self._stack(group) for group in groups]  # (orders each group's rows)
                    self._sync()
                    self.stats["stack_s"] += time.perf_counter() - t0
                    rows = [[self.decoder.new_row(j.ids, j.prepared.response) for j in group] for group in groups]
                    rest = [[j.ids[j.start :] for j in group] for group in groups]
                    self.decoder.run_batches(list(zip(states, rows, rest, strict=True)), safety_only=safety_only)
                    del states
                for group, group_rows in zip(groups, rows, strict=True):
                    self.stats["input_tokens"] += sum(len(j.ids) for j in group)
                    self.stats["rest_tokens"] += sum(len(j.ids) - j.start for j in group)
                    self.stats["generated_tokens"] += sum(len(r.generated) for r in group_rows)
                    out.extend((j, self._verdict(j, r)) for j, r in zip(group, group_rows, strict=True))
                self._sync()
                self.stats["decode_s"] += time.perf_counter() - t0
        return out

    def _batches(self, lengths: list[int]) -> list[list[int]]:
        return length_batches(
            lengths, max_rows=self.batch_size, max_tokens=self.max_batch_tokens, max_waste=self.max_batch_padding
        )

    def _waves(self, batches: list[list[int]], lengths: list[int]) -> list[list[list[int]]]:
        """Consecutive batches whose states are held together (at most ``max_wave_tokens`` padded tokens)."""
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

    def _stack(self, group: list[_Job]) -> KVRows | None:
        """The prefix state of a batch: its rows' sources side by side (None when the rows have no prefix), with
        room for their inputs and a verdict's passes (written in place, see `rewards.guards.kv_rows`)."""
        if group[0].source is None:
            return None
        group.sort(key=lambda j: id(j.source[0]))  # rows of one state side by side: one select each
        parts: dict[int, tuple[KVRows, list[int]]] = {}
        for j in group:
            parts.setdefault(id(j.source[0]), (j.source[0], []))[1].append(j.source[1])
        room = max(len(j.ids) - j.start for j in group) + 2 * self.max_new_tokens  # drafts rejected on the way too
        return stack(list(parts.values()), room=room, empty=self.workspace.empty)

    def _verdict(self, job: _Job, row: RowState) -> Verdict:
        if row.label is not None:  # stopped at the label (moderate_safety)
            return Verdict(
                safety=row.label, raw=f"Safety: {row.label}", probs=row.probs, truncated=job.prepared.truncated
            )
        text = self.tokenizer.decode(row.generated, skip_special_tokens=True)
        verdict = parse_verdict(text)
        return replace(verdict, truncated=job.prepared.truncated, probs=row.probs if verdict.ok else None)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
