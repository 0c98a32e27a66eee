"""Benchmarks: a registry of small loaders that turn a dataset into `EvalPrompt` rows.

A benchmark is named on the command line as ``NAME`` (its default source), ``NAME:SOURCE`` (a local file or hub id
with that benchmark's columns) or a plain file path, whose columns pick the loader (WildJailbreak's ``adversarial``
+ ``data_type``, XSTest's ``type`` + ``focus``, else the generic ``prompt`` column).
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safe_rl.data.wildjailbreak import load_wildjailbreak
from safe_rl.io import check_local, load_rows

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EvalPrompt:
    """One benchmark prompt.

    Attributes:
        id: unique within the benchmark; the key of every output row (resume relies on it being stable).
        prompt: the user turn sent to the policy.
        harmful: the benchmark's label (True harmful, False benign), None when the benchmark has none.
        category: the subcategory the metrics are broken down by (WildJailbreak ``data_type``, XSTest ``type``).
        index: the prompt's position in the run (after ``--limit`` and ``--samples``); sampling seeds derive from it.
    """

    id: str
    prompt: str
    harmful: bool | None = None
    category: str | None = None
    index: int = 0


@dataclass(frozen=True)
class Benchmark:
    """A loaded benchmark: its registry name, where it came from, and its prompts in a fixed order."""

    name: str
    source: str
    prompts: list[EvalPrompt]

    def select(self, limit: int | None, seed: int = 0) -> Benchmark:
        """The same benchmark cut to a seeded random subset of ``limit`` prompts (kept in benchmark order).

        A random subset rather than the first rows, because benchmark files are often sorted by label; the same
        ``limit`` and ``seed`` always give the same subset, so a resumed run judges the same prompts.
        """
        if limit is None or limit >= len(self.prompts):
            return self
        if limit < 1:
            raise ValueError(f"limit must be positive, got {limit}")
        keep = sorted(random.Random(seed).sample(range(len(self.prompts)), limit))
        return Benchmark(self.name, self.source, [self.prompts[i] for i in keep])

    def for_run(self, limit: int | None = None, seed: int = 0, samples: int = 1) -> list[EvalPrompt]:
        """The prompts a run answers: the seeded subset of ``limit``, each repeated ``samples`` times (ids
        ``ID#0``, ``ID#1``, ... when ``samples`` > 1), indexed in order.

        Example:
            >>> bench = Benchmark("demo", "-", [EvalPrompt("a", "Hi"), EvalPrompt("b", "Yo")])
            >>> [(p.id, p.index) for p in bench.for_run(samples=2)]
            [('a#0', 0), ('a#1', 1), ('b#0', 2), ('b#1', 3)]
        """
        if samples < 1:
            raise ValueError(f"samples must be positive, got {samples}")
        chosen = self.select(limit, seed).prompts
        if samples > 1:
            chosen = [dataclasses.replace(p, id=f"{p.id}#{k}") for p in chosen for k in range(samples)]
        return [dataclasses.replace(p, index=i) for i, p in enumerate(chosen)]


Loader = Callable[[str | None], list[EvalPrompt]]
BENCHMARKS: dict[str, Loader] = {}
DESCRIPTIONS: dict[str, str] = {}

_TRUE = {"1", "true", "yes", "harmful", "unsafe"}
_FALSE = {"0", "false", "no", "benign", "safe", "unharmful"}


def register_benchmark(name: str, description: str) -> Callable[[Loader], Loader]:
    """Add a loader ``fn(source: str | None) -> list[EvalPrompt]`` to the registry under ``name``."""

    def wrap(fn: Loader) -> Loader:
        BENCHMARKS[name] = fn
        DESCRIPTIONS[name] = description
        return fn

    return wrap


def parse_label(value: Any) -> bool | None:
    """A harmful/benign label as True/False; None for an empty cell. Anything unknown is an error.

    Example:
        >>> parse_label("unsafe"), parse_label(0), parse_label("")
        (True, False, None)
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text == "":
        return None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"unknown harmful/benign label {value!r}; use one of {sorted(_TRUE | _FALSE)}")


def _rows(source: str, **kwargs: Any) -> list[dict[str, Any]]:
    return [dict(r) for r in load_rows(source, **kwargs)]


def _require(rows: list[dict[str, Any]], columns: Iterable[str], what: str, source: str) -> None:
    if not rows:
        raise ValueError(f"{what} {source}: no rows")
    missing = [c for c in columns if c not in rows[0]]
    if missing:
        raise ValueError(f"{what} {source}: missing column(s) {missing}; found {sorted(rows[0])}")


def _check_ids(prompts: list[EvalPrompt], source: str) -> list[EvalPrompt]:
    seen: set[str] = set()
    for p in prompts:
        if p.id in seen:
            raise ValueError(f"{source}: duplicate id {p.id!r}; ids key the output rows and must be unique")
        if not p.prompt.strip():
            raise ValueError(f"{source}: prompt {p.id!r} is empty")
        seen.add(p.id)
    return prompts


@register_benchmark(
    "wildjailbreak",
    "WildJailbreak eval (hub allenai/wildjailbreak, config eval): 2000 adversarial harmful + 210 adversarial benign",
)
def wildjailbreak(source: str | None = None) -> list[EvalPrompt]:
    """WildJailbreak's eval set from the hub (gated, automatic approval) or a local file with its columns."""
    if source is None or source == "allenai/wildjailbreak":
        rows = [dict(r) for r in load_wildjailbreak(config="eval")]  # the hub's TSV, read as training reads it
        source = "allenai/wildjailbreak:eval"
    else:
        rows = _rows(source)
    return _wildjailbreak_prompts(rows, source)


def _wildjailbreak_prompts(rows: list[dict[str, Any]], source: str) -> list[EvalPrompt]:
    """WildJailbreak's columns: the ``adversarial`` prompt (``vanilla`` on rows without one); the harmful label from
    ``label``, else from ``data_type``."""
    _require(rows, ("adversarial", "data_type"), "WildJailbreak", source)
    prompts = []
    for i, row in enumerate(rows):
        data_type = str(row["data_type"])
        label = parse_label(row.get("label"))
        harmful = label if label is not None else _harmful_type(data_type)
        if (
            harmful is not None
            and data_type.endswith(("harmful", "benign"))
            and harmful != data_type.endswith("harmful")
        ):
            raise ValueError(f"{source} row {i}: label {row['label']!r} contradicts data_type {data_type!r}")
        text = row.get("adversarial") or row.get("vanilla") or ""
        prompts.append(EvalPrompt(str(row.get("id", i)), str(text), harmful, data_type))
    return _check_ids(prompts, source)


def _harmful_type(data_type: str) -> bool | None:
    """The label a WildJailbreak ``data_type`` implies (``*_harmful``, ``*_benign``), None for anything else."""
    if data_type.endswith("harmful"):
        return True
    if data_type.endswith("benign"):
        return False
    return None


@register_benchmark(
    "xstest", "XSTest from a local CSV (id, prompt, type, label safe/unsafe, focus, note): 250 safe + 200 unsafe"
)
def xstest(source: str | None = None) -> list[EvalPrompt]:
    """XSTest's prompts: ``label`` "unsafe" is harmful, "safe" benign; ``type`` is the subcategory."""
    if source is None:
        raise ValueError("XSTest is read from a local CSV: --benchmark xstest:path/to/xstest_prompts.csv")
    return _xstest_prompts(_rows(source), source)


def _xstest_prompts(rows: list[dict[str, Any]], source: str) -> list[EvalPrompt]:
    _require(rows, ("id", "prompt", "type", "label"), "XSTest", source)
    prompts = [EvalPrompt(str(r["id"]), str(r["prompt"]), parse_label(r["label"]), str(r["type"])) for r in rows]
    return _check_ids(prompts, source)


@register_benchmark("prompts", "any local JSONL/CSV with a prompt column; optional label/harmful, category, id")
def prompts_file(source: str | None = None) -> list[EvalPrompt]:
    """A generic prompt file: ``prompt``; optional ``label`` or ``harmful`` (harmful/benign, unsafe/safe, 1/0),
    ``category`` (or ``subcategory``, ``type``) and ``id`` (else the row number)."""
    if source is None:
        raise ValueError("the prompts benchmark needs a file: --benchmark prompts:path/to/file.jsonl")
    return _prompt_file_prompts(_rows(source), source)


def _prompt_file_prompts(rows: list[dict[str, Any]], source: str) -> list[EvalPrompt]:
    _require(rows, ("prompt",), "prompt file", source)
    label_col = next((c for c in ("harmful", "label") if c in rows[0]), None)
    cat_col = next((c for c in ("category", "subcategory", "type", "data_type") if c in rows[0]), None)
    prompts = []
    for i, row in enumerate(rows):
        category = row.get(cat_col) if cat_col else None
        harmful = parse_label(row.get(label_col)) if label_col else None
        if harmful is None:
            harmful = _harmful_type(str(row.get("data_type") or ""))
        prompts.append(
            EvalPrompt(
                id=str(row["id"]) if row.get("id") not in (None, "") else str(i),
                prompt=str(row["prompt"]),
                harmful=harmful,
                category=str(category) if category not in (None, "") else None,
            )
        )
    return _check_ids(prompts, source)


@register_benchmark("toy", "the toy world's held-out prompts (safe_rl.toy): 32 harmful + 32 benign, offline")
def toy(source: str | None = None) -> list[EvalPrompt]:
    """The toy world's test prompts, harmful and benign (the before/after evaluation of configs/smoke.yaml)."""
    from safe_rl.toy.data import toy_prompts

    if source not in (None, "", "test"):
        raise ValueError(f"the toy benchmark has one split, test; got {source!r}")
    return [
        EvalPrompt(f"toy-{i}", p.text, p.harmful, p.category or "benign") for i, p in enumerate(toy_prompts("test"))
    ]


# How a plain file's rows become prompts, by the benchmark its columns call for (see `_sniff`).
_FROM_ROWS: dict[str, Callable[[list[dict[str, Any]], str], list[EvalPrompt]]] = {
    "wildjailbreak": _wildjailbreak_prompts,
    "xstest": _xstest_prompts,
    "prompts": _prompt_file_prompts,
}


def _sniff(column_names: Iterable[str]) -> str:
    """The loader a file's columns call for."""
    columns = set(column_names)
    if {"adversarial", "data_type"} <= columns and "prompt" not in columns:
        return "wildjailbreak"
    if {"id", "prompt", "type", "label", "focus"} <= columns:
        return "xstest"
    return "prompts"


def load_benchmark(spec: str) -> Benchmark:
    """Load ``NAME``, ``NAME:SOURCE`` or a file path (see the module docstring).

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "p.jsonl"
        >>> _ = path.write_text('{"prompt": "hi", "label": "benign"}\\n')
        >>> load_benchmark(str(path)).prompts
        [EvalPrompt(id='0', prompt='hi', harmful=False, category=None, index=0)]
    """
    name, sep, source = spec.partition(":")
    if sep and name in BENCHMARKS and name != "toy":
        check_local(source, "benchmark file")
    if sep and name in BENCHMARKS:
        return Benchmark(name, source, BENCHMARKS[name](source))
    if spec in BENCHMARKS:
        return Benchmark(spec, spec, BENCHMARKS[spec](None))
    check_local(spec, "benchmark file")
    if Path(spec).exists():
        dataset = load_rows(spec)  # read once: its columns pick the loader, its rows feed it
        name = _sniff(dataset.column_names)
        logger.info("benchmark %s read as %r", spec, name)
        return Benchmark(name, spec, _FROM_ROWS[name]([dict(r) for r in dataset], spec))
    raise ValueError(f"unknown benchmark {spec!r}: not a file, and not one of {describe_benchmarks()}")


def describe_benchmarks() -> str:
    """One line per registered benchmark."""
    return "; ".join(f"{k} ({v})" for k, v in DESCRIPTIONS.items())
