"""Reference log-probs, computed once and kept on disk.

A frozen reference model gives the same log-probs for the same tokens every epoch and every run, so we compute
them in one pass before training and store them under a key made of
- the reference model's fingerprint (config.json + every weight file's name, size and a sampled content hash),
- a hash of the exact token ids and masks scored (which covers the dataset, chat template, max_length and
  truncation), and
- the compute dtype.
A second run on the same data and reference loads the file instead of running the reference model.
Default location: $PREFSMITH_CACHE/ref_logps or ~/.cache/prefsmith/ref_logps; `--ref-cache-dir` overrides it.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from pipelines.core.files import (atomic_path, atomic_write_json, fingerprint_files, fingerprint_json,
                                  fingerprint_records)

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def default_cache_dir() -> Path:
    base = os.environ.get("PREFSMITH_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "prefsmith") / "ref_logps"


def model_fingerprint(model_path: str | Path) -> str:
    """Fingerprint of a local model directory: its config files whole, its weight files sampled (size and eight
    1 MiB windows each: fast on multi-GB shards, and any retrain, re-save or other checkpoint changes it)."""
    path = Path(model_path)
    if not path.is_dir():
        raise FileNotFoundError(f"reference model {model_path!r} is not a local directory")
    configs = [path / name for name in ("config.json", "adapter_config.json") if (path / name).exists()]
    weights = sorted(p for p in path.iterdir() if p.suffix in _WEIGHT_SUFFIXES and p.is_file())
    if not weights:
        raise FileNotFoundError(f"no weight files in {path}")
    return fingerprint_files([*configs, *weights], length=None, sampled=True)


def features_hash(features: list[dict], keys: tuple[str, ...]) -> str:
    """Hash of the token ids / masks that will be scored, in order."""
    return fingerprint_records(([key, feat[key]] for feat in features for key in keys), length=None)


def cache_key(model_fp: str, data_hash: str, dtype: str, kind: str) -> str:
    return fingerprint_json({"model": model_fp, "data": data_hash, "dtype": dtype, "kind": kind, "v": 1}, length=32)


def load_cached(cache_dir: str | Path, key: str) -> torch.Tensor | None:
    path = Path(cache_dir) / f"{key}.pt"
    if not path.exists():
        return None
    try:
        return torch.load(path, weights_only=True)
    except Exception:  # a torn or foreign file is recomputed, never trusted
        return None


def store_cached(cache_dir: str | Path, key: str, values: torch.Tensor, meta: dict) -> Path:
    """Atomically write the cached tensor and a small JSON sidecar describing it."""
    path = Path(cache_dir) / f"{key}.pt"
    with atomic_path(path) as tmp:
        torch.save(values.cpu(), tmp)
    atomic_write_json(path.with_suffix(".json"), meta)
    return path
