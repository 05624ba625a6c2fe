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

import hashlib
import json
import os
from pathlib import Path

import torch

_SAMPLE_BYTES = 1 << 20  # per sampled window of a weight file
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def default_cache_dir() -> Path:
    base = os.environ.get("PREFSMITH_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "prefsmith") / "ref_logps"


def _file_digest(path: Path) -> str:
    """Size plus sha256 of up to 8 evenly spaced 1 MiB windows: fast on multi-GB shards, and any retrain,
    re-save or different checkpoint changes it (full hashing would cost minutes on large models)."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        if size <= 8 * _SAMPLE_BYTES:
            h.update(f.read())
        else:
            for i in range(8):
                f.seek((size - _SAMPLE_BYTES) * i // 7)
                h.update(f.read(_SAMPLE_BYTES))
    return h.hexdigest()


def model_fingerprint(model_path: str | Path) -> str:
    """Fingerprint of a local model directory (config + weight files)."""
    path = Path(model_path)
    if not path.is_dir():
        raise FileNotFoundError(f"reference model {model_path!r} is not a local directory")
    h = hashlib.sha256()
    for name in ("config.json", "adapter_config.json"):
        if (path / name).exists():
            h.update(name.encode() + (path / name).read_bytes())
    weights = sorted(p for p in path.iterdir() if p.suffix in _WEIGHT_SUFFIXES and p.is_file())
    if not weights:
        raise FileNotFoundError(f"no weight files in {path}")
    for w in weights:
        h.update(w.name.encode() + _file_digest(w).encode())
    return h.hexdigest()


def features_hash(features: list[dict], keys: tuple[str, ...]) -> str:
    """Hash of the token ids / masks that will be scored, in order."""
    h = hashlib.sha256()
    for feat in features:
        for key in keys:
            h.update(key.encode())
            h.update(json.dumps(feat[key]).encode())
    return h.hexdigest()


def cache_key(model_fp: str, data_hash: str, dtype: str, kind: str) -> str:
    blob = json.dumps({"model": model_fp, "data": data_hash, "dtype": dtype, "kind": kind, "v": 1}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


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
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{key}.pt"
    tmp = cache_dir / f".{key}.{os.getpid()}.tmp"
    torch.save(values.cpu(), tmp)
    tmp.replace(path)
    (cache_dir / f"{key}.json").write_text(json.dumps(meta, indent=2))
    return path
