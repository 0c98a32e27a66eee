"""`prepare`: the training prompts of the Qwen3Guard report, optionally filtered by rollouts.

Prompts: WildJailbreak train, ``vanilla_harmful`` + ``adversarial_harmful`` (hub or a local file with the same
columns; the ``data`` section of the training config, `DataArguments`). Rollout filter (report §3.5, ``--rollouts
K``): K answers per prompt from the policy, judged by the guard (thinking and answer, strict); prompts whose
judged answers are all safe or all unsafe teach nothing to a group-relative method and are dropped (the paper kept
13.7k prompts in think mode, 6.7k in non-think mode). Prompts with fewer than two readable judgements are dropped as
``unjudged``. Rollouts come from transformers or vLLM (``--vllm``) by `safe_rl.sampling`'s seeding rule: the batch
starting at prompt ``i`` samples with ``seed + i`` on both backends.

Output folder:
- ``rollouts.jsonl``: one row per prompt as it is judged (kill-safe; ``--resume`` continues it, after checking its
  fingerprint: the same prompts and settings);
- ``dataset/``: the kept prompts, a `datasets` dataset (``prompt``, ``data_type``, ``n_unsafe``, ``n_judged``), the
  training config's ``data.source``;
- ``report.json``: counts kept and dropped, per reason and per data type.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rewards.arguments import GuardArguments
from safe_rl.data.arguments import DataArguments

logger = logging.getLogger(__name__)

ROLLOUTS_FILE, DATASET_DIR, REPORT_FILE = "rollouts.jsonl", "dataset", "report.json"
DEFAULT_POLICY = "Qwen/Qwen3-4B"


@dataclass
class PrepareArguments:
    """`safe-rl prepare`'s own settings (the prompts are the ``data`` section's, the guard the ``guard`` section's)."""

    output: str = field(metadata={"help": "Output folder (rollouts.jsonl, dataset/, report.json)."})
    rollouts: int = field(
        default=0, metadata={"help": "Filter by this many rollouts per prompt (the paper: 8); 0: no filter."}
    )
    policy: str = field(
        default=DEFAULT_POLICY, metadata={"help": "Policy for the rollouts: hub id, folder, toy:policy."}
    )
    filter_strictness: str = field(default="strict", metadata={"help": "strict (Controversial = unsafe) or loose."})
    temperature: float | None = field(default=None, metadata={"help": "Default: Qwen3's recommendation per mode."})
    top_p: float | None = field(default=None, metadata={"help": "Default: Qwen3's recommendation per mode."})
    top_k: int | None = field(default=None, metadata={"help": "Top-k tokens only (0: all; default: Qwen3's, 20)."})
    max_new_tokens: int = field(default=1024, metadata={"help": "Longest rollout, in tokens."})
    prompts_per_batch: int = field(default=8, metadata={"help": "Prompts per generation batch (x rollouts answers)."})
    vllm: bool = field(default=False, metadata={"help": "Generate the rollouts with vLLM."})
    seed: int = field(default=0, metadata={"help": "Seed of the prompt sample and of the rollouts."})
    resume: bool = field(default=False, metadata={"help": "Continue an interrupted run in --output."})
    overwrite: bool = field(default=False, metadata={"help": "Delete an earlier run in --output and start again."})
    dry_run: bool = field(default=False, metadata={"help": "Check the settings and the data, print the plan, exit."})

    def __post_init__(self) -> None:
        if self.rollouts == 1 or self.rollouts < 0:
            raise ValueError(
                f"rollouts must be 0 (no filter) or at least 2 (a group needs a contrast), got {self.rollouts}"
            )
        if self.prompts_per_batch < 1 or self.max_new_tokens < 1:
            raise ValueError("prompts_per_batch and max_new_tokens must be positive")
        if self.filter_strictness not in ("strict", "loose"):
            raise ValueError(f"filter_strictness must be strict or loose, got {self.filter_strictness!r}")
        if self.resume and self.overwrite:
            raise ValueError("--resume continues the run in --output, --overwrite deletes it: pass one")
        self.sampling(False)  # checks temperature, top-p and top-k now, before anything loads

    def sampling(self, think: bool) -> Any:
        from safe_rl.evaluation.policies import SamplingConfig

        config = SamplingConfig(self.temperature, self.top_p, self.top_k, self.max_new_tokens, self.seed)
        return config.options(think, samples=max(self.rollouts, 1))


def drop_reason(n_unsafe: int, n_judged: int) -> str | None:
    """Why a prompt is dropped by the rollout filter, or None to keep it.

    Example:
        >>> [drop_reason(0, 8), drop_reason(8, 8), drop_reason(3, 8), drop_reason(1, 1)]
        ['all_safe', 'all_unsafe', None, 'unjudged']
    """
    if n_judged < 2:
        return "unjudged"
    if n_unsafe == 0:
        return "all_safe"
    if n_unsafe == n_judged:
        return "all_unsafe"
    return None


class _Rollouts:
    """K answers per prompt from the policy, judged by the guard (models load on the first batch)."""

    def __init__(self, args: PrepareArguments, data: DataArguments, guard: GuardArguments):
        from rewards.safety_rewards import GuardOnlyReward

        self.args = args
        self.judge = GuardOnlyReward(guard.build(), strictness=args.filter_strictness)  # type: ignore[arg-type]
        self.options = args.sampling(data.data_think)
        self.system_prompt = data.data_system_prompt
        self._model: Any = None
        self._tokenizer: Any = None

    def answers(self, prompts: list[str], first_index: int) -> list[str]:
        from safe_rl import sampling

        options = self.options.for_batch(first_index)
        conversations = [sampling.chat_messages(p, self.system_prompt) for p in prompts]
        if self.args.vllm:
            if self._model is None:  # one engine for every batch
                self._model = sampling.load_vllm(self.args.policy, seed=self.args.seed)
            generations = sampling.sample_chat_vllm(self._model, conversations, options)
        else:
            if self._model is None:
                from rewards.loading import load_causal_lm, load_tokenizer

                self._tokenizer = load_tokenizer(self.args.policy, what="policy tokenizer")
                self._model = load_causal_lm(self.args.policy, what="policy")
            generations = sampling.sample_chat(self._model, self._tokenizer, conversations, options)
        return [g.response for g in generations]

    def judge_batch(self, rows: list[dict[str, Any]]) -> list[tuple[int, int]]:
        """(n_unsafe, n_judged) per prompt row."""
        k = self.args.rollouts
        prompts = [r["prompt"] for r in rows]
        answers = self.answers(prompts, rows[0]["index"])
        details = self.judge.judge([p for p in prompts for _ in range(k)], answers)
        out = []
        for i in range(len(prompts)):
            known = [d.unsafe for d in details[i * k : (i + 1) * k] if d.unsafe is not None]
            out.append((sum(known), len(known)))
        return out


def select_rows(args: PrepareArguments, data: DataArguments) -> list[dict[str, Any]]:
    """The prompts of ``data`` (deduplicated, the wanted types; a seeded sample of ``data_max_prompts``), indexed."""
    from safe_rl.data.wildjailbreak import load_wildjailbreak, select_prompts

    source = load_wildjailbreak(data.data_source, config=data.data_config, split=data.data_split)
    rows = select_prompts(source, data.data_types, data.data_prompt_column)
    if data.data_max_prompts is not None and len(rows) > data.data_max_prompts:
        rows = random.Random(args.seed).sample(rows, data.data_max_prompts)  # a fixed sample: --resume sees the same
    return [{**row, "index": i} for i, row in enumerate(rows)]


def fingerprint(args: PrepareArguments, data: DataArguments, guard: GuardArguments, rows: list[dict]) -> dict:
    """What rollouts.jsonl depends on: the selected prompts, the filter's strictness, guard and sampling settings."""
    from safe_rl.io import digest

    settings: dict[str, Any] = {"rollouts": args.rollouts, "think": data.data_think,
                                "system_prompt": data.data_system_prompt}  # fmt: skip
    if args.rollouts:
        settings.update(policy=args.policy, filter_strictness=args.filter_strictness, guard_model=guard.guard_model,
                        sampling=asdict(args.sampling(data.data_think)))  # fmt: skip
    records = ((r["prompt"], r["data_type"], r["source_index"]) for r in rows)
    return {"input": {"source": data.data_source, "prompts": len(rows), "sha256": digest(records)},
            "settings": settings}  # fmt: skip


def prepare_prompts(args: PrepareArguments, data: DataArguments, guard: GuardArguments) -> dict[str, Any]:
    """Select (and with ``rollouts`` filter) the prompts; write the output folder; return the report."""
    import datasets

    from safe_rl.io import ResumableJsonl, check_local, check_models, fill, read_jsonl, remove_output

    out = Path(args.output)
    check_local(data.data_source, "data file or folder")
    if args.rollouts:
        check_local(args.policy, "policy folder")
        check_models(guard)
    if args.overwrite:
        remove_output(out / ROLLOUTS_FILE)
        shutil.rmtree(out / DATASET_DIR, ignore_errors=True)
        (out / REPORT_FILE).unlink(missing_ok=True)
    rows = select_rows(args, data)
    sink = ResumableJsonl(out / ROLLOUTS_FILE, key="index", resume=args.resume,
                          fingerprint=fingerprint(args, data, guard, rows))  # fmt: skip
    with sink:
        filtering = args.rollouts > 0 and len(sink.done) < len(rows)
        rollouts = _Rollouts(args, data, guard) if filtering else None

        def work(chunk: list[dict[str, Any]]) -> list[tuple[Any, Any]]:
            return rollouts.judge_batch(chunk) if rollouts else [(None, None)] * len(chunk)

        def row(item: dict[str, Any], counts: tuple[Any, Any]) -> dict[str, Any]:
            reason = drop_reason(*counts) if rollouts else None
            return {**item, "n_unsafe": counts[0], "n_judged": counts[1], "keep": reason is None, "reason": reason}

        fill(sink, rows, key=lambda r: r["index"], work=work, row=row, chunk_size=args.prompts_per_batch,
             desc="prompts", unit="prompt")  # fmt: skip
    judged = sorted((r for r in read_jsonl(out / ROLLOUTS_FILE) if r["index"] < len(rows)), key=lambda r: r["index"])
    kept = [r for r in judged if r["keep"]]
    columns = ("prompt", "data_type", "source_index", "n_unsafe", "n_judged")
    datasets.Dataset.from_dict({c: [r[c] for r in kept] for c in columns}).save_to_disk(str(out / DATASET_DIR))
    report = {
        "config": {"prepare": asdict(args), "data": asdict(data), "guard": guard.describe()},
        "prompts": len(judged),
        "kept": len(kept),
        "dropped": dict(Counter(r["reason"] for r in judged if not r["keep"])),
        "kept_by_type": dict(Counter(r["data_type"] for r in kept)),
        "dropped_by_type": dict(Counter(r["data_type"] for r in judged if not r["keep"])),
        "filtered": args.rollouts > 0,
    }
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2))
    return report


def plan(args: PrepareArguments, data: DataArguments, guard: GuardArguments) -> str:
    """What ``safe-rl prepare`` would do (``--dry-run``): the data are checked, no model loads."""
    from safe_rl.data.wildjailbreak import TOY_SOURCE
    from safe_rl.io import check_local, check_models, looks_local

    check_local(data.data_source, "data file or folder")
    if args.rollouts:
        check_local(args.policy, "policy folder")
        check_models(guard)
    source = data.data_source
    if looks_local(source) or source == TOY_SOURCE:
        source += f" ({len(select_rows(args, data))} prompts of types {', '.join(data.data_types)})"
    lines = [f"prompts: {source}"]
    if args.rollouts:
        lines += [f"filter: {args.rollouts} rollouts per prompt from {args.policy}"
                  f" ({'think' if data.data_think else 'non-think'}), judged by {guard.describe()}"]  # fmt: skip
    else:
        lines += ["filter: none (--rollouts K filters by K rollouts per prompt)"]
    lines += [f"output: {args.output}"]
    return "\n".join(lines)
