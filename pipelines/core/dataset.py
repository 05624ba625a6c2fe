"""Datasets on disk: a directory with `manifest.json` and its Parquet shards under `data/`.

    DIR/manifest.json            stage, config, fingerprints, versions, row counts, timings, shard status
    DIR/data/part-00000.parquet  the rows: load with datasets.load_dataset("parquet", data_dir="DIR/data")
    DIR/removed/...              side datasets some stages write (same layout)
    DIR/README.md                the card, with the Hub's metadata, written from the manifest (pipelines/core/card.py)

The shards live in `data/` rather than beside the manifest because `datasets.load_dataset("parquet",
data_dir=...)` tries to read every non-hidden file of the folder, the manifest included.

Stages read JSONL, single Parquet files, dataset directories and Hugging Face dataset names, all through
`open_input` (Parquet is opened by its footers, for stages that stream it) or `load_table` (the whole table).
Input is validated before any work starts: a missing required column, a malformed JSONL line, a non-UTF-8 byte
or an empty input raises one `UserError` naming the file, the line/row and the column.

Writes are atomic and fingerprints are content hashes, both from `pipelines/core/files.py`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core import card
from pipelines.core.files import atomic_write_bytes  # noqa: F401  (stages write markers as ds.atomic_write_bytes)
from pipelines.core.files import atomic_path, atomic_write_json, fingerprint_files, fingerprint_json
from pipelines.errors import UserError
from rewards.chat import as_messages, is_messages

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
    linenos: list[int] = []
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
            linenos.append(lineno)
    if not rows:
        raise UserError(f"{path}: empty input (no JSON rows)")
    rows = unify_message_columns(rows)
    try:
        return pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        clash = _type_clash(rows, linenos)
        if clash:
            raise UserError(f"{path}:{clash}; make every line use the same type in that column") from None
        raise UserError(f"{path}: columns have inconsistent types across lines ({e}); make every line use the same type per column") from None


def _json_kind(value: object) -> str:
    """The JSON type of a value, as a user reads it (ints and floats are both numbers)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "list", dict: "object"}.get(type(value), type(value).__name__)


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _type_clash(rows: list[dict], linenos: list[int], prefix: str = "") -> str | None:
    """`LINE: column 'answer' is a string here but a number on line 1`: the first value whose JSON type differs
    from the column's first non-null one (nested inside lists and objects too), or None."""
    first: dict[str, tuple[str, int]] = {}
    nested: dict[str, tuple[list[dict], list[int]]] = {}
    for row, lineno in zip(rows, linenos):
        for col, value in row.items():
            if value is None:
                continue
            kind = _json_kind(value)
            name = prefix + col
            seen = first.setdefault(name, (kind, lineno))
            if seen[0] != kind:
                return f"{lineno}: column {name!r} is {_a(kind)} here but {_a(seen[0])} on line {seen[1]}"
            items = value if kind == "list" else [value] if kind == "object" else []
            sub = nested.setdefault(name, ([], []))
            for item in items:
                sub[0].append(item if isinstance(item, dict) else {"[]": item})
                sub[1].append(lineno)
    for name, (sub_rows, sub_lines) in nested.items():
        found = _type_clash(sub_rows, sub_lines, prefix=f"{name}.")
        if found:
            return found.replace(".[]", "[]")
    return None


def unify_message_columns(rows: list[dict]) -> list[dict]:
    """Where a column mixes plain strings and chat-message lists (prompt files concatenated together), make
    each string one message: a user message in `prompt`, an assistant message in any other column.

    >>> unify_message_columns([{"prompt": "a"}, {"prompt": [{"role": "user", "content": "b"}]}])[0]
    {'prompt': [{'role': 'user', 'content': 'a'}]}
    """
    mixed = [c for c in dict.fromkeys(k for r in rows for k in r)
             if any(isinstance(r.get(c), str) for r in rows) and any(is_messages(r.get(c)) for r in rows)]
    if not mixed:
        return rows
    out = []
    for r in rows:
        r = dict(r)
        for c in mixed:
            if isinstance(r.get(c), str):
                r[c] = as_messages(r[c], "user" if c == "prompt" else "assistant")
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


@dataclass
class Input:
    """An opened input. Parquet (a file, a dataset directory) is opened by its footers only, so a stage can
    stream it file by file (`batches`); JSONL and hub datasets are read whole into `table`."""
    source: str
    rows: int
    columns: list[str]  # every file's columns, in order of first appearance
    files: list[Path]  # the Parquet files, in order; empty when `table` holds the whole input
    table: pa.Table | None

    def read(self) -> pa.Table:
        """The whole input as one table."""
        return self.table if self.table is not None else _read_parquet_files(self.files, self.source)

    def schema(self) -> pa.Schema:
        """The union schema, from the Parquet footers when the input is Parquet."""
        if self.table is not None:
            return self.table.schema
        return pa.unify_schemas([pq.read_schema(f) for f in self.files], promote_options="permissive")

    def batches(self, batch_rows: int, columns: Sequence[str] | None = None) -> Iterator[tuple[str, pa.RecordBatch]]:
        """(file name for messages, batch) in input order; `columns` limits what is read."""
        if self.table is not None:
            table = self.table.select(list(columns)) if columns else self.table
            for batch in table.to_batches(max_chunksize=batch_rows):
                yield self.source, batch
            return
        for f in self.files:
            pf = pq.ParquetFile(f)
            cols = [c for c in columns if c in pf.schema_arrow.names] if columns else None
            for g in range(pf.num_row_groups):
                # one row group at a time, then sliced: pyarrow 26's `iter_batches` keeps what it decoded
                # (measured: +4.7 MB per 8192-row batch over a 1M-row file), so a long file grew without
                # bound; this holds one row group. A row group too big to hold is streamed by iter_batches.
                if pf.metadata.row_group(g).total_byte_size <= _ROW_GROUP_BYTES:
                    table = pf.read_row_group(g, columns=cols)
                    for batch in table.to_batches(max_chunksize=batch_rows):
                        yield str(f), batch
                    del table
                else:
                    for batch in pf.iter_batches(batch_size=batch_rows, columns=cols, row_groups=[g]):
                        yield str(f), batch


_ROW_GROUP_BYTES = 512 * 2**20  # Input.batches reads a row group of up to this size whole


def open_input(source: str | os.PathLike, required: Sequence[str] = ()) -> Input:
    """Open any supported input (see module docstring) and check it is not empty. `required` columns must
    exist: in every non-empty Parquet file (nulls are not looked for, that needs the rows), or in the
    JSONL/hub table, where they must also hold no nulls."""
    source = str(source)
    kind = _source_kind(source)
    if kind in ("jsonl", "hub"):
        table = _read_jsonl(Path(source)) if kind == "jsonl" else _read_hub(source)
        validate(table, source, required)
        return Input(source, table.num_rows, table.column_names, [], table)
    if kind == "dir":
        manifest = read_manifest(source)
        if manifest and manifest.get("complete") and manifest.get("rows_out") == 0:
            raise UserError(f"{source}: empty dataset (the {manifest.get('stage')} stage that wrote it produced 0 rows)")
    files = shard_files(source) if kind == "dir" else [Path(source)]
    if not files:
        raise UserError(f"{source}: no Parquet files found")
    rows, columns = 0, []
    for f in files:
        try:
            meta = pq.ParquetFile(f)
        except (pa.ArrowInvalid, OSError) as e:
            raise UserError(f"{f}: not a readable Parquet file ({e})") from None
        names = meta.schema_arrow.names
        missing = [c for c in required if c not in names]
        if missing and meta.metadata.num_rows:
            raise UserError(f"{f}: missing required column(s) {', '.join(map(repr, missing))}; found {', '.join(names)}")
        rows += meta.metadata.num_rows
        columns += [c for c in names if c not in columns]
    if rows == 0:
        raise UserError(f"{source}: empty input (0 rows)")
    return Input(source, rows, columns, files, None)


def load_table(source: str | os.PathLike, required: Sequence[str] = (), present: Sequence[str] = ()) -> pa.Table:
    """Read any supported input into one Arrow table and validate it (see module docstring). `required`
    columns must exist and hold no nulls; `present` columns must exist and may hold nulls (a `reward` column,
    where null means "could not be scored")."""
    table = open_input(source).read()
    validate(table, str(source), required, present)
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
    """Content fingerprint of an input: file bytes, a dataset's shards, or a hub dataset's name."""
    source = str(source)
    kind = _source_kind(source)
    if kind == "hub":
        return fingerprint_json({"hub": source})
    return fingerprint_files([Path(source)] if kind in ("jsonl", "parquet") else shard_files(source))


# ----------------------------------------------------------------------------------------------- writing
def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as tmp:
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
    """Write `manifest.json`; once the dataset is complete, also its card (README.md, docs/hub.md)."""
    atomic_write_json(Path(directory) / MANIFEST, manifest)
    if manifest.get("complete"):
        write_card(directory, manifest)


def write_card(directory: str | Path, manifest: dict | None = None) -> bool:
    """Write a finished dataset's card, `DIR/README.md`, from its manifest, shards and upstream manifests; False
    when a README.md that prefsmith did not write is there (it is kept) or the directory has no manifest."""
    manifest = manifest if manifest is not None else read_manifest(directory)
    if manifest is None:
        return False
    directory = Path(directory)
    side = {p.name: sorted((p / DATA).glob(SHARD_GLOB)) for p in sorted(directory.iterdir())
            if p.is_dir() and p.name != DATA and not p.name.startswith(".") and (p / DATA).is_dir()}
    text = card.dataset_card(directory, manifest, sorted((directory / DATA).glob(SHARD_GLOB)), side,
                             upstream_manifests(manifest))
    return card.write_card(directory, text)


def upstream_manifests(manifest: dict, limit: int = 32) -> list[tuple[str, dict]]:
    """(source, manifest) of the dataset directories a dataset was made from, nearest first, following each
    manifest's `input.source` while it names a directory with a manifest (a JSONL file or a hub name ends it)."""
    chain: list[tuple[str, dict]] = []
    source = (manifest.get("input") or {}).get("source")
    while source and len(chain) < limit and Path(source).is_dir():
        found = read_manifest(source)
        if found is None or any(Path(source).resolve() == Path(s).resolve() for s, _ in chain):
            break
        chain.append((str(source), found))
        source = (found.get("input") or {}).get("source")
    return chain


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
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in table.to_pylist():
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    return table.num_rows
