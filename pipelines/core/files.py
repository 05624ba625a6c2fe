"""Files: the one atomic writer and the one content fingerprint, used by pipelines and trainers.

A write goes to a hidden temp file beside its target (`.NAME.*.tmp`), is fsynced, and is renamed onto the
target, so a reader never sees half a file and a kill leaves only the temp file (the runner removes those). A
directory (a checkpoint, a converted model) is built in a hidden temp directory and renamed into place.

A fingerprint is a sha256 prefix: `fingerprint_json` of a config-like value (JSON with sorted keys),
`fingerprint_files` of files' names and bytes.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

_BLOCK = 1 << 20  # read size when hashing, and the window size of a sampled file digest
_WINDOWS = 8  # windows a sampled digest reads from a file larger than _WINDOWS * _BLOCK


# ----------------------------------------------------------------------------------------------- writing
def ensure_writable_dir(path: str | os.PathLike, what: str = "--output") -> Path:
    """Create the folder `path` (with its parents) and check a file can be written in it, before any work: one
    UserError naming `what`, the path and the cause otherwise (no permission, a read-only file system, a file
    where the folder should be)."""
    from pipelines.errors import UserError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file; it must name a folder (a new or existing one)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path, prefix=".write-check.", suffix=".tmp")
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise UserError(f"{what} {path}: cannot write there ({e.strerror or e}); choose a folder you can write "
                        "to") from None
    return path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path` for a writer that needs a file name (Parquet, torch.save); on success
    fsync it and rename it onto `path`, on any error remove it.

        with atomic_path(out / "part-00000.parquet") as tmp:
            pq.write_table(table, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2,
                      default: Callable[[Any], Any] | None = str) -> None:
    """`obj` as JSON (`default` turns what JSON has no type for into something it has; str unless told)."""
    atomic_write_text(path, json.dumps(obj, indent=indent, default=default))


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty hidden temp directory beside `path`; on success replace `path` (if it exists) with it,
    on any error remove it. A reader sees the old directory or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------------------------- fingerprints
def fingerprint_json(obj: Any, length: int | None = 16) -> str:
    """sha256 of `obj` as JSON with sorted keys (values JSON cannot hold are written with str), cut to `length`
    hex digits (None: all 64). Equal configs give equal fingerprints whatever their key order."""
    blob = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def fingerprint_records(records: Iterable[Any], length: int | None = 16) -> str:
    """sha256 over the JSON of each record in turn: a long sequence (every example's token ids) fingerprinted
    without building one string of all of it."""
    h = hashlib.sha256()
    for record in records:
        h.update(json.dumps(record, sort_keys=True, default=str).encode())
    return h.hexdigest()[:length]


def fingerprint_files(files: Iterable[str | os.PathLike], length: int | None = 16, sampled: bool = False) -> str:
    """sha256 over each file's name and contents, in the order given, cut to `length` hex digits.

    `sampled`: for multi-GB weights, a file larger than 8 MiB contributes its size and 8 evenly spaced 1 MiB
    windows instead of every byte (any retrain or re-save still changes it; full hashing costs minutes)."""
    h = hashlib.sha256()
    for f in map(Path, files):
        h.update(f.name.encode())
        size = f.stat().st_size
        with open(f, "rb") as fh:
            if sampled and size > _WINDOWS * _BLOCK:
                h.update(str(size).encode())
                for i in range(_WINDOWS):
                    fh.seek((size - _BLOCK) * i // (_WINDOWS - 1))
                    h.update(fh.read(_BLOCK))
            else:
                for block in iter(lambda: fh.read(_BLOCK), b""):
                    h.update(block)
    return h.hexdigest()[:length]
