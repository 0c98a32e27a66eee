"""`run_eval`: benchmark -> policy answers -> judgements -> metrics, resumable at every row.

Output folder:
- ``run.json``: the configuration, the policy's sampling settings, the judge's description, the benchmark;
- ``responses.jsonl``: one row per answered prompt (the benchmark's label and category, raw response, thinking,
  final answer), written as it arrives, so that ``safe-rl eval --responses`` can judge it again with its labels;
- ``samples.jsonl``: one row per judged answer (label, answer, the judge's verdicts, parse failures): the answers
  with their verdicts, which ``safe-rl report --pairs`` puts side by side across runs;
- ``metrics.json`` and ``summary.md``: the rates with their intervals, overall and per subcategory.
Both JSONL files are `safe_rl.io.ResumableJsonl` with a fingerprint of their input and settings: after a kill,
``--resume`` keeps every written row and only asks for the rest, and refuses a different benchmark or settings.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from safe_rl.evaluation.benchmarks import EvalPrompt, load_benchmark
from safe_rl.evaluation.judges import JUDGES, Judge, JudgeItem, make_judge
from safe_rl.evaluation.metrics import MIN_BOOTSTRAP, compute_metrics
from safe_rl.evaluation.policies import Policy, ResponsesFilePolicy, SamplingConfig, ServerPolicy, TransformersPolicy
from safe_rl.io import ResumableJsonl, check_fingerprint, check_local, digest, file_digest, fill, read_jsonl

logger = logging.getLogger(__name__)

RUN_FILE, RESPONSES_FILE, SAMPLES_FILE, METRICS_FILE, SUMMARY_FILE = (
    "run.json",
    "responses.jsonl",
    "samples.jsonl",
    "metrics.json",
    "summary.md",
)
# What the answers depend on, and what the verdicts depend on besides the answers: a resumed run must repeat them.
POLICY_SETTINGS = ("policy", "base_url", "responses", "think", "system_prompt", "temperature", "top_p", "top_k",
                   "max_new_tokens", "seed")  # fmt: skip
JUDGE_SETTINGS = ("judge", "judge_model", "judge_strictness", "judge_max_new_tokens", "judge_extra_body")
SECRETS = ("api_key", "judge_api_key")


@dataclass
class EvalConfig:
    """Settings of one evaluation run: the flags of `safe-rl eval`, or the keys of its ``--config`` YAML."""

    output: str = field(metadata={"help": "Run folder (created; with --resume, continued)."})
    policy: str | None = field(
        default=None, metadata={"help": "Hub id, local folder or toy:policy; the served name with --base_url."}
    )
    benchmark: str | None = field(
        default=None,
        metadata={
            "help": "wildjailbreak, toy, NAME:FILE (xstest:CSV, prompts:FILE) or a file (default wildjailbreak)."
        },
    )
    judge: str = field(default="wildguard", metadata={"help": f"One of {', '.join(JUDGES)}."})
    judge_model: str | None = field(
        default=None, metadata={"help": "Judge hub id, folder or served name (default per judge)."}
    )
    resume: bool = field(default=False, metadata={"help": "Continue a killed run in --output."})
    overwrite: bool = field(default=False, metadata={"help": "Delete an earlier run in --output and start again."})
    retry_failed: bool = field(default=False, metadata={"help": "With --resume: judge unreadable verdicts again."})
    dry_run: bool = field(default=False, metadata={"help": "Check the settings and files, print the plan, exit."})
    limit: int | None = field(default=None, metadata={"help": "Evaluate a seeded random subset of N prompts."})
    samples: int = field(default=1, metadata={"help": "Answers per prompt (ids ID#0, ID#1, ...)."})
    seed: int = field(default=0, metadata={"help": "Seed of the subset, the sampling and the bootstrap."})
    base_url: str | None = field(default=None, metadata={"help": "OpenAI-compatible server of the policy."})
    api_key: str | None = field(
        default=None, metadata={"help": "Policy server key (else $SAFE_RL_API_KEY, else $OPENAI_API_KEY)."}
    )
    responses: str | None = field(
        default=None, metadata={"help": "Judge the responses in this file (with its labels) instead of generating."}
    )
    think: bool | None = field(
        default=None,
        metadata={
            "help": "Thinking mode (enable_thinking); default off, or the responses' run's mode.",
            "nargs": "?",
            "const": True,
        },  # fmt: skip
    )
    label: str | None = field(default=None, metadata={"help": "Model name in reports (default: from the policy)."})
    system_prompt: str | None = field(default=None, metadata={"help": "System message for the policy."})
    temperature: float | None = field(default=None, metadata={"help": "0: greedy (default: Qwen3's per mode)."})
    top_p: float | None = field(default=None, metadata={"help": "Default: Qwen3's per mode."})
    top_k: int | None = field(default=None, metadata={"help": "0: all tokens (default: Qwen3's, 20)."})
    max_new_tokens: int = field(default=2048, metadata={"help": "Policy answer length limit."})
    batch_size: int = field(default=8, metadata={"help": "Policy batch size (transformers)."})
    device: str | None = field(default=None, metadata={"help": "Device of local models (default cuda if present)."})
    dtype: str = field(default="auto", metadata={"help": "dtype of local models (auto: bf16 on GPU, fp32 on CPU)."})
    max_concurrency: int = field(default=16, metadata={"help": "Concurrent requests per server."})
    judge_base_url: str | None = field(default=None, metadata={"help": "OpenAI-compatible server of the judge."})
    judge_api_key: str | None = field(
        default=None, metadata={"help": "Judge server key (else $SAFE_RL_JUDGE_API_KEY, else $OPENAI_API_KEY)."}
    )
    judge_batch_size: int = field(default=8, metadata={"help": "Judge batch size (transformers)."})
    judge_max_new_tokens: int | None = field(
        default=None, metadata={"help": "Judge answer limit (default per judge)."}
    )
    judge_strictness: str = field(default="strict", metadata={"help": "qwen3guard: strict|loose for Controversial."})
    judge_extra_body: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "llm judge: extra request fields (JSON on the command line)."}
    )
    n_boot: int = field(
        default=2000, metadata={"help": f"Bootstrap resamples for the 95%% intervals (>= {MIN_BOOTSTRAP})."}
    )
    progress: bool = field(default=True, metadata={"help": "Progress bars (--no-progress: none)."})

    def __post_init__(self) -> None:
        if self.judge not in JUDGES:
            raise ValueError(f"judge must be one of {JUDGES}, got {self.judge!r}")
        if isinstance(self.judge_extra_body, str):
            try:
                self.judge_extra_body = json.loads(self.judge_extra_body)
            except json.JSONDecodeError as exc:
                raise ValueError(f"judge_extra_body must be a JSON object: {exc}") from None
            if not isinstance(self.judge_extra_body, dict):
                raise ValueError("judge_extra_body must be a JSON object")
        if self.responses is None and not self.policy:
            raise ValueError("pass --policy (a model, or the served model name with --base-url) or --responses FILE")
        if self.responses is not None and (self.base_url is not None or self.policy):
            raise ValueError("--responses and --policy/--base-url are two sources of answers: pass one")
        if self.judge == "llm" and not (self.judge_base_url and self.judge_model):
            raise ValueError("the llm judge needs --judge-base-url and --judge-model (the served name)")
        if self.judge == "qwen3guard" and self.judge_max_new_tokens is not None:
            raise ValueError("judge_max_new_tokens does not apply to qwen3guard (it stops at the verdict's end)")
        if self.judge_strictness not in ("strict", "loose"):
            raise ValueError(f"judge_strictness must be strict or loose, got {self.judge_strictness!r}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be positive, got {self.limit}")
        for name in ("samples", "batch_size", "judge_batch_size", "max_concurrency", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_boot < MIN_BOOTSTRAP:
            raise ValueError(f"n_boot must be at least {MIN_BOOTSTRAP} for a 95% interval, got {self.n_boot}")
        if self.resume and self.overwrite:
            raise ValueError("--resume continues the run in --output, --overwrite deletes it: pass one")
        if self.retry_failed and not self.resume:
            raise ValueError("--retry-failed goes with --resume (it judges a run's failed rows again)")
        if self.benchmark is None:
            self.benchmark = self.responses if self.responses is not None else "wildjailbreak"
        if self.think is None:
            self.think = self.source_run().get("mode") == "think"
        self.sampling  # noqa: B018 - checks the sampling values now, before anything loads

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


def build_policy(config: EvalConfig) -> Policy:
    if config.responses is not None:
        return ResponsesFilePolicy(config.responses)
    if config.base_url is not None:
        return ServerPolicy(
            config.policy or "",
            config.base_url,
            think=bool(config.think),
            sampling=config.sampling,
            api_key=config.api_key or os.environ.get("SAFE_RL_API_KEY"),
            system_prompt=config.system_prompt,
            max_concurrency=config.max_concurrency,
        )
    return TransformersPolicy(
        config.policy or "",
        think=bool(config.think),
        sampling=config.sampling,
        batch_size=config.batch_size,
        device=config.device,
        dtype=config.dtype,
        system_prompt=config.system_prompt,
    )


def build_judge(config: EvalConfig) -> Judge:
    kwargs: dict[str, Any] = {
        "base_url": config.judge_base_url,
        "api_key": config.judge_api_key or os.environ.get("SAFE_RL_JUDGE_API_KEY"),
        "max_concurrency": config.max_concurrency,
    }
    if config.judge in ("wildguard", "qwen3guard"):
        kwargs.update(device=config.device, dtype=config.dtype, batch_size=config.judge_batch_size)
    if config.judge == "qwen3guard":
        kwargs["strictness"] = config.judge_strictness
    if config.judge == "llm":
        kwargs["extra_body"] = config.judge_extra_body
    if config.judge_max_new_tokens is not None:
        kwargs["max_new_tokens"] = config.judge_max_new_tokens
    if config.judge == "toy":
        kwargs = {}
    return make_judge(config.judge, config.judge_model, **kwargs)


def fingerprints(config: EvalConfig, prompts: list[EvalPrompt]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(responses.jsonl's, samples.jsonl's) fingerprint: the prompts (ids, texts, labels) and, for a responses
    file, its bytes; the settings the answers depend on; and for the verdicts, the judge's settings besides."""
    settings = config.public()
    inputs: dict[str, Any] = {"benchmark": config.benchmark, "prompts": len(prompts), "sha256": digest(
        (p.id, p.prompt, p.harmful, p.category) for p in prompts)}  # fmt: skip
    if config.responses is not None:
        inputs["responses_sha256"] = file_digest(config.responses)
    answers = {"input": inputs, "settings": {k: settings[k] for k in POLICY_SETTINGS}}
    verdicts = {"input": answers, "settings": {k: settings[k] for k in JUDGE_SETTINGS}}
    return answers, verdicts


_RUN_FILES = (RUN_FILE, RESPONSES_FILE, SAMPLES_FILE, METRICS_FILE, SUMMARY_FILE)


def _rows_written(out: Path) -> bool:
    return any((out / name).exists() and (out / name).stat().st_size > 0 for name in (RESPONSES_FILE, SAMPLES_FILE))


def _clear(out: Path) -> None:
    from safe_rl.io import remove_output

    for name in _RUN_FILES:
        remove_output(out / name) if name.endswith(".jsonl") else (out / name).unlink(missing_ok=True)


def prepare_folder(out: Path, config: EvalConfig, prompts: list[EvalPrompt]) -> dict[str, Any]:
    """Check ``out`` before anything loads: the earlier run's run.json when resuming (same benchmark and settings,
    by the fingerprints), {} for a fresh start. A folder whose earlier start wrote no row (it failed to load, say)
    does not block a new start; with ``overwrite`` an earlier run is deleted."""
    if config.overwrite:
        _clear(out)
    if not _rows_written(out):
        if (out / RUN_FILE).exists():
            logger.info("%s: an earlier start wrote no answer; starting afresh", out)
        _clear(out)
        return {}
    if not config.resume:
        raise FileExistsError(
            f"{out} already holds a run; pass --resume to continue it, --overwrite to start again, "
            "or choose another --output"
        )
    answers, verdicts = fingerprints(config, prompts)
    check_fingerprint(out / RESPONSES_FILE, answers)
    check_fingerprint(out / SAMPLES_FILE, verdicts)
    return json.loads((out / RUN_FILE).read_text()) if (out / RUN_FILE).exists() else {}


def _response_row(prompt: EvalPrompt, generation: Any) -> dict[str, Any]:
    from rewards.conversation import split_thinking

    split = split_thinking(generation.response)
    return {
        "id": prompt.id,
        "prompt": prompt.prompt,
        "harmful": prompt.harmful,
        "category": prompt.category,
        "response": generation.response,
        "thinking": split.thinking,
        "answer": split.answer,
        "finished_thinking": split.finished_thinking,
        "finish_reason": generation.finish_reason,
        "num_tokens": generation.num_tokens,
    }


def _generate(policy: Policy, prompts: list[EvalPrompt], out: Path, config: EvalConfig) -> tuple[dict, int]:
    answers_fingerprint, _ = fingerprints(config, prompts)
    with ResumableJsonl(out / RESPONSES_FILE, key="id", resume=True, fingerprint=answers_fingerprint) as sink:
        if isinstance(policy, ResponsesFilePolicy):
            policy.check([p for p in prompts if p.id not in sink.done])
        filled = fill(sink, prompts, key=lambda p: p.id, work=policy.generate, row=_response_row,
                      chunk_size=policy.chunk_size, desc=f"{config.display_label}: generate", unit="answer",
                      order=lambda p: -len(p.prompt), progress=config.progress)  # fmt: skip
    if hasattr(policy, "close"):
        policy.close()
    if filled.failed:
        raise RuntimeError(
            f"{filled.failed} prompt(s) got no answer (server errors); rerun with --resume to ask again"
        )
    rows = {r["id"]: r for r in read_jsonl(out / RESPONSES_FILE)}
    missing = [p.id for p in prompts if p.id not in rows]
    if missing:
        raise RuntimeError(f"{out / RESPONSES_FILE} lacks {len(missing)} answer(s), e.g. {missing[:5]}")
    return rows, filled.written


def _judge(judge: Judge, prompts: list[EvalPrompt], answers: dict, out: Path, config: EvalConfig) -> list[dict]:
    def row(prompt: EvalPrompt, judgement: Any) -> dict[str, Any]:
        answer = answers[prompt.id]
        return {"id": prompt.id, "prompt": prompt.prompt, "harmful": prompt.harmful, "category": prompt.category,
                "answer": answer["answer"], "finish_reason": answer.get("finish_reason"),
                "finished_thinking": answer.get("finished_thinking"), "judge": judge.name,
                **judgement.to_dict()}  # fmt: skip

    def work(chunk: list[EvalPrompt]) -> list[Any]:
        return judge.judge([JudgeItem(p.prompt, answers[p.id]["answer"]) for p in chunk])

    _, verdicts_fingerprint = fingerprints(config, prompts)
    retry = (lambda r: bool(r.get("parse_error"))) if config.retry_failed else None
    with ResumableJsonl(
        out / SAMPLES_FILE, key="id", resume=True, fingerprint=verdicts_fingerprint, retry=retry
    ) as sink:
        filled = fill(sink, prompts, key=lambda p: p.id, work=work, row=row, chunk_size=judge.chunk_size,
                      desc=f"{config.display_label}: judge ({judge.name})", unit="answer",
                      order=lambda p: -(len(p.prompt) + len(answers[p.id]["answer"])), progress=config.progress)  # fmt: skip
    if filled.failed:
        raise RuntimeError(
            f"{filled.failed} answer(s) were not judged (server errors); rerun with --resume to ask again"
        )
    wanted = {p.id for p in prompts}
    rows = [r for r in read_jsonl(out / SAMPLES_FILE) if r["id"] in wanted]
    if len(rows) != len(wanted) or len({r["id"] for r in rows}) != len(rows):
        raise RuntimeError(f"{out / SAMPLES_FILE}: expected one row per prompt ({len(wanted)}), found {len(rows)}")
    return rows


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    tmp.replace(path)  # atomic: a kill leaves the old file or the new one


def check_sources(config: EvalConfig) -> None:
    """Local paths the run reads (policy folder, judge folder, responses file, benchmark file) must exist."""
    if config.responses is not None:
        check_local(config.responses, "responses file")
    if config.policy and config.base_url is None:
        check_local(config.policy, "policy folder")
    if config.judge_model and config.judge_base_url is None:
        check_local(config.judge_model, "judge folder")


def run_eval(config: EvalConfig, *, policy: Policy | None = None, judge: Judge | None = None) -> dict[str, Any]:
    """Run (or resume) one evaluation; returns the metrics written to ``metrics.json``.

    Every setting and path is checked, and the output folder examined, before any model loads. ``policy`` and
    ``judge`` replace the ones the configuration would build (a library user's own objects, or the model a training
    run just trained).

    Example:
        >>> run_eval(EvalConfig(output="runs/qwen3-4b", policy="Qwen/Qwen3-4B", limit=100))  # doctest: +SKIP
    """
    out = Path(config.output)
    check_sources(config)
    loaded = load_benchmark(config.benchmark or "wildjailbreak")
    prompts = loaded.for_run(config.limit, config.seed, config.samples)
    previous = prepare_folder(out, config, prompts)
    out.mkdir(parents=True, exist_ok=True)
    policy = policy if policy is not None else build_policy(config)
    judge = judge if judge is not None else build_judge(config)
    benchmark = {"name": loaded.name, "source": loaded.source, "n": len(prompts), "samples": config.samples}
    run = {**previous, "config": config.public(), "label": config.display_label, "mode": config.mode,
           "benchmark": benchmark, "judge": judge.describe(), "status": "running"}  # fmt: skip
    run.setdefault("policy", policy.describe())
    run.setdefault("started", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    _write_json(out / RUN_FILE, run)

    answers, generated = _generate(policy, prompts, out, config)
    if generated or "policy" not in previous:  # a resume that generated nothing keeps what the first run recorded
        run["policy"] = policy.describe()
    rows = _judge(judge, prompts, answers, out, config)

    metrics = {"label": run["label"], "mode": config.mode, "judge": judge.describe(), "benchmark": benchmark,
               **compute_metrics(rows, n_boot=config.n_boot, seed=config.seed)}  # fmt: skip
    _write_json(out / METRICS_FILE, metrics)
    run.update(status="done", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    _write_json(out / RUN_FILE, run)

    from safe_rl.evaluation.report import load_run, runs_markdown

    (out / SUMMARY_FILE).write_text(runs_markdown([load_run(out)], details=True))
    rates = metrics["rates"]
    logger.info("%s: safety %s, refusal (benign) %s, unjudged %d", out, rates["safety"]["value"],
                rates["refusal_benign"]["value"], metrics["counts"]["judge_failures"])  # fmt: skip
    return metrics
