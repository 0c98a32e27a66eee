"""Run summaries: the per-step metrics a GRPO run logged (JSON) and a plot of them (PNG).

The plot has two rows, each panel saying what it shows. The first row is training: per step, the mean reward of
each reward kind on its own axis (guard-only is 0-1, hybrid is the helpfulness score capped at -5/-10), and the
guard's verdicts on the training rollouts (safe, refusal and unjudged shares). The second row, when the run was
evaluated, is the independent judge on held-out prompts before and after training (safety on harmful prompts,
refusal on benign prompts, unjudged answers, with their 95% intervals).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SUMMARY_JSON = "run_summary.json"
SUMMARY_PNG = "run_summary.png"
REWARD_AXES = {
    "guard_only": "mean reward, guard-only\n(1 = thinking and answer safe)",
    "hybrid": "mean reward, hybrid\n(helpfulness; ≤ -5 refusal, ≤ -10 unsafe)",
}
GUARD_PANELS: tuple[tuple[str, str], ...] = (
    ("guard/safety_rate", "guard: safe share of rollouts"),
    ("guard/refusal_rate", "guard: refusal share of rollouts"),
    ("guard/failure_rate", "guard: unjudged share of rollouts"),
)
EVAL_BARS: tuple[tuple[str, str], ...] = (
    ("safety", "safety on harmful prompts ↑"),
    ("refusal_benign", "refusal on benign prompts ↓"),
    ("judge_failure", "unjudged answers"),
)
COLOURS = {"start": "#8c8c8c", "guard_only": "#d95f02", "hybrid": "#1b9e77"}
_OTHER_COLOURS = ("#7570b3", "#e7298a", "#66a61e", "#e6ab02")


def step_metrics(log_history: Sequence[Mapping[str, Any]]) -> list[dict[str, float]]:
    """The training log's per-step entries (numbers only, with ``step``), without the end-of-training totals.

    Example:
        >>> step_metrics([{"step": 1, "reward": 0.5, "x": "s"}, {"step": 1, "train_runtime": 3.0}])
        [{'step': 1, 'reward': 0.5}]
    """
    steps = []
    for entry in log_history:
        if "step" not in entry or "train_runtime" in entry:
            continue
        row = {k: float(v) for k, v in entry.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        row["step"] = int(entry["step"])
        steps.append(row)
    return steps


def _series(steps: Sequence[Mapping[str, float]], key: str) -> tuple[list[int], list[float]]:
    points = [(int(s["step"]), s[key]) for s in steps if key in s and not math.isnan(s[key])]
    return [p[0] for p in points], [p[1] for p in points]


def colour(name: str, names: Sequence[str]) -> str:
    """A run's colour, the same in every panel (start grey, guard-only orange, hybrid green)."""
    others = [n for n in names if n not in COLOURS]
    return COLOURS.get(name) or _OTHER_COLOURS[others.index(name) % len(_OTHER_COLOURS)]


def plot_runs(
    runs: Mapping[str, Sequence[Mapping[str, float]]],
    path: str | Path,
    *,
    evaluations: Mapping[str, Mapping[str, Any]] | None = None,
    judge: str = "judge",
    title: str = "Safety RL run",
) -> Path:
    """One PNG: training curves of ``runs`` (name -> `step_metrics`), and with ``evaluations`` (name -> an eval
    run's metrics, ``start`` first) the held-out rates by ``judge``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys([*(evaluations or {}), *runs]))
    rewards = [(kind, label) for kind, label in REWARD_AXES.items() if kind in runs]
    rewards += [(kind, f"mean reward, {kind}") for kind in runs if kind not in REWARD_AXES]
    top = len(rewards) + len(GUARD_PANELS)
    rows = 2 if evaluations else 1
    fig = plt.figure(figsize=(3.3 * top, 3.4 * rows + 0.9), dpi=110)
    grid = fig.add_gridspec(rows, top)
    for i, (kind, label) in enumerate(rewards):
        ax = fig.add_subplot(grid[0, i])
        xs, ys = _series(runs[kind], "reward")
        ax.plot(xs, ys, marker="o", markersize=3, color=colour(kind, names))
        ax.set_title(f"{label}", fontsize=9)
    for j, (key, label) in enumerate(GUARD_PANELS):
        ax = fig.add_subplot(grid[0, len(rewards) + j])
        for name, steps in runs.items():
            xs, ys = _series(steps, key)
            ax.plot(xs, ys, marker="o", markersize=3, color=colour(name, names))
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(label, fontsize=9)
    for ax in fig.axes:
        ax.set_xlabel("training step", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    if evaluations:
        _evaluation_row(fig, grid, evaluations, names, judge)
    handles = [plt.Line2D([], [], color=colour(n, names), marker="s", linestyle="", markersize=8) for n in names]
    fig.legend(handles, names, loc="upper right", ncol=len(names), fontsize=9, frameon=False)
    fig.suptitle(title, x=0.01, ha="left", fontsize=11)
    fig.text(0.01, 0.955 if rows == 2 else 0.92, "Top: the reward's guard on the training rollouts, per step."
             + (f"  Bottom: an independent judge ({judge}) on held-out prompts, before and after training, with "
                "95% intervals." if evaluations else ""), fontsize=8, ha="left", va="top")  # fmt: skip
    fig.tight_layout(rect=(0, 0, 1, 0.95 if rows == 2 else 0.88))
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def _evaluation_row(fig: Any, grid: Any, evaluations: Mapping[str, Mapping[str, Any]], names: list[str], judge: str):
    ax = fig.add_subplot(grid[1, :])
    runs = list(evaluations)
    width = 0.8 / max(len(runs), 1)
    for r, name in enumerate(runs):
        rates = evaluations[name]["rates"]
        for b, (key, _) in enumerate(EVAL_BARS):
            rate = rates.get(key) or {}
            if rate.get("value") is None:
                continue
            x, y = b + (r - (len(runs) - 1) / 2) * width, 100 * rate["value"]
            low, high = (100 * v for v in rate["ci95"])
            ax.bar(x, y, width * 0.9, color=colour(name, names), yerr=[[y - low], [high - y]], capsize=3)
            ax.text(x, high + 1.5, f"{y:.0f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(EVAL_BARS)), [label for _, label in EVAL_BARS], fontsize=9)
    ax.set_ylim(0, 115)
    ax.set_ylabel("% of answers", fontsize=9)
    ax.set_title(f"{judge} on held-out prompts (independent of the reward's guard)", fontsize=9)
    ax.grid(alpha=0.3, axis="y")


def write_run_summary(
    log_history: Sequence[Mapping[str, Any]],
    output_dir: str | Path,
    *,
    name: str = "run",
    extra: dict | None = None,
    evaluations: Mapping[str, Mapping[str, Any]] | None = None,
    judge: str = "judge",
) -> dict[str, Any]:
    """Write ``run_summary.json`` (every logged step) and ``run_summary.png`` into ``output_dir``; return the JSON.

    Example:
        >>> import tempfile
        >>> out = write_run_summary([{"step": 1, "reward": 0.2, "guard/safety_rate": 0.5}], tempfile.mkdtemp())
        >>> out["steps"][0]["guard/safety_rate"], out["final"]["reward"]
        (0.5, 0.2)
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    steps = step_metrics(log_history)
    final: dict[str, float] = {}
    for row in steps:
        final.update({k: v for k, v in row.items() if not math.isnan(v)})
    summary = {"name": name, "steps": steps, "final": final, **(extra or {})}
    (output_dir / SUMMARY_JSON).write_text(json.dumps(summary, indent=2, allow_nan=True))
    plot_runs({name: steps}, output_dir / SUMMARY_PNG, evaluations=evaluations, judge=judge,
              title=f"Training run {name!r}")  # fmt: skip
    return summary
