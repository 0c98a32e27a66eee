"""What a training run prints: a progress bar over the steps and one compact line per logged step (reward, the
guard's safe/refusal/unjudged shares of the rollouts, step time) instead of TRL's raw metric dicts; and the known
harmless warnings of the libraries underneath, silenced where they start.

The full metrics still go where TRL sends them: ``trainer.state.log_history`` (and so ``run_summary.json``) and the
trackers of ``report_to``; only the console printing changes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

from transformers import TrainerCallback

logger = logging.getLogger(__name__)


def step_line(step: int, max_steps: int, logs: Mapping[str, Any]) -> str:
    """One step in one line.

    Example:
        >>> step_line(3, 8, {"reward": -3.625, "guard/safety_rate": 0.75, "guard/refusal_rate": 0.375,
        ...                  "guard/failure_rate": 0.0, "step_time": 3.58})
        'step 3/8  reward -3.62  safe 75%  refusal 38%  unjudged 0%  3.6 s'
    """

    def number(key: str, fmt: str, scale: float = 1.0) -> str:
        value = logs.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
            return "–"
        return format(scale * value, fmt)

    width = len(str(max_steps))
    return (
        f"step {step:>{width}}/{max_steps}  reward {number('reward', '.2f')}  "
        f"safe {number('guard/safety_rate', '.0f', 100)}%  refusal {number('guard/refusal_rate', '.0f', 100)}%  "
        f"unjudged {number('guard/failure_rate', '.0f', 100)}%  {number('step_time', '.1f')} s"
    )


class StepLines(TrainerCallback):
    """A tqdm bar over the training steps, and `step_line` above it for every logged step (main process only).

    Replaces transformers' ``ProgressCallback``/``PrinterCallback``, which print each step's ~45 metrics raw.
    """

    def __init__(self, name: str):
        self.name = name
        self.bar: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        from tqdm.auto import tqdm

        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=f"train {self.name}",
                            unit="step", dynamic_ncols=True)  # fmt: skip

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None, **kwargs: Any):
        if self.bar is None or not logs:
            return
        if "train_runtime" in logs:
            self.bar.write(f"{self.name}: {state.global_step} steps in {logs['train_runtime']:.0f} s")
        elif "reward" in logs:
            self.bar.write(f"{self.name}  {step_line(state.global_step, state.max_steps, logs)}")

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def use_step_lines(trainer: Any, name: str) -> None:
    """Swap ``trainer``'s console printing for `StepLines`."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(StepLines(name))


# Warnings that say nothing to a user of this project: the upstream code that triggers them is not ours to change.
_HARMLESS_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    # TRL's rollout code reads transformers' deprecated alias (transformers 5 renamed it activation_checkpointing).
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
)


@contextlib.contextmanager
def quiet_libraries(on_cpu: bool) -> Iterator[None]:
    """Within the block: the known harmless warnings filtered, transformers' loading/saving bars off, and on a CPU
    run DeepSpeed told its accelerator (``DS_ACCELERATOR=cpu``) instead of guessing it aloud at import."""
    import transformers

    if on_cpu:  # `use_cpu`: the run is on the CPU whatever the machine has
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    with warnings.catch_warnings():
        for category, message in _HARMLESS_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        try:
            yield
        finally:
            if bars:
                transformers.utils.logging.enable_progress_bar()
