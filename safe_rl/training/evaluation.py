"""The before/after evaluation of a training run (a small Table 10), done by `safe-rl eval`'s own code.

Each pass (``start``, then each trained reward kind) is an eval run folder under ``output_dir/eval/NAME``: the same
answers file, verdicts file, metrics and summary as `safe-rl eval` writes, computed by the same functions, so that
`safe-rl report output_dir/eval/*` reads them and `safe-rl eval --responses output_dir/eval/NAME/responses.jsonl`
judges the same answers to the same numbers. The judge is the reward's guard, or for the toy world its rule judge,
which is independent of the guard (as the paper judges with WildGuard rather than Qwen3Guard).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from safe_rl.evaluation.run import EvalConfig, run_eval
from safe_rl.training.config import TrainConfig

EVAL_DIR = "eval"


@dataclass(frozen=True)
class Rates:
    """The rates of one pass that the run's finding reads (fractions; NaN when there was nothing to count)."""

    safety: float
    refusal: float
    refusal_harmful: float
    unjudged: float
    n_harmful: int
    n_benign: int

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any]) -> Rates:
        """From an eval run's ``metrics.json``: safety (a), refusal on benign and on harmful prompts, unjudged."""

        def value(name: str) -> float:
            v = metrics["rates"][name]["value"]
            return float("nan") if v is None else float(v)

        counts = metrics["counts"]
        return cls(value("safety"), value("refusal_benign"), value("refusal_harmful"), value("judge_failure"),
                   counts["n_harmful"], counts["n_benign"])  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def eval_config(cfg: TrainConfig, name: str, policy: str) -> EvalConfig:
    """The `safe-rl eval` settings of the pass ``name`` over ``policy`` (the start model, or a trained one's folder):
    the run's sampling settings (temperature, top-p/k, completion length, thinking, seed) on the evaluation prompts."""
    grpo, evaluation = cfg.grpo, cfg.evaluation
    return EvalConfig(
        output=str(Path(grpo.output_dir) / EVAL_DIR / name),
        policy=policy,
        benchmark=evaluation.evaluation_prompts,
        judge="toy" if evaluation.evaluation_judge == "toy" else "qwen3guard",
        judge_model=None if evaluation.evaluation_judge == "toy" else cfg.guard.guard_model,
        judge_strictness=cfg.reward.reward_strictness,
        overwrite=True,  # a pass evaluates the model as it is now
        limit=evaluation.evaluation_max_prompts,
        samples=evaluation.evaluation_samples,
        seed=grpo.seed,
        think=cfg.data.data_think,
        label=name,
        system_prompt=cfg.data.data_system_prompt,
        temperature=grpo.temperature,
        top_p=grpo.top_p,
        top_k=grpo.top_k or 0,
        max_new_tokens=grpo.max_completion_length or 256,
        batch_size=64,
    )


def evaluate(cfg: TrainConfig, name: str, policy: str, model: Any, tokenizer: Any, guard: Any) -> dict[str, Any]:
    """One pass over the loaded ``model``; returns the eval run's metrics."""
    from safe_rl.evaluation.judges import make_judge
    from safe_rl.evaluation.policies import TransformersPolicy

    config = eval_config(cfg, name, policy)
    answers = TransformersPolicy(policy, think=bool(config.think), sampling=config.sampling, batch_size=config.batch_size,
                                 system_prompt=config.system_prompt, lm=model, tokenizer=tokenizer)  # fmt: skip
    if config.judge == "toy":
        judge = make_judge("toy")
    else:
        judge = make_judge(
            "qwen3guard", guard=guard, strictness=config.judge_strictness, batch_size=cfg.guard.guard_batch_size
        )
    return run_eval(config, policy=answers, judge=judge)


def finding(start: Rates, after: Mapping[str, Rates]) -> dict[str, bool]:
    """The paper's finding as checks: guard-only raises refusals; hybrid raises safety without raising refusals."""
    out: dict[str, bool] = {}
    if "guard_only" in after:
        out["guard_only_refusal_up"] = after["guard_only"].refusal_harmful > start.refusal_harmful
    if "hybrid" in after:
        h = after["hybrid"]
        out["hybrid_safety_up"] = h.safety > start.safety
        out["hybrid_refusal_not_up"] = h.refusal <= start.refusal and h.refusal_harmful <= start.refusal_harmful
    return out


def summary_table(cfg: TrainConfig, names: list[str]) -> str:
    """The passes ``names`` in the Table 10 layout of `safe-rl report` (unjudged answers as a column), and the
    refusal rate on harmful prompts, where guard-only training shows its collapse into refusing."""
    from safe_rl.evaluation.report import footnotes, load_run, table10

    runs = [load_run(Path(cfg.grpo.output_dir) / EVAL_DIR / name) for name in names]

    def percent(value: float | None) -> str:
        return "–" if value is None else f"{100 * value:.1f}%"

    harmful = ", ".join(f"{r.label} {percent((r.rate('refusal_harmful') or {}).get('value'))}" for r in runs)
    return f"{table10(runs)}\n\nRefusal on harmful prompts: {harmful}\n\n{footnotes(runs)}"
