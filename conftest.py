"""Root conftest: every test and doctest runs offline (no hub downloads: a missing file fails at once); the test
helpers in ``tests/`` import as ``_toy``, ``_serve``, ... as well as ``tests._toy`` (``tests`` is a package, see its
``__init__``)."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "tests"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
