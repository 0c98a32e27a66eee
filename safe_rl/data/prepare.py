"""`prepare`: the training prompts of the Qwen3Guard report, optionally filtered by rollouts.

Prompts: WildJailbreak train, ``vanilla_harmful`` + ``adversarial_harmful`` (hub or a local file with the same
columns). Rollout filter (report §3.5): ``k`` answers per prompt from the policy, judged by the guard (thinking and
answer, strict policy); prompts whose judged answers are all safe or all unsafe teach nothing to a group-relative
method and are dropped (the paper kept 13.7k prompts in think mode, 6.7k in non-think mode). Prompts with fewer than
two readable judgements are dropped as ``unjudged``. Rollouts come from transformers or vLLM (``vllm=True``) with the
same `SamplingOptions`; the batch starting at prompt ``i`` samples with ``seed + i`` on both backends.

Output folder:
- ``rollouts.jsonl``: one row per prompt as it is judged (kill-safe; ``resume=True`` continues it);
- ``dataset/``: the kept prompts, a `datasets` dataset (``prompt``, ``data_type``, ``n_unsafe``, ``n_judged``);
- ``report.json``: counts kept and dropped, per reason and per data type.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from safe_rl.data.wildjailbreak import HARMFUL_TYPES, HUB_ID, load_wildjailbreak, select_prompts

logger = logging.getLogger(__name__)

ROLLOUTS_FILE, DATASET_DIR, REPORT_FILE = "rollouts.jsonl", "dataset", "report.json"
# Qwen3's recommended sampling per mode (model card), used when temperature/top_p are not given.
QWEN3_SAMPLING = {True: (0.6, 0.95), False: (0.7, 0.8)}


@dataclass
class PrepareConfig:
    """Settings of `prepare_prompts` (the ``safe-rl prepare`` flags)."""

    output: str
    source: str = HUB_ID
    config: str | None = "train"
    split: str = "train"
    data_types: list[str] = field(default_factory=lambda: list(HARMFUL_TYPES))
    prompt_column: str | None = None
    max_prompts: int | None = None
    seed: int = 0
    filter: bool = False
    policy: str = "Qwen/Qwen3-4B"
    guard: str = "Qwen/Qwen3Guard-Gen-4B"
    guard_base_url: str | None = None
    guard_policy: str = "strict"
    k: int = 8
    think: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int = 0
    max_new_tokens: int = 1024
    prompts_per_batch: int = 8
    vllm: bool = False
    resume: bool = False

    def __post_init__(self) -> None:
        if self.k < 2:
            raise ValueError(f"k must be at least 2 (a group needs a contrast), got {self.k}")
        if self.prompts_per_batch < 1:
            raise ValueError("prompts_per_batch must be positive")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise ValueError("max_prompts must be positive")

    @property
    def sampling(self) -> tuple[float, float]:
        temperature, top_p = QWEN3_SAMPLING[self.think]
        return (self.temperature if self.temperature is not None else temperature, self.top_p or top_p)


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
    """k answers per prompt from the policy, judged by the guard."""

    def __init__(self, cfg: PrepareConfig):
        from rewards import GuardOnlyReward, Qwen3GuardGen
        from safe_rl.data.rollouts import SamplingOptions
        from safe_rl.training.config import resolve_model

        self.cfg = cfg
        guard_model = cfg.guard if cfg.guard_base_url else resolve_model(cfg.guard)
        self.judge = GuardOnlyReward(Qwen3GuardGen(guard_model, base_url=cfg.guard_base_url), policy=cfg.guard_policy)
        self.policy = resolve_model(cfg.policy)
        temperature, top_p = cfg.sampling
        self.options = SamplingOptions(
            samples=cfg.k,
            max_new_tokens=cfg.max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=cfg.top_k,
            chat_template_kwargs={"enable_thinking": cfg.think},
            seed=cfg.seed,
        )
        self._model: Any = None

    def answers(self, prompts: list[str], first_index: int) -> list[str]:
        """k answers per prompt; the batch starting at row ``first_index`` samples with seed + first_index (both
        backends), so batches differ and a resumed batch that starts at the same row draws the same answers."""
        from safe_rl.data import rollouts

        options = self.options.for_batch(first_index)
        if self.cfg.vllm:
            if self._model is None:  # one engine for every batch
                self._model = rollouts.load_vllm(self.policy, seed=self.cfg.seed)
            return rollouts.sample_answers_vllm(self._model, prompts, options)
        if self._model is None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.policy)
            self._model = AutoModelForCausalLM.from_pretrained(self.policy, dtype="auto", device_map="auto")
        return rollouts.sample_answers(self._model, self._tokenizer, prompts, options)

    def judge_batch(self, prompts: list[str], first_index: int) -> list[tuple[int, int]]:
        """(n_unsafe, n_judged) per prompt."""
        answers = self.answers(prompts, first_index)
        details = self.judge.judge([p for p in prompts for _ in range(self.cfg.k)], answers)
        out = []
        for i in range(len(prompts)):
            group = details[i * self.cfg.k : (i + 1) * self.cfg.k]
            known = [d.unsafe for d in group if d.unsafe is not None]
            out.append((sum(known), len(known)))
        return out


def prepare_prompts(cfg: PrepareConfig) -> dict[str, Any]:
    """Select (and optionally rollout-filter) the prompts; write the output folder; return the report."""
    import datasets
    from tqdm.auto import tqdm

    from safe_rl.io import ResumableJsonl, read_jsonl

    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    rows = select_prompts(
        load_wildjailbreak(cfg.source, config=cfg.config, split=cfg.split), cfg.data_types, cfg.prompt_column
    )
    if cfg.max_prompts is not None and len(rows) > cfg.max_prompts:
        rows = random.Random(cfg.seed).sample(rows, cfg.max_prompts)  # a fixed sample, so --resume sees the same
    for index, row in enumerate(rows):
        row["index"] = index
    rollouts_path = out / ROLLOUTS_FILE
    with ResumableJsonl(rollouts_path, key="index", resume=cfg.resume) as sink:
        todo = [r for r in rows if r["index"] not in sink.done]
        if cfg.resume and sink.done:
            logger.info("resuming: %d of %d prompts already judged", len(rows) - len(todo), len(rows))
        rollouts = _Rollouts(cfg) if cfg.filter and todo else None
        bar = tqdm(total=len(rows), initial=len(rows) - len(todo), desc="prompts", unit="prompt")
        for start in range(0, len(todo), cfg.prompts_per_batch):
            batch = todo[start : start + cfg.prompts_per_batch]
            if rollouts:
                counts = rollouts.judge_batch([r["prompt"] for r in batch], batch[0]["index"])
            else:
                counts = [(None, None)] * len(batch)
            for row, (n_unsafe, n_judged) in zip(batch, counts, strict=True):
                reason = drop_reason(n_unsafe, n_judged) if rollouts else None
                sink.write(
                    {**row, "n_unsafe": n_unsafe, "n_judged": n_judged, "keep": reason is None, "reason": reason}
                )
            bar.update(len(batch))
        bar.close()
    judged = sorted(read_jsonl(rollouts_path), key=lambda r: r["index"])
    judged = [r for r in judged if r["index"] < len(rows)]
    kept = [r for r in judged if r["keep"]]
    columns = ("prompt", "data_type", "source_index", "n_unsafe", "n_judged")
    dataset = datasets.Dataset.from_dict({c: [r[c] for r in kept] for c in columns})
    dataset.save_to_disk(str(out / DATASET_DIR))
    report = {
        "config": asdict(cfg),
        "prompts": len(judged),
        "kept": len(kept),
        "dropped": dict(Counter(r["reason"] for r in judged if not r["keep"])),
        "kept_by_type": dict(Counter(r["data_type"] for r in kept)),
        "dropped_by_type": dict(Counter(r["data_type"] for r in judged if not r["keep"])),
        "filtered": cfg.filter,
    }
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2))
    return report
