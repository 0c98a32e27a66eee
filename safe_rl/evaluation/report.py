"""Reports: runs side by side in the layout of the Qwen3Guard report's Table 10, and a safety-vs-refusal plot.

Table 10 has one row per model and, per mode (think / non-think), the safety rate by each judge and the refusal
rate. Here any number of run folders fill that grid: a run is one (model, mode, judge) cell group, matched by its
label. Each rate is a percentage with its bootstrap 95% interval; beside them, the share of unjudged answers, which
count against the policy in both rates (`safe_rl.evaluation.metrics`). `answer_pairs` puts the answers of two runs
to the same prompts side by side, with their verdicts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from safe_rl.evaluation.judges import judge_label

logger = logging.getLogger(__name__)

T = TypeVar("T")

SAFETY_CHOICES = ("safety", "safety_refusal")
_SAFETY_NAMES = {"safety": "(a) not judged 'Harmful response: yes'", "safety_refusal": "(b) 1 - attack success"}


@dataclass(frozen=True)
class RunSummary:
    """A finished run folder: its label, mode, judge, benchmark and metrics."""

    path: Path
    label: str
    mode: str
    judge: str
    judge_label: str
    independent: bool
    benchmark: str
    metrics: dict[str, Any]

    def rate(self, name: str) -> dict[str, Any] | None:
        return self.metrics["rates"].get(name)

    def safety(self, definition: str = "safety") -> tuple[dict[str, Any] | None, bool]:
        """(rate, on harmful prompts): falls back to every prompt when the benchmark has no harmful label."""
        if self.metrics["counts"]["n_harmful"]:
            return self.rate(definition), True
        return self.rate("safety_all"), False

    def unjudged(self) -> str:
        """The unjudged answers as "7.8 (5/64)": percent, then count of all answers."""
        c = self.metrics["counts"]
        return f"{100 * c['judge_failures'] / c['n']:.1f} ({c['judge_failures']}/{c['n']})" if c["n"] else "–"

    def refusal(self) -> tuple[dict[str, Any] | None, bool]:
        """(rate, on benign prompts): the over-refusal rate, or the overall rate without benign prompts."""
        if self.metrics["counts"]["n_benign"]:
            return self.rate("refusal_benign"), True
        return self.rate("refusal"), False


def load_run(path: str | Path) -> RunSummary:
    """Read a run folder written by `safe_rl.evaluation.run.run_eval`."""
    path = Path(path)
    metrics_file, run_file = path / "metrics.json", path / "run.json"
    if not metrics_file.exists():
        hint = " (unfinished: continue it with `safe-rl eval ... --resume`)" if run_file.exists() else ""
        raise FileNotFoundError(f"{path}: no metrics.json{hint}")
    metrics = json.loads(metrics_file.read_text())
    judge = metrics.get("judge", {})
    name = judge.get("judge", "?")
    return RunSummary(
        path=path,
        label=metrics.get("label", path.name),
        mode=metrics.get("mode", "?"),
        judge=name,
        judge_label=judge_label(name, str(judge.get("model", ""))),
        independent=bool(judge.get("independent_of_training", True)),
        benchmark=metrics.get("benchmark", {}).get("name", "?"),
        metrics=metrics,
    )


def fmt_rate(rate: dict[str, Any] | None, mark: str = "") -> str:
    """A rate as "98.1 [97.5, 98.7]" (percent), or "–" when there is none.

    Example:
        >>> fmt_rate({"value": 0.981, "ci95": [0.975, 0.987]})
        '98.1 [97.5, 98.7]'
    """
    if not rate or rate.get("value") is None:
        return "–"
    low, high = rate["ci95"]
    return f"{100 * rate['value']:.1f}{mark} [{100 * low:.1f}, {100 * high:.1f}]"


def _judge_column(run: RunSummary) -> str:
    return run.judge_label + ("†" if not run.independent else "")


def _unique(values: Iterable[T]) -> list[T]:
    return list(dict.fromkeys(values))


def table10(runs: Sequence[RunSummary], *, safety: str = "safety") -> str:
    """The Table 10 grid: one row per model (and benchmark, when several), per mode: safety by each judge ↑,
    refusal by each judge ↓, then the unjudged answers by each judge."""
    if safety not in SAFETY_CHOICES:
        raise ValueError(f"safety must be one of {SAFETY_CHOICES}, got {safety!r}")
    modes, judges = _unique([r.mode for r in runs]), _unique([_judge_column(r) for r in runs])
    several_benchmarks = len({r.benchmark for r in runs}) > 1
    cells: dict[tuple[str, str, str, str], RunSummary] = {}
    for run in runs:
        key = (run.label, run.benchmark, run.mode, _judge_column(run))
        if key in cells:
            logger.warning("%s and %s fill the same cell %s; the later one is shown", cells[key].path, run.path, key)
        cells[key] = run
    prefix = (lambda m: f"{m} · ") if len(modes) > 1 else (lambda m: "")
    header = ["Model"] + (["Benchmark"] if several_benchmarks else [])
    for mode in modes:
        header += [f"{prefix(mode)}Safety ({j}) ↑" for j in judges]
        header += [f"{prefix(mode)}Refusal ({j}) ↓" for j in judges]
        header += [f"{prefix(mode)}Unjudged ({j})" for j in judges]
    body = []
    for label, bench in _unique((r.label, r.benchmark) for r in runs):
        row = [label] + ([bench] if several_benchmarks else [])
        for mode, what in [(mode, what) for mode in modes for what in ("safety", "refusal", "unjudged")]:
            for judge in judges:
                run = cells.get((label, bench, mode, judge))
                if run is None:
                    row.append("–")
                elif what == "unjudged":
                    row.append(run.unjudged())
                elif what == "safety":
                    value, on_harmful = run.safety(safety)
                    row.append(fmt_rate(value, "" if on_harmful else "*"))
                else:
                    value, on_benign = run.refusal()
                    row.append(fmt_rate(value, "" if on_benign else "*"))
        body.append(row)
    # Only the (mode, judge) columns some run fills.
    keep = [
        i
        for i in range(len(header))
        if i < len(header) - len(modes) * len(judges) * 3 or any(r[i] != "–" for r in body)
    ]
    lines = ["| " + " | ".join(header[i] for i in keep) + " |", "|" + "---|" * len(keep)]
    lines += ["| " + " | ".join(r[i] for i in keep) + " |" for r in body]
    return "\n".join(lines)


def footnotes(runs: Sequence[RunSummary], *, safety: str = "safety") -> str:
    notes = [
        f"Safety: share of answers to harmful prompts judged safe, definition {_SAFETY_NAMES[safety]}. "
        "Refusal: share of answers to benign prompts judged 'Response refusal: yes' (over-refusal). "
        "Percent, with bootstrap 95% intervals.",
        "Unjudged: answers whose judgement could not be read, percent (count/all). They stay in every denominator "
        "and count against the policy: as harmful on harmful prompts, as a refusal on benign ones.",
    ]
    if any(not r.metrics["counts"]["n_harmful"] or not r.metrics["counts"]["n_benign"] for r in runs):
        notes.append("\\* no harmful (or benign) label in the benchmark: the rate is over all prompts.")
    failing = [r for r in runs if r.metrics["counts"]["judge_failures"]]
    for run in failing:
        c = run.metrics["counts"]
        notes.append(f"**{c['judge_failures']} of {c['n']} answers unjudged** in {run.path} "
                     f"({run.label}, {run.mode}, {_judge_column(run)}).")  # fmt: skip
    if any(not r.independent for r in runs):
        notes.append("† Qwen3Guard is the training reward model: NOT independent of training (metric hacking).")
    return "\n".join(f"- {n}" for n in notes)


def details_table(runs: Sequence[RunSummary]) -> str:
    """Every rate of every run, including both safety definitions and the judge failures."""
    header = [
        "Run",
        "Model",
        "Mode",
        "Benchmark",
        "Judge",
        "n (harmful/benign)",
        "Safety (a)",
        "Safety (b)",
        "Attack success",
        "Refusal",
        "Refusal benign",
        "Refusal harmful",
        "Unjudged",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        c = run.metrics["counts"]
        failures = f"{c['judge_failures']} ({fmt_rate(run.rate('judge_failure'))})"
        cells = [
            str(run.path),
            run.label,
            run.mode,
            run.benchmark,
            _judge_column(run),
            f"{c['n']} ({c['n_harmful']}/{c['n_benign']})",
        ]
        cells += [
            fmt_rate(run.rate(k))
            for k in ("safety", "safety_refusal", "attack_success", "refusal", "refusal_benign", "refusal_harmful")
        ]
        lines.append("| " + " | ".join(cells + [failures]) + " |")
    return "\n".join(lines)


def category_table(run: RunSummary) -> str:
    """Per-subcategory breakdown of one run."""
    lines = ["| Subcategory | n | Safety (a) | Safety (b) | Refusal | Unjudged |", "|---|---|---|---|---|---|"]
    for name, group in run.metrics.get("by_category", {}).items():
        r = group["rates"]
        cells = [
            name,
            str(group["counts"]["n"]),
            fmt_rate(r["safety"]),
            fmt_rate(r["safety_refusal"]),
            fmt_rate(r["refusal"]),
            str(group["counts"]["judge_failures"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def runs_markdown(runs: Sequence[RunSummary], *, details: bool = True, safety: str = "safety") -> str:
    """The whole report: Table 10 grid, its notes, and (``details``) every rate and the per-subcategory tables."""
    if not runs:
        raise ValueError("no runs to report")
    parts = [
        "# Safety and refusal (layout of the Qwen3Guard report, Table 10)",
        "",
        table10(runs, safety=safety),
        "",
        footnotes(runs, safety=safety),
    ]
    if details:
        parts += ["", "## All rates", "", details_table(runs)]
        for run in runs:
            if run.metrics.get("by_category"):
                title = f"## {run.label} ({run.mode}, {_judge_column(run)}, {run.benchmark}): by subcategory"
                parts += ["", title, "", category_table(run)]
    return "\n".join(parts) + "\n"


def verdict(row: dict[str, Any]) -> str:
    """A judged sample row in one word: unjudged, harmful, refusal, N/A (empty answer) or answered.

    Example:
        >>> verdict({"parse_error": False, "refusal": True, "harmful_response": False})
        'refusal'
    """
    if row.get("parse_error"):
        return "unjudged"
    if row.get("harmful_response") is True:
        return "harmful"
    if row.get("refusal") is True:
        return "refusal"
    if row.get("refusal") is None or row.get("harmful_response") is None:
        return "N/A"
    return "answered"


def _samples(run: RunSummary) -> dict[str, dict[str, Any]]:
    from safe_rl.io import read_jsonl

    path = run.path / "samples.jsonl"
    return {r["id"]: r for r in read_jsonl(path)} if path.exists() else {}


def _short(text: str, width: int = 240) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def answer_pairs(runs: Sequence[RunSummary], n: int = 3) -> str:
    """The answers of the first run and of each other run to the same prompts, with their verdicts: ``n`` prompts
    per pair of runs, those whose verdict changed first, harmful prompts before benign ones."""
    if len(runs) < 2:
        raise ValueError("answer pairs need two runs or more (the first one is the baseline)")
    base, parts = _samples(runs[0]), []
    for run in runs[1:]:
        other = _samples(run)
        common = [i for i in base if i in other]
        changed = {i for i in common if verdict(base[i]) != verdict(other[i])}
        chosen = sorted(common, key=lambda i: (i not in changed, base[i].get("harmful") is not True, i))[:n]
        title = f"## Answers side by side: {runs[0].label} → {run.label}"
        parts += [title, "", f"{len(chosen)} of {len(common)} shared prompts; {len(changed)} changed verdict.", ""]
        for i in chosen:
            kind = {True: "harmful", False: "benign"}.get(base[i].get("harmful"), "unlabelled")
            parts += [f"**{i}** ({kind}): {_short(base[i]['prompt'], 160)}",
                      f"- {runs[0].label} [{verdict(base[i])}]: {_short(base[i].get('answer', ''))}",
                      f"- {run.label} [{verdict(other[i])}]: {_short(other[i].get('answer', ''))}", ""]  # fmt: skip
    return "\n".join(parts).rstrip() + "\n"


def plot_runs(runs: Sequence[RunSummary], path: str | Path, *, safety: str = "safety") -> Path:
    """A PNG of safety rate (y) against refusal rate (x), one point per run with its 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5.5), dpi=150)
    markers = dict(zip(_unique([_judge_column(r) for r in runs]), "osD^vP*X", strict=False))
    for run in runs:
        s, _ = run.safety(safety)
        f, _ = run.refusal()
        if not s or not f or s["value"] is None or f["value"] is None:
            logger.warning("%s: no safety or refusal rate to plot", run.path)
            continue
        x, y = 100 * f["value"], 100 * s["value"]
        xerr = [[x - 100 * f["ci95"][0]], [100 * f["ci95"][1] - x]]
        yerr = [[y - 100 * s["ci95"][0]], [100 * s["ci95"][1] - y]]
        name = f"{run.label} ({run.mode}, {_judge_column(run)})"
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt=markers.get(_judge_column(run), "o"), capsize=3, label=name)
    ax.set_xlabel("Refusal rate on benign prompts (%) ↓")
    ax.set_ylabel(f"Safety rate on harmful prompts (%) ↑  [{safety}]")
    ax.set_xlim(-2, 102)
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.set_title("Safety vs refusal (bootstrap 95% intervals)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
