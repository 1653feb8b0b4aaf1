"""Shared fixtures: an isolated LORAKIT_HOME per session, a tiny model folder and the same model as a GGUF file.

Every test runs with LORAKIT_HOME pointing at a fresh per-session folder, so nothing a test pulls, converts or
breaks touches the user's cache. Two exceptions keep the real default model (a ~90 s pull) reachable:

* inside that folder, ``models/<default preset>`` is a symlink to the real cache's copy, so a test resolving
  the default preset finds it when it is pulled;
* tests marked ``real_model`` run with the real cache home itself, so on a fresh clone they pull the default
  preset into ~/.cache/lorakit once and later runs reuse it.
"""
from __future__ import annotations

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


@pytest.fixture(scope="session", autouse=True)
def lorakit_home(tmp_path_factory) -> Path:
    """A per-session LORAKIT_HOME; the real default preset stays reachable through a symlink."""
    from lorakit.models.presets import DEFAULT_PRESET

    home = tmp_path_factory.mktemp("lorakit_home")
    (home / "models").mkdir()
    (home / "models" / DEFAULT_PRESET).symlink_to(REAL_HOME / "models" / DEFAULT_PRESET, target_is_directory=True)
    old = os.environ.get("LORAKIT_HOME")
    os.environ["LORAKIT_HOME"] = str(home)
    try:
        yield home
    finally:
        if old is None:
            os.environ.pop("LORAKIT_HOME", None)
        else:
            os.environ["LORAKIT_HOME"] = old


@pytest.fixture(autouse=True)
def _per_test_state(request, monkeypatch):
    """Real-model tests use the real cache home; torch's global grad mode is restored after every test
    (``load_model(trainable=False)`` switches gradients off process-wide)."""
    if request.node.get_closest_marker("real_model"):
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
