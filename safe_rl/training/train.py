"""`run_training`: the prompts, the reward, TRL's GRPOTrainer, the run summary, and the before/after evaluation."""

from __future__ import annotations

import copy
import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

from safe_rl.training.config import TrainConfig
from safe_rl.training.summary import SUMMARY_PNG, plot_runs, write_run_summary

logger = logging.getLogger(__name__)

TABLE_FILE = "table10.md"
COMPARISON_FILE = "comparison.json"


def build_prompt_dataset(cfg: TrainConfig) -> Any:
    """The training prompts as a conversational `datasets.Dataset` (a ``prompt`` column of chat messages)."""
    import datasets

    from safe_rl.data.wildjailbreak import harmful_prompts
    from safe_rl.io import check_local

    data = cfg.data
    check_local(data.data_source, "data file or folder")
    texts = harmful_prompts(data.data_source, config=data.data_config, split=data.data_split,
                            data_types=data.data_types, prompt_column=data.data_prompt_column)  # fmt: skip
    if data.data_max_prompts is not None and len(texts) > data.data_max_prompts:
        texts = random.Random(cfg.grpo.seed).sample(texts, data.data_max_prompts)
    if not texts:
        raise ValueError(f"no training prompts in {data.data_source!r} (data_types={data.data_types})")
    system = [{"role": "system", "content": data.data_system_prompt}] if data.data_system_prompt else []
    return datasets.Dataset.from_dict({"prompt": [[*system, {"role": "user", "content": t}] for t in texts]})


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def check_output_dir(cfg: TrainConfig, *, resume: bool, overwrite: bool) -> None:
    """An ``output_dir`` that already holds files is continued (``resume``), emptied (``overwrite``), or refused."""
    root = Path(cfg.grpo.output_dir)
    if not root.is_dir() or not any(root.iterdir()) or resume:
        return
    if not overwrite:
        raise FileExistsError(
            f"{root} already holds a run; pass --resume to continue it from its last checkpoint, "
            "--overwrite to delete it and start again, or choose another --output_dir"
        )
    here = Path.cwd().resolve()
    if root.resolve() in (here, *here.parents, Path.home().resolve()) or (root / ".git").exists():
        raise ValueError(f"--overwrite would delete {root}, which holds more than a run; choose another --output_dir")
    if _is_main_process():
        logger.info("--overwrite: deleting %s", root)
        shutil.rmtree(root)


def _checkpoint(resume: str | None, output_dir: Path) -> str | None:
    """``"last"`` (the CLI's ``--resume``) -> the newest checkpoint in ``output_dir``, if any."""
    if resume != "last":
        return resume
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    if last is None:
        logger.warning("--resume: no checkpoint in %s; starting from the beginning", output_dir)
    return last


def model_init_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    """The policy's ``from_pretrained`` keyword arguments: the ``model`` section, then ``grpo.model_init_kwargs``."""
    return {
        "revision": cfg.model.model_revision,
        "dtype": cfg.model.dtype,
        "attn_implementation": cfg.model.attn_implementation,
        **(cfg.grpo.model_init_kwargs or {}),
    }


def make_reward(cfg: TrainConfig, kind: str, *, guard: Any, helpfulness: Any = None) -> Any:
    """The TRL reward function of ``kind`` on ``guard`` (and ``helpfulness``); async (concurrent guard calls) when
    ``reward.async`` says so, by default when the guard is remote.

    Example:
        >>> from safe_rl.training.config import load_train_config
        >>> cfg = load_train_config(None, ["--model_name_or_path", "x", "--use_cpu", "--output_dir", "/tmp/x"])
        >>> make_reward(cfg, "guard_only", guard=cfg.guard.build()).__name__  # models load on first call
        'guard_only_reward'
    """
    reward = cfg.reward.build(guard, helpfulness, kind=kind)
    use_async = cfg.run.reward_async if cfg.run.reward_async is not None else cfg.guard.is_remote
    return reward.as_async() if use_async else reward


def make_trainer(
    cfg: TrainConfig, policy: str, reward: Any, dataset: Any, output_dir: Path, callbacks: list | None = None
) -> Any:
    """TRL's GRPOTrainer for one run of ``cfg`` (one reward kind), writing into ``output_dir``, printing one line
    per step (`safe_rl.training.progress`)."""
    from trl import GRPOTrainer, get_peft_config

    from safe_rl.training.progress import use_step_lines

    # A copy, not dataclasses.replace: re-running GRPOConfig.__post_init__ on derived fields would fail.
    args = copy.deepcopy(cfg.grpo)
    args.output_dir, args.model_init_kwargs = str(output_dir), model_init_kwargs(cfg)
    trainer = GRPOTrainer(model=policy, reward_funcs=[reward], args=args, train_dataset=dataset,
                          peft_config=get_peft_config(cfg.model), callbacks=callbacks)  # fmt: skip
    use_step_lines(trainer, output_dir.name if output_dir != Path(cfg.grpo.output_dir) else "run")
    return trainer


def run_training(cfg: TrainConfig) -> dict[str, Any]:
    """Train once per reward kind (``reward.compare`` or ``reward.kind``), each from the same start; write each
    run's summary, and with ``evaluation.prompts`` the before/after table. Returns what it wrote.

    Torch runs on ``OMP_NUM_THREADS`` threads when that is set (smoke.yaml: 1; the toy models' ops are too small to
    gain from a second thread, and on a shared machine extra threads only wait for each other)."""
    import contextlib

    from safe_rl.threads import torch_threads
    from safe_rl.training.progress import quiet_libraries

    check_output_dir(cfg, resume=cfg.options.resume, overwrite=cfg.options.overwrite)
    if cfg.options.resume:
        cfg.grpo.resume_from_checkpoint = "last"
    threads = torch_threads(cfg.torch_threads) if cfg.torch_threads else contextlib.nullcontext()
    with threads, quiet_libraries(on_cpu=bool(cfg.grpo.use_cpu)):
        return _run_training(cfg)


def _run_training(cfg: TrainConfig) -> dict[str, Any]:
    from rewards.loading import load_causal_lm, load_tokenizer, resolve_model_name
    from safe_rl.training.evaluation import Rates, evaluate, finding, summary_table

    kinds = cfg.kinds
    root = Path(cfg.grpo.output_dir)
    policy = resolve_model_name(cfg.model.model_name_or_path)  # builds a toy: model on first use
    dataset = build_prompt_dataset(cfg)
    guard = cfg.guard.build()  # shared by the runs and the evaluation
    helpfulness = cfg.helpfulness.build() if "hybrid" in kinds else None
    evaluating = cfg.evaluation.evaluation_prompts is not None
    if evaluating and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Sharded (ZeRO-3) weights cannot be sampled from one process; evaluate the saved model with `safe-rl eval`.
        logger.warning("evaluation.prompts is ignored in multi-process runs; run `safe-rl eval` on the saved model")
        evaluating = False
    result: dict[str, Any] = {"runs": {}, "policy": policy}
    metrics: dict[str, dict[str, Any]] = {}
    if evaluating and _is_main_process():
        init = {k: v for k, v in model_init_kwargs(cfg).items() if v is not None and k != "dtype"}
        start = load_causal_lm(policy, what="policy", device="cpu" if cfg.grpo.use_cpu else None,
                               dtype=cfg.model.dtype or "auto", **init)  # fmt: skip
        tokenizer = load_tokenizer(policy, what="policy tokenizer")
        metrics["start"] = evaluate(cfg, "start", cfg.model.model_name_or_path, start, tokenizer, guard)
        del start
    curves = {}
    judge = "toy judge" if cfg.evaluation.evaluation_judge == "toy" else "the reward's guard"
    for kind in kinds:
        output_dir = root / kind if len(kinds) > 1 else root
        trainer = make_trainer(cfg, policy, make_reward(cfg, kind, guard=guard, helpfulness=helpfulness), dataset,
                               output_dir)  # fmt: skip
        trainer.train(resume_from_checkpoint=_checkpoint(cfg.grpo.resume_from_checkpoint, output_dir))
        trainer.save_model(str(output_dir))
        if trainer.accelerator.is_main_process:
            extra: dict[str, Any] = {"reward": kind}
            if evaluating:
                model = trainer.accelerator.unwrap_model(trainer.model)
                metrics[kind] = evaluate(cfg, kind, str(output_dir), model, trainer.processing_class, guard)
                extra["before"] = Rates.from_metrics(metrics["start"]).as_dict()
                extra["after"] = Rates.from_metrics(metrics[kind]).as_dict()
            passes = {k: metrics[k] for k in ("start", kind) if k in metrics}
            summary = write_run_summary(trainer.state.log_history, output_dir, name=kind, extra=extra,
                                        evaluations=passes or None, judge=judge)  # fmt: skip
            curves[kind] = summary["steps"]
            result["runs"][kind] = str(output_dir)
        del trainer
    if not _is_main_process():
        return result
    title = f"Safety RL: {' vs '.join(kinds)}" + (f" ({cfg.config_path})" if cfg.config_path else "")
    if len(curves) > 1:
        plot_runs(curves, root / SUMMARY_PNG, evaluations=metrics or None, judge=judge, title=title)
    if metrics:
        before = Rates.from_metrics(metrics["start"])
        after = {k: Rates.from_metrics(metrics[k]) for k in kinds if k in metrics}
        table = summary_table(cfg, list(metrics))
        checks = finding(before, after)
        (root / TABLE_FILE).write_text(table + "\n")
        comparison = {"before": before.as_dict(), "after": {k: v.as_dict() for k, v in after.items()}, **checks,
                      "evaluations": {k: str(root / "eval" / k) for k in metrics}}  # fmt: skip
        (root / COMPARISON_FILE).write_text(json.dumps(comparison, indent=2))
        result.update(table=table, finding=checks, before=before, after=after, evaluations=comparison["evaluations"])
    return result
