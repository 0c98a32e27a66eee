"""Loading models and tokenizers: once per process, under one lock, with errors that name what failed.

Three rules every model this package loads follows:

* **One lock.** Every load (guard, helpfulness model, tokenizer) runs under `LOAD_LOCK`, a process-wide re-entrant
  lock. transformers' loading swaps class attributes while it works (``no_tie_weights`` replaces
  ``PreTrainedModel.tie_weights`` and puts it back); two loads in two threads can leave the replacement in place
  for the rest of the process. Trainers call rewards from several threads at once (verl's reward loop, TRL's async
  rewards, a reward server), so the first calls must not load side by side.
* **Once.** `load_once` builds a lazily loaded attribute exactly once, even when many threads ask at the same time.
* **Fail fast.** A model that cannot be loaded is a configuration error: `ModelLoadError` names the model and the
  cause, and rewards let it through instead of turning it into per-sample failures.

Model names: a hub id, a local folder, or ``<source>:<name>`` where ``source`` is registered in the
``rewards.model_sources`` entry-point group (safe-rl registers ``toy``, so ``toy:guard`` builds the toy guard);
`resolve_model_name` turns any of them into something ``from_pretrained`` loads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, TypeVar

from rewards.devices import resolve_device, resolve_dtype

T = TypeVar("T")

LOAD_LOCK = threading.RLock()
MODEL_SOURCES_GROUP = "rewards.model_sources"


class ModelLoadError(RuntimeError):
    """A model or tokenizer that cannot be loaded (wrong id, missing folder, offline and not cached, ...).

    Example:
        >>> str(ModelLoadError("guard", "no/such-model", FileNotFoundError("nothing there")))
        "cannot load the guard 'no/such-model': FileNotFoundError: nothing there"
    """

    def __init__(self, what: str, name: Any, cause: BaseException):
        detail = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        super().__init__(f"cannot load the {what} {str(name)!r}: {type(cause).__name__}: {detail}".rstrip(": "))
        self.what = what
        self.name = name


def model_sources() -> dict[str, Any]:
    """The registered ``<source>:`` prefixes and their entry points (group ``rewards.model_sources``).

    Example:
        >>> isinstance(model_sources(), dict)
        True
    """
    return {ep.name: ep for ep in entry_points(group=MODEL_SOURCES_GROUP)}


def resolve_model_name(name: str) -> str:
    """A loadable hub id or folder for ``name``; ``<source>:<model>`` is resolved by its registered source.

    A name whose prefix is not a registered source (a hub id, a folder) is returned as it is.

    Example:
        >>> resolve_model_name("Qwen/Qwen3Guard-Gen-0.6B")
        'Qwen/Qwen3Guard-Gen-0.6B'
    """
    source, sep, rest = str(name).partition(":")
    if not sep:
        return str(name)
    sources = model_sources()
    if source not in sources:
        return str(name)
    with LOAD_LOCK:  # a source may build the model on first use (the toy models do)
        try:
            return str(sources[source].load()(rest))
        except Exception as exc:
            raise ModelLoadError("model", name, exc) from exc


def load_once(owner: Any, attribute: str, build: Callable[[], T]) -> T:
    """``owner.<attribute>``, built by ``build()`` the first time, under `LOAD_LOCK` (once, whatever the threads).

    Example:
        >>> class Lazy:
        ...     _value = None
        >>> calls = []
        >>> lazy = Lazy()
        >>> load_once(lazy, "_value", lambda: calls.append(1) or "model"), load_once(lazy, "_value", lambda: "other")
        ('model', 'model')
        >>> calls
        [1]
    """
    value = getattr(owner, attribute, None)
    if value is not None:
        return value
    with LOAD_LOCK:
        value = getattr(owner, attribute, None)
        if value is None:
            value = build()
            setattr(owner, attribute, value)
    return value


def load_tokenizer(name: Any, *, what: str = "tokenizer", **kwargs: Any) -> Any:
    """``AutoTokenizer.from_pretrained(name)`` under the lock; a loaded tokenizer object is returned as it is.

    Example:
        >>> load_tokenizer("/no/such/folder")
        Traceback (most recent call last):
        ...
        rewards.loading.ModelLoadError: cannot load the tokenizer '/no/such/folder': ...
    """
    if not isinstance(name, (str, bytes)) and not hasattr(name, "__fspath__"):
        return name
    from transformers import AutoTokenizer

    with LOAD_LOCK:
        try:
            return AutoTokenizer.from_pretrained(resolve_model_name(str(name)), **kwargs)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(what, name, exc) from exc


def load_pretrained(
    auto_class: Any,
    name: str,
    *,
    what: str,
    device: Any = None,
    dtype: Any = "auto",
    **kwargs: Any,
) -> Any:
    """``auto_class.from_pretrained`` under the lock, in eval mode on ``device`` with the project's dtype rule
    (`rewards.devices.resolve_dtype`: "auto" is bf16 on accelerators, fp32 on the CPU).

    ``device_map`` in ``kwargs`` leaves placement to accelerate (the model is not moved).

    Example:
        >>> from transformers import AutoModelForCausalLM
        >>> load_pretrained(AutoModelForCausalLM, "/no/such/folder", what="guard")
        Traceback (most recent call last):
        ...
        rewards.loading.ModelLoadError: cannot load the guard '/no/such/folder': ...
    """
    where = resolve_device(device)
    with LOAD_LOCK:
        try:
            model = auto_class.from_pretrained(resolve_model_name(name), dtype=resolve_dtype(dtype, where), **kwargs)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(what, name, exc) from exc
        if "device_map" not in kwargs:
            model.to(where)
        return model.eval()


def load_causal_lm(
    name: str, *, what: str = "causal LM", device: Any = None, dtype: Any = "auto", **kwargs: Any
) -> Any:
    """A causal LM (``AutoModelForCausalLM``) by `load_pretrained`'s rules.

    Example:
        >>> load_causal_lm("/no/such/folder", what="policy")
        Traceback (most recent call last):
        ...
        rewards.loading.ModelLoadError: cannot load the policy '/no/such/folder': ...
    """
    from transformers import AutoModelForCausalLM

    return load_pretrained(AutoModelForCausalLM, name, what=what, device=device, dtype=dtype, **kwargs)
