"""A small on-disk cache for the toy models: one folder per (recipe, code version), built once, written atomically.

Key = sha256 of the build recipe (a JSON-able dict) and the code version (the toy package's sources, its data and
template, and the torch/transformers versions). A build goes to a temporary folder next to its final place and is
renamed into place when complete, under an exclusive file lock, so two processes never see or leave a half-written
model and the second one waits for the first instead of building again.

Where: the ``cache_dir`` argument, else ``$SAFE_RL_CACHE/toy``, else ``~/.cache/safe-rl/toy``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_PACKAGE_DIR = Path(__file__).resolve().parent
_COMPLETE = ".complete"
# The sources that shape the toy models (the data, the training code, the builders); editing any rebuilds them.
_BUILD_SOURCES: tuple[str, ...] = ("data.py", "tiny_lm.py", "guard.py", "policy.py", "helpfulness.py")


def toy_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The toy models' cache folder: ``cache_dir``, else ``$SAFE_RL_CACHE/toy``, else ``~/.cache/safe-rl/toy``.

    Example:
        >>> toy_cache_dir("/tmp/x").as_posix()
        '/tmp/x'
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    root = os.environ.get("SAFE_RL_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "safe-rl") / "toy"


def code_version() -> str:
    """A hash of everything a toy build depends on besides its recipe: this package's data, training code, builders
    and guard template, and the torch/transformers versions (their numerics and save formats change between
    releases)."""
    import torch
    import transformers

    h = hashlib.sha256()
    for path in [_PACKAGE_DIR / name for name in _BUILD_SOURCES] + sorted(_PACKAGE_DIR.glob("*.jinja")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    h.update(f"torch={torch.__version__};transformers={transformers.__version__}".encode())
    return h.hexdigest()


def recipe_key(recipe: dict[str, Any]) -> str:
    """The cache key of a build recipe (with the code version folded in).

    Example:
        >>> len(recipe_key({"kind": "guard", "seed": 0}))
        64
    """
    blob = json.dumps(recipe, sort_keys=True, default=str) + code_version()
    return hashlib.sha256(blob.encode()).hexdigest()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: fall back to the atomic rename alone
        yield
        return
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cached_build(
    name: str, recipe: dict[str, Any], build: Callable[[Path], None], cache_dir: str | os.PathLike | None = None
) -> Path:
    """The folder holding ``name`` built from ``recipe``; ``build(tmp_folder)`` runs only when it is not cached.

    Example:
        >>> import tempfile
        >>> root = tempfile.mkdtemp()
        >>> calls = []
        >>> make = lambda folder: calls.append((folder / "x.txt").write_text("hi"))
        >>> a = cached_build("demo", {"n": 1}, make, root)
        >>> b = cached_build("demo", {"n": 1}, make, root)
        >>> a == b, len(calls), (a / "x.txt").read_text()
        (True, 1, 'hi')
    """
    root = toy_cache_dir(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    key = recipe_key({"name": name, **recipe})
    final = root / f"{name}-{key[:16]}"
    if (final / _COMPLETE).exists():
        return final
    with _locked(root / f".{name}-{key[:16]}.lock"):
        if (final / _COMPLETE).exists():  # another process built it while we waited
            return final
        if final.exists():  # left over by a crash between rename and marker (cannot happen with the marker first)
            shutil.rmtree(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", suffix=".tmp", dir=root))
        try:
            logger.info("building toy %s into %s", name, final)
            build(tmp)
            (tmp / "recipe.json").write_text(json.dumps({"name": name, "key": key, **recipe}, indent=2, default=str))
            (tmp / _COMPLETE).write_text(key)
            os.rename(tmp, final)  # atomic on one file system
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final
