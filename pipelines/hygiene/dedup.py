"""`prefsmith dedup`: remove exact and near-duplicate rows, within a dataset and across rounds.

The rule (docs/hygiene.md): two rows are near duplicates when the exact Jaccard similarity of their word
n-gram shingle sets is >= `--threshold`. MinHash LSH only proposes candidates; every candidate is checked
with the exact Jaccard, and the banding is derived from the threshold so that a pair at exactly the
threshold becomes a candidate with probability >= 0.995 (`choose_banding`).

pass 1a  per input batch (one *signature shard*, resumable): normalize the `--field` text (pipelines.hygiene.shingles),
         hash it (exact key), build the sorted set of shingle hashes and the MinHash band keys. Written to
         OUTPUT/.dedup/ with a done marker last, so a killed run recomputes only unfinished shards.
pass 1b  row by row, in input order: a row whose exact key was seen joins that cluster (`exact`); otherwise
         the LSH tables propose representatives, the row joins the one with the highest exact Jaccard >=
         threshold (`near`; ties -> the earliest), or starts a new cluster as its representative.
         Shingle sets are read from the memory-mapped shard files, so only candidates' sets are touched.
pass 2   read the input again and write the rows each cluster keeps (`--keep first`: the representative, its
         earliest row; `--keep best-reward`: the highest `reward`, ties -> earliest, null reward last) and the
         removed ones (`duplicate_of`, `dup_kind`, exact `jaccard` to the kept row) to a staging folder,
         moved into OUTPUT/ at the end; the manifest is marked complete last.

`--index DIR` keeps the kept rows of earlier rounds (ids, exact keys, band keys, shingle sets) on disk: they
are loaded into the LSH tables first, rows matching them are removed (`duplicate_of` = the earlier round's
id), and this round's kept rows are appended.
"""
from __future__ import annotations

import argparse
import bisect
import hashlib
import io
import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core import dataset as ds
from pipelines.hygiene import shingles as tx
from pipelines.errors import UserError

STAGE = "dedup"
INDEX_FORMAT = 2  # 2: band keys and exact shingle sets per row (1 held 128-value signatures)
RECALL_AT_THRESHOLD = 0.995  # P(candidate) promised for a pair whose Jaccard equals the threshold
WORK = ".dedup"  # OUTPUT/.dedup: signature shards of an unfinished run
_BLOCK = 16384  # shingles per numpy block when computing signatures (block x perms x 8 bytes of scratch)
_EMPTY = np.uint32(0xFFFFFFFF)


@dataclass
class DedupConfig:
    field: str = "prompt"
    threshold: float = 0.8  # exact Jaccard of the shingle sets at or above which two rows are duplicates
    ngram: int = 5  # words per shingle
    num_perm: int = 128  # MinHash permutation budget: the banding uses bands x rows <= num_perm of them
    keep: str = "first"  # first | best-reward
    seed: int = 1  # MinHash permutation seed (an index must always use the same)
    batch_rows: int = 8192  # rows per streamed input batch = per resumable signature shard
    shard_rows: int = 100_000  # rows per output shard

    def validate(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise UserError(f"--threshold must be in (0, 1], got {self.threshold}")
        if self.ngram < 1:
            raise UserError(f"--ngram must be >= 1, got {self.ngram}")
        if self.num_perm < 1:
            raise UserError(f"--num-perm must be >= 1, got {self.num_perm}")
        if self.keep not in ("first", "best-reward"):
            raise UserError(f"--keep must be 'first' or 'best-reward', got {self.keep!r}")
        if self.batch_rows < 1:
            raise UserError(f"--batch-rows must be >= 1, got {self.batch_rows}")

    def identity(self) -> dict:
        """The settings that change which rows are removed (batch/shard sizes do not)."""
        return {k: v for k, v in asdict(self).items() if k not in ("batch_rows", "shard_rows")}


@dataclass
class DedupResult:
    output: Path
    rows_in: int
    rows_out: int
    removed_exact: int
    removed_near: int
    removed_by_index: int  # of the removed rows, those that duplicate an earlier round's row
    bands: int
    rows_per_band: int
    seconds: float
    skipped: bool = False
    resumed_shards: int = 0  # signature shards found finished by an earlier, killed run
    manifest: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ LSH math
def p_candidate(j: float | np.ndarray, bands: int, rows: int) -> float | np.ndarray:
    """Probability that a pair with Jaccard j shares at least one of `bands` bands of `rows` MinHash values:
    1 - (1 - j^rows)^bands (the S-curve)."""
    return 1.0 - (1.0 - np.asarray(j, np.float64) ** rows) ** bands


def choose_banding(threshold: float, num_perm: int, recall: float = RECALL_AT_THRESHOLD) -> tuple[int, int]:
    """(bands, rows): the most selective banding (most rows per band, then fewest bands) whose candidate
    probability at J = threshold is >= `recall`, within `num_perm` permutations.

    More rows per band make the S-curve steeper (fewer candidates below the threshold to verify) but need more
    bands, hence permutations, to keep the recall at the threshold: 0.8 / 128 -> 18 x 6 (108 permutations)."""
    for r in range(num_perm, 0, -1):
        q = threshold ** r
        if q >= 1.0:
            b = 1
        elif q <= 0.0:
            continue
        else:
            b = max(1, math.ceil(math.log(1.0 - recall) / math.log1p(-q)))
            if b * r > num_perm:
                continue
            while p_candidate(threshold, b, r) < recall:  # guard the float rounding of the ceil
                b += 1
        if b * r <= num_perm:
            return b, r
    need = math.ceil(math.log(1.0 - recall) / math.log1p(-threshold))
    raise UserError(f"--threshold {threshold}: finding {recall:.1%} of the pairs at the threshold needs at least "
                    f"{need} MinHash permutations; pass --num-perm {need} or more (or a higher --threshold)")


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Multiply-shift hash family h_j(x) = ((a_j * x + b_j) mod 2^64) >> 32, a_j odd."""
    rng = np.random.Generator(np.random.PCG64(seed))
    a = rng.integers(0, 2**64 - 1, size=num_perm, dtype=np.uint64, endpoint=True) | np.uint64(1)
    b = rng.integers(0, 2**64 - 1, size=num_perm, dtype=np.uint64, endpoint=True)
    return a, b


def signatures(sh: tx.Shingles, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """MinHash signatures (num_docs, num_perm) uint32; a document without shingles gets all 0xFFFFFFFF."""
    sig = np.full((sh.num_docs, len(a)), _EMPTY, np.uint32)
    total = len(sh.hashes)
    if total == 0:
        return sig
    starts = np.flatnonzero(np.r_[True, sh.doc[1:] != sh.doc[:-1]])
    docs = sh.doc[starts]
    i = 0
    shift = np.uint64(32)
    while i < len(starts):
        j = max(int(np.searchsorted(starts, starts[i] + _BLOCK, side="left")), i + 1)
        s0, s1 = starts[i], (starts[j] if j < len(starts) else total)
        with np.errstate(over="ignore"):  # (num_perm, shingles): the reduction runs along contiguous memory
            v = np.multiply.outer(a, sh.hashes[s0:s1])
            v += b[:, None]
        v >>= shift
        sig[docs[i:j]] = np.minimum.reduceat(v.astype(np.uint32), starts[i:j] - s0, axis=1).T
        i = j
    return sig


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(num_docs, bands) uint64: one 64-bit key per band of `rows` signature values (two rows share a key
    iff their band is equal, up to a 2^-64 collision, which only adds a candidate that verification rejects)."""
    v = sig[:, :bands * rows].reshape(len(sig), bands, rows).astype(np.uint64)
    with np.errstate(over="ignore"):
        acc = v[:, :, 0].copy()
        for k in range(1, rows):
            acc *= tx._POLY
            acc += v[:, :, k]
        return tx._mix64(acc)


def shingle_sets(sh: tx.Shingles) -> tuple[np.ndarray, np.ndarray]:
    """Each document's sorted, distinct shingle hashes, flattened: (hashes uint64, offsets int64 of num_docs+1)."""
    order = np.lexsort((sh.hashes, sh.doc))
    h, d = sh.hashes[order], sh.doc[order]
    keep = np.ones(len(h), bool)
    keep[1:] = (h[1:] != h[:-1]) | (d[1:] != d[:-1])
    h, d = h[keep], d[keep]
    offsets = np.zeros(sh.num_docs + 1, np.int64)
    np.cumsum(np.bincount(d, minlength=sh.num_docs), out=offsets[1:])
    return h, offsets


def exact_jaccard(s: np.ndarray, t: np.ndarray) -> float:
    """|s ∩ t| / |s ∪ t| of two sorted arrays of distinct values (1.0 for two empty sets)."""
    if len(s) > len(t):
        s, t = t, s
    if len(s) == 0:
        return 1.0 if len(t) == 0 else 0.0
    pos = np.searchsorted(t, s)
    pos[pos == len(t)] = 0
    inter = int(np.count_nonzero(t[pos] == s))
    return inter / (len(s) + len(t) - inter)


class _Tables:
    """LSH tables: per band, a dict from band key to the cluster keys inserted with it (an int, or a list
    once a second one arrives)."""

    def __init__(self, bands: int):
        self.tables: list[dict[int, int | list[int]]] = [{} for _ in range(bands)]

    def insert(self, key: int, row_keys: list[int]) -> None:
        for table, k in zip(self.tables, row_keys):
            v = table.get(k)
            if v is None:
                table[k] = key
            elif isinstance(v, list):
                v.append(key)
            else:
                table[k] = [v, key]

    def query(self, row_keys: list[int]) -> set[int]:
        out: set[int] = set()
        for table, k in zip(self.tables, row_keys):
            v = table.get(k)
            if v is None:
                continue
            if isinstance(v, list):
                out.update(v)
            else:
                out.add(v)
        return out


class _Sets:
    """Shingle sets of many rows, stored in parts (one per signature shard or index round, memory-mapped)."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.parts: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, start: int, hashes: np.ndarray, offsets: np.ndarray) -> None:
        self.starts.append(start)
        self.parts.append((hashes, offsets))

    def get(self, row: int) -> np.ndarray:
        p = bisect.bisect_right(self.starts, row) - 1
        hashes, offsets = self.parts[p]
        i = row - self.starts[p]
        return hashes[offsets[i]:offsets[i + 1]]

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The sets of `rows` as one (hashes, offsets) pair."""
        got = [self.get(int(r)) for r in rows]
        offsets = np.zeros(len(got) + 1, np.int64)
        np.cumsum([len(g) for g in got], out=offsets[1:])
        return (np.concatenate(got) if got else np.zeros(0, np.uint64)), offsets


def _save_npy(path: Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr))
    ds.atomic_write_bytes(path, buf.getvalue())


def _load_npy(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r")


# ------------------------------------------------------------------------------------------ input streaming
@dataclass
class _Input:
    source: str
    rows: int
    files: list[Path]  # Parquet files to stream; empty when `table` holds the whole (JSONL/hub) input
    table: pa.Table | None
    columns: list[str]


def _open_input(source: str, required: list[str]) -> _Input:
    p = Path(source)
    files: list[Path] = []
    if p.is_dir():
        files = ds.shard_files(p)
        if not files:
            raise UserError(f"{source}: no Parquet files found")
    elif p.is_file() and p.suffix == ".parquet":
        files = [p]
    if not files:  # JSONL, hub: the loader reads and validates the whole table
        table = ds.load_table(source, required)
        return _Input(source, table.num_rows, [], table, table.column_names)
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
    return _Input(source, rows, files, None, columns)


def _batches(inp: _Input, batch_rows: int, columns: list[str] | None = None) -> Iterator[tuple[str, pa.RecordBatch]]:
    """(file name for messages, batch) in input order; `columns` limits what is read."""
    if inp.table is not None:
        table = inp.table.select(columns) if columns else inp.table
        for batch in table.to_batches(max_chunksize=batch_rows):
            yield inp.source, batch
        return
    for f in inp.files:
        pf = pq.ParquetFile(f)
        cols = [c for c in columns if c in pf.schema_arrow.names] if columns else None
        for batch in pf.iter_batches(batch_size=batch_rows, columns=cols):
            yield str(f), batch


# ------------------------------------------------------------------------------------------ the index
@dataclass
class _Index:
    """Kept rows of earlier rounds: ids, exact keys, band keys and shingle sets (cluster key -(k+1))."""

    ids: list[str]
    exact: np.ndarray  # uint64
    keys: np.ndarray  # (K, bands) uint64
    sets: _Sets  # row k at position k
    rounds: list[dict]

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps([r["key"] for r in self.rounds]).encode()).hexdigest()[:16]


def _index_settings(cfg: DedupConfig, bands: int, rows_per_band: int) -> dict:
    return {"format": INDEX_FORMAT, "hash_scheme": tx.HASH_SCHEME, "ngram": cfg.ngram, "num_perm": cfg.num_perm,
            "threshold": cfg.threshold, "seed": cfg.seed, "bands": bands, "rows_per_band": rows_per_band}


def _read_index_meta(index_dir: Path) -> dict | None:
    path = index_dir / "index.json"
    return json.loads(path.read_text()) if path.exists() else None


def _round_files(index_dir: Path, name: str) -> dict[str, Path]:
    stem = index_dir / name.removesuffix(".parquet")
    return {"keys": Path(f"{stem}.keys.npy"), "sets": Path(f"{stem}.shingles.npy"), "offsets": Path(f"{stem}.offsets.npy")}


def _load_index(index_dir: Path | None, settings: dict, round_key: str) -> _Index:
    """Load the rounds recorded before `round_key` (all rounds when this round is new)."""
    meta = _read_index_meta(index_dir) if index_dir else None
    empty = _Index([], np.zeros(0, np.uint64), np.zeros((0, settings["bands"]), np.uint64), _Sets(), [])
    if meta is None:
        return empty
    diff = {k: (meta["settings"].get(k), v) for k, v in settings.items() if meta["settings"].get(k) != v}
    if diff:
        what = "; ".join(f"{k}: index {o!r}, this run {n!r}" for k, (o, n) in diff.items())
        raise UserError(f"--index {index_dir} was built with other settings ({what}). Use the same "
                        "--ngram/--num-perm/--threshold as the earlier rounds, or a new --index directory.")
    rounds = []
    for r in meta["rounds"]:
        if r["key"] == round_key:
            break
        rounds.append(r)
    ids, exact, keys, sets, start = [], [], [], _Sets(), 0
    for r in rounds:
        t = pq.read_table(index_dir / r["file"])
        f = _round_files(index_dir, r["file"])
        ids += t.column("id").to_pylist()
        exact.append(t.column("text_hash").to_numpy())
        keys.append(np.asarray(_load_npy(f["keys"])))
        sets.add(start, _load_npy(f["sets"]), _load_npy(f["offsets"]))
        start += t.num_rows
    if not rounds:
        return empty
    return _Index(ids, np.concatenate(exact), np.concatenate(keys), sets, rounds)


def _append_round(index_dir: Path, settings: dict, index: _Index, round_key: str, output: Path,
                  ids: list[str], exact: np.ndarray, keys: np.ndarray, sets: tuple[np.ndarray, np.ndarray]) -> None:
    """Write this round's kept rows as new index files, then record them in index.json (atomic renames)."""
    meta = _read_index_meta(index_dir) or {"settings": settings, "rounds": []}
    rounds = meta["rounds"]
    pos = next((i for i, r in enumerate(rounds) if r["key"] == round_key), None)
    name = f"round-{len(index.rounds):05d}-{round_key[:8]}.parquet"
    f = _round_files(index_dir, name)
    _save_npy(f["keys"], keys)
    _save_npy(f["sets"], sets[0])
    _save_npy(f["offsets"], sets[1])
    ds.write_parquet_atomic(pa.table({"id": pa.array(ids, pa.string()), "text_hash": pa.array(exact, pa.uint64())}),
                            index_dir / name)
    entry = {"key": round_key, "file": name, "rows": len(ids), "output": str(output),
             "added_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if pos is None:
        rounds.append(entry)
    else:
        rounds[pos] = entry
    ds.atomic_write_bytes(index_dir / "index.json", json.dumps(meta, indent=2).encode())


# ------------------------------------------------------------------------------------------ pass 1a
@dataclass
class _Shard:
    """One signature shard: a batch of input rows, persisted in OUTPUT/.dedup/sig-NNNNN.*"""

    start: int  # global row number of its first row
    rows: int
    ids: pa.Array  # string
    exact: np.ndarray  # uint64 exact keys
    reward: np.ndarray | None  # float64, NaN for null (keep=best-reward only)
    keys: np.ndarray  # (rows, bands) uint64 band keys
    sets: np.ndarray  # sorted distinct shingle hashes, flattened (memory-mapped)
    offsets: np.ndarray  # (rows + 1,) int64


def _shard_paths(work: Path, k: int) -> dict[str, Path]:
    stem = f"sig-{k:05d}"
    return {"meta": work / f"{stem}.parquet", "keys": work / f"{stem}.keys.npy", "sets": work / f"{stem}.shingles.npy",
            "offsets": work / f"{stem}.offsets.npy", "done": work / f"{stem}.done"}


def _compute_shard(where: str, batch: pa.RecordBatch, base: int, cfg: DedupConfig, perm: tuple[np.ndarray, np.ndarray],
                   bands: int, rows: int, paths: dict[str, Path]) -> None:
    m = batch.num_rows
    if cfg.field not in batch.schema.names:
        raise UserError(f"{where}: missing column {cfg.field!r}")
    texts = tx.column_text(batch.column(cfg.field), cfg.field, where)
    if texts.null_count:
        row = base + texts.is_null().to_numpy(zero_copy_only=False).argmax()
        raise UserError(f"{where}: row {row}: column {cfg.field!r} is null; drop or fill such rows first")
    norm = tx.normalize_array(texts)
    sh = tx.shingles(tx.words_array(norm), cfg.ngram)
    if "id" in batch.schema.names:
        ids = batch.column("id").cast(pa.string())
    else:
        ids = pa.array(np.arange(base, base + m)).cast(pa.string())
    meta = {"id": ids, "text_hash": pa.array(tx.text_hashes(norm), pa.uint64())}
    if cfg.keep == "best-reward":
        col = batch.column("reward")
        if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type) or pa.types.is_null(col.type)):
            raise UserError(f"{where}: column 'reward' has type {col.type}; --keep best-reward needs numbers")
        meta["reward"] = col.cast(pa.float64())
    hashes, offsets = shingle_sets(sh)
    _save_npy(paths["keys"], band_keys(signatures(sh, *perm), bands, rows))
    _save_npy(paths["sets"], hashes)
    _save_npy(paths["offsets"], offsets)
    ds.write_parquet_atomic(pa.table(meta), paths["meta"])
    ds.atomic_write_bytes(paths["done"], json.dumps({"rows": m, "start": base}).encode())  # last: the shard is done


def _signature_shards(inp: _Input, cfg: DedupConfig, bands: int, rows: int, work: Path,
                      progress: bool) -> tuple[list[_Shard], int]:
    """Pass 1a: every input batch as a signature shard, computing only those without a done marker.
    Returns the shards and how many were found done."""
    from tqdm.auto import tqdm

    perm = permutations(bands * rows, cfg.seed)
    want = [cfg.field] + (["id"] if "id" in inp.columns else []) + (["reward"] if cfg.keep == "best-reward" else [])
    shards: list[_Shard] = []
    base = resumed = 0
    bar = tqdm(total=inp.rows, desc="dedup: signatures", unit="row", disable=not progress, dynamic_ncols=True)
    try:
        for where, batch in _batches(inp, cfg.batch_rows, want):
            m = batch.num_rows
            if m == 0:
                continue
            paths = _shard_paths(work, len(shards))
            done = paths["done"].exists() and json.loads(paths["done"].read_text()) == {"rows": m, "start": base}
            if done:
                resumed += 1
            else:
                _compute_shard(where, batch, base, cfg, perm, bands, rows, paths)
            meta = pq.read_table(paths["meta"])
            reward = meta.column("reward").to_numpy() if "reward" in meta.column_names else None
            shards.append(_Shard(base, m, meta.column("id").combine_chunks(), meta.column("text_hash").to_numpy(),
                                 reward,
                                 np.load(paths["keys"]), _load_npy(paths["sets"]), np.load(paths["offsets"])))
            base += m
            bar.update(m)
    finally:
        bar.close()
    return shards, resumed


# ------------------------------------------------------------------------------------------ pass 1b
def _cluster(shards: list[_Shard], n: int, cfg: DedupConfig, index: _Index, bands: int,
             progress: bool) -> tuple[np.ndarray, np.ndarray, _Sets]:
    """Cluster key per row (its representative's row, or -(k+1) for index row k), the exact Jaccard to it,
    and the rows' shingle sets."""
    from tqdm.auto import tqdm

    sets = _Sets()
    for s in shards:
        sets.add(s.start, s.sets, s.offsets)
    cluster = np.empty(n, np.int64)
    jac = np.ones(n)
    lsh = _Tables(bands)
    exact_map: dict[int, int] = {int(h): -(k + 1) for k, h in enumerate(index.exact)}  # representatives' keys
    for k in range(len(index.ids)):
        lsh.insert(-(k + 1), index.keys[k].tolist())
    set_of = lambda key: index.sets.get(-key - 1) if key < 0 else sets.get(key)  # noqa: E731
    order_key = lambda key: key + n if key < 0 else key  # noqa: E731 - earlier rounds come first on ties
    t = cfg.threshold
    bar = tqdm(total=n, desc="dedup: clusters", unit="row", disable=not progress, dynamic_ncols=True)
    try:
        for s in shards:
            for i, (h, row) in enumerate(zip(s.exact.tolist(), s.keys.tolist())):
                g = s.start + i
                c = exact_map.get(h)
                if c is not None:
                    cluster[g] = c
                    continue
                best, best_j = None, -1.0
                cands = lsh.query(row)
                if cands:
                    mine = s.sets[s.offsets[i]:s.offsets[i + 1]]
                    for c in cands:
                        j = exact_jaccard(set_of(c), mine)
                        if j >= t and (j > best_j or (j == best_j and order_key(c) < order_key(best))):
                            best, best_j = c, j
                if best is not None:
                    cluster[g], jac[g] = best, best_j
                    continue
                cluster[g] = g
                exact_map[h] = g
                lsh.insert(g, row)
            bar.update(s.rows)
    finally:
        bar.close()
    return cluster, jac, sets


def _keepers(cluster: np.ndarray, reward: np.ndarray | None, keep: str) -> np.ndarray:
    """Row kept for each row's cluster (-1 for rows matching an earlier round)."""
    N = len(cluster)
    rows = np.arange(N)
    in_round = cluster >= 0
    keeper_of = np.arange(N)  # keep=first: the representative is its cluster's earliest row
    if keep == "best-reward":
        g = rows[in_round]
        cl = cluster[in_round]
        r = reward[in_round]
        null = np.isnan(r)
        order = np.lexsort((g, -np.nan_to_num(r, nan=0.0), null, cl))
        cl_sorted = cl[order]
        first = np.ones(len(cl_sorted), bool)
        first[1:] = cl_sorted[1:] != cl_sorted[:-1]
        keeper_of[cl_sorted[first]] = g[order][first]
    return np.where(in_round, keeper_of[np.maximum(cluster, 0)], -1)


# ------------------------------------------------------------------------------------------ the job
def _fingerprint(settings: dict, cfg: DedupConfig, input_fp: str, index_fp: str | None, index_path: str | None) -> str:
    blob = json.dumps({"stage": STAGE, "settings": settings, "config": cfg.identity(), "input": input_fp,
                       "index": index_fp, "index_path": index_path}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _round_key(cfg: DedupConfig, input_fp: str) -> str:
    return hashlib.sha256(json.dumps({"config": cfg.identity(), "input": input_fp}, sort_keys=True).encode()).hexdigest()[:16]


def s_curve(threshold: float, bands: int, rows: int) -> dict[str, float]:
    """P(candidate) at J = t-0.1, t-0.05, t, t+0.04 (what the manifest and docs/hygiene.md show)."""
    js = [threshold - 0.1, threshold - 0.05, threshold, threshold + 0.04]
    return {f"{j:.2f}": round(float(p_candidate(j, bands, rows)), 5) for j in js if 0.0 <= j <= 1.0}


def dedup(input: str, output: str, config: DedupConfig | None = None, *, index: str | None = None,
          overwrite: bool = False, progress: bool = True, log=lambda m: print(m, file=sys.stderr)) -> DedupResult:
    """Deduplicate `input` into the dataset directory `output` (see module docstring)."""
    from pipelines.core.runner import open_output, versions

    t0 = time.time()
    cfg = config or DedupConfig()
    cfg.validate()
    bands, rows_per_band = choose_banding(cfg.threshold, cfg.num_perm)
    out = Path(output)
    inp = _open_input(str(input), [cfg.field])
    if cfg.keep == "best-reward" and "reward" not in inp.columns:
        raise UserError(f"{input}: --keep best-reward needs a 'reward' column; found {', '.join(inp.columns)}. "
                        "Run `prefsmith label` first, or use --keep first.")
    input_fp = ds.fingerprint(input)
    settings = _index_settings(cfg, bands, rows_per_band)
    round_key = _round_key(cfg, input_fp)
    index_dir = Path(index) if index else None
    idx = _load_index(index_dir, settings, round_key)
    fp = _fingerprint(settings, cfg, input_fp, idx.fingerprint if index_dir else None, str(index_dir) if index_dir else None)

    manifest = {
        "stage": STAGE, "fingerprint": fp, "config": asdict(cfg),
        "input": {"source": str(input), "fingerprint": input_fp, "rows": inp.rows},
        "index": {"path": str(index_dir), "fingerprint": idx.fingerprint, "rounds_before": len(idx.rounds),
                  "rows_before": len(idx.ids)} if index_dir else None,
        "lsh": {"bands": bands, "rows_per_band": rows_per_band, "permutations": bands * rows_per_band,
                "p_candidate": s_curve(cfg.threshold, bands, rows_per_band)},
        "rows_in": inp.rows, "rows_out": None, "complete": False, "num_shards": 0, "completed_shards": [],
        "versions": versions(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    # "index" compares the index's fingerprint (and where it lives) with the old run's
    old = open_output(out, manifest, overwrite, extra_keys=("index",))
    work = out / WORK
    if old is not None and old.get("complete"):
        shutil.rmtree(work, ignore_errors=True)  # left when a kill came between completion and clean-up
        log(f"[{STAGE}] {out} is already complete ({old.get('rows_out')} rows); nothing to do")
        return _result_from_manifest(out, old, time.time() - t0)
    # the same run, killed part-way, left signature shards: reuse them if they were cut the same way
    plan = {"fingerprint": fp, "batch_rows": cfg.batch_rows}
    plan_path = work / "plan.json"
    if not (plan_path.exists() and json.loads(plan_path.read_text()) == plan):
        shutil.rmtree(work, ignore_errors=True)
        ds.atomic_write_bytes(plan_path, json.dumps(plan).encode())
    ds.write_manifest(out, manifest)

    shards, resumed = _signature_shards(inp, cfg, bands, rows_per_band, work, progress)
    if resumed:
        log(f"[{STAGE}] resumed {resumed} of {len(shards)} signature shards from {work}")
    cluster, jac_rep, sets = _cluster(shards, inp.rows, cfg, idx, bands, progress)
    exact = np.concatenate([s.exact for s in shards])
    ids = pa.chunked_array([s.ids for s in shards], pa.string()).combine_chunks()
    reward = np.concatenate([s.reward for s in shards]) if cfg.keep == "best-reward" else None
    keeper = _keepers(cluster, reward, cfg.keep)
    rows = np.arange(inp.rows)
    removed = keeper != rows
    # what each removed row duplicates: this round's kept row, or index row k (cluster key -(k+1))
    rem = np.flatnonzero(removed)
    by_index = cluster[rem] < 0
    k_round = keeper[rem]
    k_index = -cluster[rem] - 1
    other_exact = np.empty(len(rem), np.uint64)
    other_exact[by_index] = idx.exact[k_index[by_index]]
    other_exact[~by_index] = exact[k_round[~by_index]]
    is_exact = other_exact == exact[rem]
    jac = jac_rep[rem].copy()  # exact Jaccard to the representative, which is the kept row unless best-reward
    moved = np.flatnonzero(~by_index & (k_round != cluster[rem]))
    for p in moved:
        jac[p] = exact_jaccard(sets.get(int(k_round[p])), sets.get(int(rem[p])))
    jac[is_exact] = 1.0
    dup_of = np.empty(len(rem), object)
    if by_index.any():
        dup_of[by_index] = [idx.ids[k] for k in k_index[by_index]]
    if (~by_index).any():
        dup_of[~by_index] = ids.take(pa.array(k_round[~by_index])).to_pylist()

    staged = work / "staged"
    shutil.rmtree(staged, ignore_errors=True)
    num_shards = _write_outputs(inp, cfg, staged, removed, rem, dup_of, is_exact, jac)
    for sub in (ds.DATA, "removed"):  # the finished output replaces whatever a killed pass 2 left
        shutil.rmtree(out / sub, ignore_errors=True)
        if (staged / sub).exists():
            (staged / sub).rename(out / sub)
    kept_rows = np.flatnonzero(~removed)
    if index_dir:
        keys = np.concatenate([s.keys for s in shards])[kept_rows]
        _append_round(index_dir, settings, idx, round_key, out, ids.take(pa.array(kept_rows)).to_pylist(),
                      exact[kept_rows], keys, sets.gather(kept_rows))
    n_exact, n_near = int(is_exact.sum()), int((~is_exact).sum())
    manifest.update({
        "rows_out": int(len(kept_rows)), "num_shards": num_shards, "completed_shards": list(range(num_shards)),
        "counts": {"kept": int(len(kept_rows)), "removed": int(len(rem)), "removed_exact": n_exact,
                   "removed_near": n_near, "removed_by_index": int(by_index.sum())},
        "resume": {"signature_shards": len(shards), "resumed": resumed},
        "complete": True, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(time.time() - t0, 3),
    })
    del shards, sets  # release the memory maps before deleting their files
    ds.write_manifest(out, manifest)
    shutil.rmtree(work, ignore_errors=True)
    return _result_from_manifest(out, manifest, time.time() - t0, skipped=False)


def _write_outputs(inp: _Input, cfg: DedupConfig, out: Path, removed: np.ndarray, rem: np.ndarray,
                   dup_of: np.ndarray, is_exact: np.ndarray, jac: np.ndarray) -> int:
    """Pass 2: stream the input again, writing kept rows to OUTPUT/data and removed ones to OUTPUT/removed."""
    pos_of = np.full(len(removed), -1, np.int64)
    pos_of[rem] = np.arange(len(rem))
    kept_buf: list[pa.Table] = []
    rem_buf: list[pa.Table] = []
    counters = {"kept": 0, "removed": 0}

    def flush(buf: list[pa.Table], directory: Path, key: str, final: bool) -> None:
        rows = sum(t.num_rows for t in buf)
        if rows == 0 or (rows < cfg.shard_rows and not final):
            return
        ds.write_parquet_atomic(ds.concat(buf), directory / ds.DATA / f"part-{counters[key]:05d}.parquet")
        counters[key] += 1
        buf.clear()

    base = 0
    schema = None
    for _, batch in _batches(inp, cfg.batch_rows):
        schema = schema or batch.schema
        m = batch.num_rows
        r = removed[base:base + m]
        table = pa.Table.from_batches([batch])
        if (~r).any():
            kept_buf.append(table.filter(pa.array(~r)))
        if r.any():
            p = pos_of[base:base + m][r]
            side = table.filter(pa.array(r))
            side = side.append_column("duplicate_of", pa.array(list(dup_of[p]), pa.string()))
            side = side.append_column("dup_kind", pa.array(np.where(is_exact[p], "exact", "near").tolist(), pa.string()))
            side = side.append_column("jaccard", pa.array(jac[p], pa.float64()))
            rem_buf.append(side)
        flush(kept_buf, out, "kept", False)
        flush(rem_buf, out / "removed", "removed", False)
        base += m
    flush(kept_buf, out, "kept", True)
    flush(rem_buf, out / "removed", "removed", True)
    if counters["kept"] == 0 and schema is not None:  # everything removed: still a readable, empty dataset
        ds.write_parquet_atomic(schema.empty_table(), out / ds.DATA / "part-00000.parquet")
        counters["kept"] = 1
    for d in (out, out / "removed"):
        if (d / ds.DATA).is_dir():
            ds.unify_shards(d)
    return counters["kept"]


def _result_from_manifest(out: Path, m: dict, seconds: float, skipped: bool = True) -> DedupResult:
    c = m.get("counts", {})
    return DedupResult(out, m["rows_in"], m["rows_out"], c.get("removed_exact", 0), c.get("removed_near", 0),
                       c.get("removed_by_index", 0), m["lsh"]["bands"], m["lsh"]["rows_per_band"], seconds,
                       skipped=skipped, resumed_shards=m.get("resume", {}).get("resumed", 0), manifest=m)


# ------------------------------------------------------------------------------------------ CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    d = DedupConfig()
    p.add_argument("--input", required=True, help="JSONL, Parquet file, dataset directory or hub name")
    p.add_argument("--output", required=True, help="output dataset directory (removed rows go to OUTPUT/removed)")
    p.add_argument("--field", default=d.field, help="text column to compare: a string or chat-message list column "
                   f"(default {d.field})")
    p.add_argument("--threshold", type=float, default=d.threshold,
                   help=f"Jaccard of word-shingle sets at/above which rows are near-duplicates (default {d.threshold})")
    p.add_argument("--ngram", type=int, default=d.ngram, help=f"words per shingle (default {d.ngram})")
    p.add_argument("--num-perm", type=int, default=d.num_perm, help="MinHash permutation budget; the LSH banding, derived from --threshold, uses at most this many "
                   f"(default {d.num_perm})")
    p.add_argument("--batch-rows", type=int, default=d.batch_rows, help="rows per streamed batch, which is also the "
                   f"unit a killed run resumes from (default {d.batch_rows})")
    p.add_argument("--keep", choices=["first", "best-reward"], default=d.keep,
                   help="which row of a duplicate cluster to keep: the earliest, or the highest `reward` (ties -> earliest)")
    p.add_argument("--index", default=None, help="directory of a persistent index: dedup against earlier rounds "
                   "stored there, then add this round's kept rows")
    p.add_argument("--seed", type=int, default=d.seed, help="MinHash permutation seed")
    p.add_argument("--overwrite", action="store_true", help="replace an output made with another config or input")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    cfg = DedupConfig(field=args.field, threshold=args.threshold, ngram=args.ngram, num_perm=args.num_perm,
                      keep=args.keep, seed=args.seed, batch_rows=args.batch_rows)
    r = dedup(args.input, args.output, cfg, index=args.index, overwrite=args.overwrite, progress=not args.no_progress)
    print(f"dedup: {r.rows_in} rows in, {r.rows_out} kept, {r.removed_exact} exact and {r.removed_near} near "
          f"duplicates removed ({r.removed_by_index} of them matched earlier rounds in the index); "
          f"LSH {r.bands} bands x {r.rows_per_band} rows; removed rows in {r.output / 'removed'}")
    return 0
