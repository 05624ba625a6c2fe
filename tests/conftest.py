import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tiny_model import build_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random Llama (2 layers, head_dim 64) with a local BPE tokenizer and a ChatML template."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_model_pad_eos(tmp_path_factory) -> Path:
    """Same architecture, but pad_token == eos_token (the case that breaks naive loss masks)."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny_pad_eos", pad_is_eos=True)
