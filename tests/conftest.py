"""Shared fixtures: an isolated LORAKIT_HOME per session, the real default model, a tiny model and its GGUF.

Every test runs with LORAKIT_HOME pointing at a fresh per-session folder, so nothing a test pulls, converts or
breaks touches the user's cache. Tests marked ``real_model`` are the exception: they run with the real cache
home (``LORAKIT_HOME`` as the suite was started with, else ~/.cache/lorakit), and the session fixture
``default_model`` pulls the default preset there once (~90 s on a fresh machine, instant later). The pull
happens inside that fixture with the real home set explicitly, so it never depends on fixture order and works
with no cache, a partial cache (an interrupted pull, a dangling link) or a full one. CI starts the suite
with a new, empty ``LORAKIT_HOME`` (``.ci/run``), so every CI run takes the fresh path.
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

# The cache a user (or CI) really has, captured before any test redirects LORAKIT_HOME.
REAL_HOME = Path(os.environ.get("LORAKIT_HOME") or Path.home() / ".cache" / "lorakit")


def pytest_configure(config):
    config.addinivalue_line("markers", "real_model: loads the real default preset (pulls it on first use, ~90 s); "
                                       "deselect with -m 'not real_model'")


@contextlib.contextmanager
def home_env(path: Path):
    """LORAKIT_HOME set to ``path`` for the duration, then put back as it was."""
    old = os.environ.get("LORAKIT_HOME")
    os.environ["LORAKIT_HOME"] = str(path)
    try:
        yield path
    finally:
        if old is None:
            os.environ.pop("LORAKIT_HOME", None)
        else:
            os.environ["LORAKIT_HOME"] = old


@pytest.fixture(scope="session", autouse=True)
def lorakit_home(tmp_path_factory) -> Path:
    """A fresh, empty per-session LORAKIT_HOME."""
    with home_env(tmp_path_factory.mktemp("lorakit_home")) as home:
        yield home


@pytest.fixture(scope="session")
def default_model(lorakit_home) -> Path:
    """The real default preset's safetensors folder in the real cache home, pulled there on first use."""
    from lorakit.models import resolve
    from lorakit.models.presets import DEFAULT_PRESET, model_dir
    with home_env(REAL_HOME):
        path = resolve(DEFAULT_PRESET)
        assert path == model_dir(DEFAULT_PRESET)
    return path


@pytest.fixture(autouse=True)
def _per_test_state(request, monkeypatch):
    """Real-model tests get the pulled default model and the real cache home; torch's global grad mode is
    restored after every test (``load_model(trainable=False)`` switches gradients off process-wide)."""
    if request.node.get_closest_marker("real_model"):
        request.getfixturevalue("default_model")
        monkeypatch.setenv("LORAKIT_HOME", str(REAL_HOME))
    torch = sys.modules.get("torch")
    grad = torch.is_grad_enabled() if torch is not None else None
    yield
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_grad_enabled(True if grad is None else grad)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random Qwen2 model + byte-level BPE tokenizer with a ChatML template, saved as an HF folder."""
    from lorakit.models.tiny import build_tiny
    return build_tiny(tmp_path_factory.mktemp("tiny") / "tiny-qwen2")


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory, tiny_model) -> Path:
    """The tiny model written as an F32 GGUF file (covers the GGUF load path in well under a second)."""
    from lorakit.models.gguf_writer import write_gguf
    return write_gguf(tiny_model, tmp_path_factory.mktemp("tiny_gguf") / "tiny-qwen2.gguf")
