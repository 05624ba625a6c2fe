import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# trackio reads its store's folder once per process: without this, whichever test imports it first with no run
# folder set would make it the user's ~/.cache/huggingface/trackio, shared by every later test session
if "TRACKIO_DIR" not in os.environ:
    import tempfile

    os.environ["TRACKIO_DIR"] = tempfile.mkdtemp(prefix="prefsmith-tests-trackio-")

from tiny_model import build_boxing_model, build_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random Llama (2 layers, head_dim 64) with a local BPE tokenizer and a ChatML template."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_model_pad_eos(tmp_path_factory) -> Path:
    """Same architecture, but pad_token == eos_token (the case that breaks naive loss masks)."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny_pad_eos", pad_is_eos=True)


@pytest.fixture(scope="session")
def boxing_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model fine-tuned to answer math prompts boxed half the time (tests/tiny_model.py): its samples
    differ in format, so rewards vary within a prompt (pairs, GRPO groups) and completions end at different steps."""
    return build_boxing_model(tiny_model, tmp_path_factory.mktemp("models") / "boxing")


@pytest.fixture()
def prompts(tmp_path):
    """Twelve prompts with gold answers, for the online trainers' tiny runs (tests/plugin_rewards.py scores them)."""
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"say something {i}", "answer": str(i)}) + "\n"
                            for i in range(12)))
    return path
