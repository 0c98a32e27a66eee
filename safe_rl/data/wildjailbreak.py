"""WildJailbreak training prompts (hub ``allenai/wildjailbreak``, config ``train``, a TSV with columns vanilla,
adversarial, completion, data_type), from the hub, a local JSONL/CSV/TSV/Parquet file with the same columns, a
folder written by `safe-rl prepare` (a ``datasets`` dataset with a ``prompt`` column), or ``toy`` (the toy world's
harmful training prompts, in WildJailbreak's columns)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger(__name__)

HUB_ID = "allenai/wildjailbreak"
HARMFUL_TYPES: tuple[str, ...] = ("vanilla_harmful", "adversarial_harmful")


TOY_SOURCE = "toy"


def load_wildjailbreak(source: str = HUB_ID, *, config: str | None = "train", split: str = "train") -> Any:
    """The rows of ``source`` as a `datasets.Dataset` (the hub's TSV is read with empty cells kept as "")."""
    from safe_rl.io import load_rows

    if source == TOY_SOURCE:  # plain harmful requests: WildJailbreak's vanilla_harmful
        from safe_rl.toy.data import toy_prompts

        return [{"vanilla": p.text, "adversarial": "", "data_type": "vanilla_harmful"}
                for p in toy_prompts("train", harmful=True)]  # fmt: skip

    if source == HUB_ID:
        # The files are TSV; pandas would turn empty `adversarial` cells (vanilla rows) into NaN.
        return load_rows(source, config=config, split=split, delimiter="\t", keep_default_na=False)
    return load_rows(source, config=config, split=split)


def row_prompt(row: dict[str, Any], prompt_column: str | None = None) -> str:
    """The prompt of one row: ``prompt_column`` if given; else ``prompt``; else WildJailbreak's ``adversarial``
    (adversarial rows) or ``vanilla``.

    Example:
        >>> row_prompt({"vanilla": "How to x?", "adversarial": "", "data_type": "vanilla_harmful"})
        'How to x?'
    """
    if prompt_column is not None:
        return str(row.get(prompt_column) or "")
    if row.get("prompt"):
        return str(row["prompt"])
    if str(row.get("data_type", "")).startswith("adversarial") and row.get("adversarial"):
        return str(row["adversarial"])
    return str(row.get("vanilla") or "")


def select_prompts(
    rows: Any, data_types: Sequence[str] | None = HARMFUL_TYPES, prompt_column: str | None = None
) -> list[dict[str, Any]]:
    """``{"prompt", "data_type", "source_index"}`` for each row of the wanted types, blank and repeated prompts
    dropped (first kept). Rows without a ``data_type`` column are all kept.

    Example:
        >>> rows = [{"vanilla": "a", "adversarial": "", "data_type": "vanilla_harmful"},
        ...         {"vanilla": "b", "adversarial": "", "data_type": "vanilla_benign"},
        ...         {"vanilla": "a", "adversarial": "", "data_type": "vanilla_harmful"}]
        >>> [r["prompt"] for r in select_prompts(rows)]
        ['a']
    """
    wanted = set(data_types) if data_types else None
    seen: set[str] = set()
    out = []
    for i, row in enumerate(rows):
        data_type = str(row.get("data_type", ""))
        if wanted is not None and "data_type" in row and data_type not in wanted:
            continue
        prompt = row_prompt(row, prompt_column).strip()
        if not prompt or prompt in seen:
            continue
        seen.add(prompt)
        out.append({"prompt": prompt, "data_type": data_type, "source_index": i})
    return out


def harmful_prompts(
    source: str = HUB_ID,
    *,
    config: str | None = "train",
    split: str = "train",
    data_types: Sequence[str] | None = HARMFUL_TYPES,
    prompt_column: str | None = None,
) -> list[str]:
    """The prompt texts for training (paper: WildJailbreak train, vanilla_harmful + adversarial_harmful)."""
    rows = load_wildjailbreak(source, config=config, split=split)
    selected = select_prompts(rows, data_types, prompt_column)
    logger.info("%s: %d prompts of types %s (from %d rows)", source, len(selected), list(data_types or []), len(rows))
    return [r["prompt"] for r in selected]
