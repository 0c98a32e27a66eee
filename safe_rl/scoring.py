"""`safe-rl score`: judge (prompt, response) rows offline with the guard, and the hybrid reward when asked.

Rows are read from JSONL/CSV/TSV/Parquet, a saved dataset or a hub dataset, judged in batches, and written as each
batch finishes, with the input's own columns kept (`output_row`); ``--resume`` continues a killed run without losing
or duplicating rows (rows are keyed by their input index, and the output's fingerprint must match the input and
settings); ``--retry-failed`` judges the rows that failed again. The guard, the helpfulness model and the reward are
`rewards.arguments`' dataclasses, as in every command: ``--guard_model``, ``--helpfulness_model``, ``--reward_kind``.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import typer

from safe_rl.command_line import command

logger = logging.getLogger(__name__)

SCORE_HELP = (
    "Judge (prompt, response) rows with Qwen3Guard and score them with the reward (--reward_kind hybrid, "
    "the default, or guard_only). Writes a row per input (its columns kept) and a .summary.json; prints "
    "the summary."
)


@dataclass
class ScoreArguments:
    """`safe-rl score`'s own settings (the guard, helpfulness model and reward are `rewards.arguments`')."""

    input: str = field(metadata={"help": "JSONL/CSV/TSV/Parquet file, a saved dataset folder or a hub dataset id."})
    output: str = field(metadata={"help": "Output JSONL (a .summary.json and a .fingerprint.json go beside it)."})
    prompt_column: str = field(default="prompt", metadata={"help": "Column with the prompt (text or chat messages)."})
    response_column: str = field(default="response", metadata={"help": "Column with the response to judge."})
    input_split: str = field(default="train", metadata={"help": "Split of a hub dataset."})
    input_config: str | None = field(default=None, metadata={"help": "Configuration of a hub dataset."})
    batch_size: int = field(default=64, metadata={"help": "Rows per reward call."})
    limit: int | None = field(default=None, metadata={"help": "Score only the first N rows."})
    resume: bool = field(default=False, metadata={"help": "Continue an existing output file."})
    retry_failed: bool = field(default=False, metadata={"help": "With --resume: judge the rows that failed again."})
    overwrite: bool = field(default=False, metadata={"help": "Delete an existing output and start again."})
    dry_run: bool = field(default=False, metadata={"help": "Check the settings and the input, print the plan, exit."})

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be positive, got {self.limit}")
        if self.resume and self.overwrite:
            raise ValueError("--resume continues the output, --overwrite deletes it: pass one")
        if self.retry_failed and not self.resume:
            raise ValueError("--retry-failed goes with --resume (it judges an output's failed rows again)")


SCORE_COLUMNS = ("index", "prompt", "response", "safety", "category", "refusal", "thinking_safety", "unsafe",
                 "reward", "helpfulness", "failure", "truncated", "guard_raw")  # fmt: skip


def detail_row(index: int, prompt: Any, response: str, detail: Any) -> dict[str, Any]:
    """One output row's scores: the verdicts, the outcome, the reward and why."""
    answer, thinking = detail.answer, detail.thinking
    return {
        "index": index,
        "prompt": prompt,
        "response": response,
        "safety": answer.safety if answer else None,
        "category": answer.category if answer else None,
        "refusal": detail.refusal,
        "thinking_safety": thinking.safety if thinking else None,
        "unsafe": detail.unsafe,
        "reward": detail.reward,
        "helpfulness": detail.helpfulness,
        "failure": detail.failure,
        "truncated": any(v.truncated for v in detail.verdicts),
        "guard_raw": answer.raw if answer else None,
    }


def output_row(source: dict[str, Any], scores: dict[str, Any], consumed: tuple[str, ...]) -> dict[str, Any]:
    """The input row's own columns, then the scores; an input column named like a score column is kept as
    ``input_<name>`` (the prompt and response columns become ``prompt`` and ``response``).

    Example:
        >>> output_row({"q": "Hi", "a": "Yo", "reward": 3, "model": "m"}, {"index": 0, "reward": 1.0}, ("q", "a"))
        {'input_reward': 3, 'model': 'm', 'index': 0, 'reward': 1.0}
    """
    kept = {(f"input_{k}" if k in SCORE_COLUMNS else k): v for k, v in source.items() if k not in consumed}
    return {**kept, **scores}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts and means over scored rows: the mean reward and helpfulness are over the judged rows, and the unjudged
    rows (no reward: an unreadable verdict, a failed request) are counted and reported as a share.

    Example:
        >>> s = summarize([{"unsafe": False, "refusal": True, "safety": "Safe", "failure": None, "reward": -5.0,
        ...                 "helpfulness": 1.5}, {"failure": "unreadable verdict", "reward": None}])
        >>> s["refusals"], s["unjudged"], s["unjudged_share"], s["mean_reward"], s["mean_helpfulness"]
        (1, 1, 0.5, -5.0, 1.5)
    """
    safety = Counter(str(r.get("safety")) for r in rows)
    rewards = [r["reward"] for r in rows if r.get("reward") is not None]
    helpfulness = [r["helpfulness"] for r in rows if r.get("helpfulness") is not None]
    unjudged = sum(r.get("failure") is not None for r in rows)
    return {
        "rows": len(rows),
        "mean_reward": sum(rewards) / len(rewards) if rewards else None,
        "mean_helpfulness": sum(helpfulness) / len(helpfulness) if helpfulness else None,
        "unjudged": unjudged,
        "unjudged_share": unjudged / len(rows) if rows else None,
        "safe": sum(r.get("unsafe") is False for r in rows),
        "unsafe": sum(r.get("unsafe") is True for r in rows),
        "controversial": safety.get("Controversial", 0),
        "refusals": sum(r.get("refusal") is True for r in rows),
        "truncated": sum(bool(r.get("truncated")) for r in rows),
        "categories": dict(Counter(r["category"] for r in rows if r.get("unsafe") and r.get("category"))),
    }


def _load_input(args: ScoreArguments) -> Any:
    from safe_rl.io import check_local, load_rows

    check_local(args.input, "input file")
    data = load_rows(args.input, split=args.input_split, config=args.input_config)
    missing = {args.prompt_column, args.response_column} - set(data.column_names)
    if missing:
        raise ValueError(f"{args.input} has no column(s) {sorted(missing)}; columns: {data.column_names}")
    return data


def fingerprint(args: ScoreArguments, guard: Any, helpfulness: Any, reward: Any, data: Any) -> dict[str, Any]:
    """What the output rows depend on: every (prompt, response) of the input, and the scoring settings."""
    from safe_rl.io import digest

    settings: dict[str, Any] = {
        **asdict(reward),
        **{k: v for k, v in asdict(guard).items() if k in ("guard_model", "guard_kind", "guard_base_url",
                                                              "guard_tokenizer", "guard_max_input_tokens")},
        "prompt_column": args.prompt_column,
        "response_column": args.response_column,
    }  # fmt: skip
    if reward.reward_kind == "hybrid":
        settings.update(helpfulness_model=helpfulness.helpfulness_model, max_length=helpfulness.helpfulness_max_length)
    pairs = zip(data[args.prompt_column], data[args.response_column], strict=True)
    return {"input": {"source": args.input, "rows": len(data), "sha256": digest(pairs)}, "settings": settings}


def score_file(args: ScoreArguments, guard: Any, helpfulness: Any, reward: Any) -> dict[str, Any]:
    """Score every row of ``args.input`` into ``args.output`` (JSONL); return the summary. Everything is checked
    (settings, input, columns, an existing output's fingerprint) before a model loads."""
    from rewards.warmup import load_reward_models
    from safe_rl.io import ResumableJsonl, check_fingerprint, check_models, fill, read_jsonl, remove_output

    output = Path(args.output)
    check_models(guard, helpfulness if reward.reward_kind == "hybrid" else None)
    data = _load_input(args)
    if args.overwrite:
        remove_output(output)
    n = len(data) if args.limit is None else min(args.limit, len(data))
    retry = (lambda r: r.get("failure") is not None) if args.retry_failed else None
    # models load on the first call; building checks the combination (e.g. probability scores need a local guard)
    scorer = reward.build(guard.build(), helpfulness.build() if reward.reward_kind == "hybrid" else None)
    prints = fingerprint(args, guard, helpfulness, reward, data)
    if output.exists() and output.stat().st_size > 0:  # refused before any model loads, not after
        if not args.resume:
            raise FileExistsError(f"{output} exists; pass --resume to continue it or --overwrite to start again")
        check_fingerprint(output, prints)
    load_reward_models(scorer)  # a model that cannot load stops here: no file of failure rows
    sink = ResumableJsonl(output, key="index", resume=args.resume, fingerprint=prints, retry=retry)
    consumed = (args.prompt_column, args.response_column)

    def work(indices: list[int]) -> list[tuple[dict[str, Any], Any]]:
        rows = data.select(indices)
        prompts = rows[args.prompt_column]
        responses = [str(r) if r is not None else "" for r in rows[args.response_column]]
        details = scorer.judge(prompts, responses)
        return [(row, detail_row(i, p, r, d)) for i, row, p, r, d in zip(indices, rows, prompts, responses, details,
                                                                          strict=True)]  # fmt: skip

    with sink:
        fill(sink, list(range(n)), key=lambda i: i, work=work, row=lambda i, done: output_row(done[0], done[1],
             consumed), chunk_size=args.batch_size, desc="scoring", unit="row")  # fmt: skip
    summary = {"reward": reward.reward_kind, **summarize([r for r in read_jsonl(output) if r.get("index", -1) < n])}
    output.with_suffix(".summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def plan(args: ScoreArguments, guard: Any, helpfulness: Any, reward: Any) -> str:
    """What ``safe-rl score`` would do (``--dry-run``); a local input is read and its columns checked."""
    from safe_rl.io import check_models, looks_local

    check_models(guard, helpfulness if reward.reward_kind == "hybrid" else None)
    rows = f" ({len(_load_input(args))} rows)" if looks_local(args.input) else ""
    lines = [f"input: {args.input}{rows}", f"reward: {reward.reward_kind} ({reward.reward_strictness})",
             f"guard: {guard.describe()}"]  # fmt: skip
    if reward.reward_kind == "hybrid":
        lines.append(f"helpfulness: {helpfulness.helpfulness_model}")
    return "\n".join([*lines, f"output: {args.output}"])


def run_score(args: ScoreArguments, guard: Any, helpfulness: Any, reward: Any) -> None:
    if args.dry_run:
        typer.echo(plan(args, guard, helpfulness, reward))
        return
    typer.echo(json.dumps(score_file(args, guard, helpfulness, reward), indent=2))


def register(app: typer.Typer) -> None:
    from rewards.arguments import GuardArguments, HelpfulnessArguments, RewardArguments

    command(app, "score", (ScoreArguments, GuardArguments, HelpfulnessArguments, RewardArguments), run_score,
            help=SCORE_HELP, sections=("guard", "helpfulness", "reward"), positional="input")  # fmt: skip
