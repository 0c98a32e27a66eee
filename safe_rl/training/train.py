"""`run_training`: the prompts, the reward, TRL's GRPOTrainer, and the run summary (and Table 10 when asked)."""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

from safe_rl.training.config import TrainConfig, resolve_model
from safe_rl.training.summary import SUMMARY_PNG, plot_runs, write_run_summary

logger = logging.getLogger(__name__)

TABLE_FILE = "table10.md"
COMPARISON_FILE = "comparison.json"


def build_prompt_dataset(cfg: TrainConfig) -> Any:
    """The training prompts as a conversational `datasets.Dataset` (a ``prompt`` column of chat messages)."""
    import datasets

    data = cfg.data
    if data.data_source == "toy":
        from safe_rl.toy.data import toy_prompts

        texts = [p.text for p in toy_prompts("train", harmful=True)]  # harmful prompts only, as in the paper
    else:
        from safe_rl.data.wildjailbreak import harmful_prompts

        texts = harmful_prompts(
            data.data_source,
            config=data.data_config,
            split=data.data_split,
            data_types=data.data_types,
            prompt_column=data.data_prompt_column,
        )
    if data.data_max_prompts is not None:
        texts = texts[: data.data_max_prompts]
    if not texts:
        raise ValueError(f"no training prompts in {data.data_source!r} (data_types={data.data_types})")
    system = [{"role": "system", "content": data.data_system_prompt}] if data.data_system_prompt else []
    return datasets.Dataset.from_dict({"prompt": [[*system, {"role": "user", "content": t}] for t in texts]})


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _evaluate(cfg: TrainConfig, model: Any, tokenizer: Any, items: list, guard: Any) -> Any:
    from safe_rl.data.rollouts import SamplingOptions
    from safe_rl.training.table10 import judge_rates, sample_answers

    options = SamplingOptions(
        samples=cfg.evaluation.evaluation_samples,
        max_new_tokens=cfg.grpo.max_completion_length or 256,
        temperature=cfg.grpo.temperature,
        top_p=cfg.grpo.top_p,
        top_k=cfg.grpo.top_k or 0,
        chat_template_kwargs=cfg.grpo.chat_template_kwargs,
        seed=cfg.grpo.seed,
    )
    answers = sample_answers(model, tokenizer, [item.prompt for item in items], options)
    return judge_rates(items, answers, judge=cfg.evaluation.evaluation_judge, guard=guard)


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


def make_trainer(
    cfg: TrainConfig, policy: str, reward: Any, dataset: Any, output_dir: Path, callbacks: list | None = None
) -> Any:
    """TRL's GRPOTrainer for one run of ``cfg`` (one reward kind), writing into ``output_dir``."""
    from trl import GRPOTrainer, get_peft_config

    # A copy, not dataclasses.replace: re-running GRPOConfig.__post_init__ on derived fields would fail.
    args = copy.deepcopy(cfg.grpo)
    args.output_dir, args.model_init_kwargs = str(output_dir), model_init_kwargs(cfg)
    return GRPOTrainer(
        model=policy,
        reward_funcs=[reward],
        args=args,
        train_dataset=dataset,
        peft_config=get_peft_config(cfg.model),
        callbacks=callbacks,
    )


def run_training(cfg: TrainConfig) -> dict[str, Any]:
    """Train once per reward kind (``reward.compare`` or ``reward.kind``), each from the same start; write each
    run's summary, and with ``evaluation.prompts`` the before/after table. Returns what it wrote.

    Torch runs on ``OMP_NUM_THREADS`` threads when that is set (smoke.yaml: 1; the toy models' ops are too small to
    gain from a second thread, and on a shared machine extra threads only wait for each other)."""
    from safe_rl.toy.compact import torch_threads

    if cfg.torch_threads is None:
        return _run_training(cfg)
    with torch_threads(cfg.torch_threads):
        return _run_training(cfg)


def _run_training(cfg: TrainConfig) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from safe_rl.training.reward_setup import make_guard, make_helpfulness, make_reward
    from safe_rl.training.table10 import finding, load_eval_items, rates_dict, table10_markdown

    policy = resolve_model(cfg.model.model_name_or_path)
    kinds = cfg.reward.kinds
    root = Path(cfg.grpo.output_dir)
    dataset = build_prompt_dataset(cfg)
    guard = make_guard(cfg.reward)  # shared by the runs and the evaluation
    helpfulness = make_helpfulness(cfg.reward) if "hybrid" in kinds else None
    items = load_eval_items(cfg.evaluation, seed=cfg.grpo.seed)
    if items and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Sharded (ZeRO-3) weights cannot be sampled from one process; evaluate the saved model with `safe-rl eval`.
        logger.warning("evaluation.prompts is ignored in multi-process runs; run `safe-rl eval` on the saved model")
        items = []
    result: dict[str, Any] = {"runs": {}, "policy": policy}
    before = None
    if items and _is_main_process():
        tokenizer = AutoTokenizer.from_pretrained(policy)
        init_kwargs = {k: v for k, v in model_init_kwargs(cfg).items() if v}
        start_model = AutoModelForCausalLM.from_pretrained(policy, **init_kwargs)
        before = _evaluate(cfg, start_model, tokenizer, items, guard)
        del start_model
    after = {}
    curves = {}
    for kind in kinds:
        output_dir = root / kind if len(kinds) > 1 else root
        reward = make_reward(cfg.reward, kind, guard=guard, helpfulness=helpfulness)
        trainer = make_trainer(cfg, policy, reward, dataset, output_dir)
        trainer.train(resume_from_checkpoint=_checkpoint(cfg.grpo.resume_from_checkpoint, output_dir))
        trainer.save_model(str(output_dir))
        if trainer.accelerator.is_main_process:
            extra: dict[str, Any] = {"reward": kind}
            if items:
                model = trainer.accelerator.unwrap_model(trainer.model)
                after[kind] = _evaluate(cfg, model, trainer.processing_class, items, guard)
                extra["before"], extra["after"] = rates_dict(before), rates_dict(after[kind])
            summary = write_run_summary(trainer.state.log_history, output_dir, name=kind, extra=extra)
            curves[kind] = summary["steps"]
            result["runs"][kind] = str(output_dir)
        del trainer
    if _is_main_process():
        if len(curves) > 1:
            plot_runs(curves, root / SUMMARY_PNG)
        if before is not None:
            table = table10_markdown([("start", before), *after.items()])
            checks = finding(before, after)
            (root / TABLE_FILE).write_text(table + "\n")
            (root / COMPARISON_FILE).write_text(
                json.dumps(
                    {"before": rates_dict(before), "after": {k: rates_dict(v) for k, v in after.items()}, **checks},
                    indent=2,
                )
            )
            result.update(table=table, finding=checks, before=before, after=after)
    return result
