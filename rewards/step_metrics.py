"""Per-step guard metrics for the trainer's logs (the report's Fig. 6 curves): rates, failures, categories."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from rewards.verdict import CATEGORIES

if TYPE_CHECKING:
    from rewards.judgement import RewardDetail

PREFIX = "guard"


def _rate(hits: int, total: int) -> float:
    return hits / total if total else float("nan")


def step_metrics(details: Sequence[RewardDetail]) -> dict[str, float]:
    """Metrics over one reward call's samples.

    - ``guard/safety_rate``: share of samples judged safe (thinking and answer), among samples whose safety is known;
    - ``guard/refusal_rate``: share of answers labelled refusals, among answers whose refusal label is known;
    - ``guard/controversial_rate``: share of samples with a Controversial verdict (thinking or answer);
    - ``guard/failure_rate``: share of samples the reward could not score (unreadable verdict, backend failure,
      missing helpfulness) — they get None and TRL leaves them out;
    - ``guard/parse_failure_rate``: share of the guard's answers that could not be read, among the answers that came
      back (`Verdict.unreadable`); backend failures, models that did not load and bad samples are not in it (they
      are in ``guard/failure_rate``);
    - ``guard/truncated``: number of guard inputs cut to fit the guard's context;
    - ``guard/category/<name>``: number of unsafe samples per category (every category is logged, zeros included,
      so that averages over a logging step are not biased towards the steps where a category occurred).

    Example:
        >>> from rewards.judgement import RewardDetail
        >>> from rewards.verdict import failed_verdict, parse_verdict
        >>> step_metrics([RewardDetail(reward=1.0, unsafe=False, refusal=False)])["guard/safety_rate"]
        1.0
        >>> down = RewardDetail(reward=None, answer=failed_verdict("guard server: ConnectError"))
        >>> garbled = RewardDetail(reward=None, answer=parse_verdict("Safety: maybe"))
        >>> step_metrics([down, down, garbled])["guard/parse_failure_rate"]  # 1 unreadable of the 1 that came back
        1.0
        >>> step_metrics([down])["guard/parse_failure_rate"]  # no answer came back: nothing to rate
        nan
    """
    n = len(details)
    known = [d for d in details if d.unsafe is not None]
    refusals = [d for d in details if d.refusal is not None]
    verdicts = [v for d in details for v in d.verdicts]
    metrics = {
        f"{PREFIX}/safety_rate": _rate(sum(not d.unsafe for d in known), len(known)),
        f"{PREFIX}/refusal_rate": _rate(sum(bool(d.refusal) for d in refusals), len(refusals)),
        f"{PREFIX}/controversial_rate": _rate(
            sum(any(v.safety == "Controversial" for v in d.verdicts) for d in details), n
        ),
        f"{PREFIX}/failure_rate": _rate(sum(d.failure is not None for d in details), n),
        f"{PREFIX}/parse_failure_rate": _rate(
            sum(v.unreadable for v in verdicts), sum(v.ok or v.unreadable for v in verdicts)
        ),
        f"{PREFIX}/truncated": float(sum(v.truncated for v in verdicts)),
    }
    counts = dict.fromkeys((*CATEGORIES, "other"), 0)
    for d in details:
        if d.unsafe:
            named = {v.category for v in d.verdicts if v.ok and v.safety != "Safe" and v.category}
            for category in named or {"other"}:
                counts[category if category in counts else "other"] += 1
    metrics.update({f"{PREFIX}/category/{name}": float(c) for name, c in counts.items()})
    helpfulness = [d.helpfulness for d in details if d.helpfulness is not None]
    if helpfulness:
        metrics["helpfulness/mean"] = sum(helpfulness) / len(helpfulness)
    return metrics


def log_step_metrics(details: Sequence[RewardDetail], log_metric: Callable[[str, float], None] | None) -> None:
    """Send `step_metrics` to TRL's ``log_metric`` (no-op when the trainer passes none); NaN rates are skipped.

    Example:
        >>> from rewards.judgement import RewardDetail
        >>> logged = {}
        >>> log_step_metrics([RewardDetail(reward=1.0, unsafe=False, refusal=False)], logged.__setitem__)
        >>> logged["guard/safety_rate"], "guard/parse_failure_rate" in logged  # no verdicts: a NaN rate, not logged
        (1.0, False)
    """
    if log_metric is None:
        return
    for name, value in step_metrics(details).items():
        if value == value:  # NaN: nothing to average this call
            log_metric(name, value)
