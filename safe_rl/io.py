"""Reading rows (JSONL/CSV/TSV/Parquet files, saved datasets, hub datasets) and writing resumable JSONL output.

`ResumableJsonl` and `fill` are the one resume loop of `safe-rl score`, `eval` and `prepare`:

* rows are appended and flushed one at a time, so a kill loses at most the row being written; a torn last line is
  cut off on reopen, and a broken line anywhere else is an error naming the file and the line;
* the output records a fingerprint of its input and settings beside it (``NAME.fingerprint.json``); resuming
  against another input, or with other settings, is refused with the differences named;
* ``retry`` drops the rows that failed (for ``--retry-failed``), so that they are done again;
* `fill` feeds the items not yet written to the work function chunk by chunk, with a progress bar, and writes each
  result as its chunk returns; an item the work could not do (None) is not written and is asked for again next time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

TABULAR_SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}


def looks_local(source: str) -> bool:
    """Whether ``source`` names a local path rather than a hub id: a file suffix we read, a path that starts with
    ``.``, ``/`` or ``~``, more than one ``/`` (hub ids are ``owner/name``), or a first part that is a local folder.

    Example:
        >>> looks_local("data/wjb.jsonl"), looks_local("./out"), looks_local("allenai/wildjailbreak")
        (True, True, False)
    """
    source = str(source)
    if Path(source).suffix.lower() in TABULAR_SUFFIXES or source.startswith((".", "/", "~")):
        return True
    return source.count("/") >= 2 or ("/" in source and Path(source.split("/", 1)[0]).is_dir())


def check_local(source: str, what: str = "file") -> None:
    """Raise `FileNotFoundError` ("no such <what>: <source>") for a local-looking ``source`` that does not exist.

    Example:
        >>> check_local("data/nothing-here.jsonl", "data file")
        Traceback (most recent call last):
        ...
        FileNotFoundError: no such data file: data/nothing-here.jsonl
        >>> check_local("allenai/wildjailbreak")  # a hub id: checked when it is loaded
    """
    if looks_local(source) and not Path(source).expanduser().exists():
        raise FileNotFoundError(f"no such {what}: {source}")


def check_models(guard: Any = None, helpfulness: Any = None) -> None:
    """The local folders an in-process guard (`rewards.arguments.GuardArguments`) and a helpfulness model
    (`HelpfulnessArguments`) name must exist (checked before anything loads; a served guard's name is the server's)."""
    if guard is not None and not guard.is_remote:
        check_local(guard.guard_model, "guard folder")
    if guard is not None and guard.guard_tokenizer:
        check_local(guard.guard_tokenizer, "guard tokenizer folder")
    if helpfulness is not None:
        check_local(helpfulness.helpfulness_model, "helpfulness model folder")


def load_rows(source: str, *, split: str = "train", config: str | None = None, **load_kwargs: Any) -> Any:
    """A `datasets.Dataset` from a local JSONL/JSON/CSV/TSV/Parquet file, a saved dataset folder or a hub dataset id.

    A local path that does not exist is a `FileNotFoundError` naming it (not a failed hub look-up).

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "rows.jsonl"
        >>> _ = path.write_text('{"prompt": "hi", "response": "hello"}\\n')
        >>> load_rows(str(path))[0]["response"]
        'hello'
    """
    import datasets

    check_local(source, "data file or folder")
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if path.is_file() and suffix in TABULAR_SUFFIXES:
        builder = TABULAR_SUFFIXES[suffix]
        if suffix == ".tsv":
            load_kwargs.setdefault("delimiter", "\t")
        if builder == "csv":
            load_kwargs.setdefault("keep_default_na", False)  # an empty cell is "", not NaN
        bars = datasets.utils.logging.is_progress_bar_enabled()
        datasets.utils.logging.disable_progress_bar()  # "Generating train split" of a local file: noise, not progress
        try:
            return datasets.load_dataset(builder, data_files=str(path), split="train", **load_kwargs)
        finally:
            if bars:
                datasets.utils.logging.enable_progress_bar()
    if path.is_dir():
        try:
            return datasets.load_from_disk(str(path))
        except FileNotFoundError:
            pass
    return datasets.load_dataset(source, config, split=split, **load_kwargs)


def read_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Rows of a JSONL file (blank lines skipped); a line that is not a JSON object is a `ValueError` naming the file
    and the line.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "rows.jsonl"
        >>> _ = path.write_text('{"a": 1}\\n{"a": \\n')
        >>> list(read_jsonl(path))
        Traceback (most recent call last):
        ...
        ValueError: .../rows.jsonl line 2: not a JSON object (Expecting value)
    """
    with Path(path).open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path} line {number}: not a JSON object ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path} line {number}: not a JSON object")
            yield row


def digest(records: Iterable[Any]) -> str:
    """The sha256 of ``records`` as canonical JSON lines (the input part of a fingerprint).

    Example:
        >>> digest([{"b": 1, "a": 2}]) == digest([{"a": 2, "b": 1}]) != digest([{"a": 2}])
        True
    """
    h = hashlib.sha256()
    for record in records:
        h.update(json.dumps(record, sort_keys=True, ensure_ascii=False, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint_path(path: str | os.PathLike) -> Path:
    """Where the fingerprint of the JSONL output ``path`` is kept: ``NAME.fingerprint.json`` beside it."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(".jsonl") + ".fingerprint.json")


def _differences(before: Any, now: Any, prefix: str = "") -> list[str]:
    if isinstance(before, Mapping) and isinstance(now, Mapping):
        out = []
        for key in sorted(set(before) | set(now), key=str):
            out += _differences(before.get(key), now.get(key), f"{prefix}{key}." if prefix or key else "")
        return out
    if before != now:
        return [f"{prefix.rstrip('.')}: {before!r} -> {now!r}"]
    return []


def check_fingerprint(path: str | os.PathLike, fingerprint: Mapping[str, Any]) -> None:
    """Raise `ValueError` unless the output ``path`` was written from the same input and settings as
    ``fingerprint`` says (nothing to check when ``path`` holds no rows yet).

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "scored.jsonl"
        >>> with ResumableJsonl(out, fingerprint={"input": {"sha256": "ab"}, "settings": {"k": 1}}) as sink:
        ...     sink.write({"index": 0})
        >>> check_fingerprint(out, {"input": {"sha256": "cd"}, "settings": {"k": 1}})
        Traceback (most recent call last):
        ...
        ValueError: .../scored.jsonl was written from another input or with other settings (input.sha256: 'ab' -> 'cd'); resume with the same ones, or pass --overwrite to start again
    """
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return
    record = fingerprint_path(path)
    if not record.exists():
        raise ValueError(
            f"{path} has no record of the input and settings it was written from ({record.name}); "
            "pass --overwrite to start again"
        )
    before = json.loads(record.read_text())
    changed = _differences(before, json.loads(json.dumps(fingerprint, default=str)))
    if changed:
        raise ValueError(
            f"{path} was written from another input or with other settings ({'; '.join(changed)}); "
            "resume with the same ones, or pass --overwrite to start again"
        )


def remove_output(path: str | os.PathLike) -> None:
    """Delete a JSONL output and its fingerprint (``--overwrite``)."""
    for p in (Path(path), fingerprint_path(path)):
        p.unlink(missing_ok=True)


class ResumableJsonl:
    """Append-only JSONL output keyed by a column, safe to resume after the process was killed.

    Args:
        path: the output file.
        key: the column that identifies a row (its input index, an id).
        resume: keep what is there (after cutting a torn last line); otherwise an existing file is an error.
        fingerprint: ``{"input": ..., "settings": ...}`` (JSON-able): recorded beside a new file; a resumed file
            must have been written with the same (`check_fingerprint`).
        retry: rows for which ``retry(row)`` is true are dropped on resume, so that they are done again.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "out.jsonl"
        >>> with ResumableJsonl(path, key="index") as out:
        ...     out.write({"index": 0, "reward": 1.0})
        ...     out.write({"index": 1, "reward": None})
        >>> with ResumableJsonl(path, key="index", resume=True, retry=lambda r: r["reward"] is None) as out:
        ...     sorted(out.done)
        [0]
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        key: str = "index",
        resume: bool = False,
        fingerprint: Mapping[str, Any] | None = None,
        retry: Callable[[dict[str, Any]], bool] | None = None,
    ):
        self.path = Path(path)
        self.key = key
        self.done: set[Any] = set()
        self.retried = 0
        exists = self.path.exists() and self.path.stat().st_size > 0
        if exists and not resume:
            raise FileExistsError(f"{self.path} exists; pass --resume to continue it or --overwrite to start again")
        if exists and fingerprint is not None:
            check_fingerprint(self.path, fingerprint)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if exists:
            self._recover(retry)
        if fingerprint is not None and not exists:
            fingerprint_path(self.path).write_text(json.dumps(fingerprint, indent=2, default=str) + "\n")
        self._fh = self.path.open("a", encoding="utf-8")

    def _recover(self, retry: Callable[[dict[str, Any]], bool] | None) -> None:
        data = self.path.read_bytes()
        cut = data.rfind(b"\n") + 1
        if cut < len(data):
            logger.warning("%s: dropping a torn last line (%d bytes) before resuming", self.path, len(data) - cut)
            with self.path.open("r+b") as fh:
                fh.truncate(cut)
        rows = list(read_jsonl(self.path))
        if retry is not None:
            kept = [r for r in rows if not retry(r)]
            self.retried = len(rows) - len(kept)
            if self.retried:
                tmp = self.path.with_name(self.path.name + ".tmp")
                tmp.write_text("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in kept))
                tmp.replace(self.path)  # atomic: a kill leaves the old file or the new one
                logger.info("%s: %d failed row(s) will be done again", self.path, self.retried)
            rows = kept
        self.done = {row[self.key] for row in rows if self.key in row}

    def write(self, row: dict[str, Any]) -> None:
        """Append one row and flush it (a kill after this loses nothing); a key already written is an error."""
        k = row.get(self.key)
        if k in self.done:
            raise ValueError(f"row with {self.key}={k!r} already written to {self.path}")
        self._fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        self._fh.flush()
        self.done.add(k)

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> ResumableJsonl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Filled:
    """What `fill` did: items written now, items the work could not do (asked for again next time), items already
    there before."""

    written: int
    failed: int
    already: int


def fill(
    sink: ResumableJsonl,
    items: Sequence[T],
    *,
    key: Callable[[T], Any],
    work: Callable[[list[T]], Sequence[R | None]],
    row: Callable[[T, R], dict[str, Any]],
    chunk_size: int,
    desc: str,
    unit: str = "row",
    order: Callable[[T], Any] | None = None,
    progress: bool = True,
) -> Filled:
    """Do ``work`` on the ``items`` whose ``key`` is not in ``sink`` yet, ``chunk_size`` at a time (sorted by
    ``order`` when given), writing ``row(item, result)`` for each result as its chunk returns.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "squares.jsonl"
        >>> with ResumableJsonl(path, key="n") as sink:
        ...     fill(sink, [1, 2, 3], key=lambda n: n, work=lambda ns: [n * n if n != 2 else None for n in ns],
        ...          row=lambda n, sq: {"n": n, "square": sq}, chunk_size=2, desc="squares", progress=False)
        Filled(written=2, failed=1, already=0)
    """
    from tqdm.auto import tqdm

    todo = [item for item in items if key(item) not in sink.done]
    if order is not None:
        todo.sort(key=order)
    failed = 0
    already = len(items) - len(todo)
    with tqdm(
        total=len(items), initial=already, desc=desc, unit=unit, disable=not progress, dynamic_ncols=True
    ) as bar:
        for start in range(0, len(todo), chunk_size):
            chunk = list(todo[start : start + chunk_size])
            results = list(work(chunk))
            if len(results) != len(chunk):
                raise RuntimeError(f"{desc}: {len(results)} results for {len(chunk)} items")
            for item, result in zip(chunk, results, strict=True):
                if result is None:
                    failed += 1
                else:
                    sink.write(row(item, result))
            bar.update(len(chunk))
    return Filled(written=len(todo) - failed, failed=failed, already=already)
