"""`run_eval`: benchmark -> policy answers -> judgements -> metrics, resumable at every row.

Output folder:
- ``run.json``: the configuration, the policy's sampling settings, the judge's description, the benchmark;
- ``responses.jsonl``: one row per answered prompt (raw response, thinking, final answer), written as it arrives;
- ``samples.jsonl``: one row per judged answer (label, answer, the judge's three answers, parse failures);
- ``metrics.json`` and ``summary.md``: the rates with their intervals, overall and per subcategory.
Both JSONL files are `safe_rl.io.ResumableJsonl`: after a kill, ``--resume`` keeps every written row and only
asks for the rest.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from safe_rl.evaluation.benchmarks import EvalPrompt, load_benchmark
from safe_rl.evaluation.judges import JUDGES, Judge, JudgeItem, make_judge
from safe_rl.evaluation.metrics import compute_metrics
from safe_rl.evaluation.policies import Policy, ResponsesFilePolicy, SamplingConfig, ServerPolicy, TransformersPolicy
from safe_rl.io import ResumableJsonl, read_jsonl

logger = logging.getLogger(__name__)

RUN_FILE, RESPONSES_FILE, SAMPLES_FILE, METRICS_FILE, SUMMARY_FILE = (
    "run.json",
    "responses.jsonl",
    "samples.jsonl",
    "metrics.json",
    "summary.md",
)
# A resumed run must be the same experiment: these settings may not change between the runs that fill a folder.
IDENTITY = (
    "policy",
    "benchmark",
    "responses",
    "judge",
    "judge_model",
    "think",
    "limit",
    "seed",
    "system_prompt",
    "temperature",
    "top_p",
    "top_k",
    "max_new_tokens",
    "judge_policy",
)
SECRETS = ("api_key", "judge_api_key")


@dataclass
class EvalConfig:
    """Settings of one evaluation run (the `eval` command's flags, or the keys of its YAML config)."""

    output: str = field(metadata={"help": "run folder (created; with --resume, continued)"})
    policy: str | None = field(
        default=None, metadata={"help": "hub id or local folder; the served name with base_url"}
    )
    benchmark: str | None = field(default=None, metadata={"help": "NAME, NAME:SOURCE or file (default wildjailbreak)"})
    judge: str = field(default="wildguard", metadata={"help": "wildguard | qwen3guard | llm"})
    judge_model: str | None = field(
        default=None, metadata={"help": "judge hub id/folder/served name (default per judge)"}
    )
    resume: bool = field(default=False, metadata={"help": "continue a killed run in the same folder"})
    limit: int | None = field(default=None, metadata={"help": "evaluate a seeded random subset of N prompts"})
    seed: int = field(default=0, metadata={"help": "seed for the subset, the sampling and the bootstrap"})
    base_url: str | None = field(default=None, metadata={"help": "OpenAI-compatible server of the policy"})
    api_key: str | None = field(default=None, metadata={"help": "policy server key (else $OPENAI_API_KEY)"})
    responses: str | None = field(default=None, metadata={"help": "file of existing responses to judge"})
    think: bool | None = field(
        default=None, metadata={"help": "thinking mode (enable_thinking); default off, or the responses' run's mode"}
    )
    label: str | None = field(default=None, metadata={"help": "model name in reports (default: from the policy)"})
    system_prompt: str | None = field(default=None, metadata={"help": "system message for the policy"})
    temperature: float | None = field(default=None, metadata={"help": "default: Qwen3's recommendation per mode"})
    top_p: float | None = field(default=None, metadata={"help": "default: Qwen3's recommendation per mode"})
    top_k: int | None = field(default=None, metadata={"help": "default: Qwen3's recommendation per mode"})
    max_new_tokens: int = field(default=2048, metadata={"help": "policy answer length limit"})
    batch_size: int = field(default=8, metadata={"help": "policy batch size (transformers)"})
    device: str | None = field(default=None, metadata={"help": "device for local models (default cuda if present)"})
    dtype: str = field(default="auto", metadata={"help": "dtype for local models (auto: bf16 on GPU, fp32 on CPU)"})
    max_concurrency: int = field(default=16, metadata={"help": "concurrent requests per server"})
    judge_base_url: str | None = field(default=None, metadata={"help": "OpenAI-compatible server of the judge"})
    judge_api_key: str | None = field(default=None, metadata={"help": "judge server key (else $OPENAI_API_KEY)"})
    judge_batch_size: int = field(default=8, metadata={"help": "judge batch size (transformers)"})
    judge_max_new_tokens: int | None = field(default=None, metadata={"help": "judge answer limit (default per judge)"})
    judge_policy: str = field(default="strict", metadata={"help": "qwen3guard: strict|loose for Controversial"})
    judge_extra_body: dict[str, Any] | None = field(default=None, metadata={"help": "llm judge: extra request fields"})
    n_boot: int = field(default=2000, metadata={"help": "bootstrap resamples for the 95% intervals"})

    def __post_init__(self) -> None:
        if self.judge not in JUDGES:
            raise ValueError(f"judge must be one of {JUDGES}, got {self.judge!r}")
        if self.responses is None and not self.policy:
            raise ValueError("pass --policy (a model, or the served model name with --base-url) or --responses FILE")
        if self.responses is not None and self.base_url is not None:
            raise ValueError("--responses and --base-url are two different policies: pass one")
        if self.judge == "llm" and not (self.judge_base_url and self.judge_model):
            raise ValueError("the llm judge needs --judge-base-url and --judge-model (the served name)")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be positive, got {self.limit}")
        for name in ("batch_size", "judge_batch_size", "max_concurrency", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.benchmark is None:
            self.benchmark = self.responses if self.responses is not None else "wildjailbreak"
        if self.think is None:
            self.think = self.source_run().get("mode") == "think"

    def source_run(self) -> dict[str, Any]:
        """The run.json next to ``responses`` when they come from an earlier `safe-rl eval` run, else {}."""
        if self.responses is None:
            return {}
        path = Path(self.responses).parent / RUN_FILE
        return json.loads(path.read_text()) if path.exists() else {}

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(self.temperature, self.top_p, self.top_k, self.max_new_tokens, self.seed)

    @property
    def mode(self) -> str:
        return "think" if self.think else "non-think"

    @property
    def display_label(self) -> str:
        label = self.label or self.source_run().get("label")
        if label:
            return label
        source = self.policy or Path(self.responses or "responses").stem
        return source.rstrip("/").rsplit("/", 1)[-1]

    def public(self) -> dict[str, Any]:
        """The settings as recorded (keys left out)."""
        return {k: v for k, v in asdict(self).items() if k not in SECRETS}


def config_keys() -> set[str]:
    return {f.name for f in fields(EvalConfig)}


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The settings in a YAML file (keys as the flags, with - or _); unknown keys are an error."""
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a YAML mapping of settings is expected")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - config_keys())
    if unknown:
        raise ValueError(f"{path}: unknown setting(s) {unknown}; known: {sorted(config_keys())}")
    return data


def build_policy(config: EvalConfig) -> Policy:
    if config.responses is not None:
        return ResponsesFilePolicy(config.responses)
    if config.base_url is not None:
        return ServerPolicy(
            config.policy or "",
            config.base_url,
            think=config.think,
            sampling=config.sampling,
            api_key=config.api_key,
            system_prompt=config.system_prompt,
            max_concurrency=config.max_concurrency,
        )
    return TransformersPolicy(
        config.policy or "",
        think=config.think,
        sampling=config.sampling,
        batch_size=config.batch_size,
        device=config.device,
        dtype=config.dtype,
        system_prompt=config.system_prompt,
    )


def build_judge(config: EvalConfig) -> Judge:
    kwargs: dict[str, Any] = {
        "base_url": config.judge_base_url,
        "api_key": config.judge_api_key,
        "max_concurrency": config.max_concurrency,
    }
    if config.judge in ("wildguard", "qwen3guard"):
        kwargs.update(device=config.device, dtype=config.dtype, batch_size=config.judge_batch_size)
    if config.judge == "qwen3guard":
        kwargs["policy"] = config.judge_policy
    if config.judge == "llm":
        kwargs["extra_body"] = config.judge_extra_body
    if config.judge_max_new_tokens is not None:
        if config.judge == "qwen3guard":
            raise ValueError("judge_max_new_tokens does not apply to qwen3guard (it stops at the verdict's end)")
        kwargs["max_new_tokens"] = config.judge_max_new_tokens
    return make_judge(config.judge, config.judge_model, **kwargs)


def _check_folder(out: Path, config: EvalConfig) -> dict[str, Any]:
    """The previous run.json when resuming (after checking it is the same experiment), else {}."""
    run_file = out / RUN_FILE
    if not run_file.exists():
        return {}
    if not config.resume:
        raise FileExistsError(f"{out} already holds a run; pass --resume to continue it, or choose another --output")
    previous = json.loads(run_file.read_text())
    before, now = previous.get("config", {}), config.public()
    changed = [f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in IDENTITY if before.get(k) != now.get(k)]
    if changed:
        raise ValueError(f"{out} holds a different run; --resume must repeat its settings ({'; '.join(changed)})")
    return previous


def _drive(
    work: Callable[[list[Any]], list[Any]],
    items: Sequence[Any],
    chunk_size: int,
    write: Callable[[Any, Any], None],
    desc: str,
    progress: bool,
) -> int:
    """Feed ``items`` to ``work`` chunk by chunk, writing each result as its chunk returns; the number not done."""
    from tqdm.auto import tqdm

    failed = 0
    with tqdm(total=len(items), desc=desc, unit="sample", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(items), chunk_size):
            chunk = list(items[start : start + chunk_size])
            results = work(chunk)
            if len(results) != len(chunk):
                raise RuntimeError(f"{desc}: {len(results)} results for {len(chunk)} items")
            for item, result in zip(chunk, results, strict=True):
                if result is None:
                    failed += 1
                else:
                    write(item, result)
            bar.update(len(chunk))
    return failed


def _response_row(prompt: EvalPrompt, generation: Any) -> dict[str, Any]:
    from rewards.conversation import split_thinking

    split = split_thinking(generation.response)
    return {
        "id": prompt.id,
        "prompt": prompt.prompt,
        "response": generation.response,
        "thinking": split.thinking,
        "answer": split.answer,
        "finished_thinking": split.finished_thinking,
        "finish_reason": generation.finish_reason,
        "num_tokens": generation.num_tokens,
    }


def _generate(
    policy: Policy, prompts: list[EvalPrompt], out: Path, resume: bool, progress: bool
) -> tuple[dict[str, dict], int]:
    with ResumableJsonl(out / RESPONSES_FILE, key="id", resume=resume) as sink:
        todo = sorted((p for p in prompts if p.id not in sink.done), key=lambda p: -len(p.prompt))
        if isinstance(policy, ResponsesFilePolicy):
            policy.check(todo)
        failed = _drive(
            policy.generate,
            todo,
            policy.chunk_size,
            lambda p, g: sink.write(_response_row(p, g)),
            "generate",
            progress,
        )
        generated = len(todo) - failed
    if hasattr(policy, "close"):
        policy.close()
    if failed:
        raise RuntimeError(f"{failed} prompt(s) got no answer (server errors); rerun with --resume to ask again")
    rows = {r["id"]: r for r in read_jsonl(out / RESPONSES_FILE)}
    missing = [p.id for p in prompts if p.id not in rows]
    if missing:
        raise RuntimeError(f"{out / RESPONSES_FILE} lacks {len(missing)} answer(s), e.g. {missing[:5]}")
    return rows, generated


def _judge(
    judge: Judge, prompts: list[EvalPrompt], answers: dict[str, dict], out: Path, resume: bool, progress: bool
) -> list[dict[str, Any]]:
    def write(prompt: EvalPrompt, judgement: Any) -> None:
        answer = answers[prompt.id]
        sink.write(
            {
                "id": prompt.id,
                "prompt": prompt.prompt,
                "harmful": prompt.harmful,
                "category": prompt.category,
                "answer": answer["answer"],
                "finish_reason": answer.get("finish_reason"),
                "finished_thinking": answer.get("finished_thinking"),
                "judge": judge.name,
                **judgement.to_dict(),
            }
        )

    def work(chunk: list[EvalPrompt]) -> list[Any]:
        return judge.judge([JudgeItem(p.prompt, answers[p.id]["answer"]) for p in chunk])

    with ResumableJsonl(out / SAMPLES_FILE, key="id", resume=resume) as sink:
        todo = sorted(
            (p for p in prompts if p.id not in sink.done),
            key=lambda p: -(len(p.prompt) + len(answers[p.id]["answer"])),
        )
        failed = _drive(work, todo, judge.chunk_size, write, f"judge ({judge.name})", progress)
    if failed:
        raise RuntimeError(f"{failed} answer(s) were not judged (server errors); rerun with --resume to ask again")
    wanted = {p.id for p in prompts}
    rows = [r for r in read_jsonl(out / SAMPLES_FILE) if r["id"] in wanted]
    if len(rows) != len(wanted) or len({r["id"] for r in rows}) != len(rows):
        raise RuntimeError(f"{out / SAMPLES_FILE}: expected one row per prompt ({len(wanted)}), found {len(rows)}")
    return rows


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    tmp.replace(path)  # atomic: a kill leaves the old file or the new one


def run_eval(
    config: EvalConfig, *, policy: Policy | None = None, judge: Judge | None = None, progress: bool = True
) -> dict[str, Any]:
    """Run (or resume) one evaluation; returns the metrics written to ``metrics.json``.

    ``policy`` and ``judge`` replace the ones the configuration would build (a library user's own objects).

    Example:
        >>> run_eval(EvalConfig(output="runs/qwen3-4b", policy="Qwen/Qwen3-4B", limit=100))  # doctest: +SKIP
    """
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    previous = _check_folder(out, config)
    benchmark = load_benchmark(config.benchmark or "wildjailbreak").select(config.limit, config.seed)
    policy = policy if policy is not None else build_policy(config)
    judge = judge if judge is not None else build_judge(config)
    run = {
        **previous,
        "config": config.public(),
        "label": config.display_label,
        "mode": config.mode,
        "benchmark": {"name": benchmark.name, "source": benchmark.source, "n": len(benchmark.prompts)},
        "judge": judge.describe(),
        "status": "running",
    }
    run.setdefault("policy", policy.describe())
    run.setdefault("started", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    _write_json(out / RUN_FILE, run)

    answers, generated = _generate(policy, benchmark.prompts, out, config.resume, progress)
    if generated or "policy" not in previous:  # a resume that generated nothing keeps what the first run recorded
        run["policy"] = policy.describe()
    rows = _judge(judge, benchmark.prompts, answers, out, config.resume, progress)

    metrics = {
        "label": run["label"],
        "mode": config.mode,
        "judge": judge.describe(),
        "benchmark": run["benchmark"],
        **compute_metrics(rows, n_boot=config.n_boot, seed=config.seed),
    }
    _write_json(out / METRICS_FILE, metrics)
    run.update(status="done", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    _write_json(out / RUN_FILE, run)

    from safe_rl.evaluation.report import load_run, runs_markdown

    (out / SUMMARY_FILE).write_text(runs_markdown([load_run(out)], details=True))
    rates = metrics["rates"]
    logger.info(
        "%s: safety %s, refusal (benign) %s, judge failures %d",
        out,
        rates["safety"]["value"],
        rates["refusal_benign"]["value"],
        metrics["counts"]["judge_failures"],
    )
    return metrics
