"""Generation engines behind one interface (see base.py): `hf`, `vllm`, `openai`."""
from __future__ import annotations

from typing import Any

from .base import Engine, EngineError, Prompt, Sample, SamplingConfig

ENGINES = ("hf", "vllm", "openai")


def load_engine(name: str, model: str, threads: int | None = None, **options: Any) -> Engine:
    """Build engine `name` for `model` (a local folder, a hub name, or for `openai` the served model name).

    Options go to the engine's constructor (see docs/engines.md). `threads` (`--threads`; None: auto) is for the
    engine whose model runs in this process on torch, hf; vllm and openai manage their own. Raises EngineError
    before any work starts when the model or server cannot be used."""
    if name == "hf":
        from .hf import HFEngine

        return HFEngine(model, threads=threads, **options)
    if name == "vllm":
        from .vllm import VLLMEngine

        return VLLMEngine(model, **options)
    if name == "openai":
        from .openai import OpenAIEngine

        return OpenAIEngine(model, **options)
    raise EngineError(f"unknown engine {name!r}: choose one of {', '.join(ENGINES)}")


__all__ = ["ENGINES", "Engine", "EngineError", "Prompt", "Sample", "SamplingConfig", "load_engine"]
