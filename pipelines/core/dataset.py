"""Datasets on disk: a directory with `manifest.json` and its Parquet shards under `data/`.

    DIR/manifest.json            stage, config, fingerprints, versions, row counts, timings, shard status
    DIR/data/part-00000.parquet  the rows: load with datasets.load_dataset("parquet", data_dir="DIR/data")
    DIR/removed/...              side datasets some stages write (same layout)

The shards live in `data/` rather than beside the manifest because `datasets.load_dataset("parquet",
data_dir=...)` tries to read every non-hidden file of the folder, the manifest included.

Stages read JSONL, single Parquet files, dataset directories and Hugging Face dataset names. Input is
validated before any work starts: a missing required column, a malformed JSONL line, a non-UTF-8 byte or an
empty input raises one `UserError` naming the file, the line/row and the column.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.errors import UserError

# columns of the standard datasets and the stage that writes them, for "run this first" hints
MADE_BY = {"completion": "generate", "prompt_id": "generate", "sample_idx": "generate",
           "reward": "label", "rewards": "label", "reward_info": "label"}

MANIFEST = "manifest.json"
DATA = "data"
SHARD_GLOB = "part-*.parquet"


# ----------------------------------------------------------------------------------------------- reading
def _source_kind(source: str) -> str:
    p = Path(source)
    if p.is_dir():
        return "dir"
    if p.is_file():
        if p.suffix == ".parquet":
            return "parquet"
        if p.suffix in (".jsonl", ".json", ".ndjson"):
            return "jsonl"
        raise UserError(f"{source}: unsupported file type {p.suffix!r}; use .jsonl, .parquet or a dataset directory")
    looks_local = source.startswith((".", "/", "~")) or source.count("/") > 1 or p.suffix in (".jsonl", ".json", ".parquet")
    if looks_local:
        raise UserError(f"{source}: no such file or directory")
    return "hub"


def shard_files(directory: str | Path) -> list[Path]:
    """Our layout (`DIR/data/part-*.parquet`), or any folder of Parquet files."""
    directory = Path(directory)
    return sorted((directory / DATA).glob(SHARD_GLOB)) or sorted(directory.glob("*.parquet"))


def _read_jsonl(path: Path) -> pa.Table:
    rows: list[dict] = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"{path}:{lineno}: not valid UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: malformed JSON at column {e.colno}: {e.msg}") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{lineno}: each line must be a JSON object, got {type(row).__name__}")
            rows.append(row)
    if not rows:
        raise UserError(f"{path}: empty input (no JSON rows)")
    try:
        return pa.Table.from_pylist(unify_message_columns(rows))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise UserError(f"{path}: columns have inconsistent types across lines ({e}); make every line use the same type per column") from None


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m for m in value)


def unify_message_columns(rows: list[dict]) -> list[dict]:
    """Where a column mixes plain strings and chat-message lists (prompt files concatenated together), make
    each string one message: a user message in `prompt`, an assistant message in any other column.

    >>> unify_message_columns([{"prompt": "a"}, {"prompt": [{"role": "user", "content": "b"}]}])[0]
    {'prompt': [{'role': 'user', 'content': 'a'}]}
    """
    mixed = [c for c in dict.fromkeys(k for r in rows for k in r)
             if any(isinstance(r.get(c), str) for r in rows) and any(_is_messages(r.get(c)) for r in rows)]
    if not mixed:
        return rows
    out = []
    for r in rows:
        r = dict(r)
        for c in mixed:
            if isinstance(r.get(c), str):
                r[c] = [{"role": "user" if c == "prompt" else "assistant", "content": r[c]}]
        out.append(r)
    return out


def _read_parquet_files(files: Sequence[Path], label: str) -> pa.Table:
    tables = []
    for f in files:
        try:
            tables.append(pq.read_table(f))
        except (pa.ArrowInvalid, OSError) as e:
            raise UserError(f"{f}: not a readable Parquet file ({e})") from None
    if not tables:
        raise UserError(f"{label}: no Parquet files found")
    try:
        return concat(tables)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
        try:  # files that differ only by string-vs-messages columns
            return pa.Table.from_pylist(unify_message_columns([r for t in tables for r in t.to_pylist()]))
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            raise UserError(f"{label}: its Parquet files have columns of different types ({e})") from None


def _read_hub(name: str) -> pa.Table:
    repo, _, split = name.partition(":")
    try:
        import datasets

        ds = datasets.load_dataset(repo, split=split or "train")
    except Exception as e:  # the hub client raises many types; the user needs the name and the cause
        raise UserError(f"{name}: could not load as a Hugging Face dataset ({type(e).__name__}: {e}). "
                        "Pass a local .jsonl/.parquet file or dataset directory, or check the name and your hub access.") from None
    return ds.data.table


def load_table(source: str | os.PathLike, required: Sequence[str] = (), present: Sequence[str] = ()) -> pa.Table:
    """Read any supported input into one Arrow table and validate it (see module docstring). `required`
    columns must exist and hold no nulls; `present` columns must exist and may hold nulls (a `reward` column,
    where null means "could not be scored")."""
    source = str(source)
    kind = _source_kind(source)
    if kind == "jsonl":
        table = _read_jsonl(Path(source))
    elif kind == "parquet":
        table = _read_parquet_files([Path(source)], source)
    elif kind == "dir":
        manifest = read_manifest(source)
        if manifest and manifest.get("complete") and manifest.get("rows_out") == 0:
            raise UserError(f"{source}: empty dataset (the {manifest.get('stage')} stage that wrote it produced 0 rows)")
        table = _read_parquet_files(shard_files(source), source)
    else:
        table = _read_hub(source)
    validate(table, source, required, present)
    return table


def validate(table: pa.Table, source: str, required: Sequence[str] = (), present: Sequence[str] = ()) -> None:
    if table.num_rows == 0:
        raise UserError(f"{source}: empty input (0 rows)")
    missing_required = [c for c in required if c not in table.column_names]
    missing_present = [c for c in present if c not in table.column_names]
    if missing_required or missing_present:
        quoted = lambda cols: ", ".join(map(repr, cols))  # noqa: E731
        parts = ([f"missing required column(s) {quoted(missing_required)}"] if missing_required else []) + \
                ([f"missing column(s) {quoted(missing_present)}"] if missing_present else [])
        stages = sorted({MADE_BY[c] for c in (*missing_required, *missing_present) if c in MADE_BY})
        hint = "".join(f"; `prefsmith {s}` writes {quoted([c for c in MADE_BY if MADE_BY[c] == s])}: run it first, "
                       "or point at the right column" for s in stages)
        raise UserError(f"{source}: {'; '.join(parts)}; found {', '.join(table.column_names)}{hint}")
    for col in required:
        nulls = table.column(col).null_count
        if nulls:
            row = table.column(col).to_pylist().index(None)
            raise UserError(f"{source}: row {row}: column {col!r} is null ({nulls} null rows in all)")


def load_rows(source: str | os.PathLike, required: Sequence[str] = ()) -> list[dict]:
    return load_table(source, required).to_pylist()


def concat(tables: Sequence[pa.Table]) -> pa.Table:
    """Concatenate tables whose schemas differ only by nulls / missing columns."""
    non_empty = [t for t in tables if t.num_columns] or list(tables[:1])
    return pa.concat_tables(non_empty, promote_options="permissive")


def fingerprint(source: str | os.PathLike) -> str:
    """Content fingerprint of an input: file bytes, a dataset's shards, or a hub dataset's own fingerprint."""
    source = str(source)
    kind = _source_kind(source)
    h = hashlib.sha256()
    if kind == "hub":
        h.update(source.encode())
        return h.hexdigest()[:16]
    files = [Path(source)] if kind in ("jsonl", "parquet") else shard_files(source)
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------- writing
@contextmanager
def _atomic_path(path: Path) -> Iterator[str]:
    """Yield a temp path in `path`'s directory; on success fsync it and rename it onto `path`, so a reader
    never sees half a file (a kill leaves only a hidden `.NAME.*.tmp`, which the runner removes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with _atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    with _atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def rows_to_table(rows: Sequence[dict]) -> pa.Table:
    if not rows:
        return pa.table({})
    try:
        return pa.Table.from_pylist(list(rows))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise ValueError(f"stage produced rows whose columns have inconsistent types: {e}") from None


def read_manifest(directory: str | Path) -> dict | None:
    path = Path(directory) / MANIFEST
    if not path.exists():
        return None
    return json.loads(path.read_text())


def write_manifest(directory: str | Path, manifest: dict) -> None:
    atomic_write_bytes(Path(directory) / MANIFEST, json.dumps(manifest, indent=2, default=str).encode())


def write_dataset(rows: Iterable[dict] | pa.Table, directory: str | Path, manifest: dict | None = None) -> Path:
    """Write a whole dataset in one go (for small outputs that don't need the sharded runner)."""
    directory = Path(directory)
    table = rows if isinstance(rows, pa.Table) else rows_to_table(list(rows))
    write_parquet_atomic(table, directory / DATA / "part-00000.parquet")
    write_manifest(directory, {**(manifest or {}), "rows_out": table.num_rows, "complete": True,
                               "completed_shards": [0], "num_shards": 1})
    return directory


def unify_shards(directory: str | Path) -> pa.Schema | None:
    """Rewrite shards whose schema differs from the union schema (e.g. an all-null column in one shard), so
    `datasets.load_dataset("parquet", data_dir=...)` and `polars.scan_parquet` read the directory as one."""
    files = shard_files(directory)
    schemas = [pq.read_schema(f) for f in files]
    non_empty = [s for s in schemas if len(s)]
    if not non_empty:
        return None
    unified = pa.unify_schemas(non_empty, promote_options="permissive")
    for f, schema in zip(files, schemas):
        if schema.equals(unified):
            continue
        table = pq.read_table(f)
        if table.num_rows == 0:
            fixed = unified.empty_table()
        else:
            fixed = concat([unified.empty_table(), table]).select(unified.names)
        write_parquet_atomic(fixed, f)
    return unified


def export_jsonl(source: str, out: str) -> int:
    """Write any readable dataset as JSONL, one row a line, for inspection."""
    table = load_table(source)
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as f:
        for row in table.to_pylist():
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    return table.num_rows
