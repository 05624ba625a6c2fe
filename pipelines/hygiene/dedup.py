"""`prefsmith dedup`: remove exact and near-duplicate rows, within a dataset and across rounds.

The rule (docs/hygiene.md): two rows are near duplicates when the exact Jaccard similarity of their word
n-gram shingle sets is >= `--threshold`. MinHash LSH only proposes candidates; every candidate is checked
with the exact Jaccard, and the banding is derived from the threshold so that a pair at exactly the
threshold becomes a candidate with probability >= 0.995 (`choose_banding`).

Which rows go (unchanged by how it runs): rows are taken in input order (earlier `--index` rounds first); a
row whose normalized text equals a representative's joins it (`exact`); otherwise it joins the representative
with the highest exact Jaccard >= threshold among those sharing an LSH band with it (`near`; ties -> the
earliest); otherwise it is a new representative. It runs in three phases, as datatrove's MinHash pipeline:

phase 1  signatures, per input batch (one *signature shard*): `SignatureStage` mapped over the shards by an
         executor (local, or a Ray cluster): normalize the `--field` text (pipelines.hygiene.shingles), its
         exact key, its sorted distinct shingle hashes and its MinHash band keys. The driver writes each shard to
         OUTPUT/.dedup/sig-NNNNN.* with a done marker last, so a killed run recomputes only unfinished shards.
phase 2  clustering in bounded memory: every (band, key) -> row entry goes to one of P bucket files by a hash
         of its key (P from the row count, so one bucket fits `--bucket-mb`); one bucket at a time is sorted,
         and rows sharing a key whose exact Jaccard is >= threshold are joined by union-find over row numbers
         (pairs already joined are not checked again). A row's choice depends only on rows it is joined to,
         so the rule above is then applied within each joined group alone. Result: OUTPUT/.dedup/clusters.*
phase 3  the filter: the keep decision per cluster (`--keep first`: the representative; `--keep best-reward`:
         the highest `reward`, ties -> earliest, null last), then the input read again batch by batch into
         output shards of kept rows and of removed ones (`duplicate_of`, `dup_kind`, exact `jaccard` to the
         kept row), staged under OUTPUT/.dedup/staged and moved into OUTPUT/ at the end; manifest complete last.

`--index DIR` keeps the kept rows of earlier rounds (ids, exact keys, band keys, shingle sets) on disk: they
enter phase 2 as rows before this round's (always representatives), rows matching them are removed
(`duplicate_of` = the earlier round's id), and this round's kept rows are appended.
"""
from __future__ import annotations

import argparse
import bisect
import io
import itertools
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.core import dataset as ds
from pipelines.core.files import atomic_path, atomic_write_json, fingerprint_json
from pipelines.core.options import add_dataclass_options, from_args
from pipelines.core.stage import Stage
from pipelines.executors import ShardTask, add_executor_arguments, executor_config, make_executor
from pipelines.hygiene import shingles as tx
from pipelines.errors import UserError

STAGE = "dedup"
INDEX_FORMAT = 2  # 2: band keys and exact shingle sets per row (1 held 128-value signatures)
RECALL_AT_THRESHOLD = 0.995  # P(candidate) promised for a pair whose Jaccard equals the threshold
WORK = ".dedup"  # OUTPUT/.dedup: signature shards, buckets and clusters of an unfinished run
_BLOCK = 16384  # shingles per numpy block when computing signatures (block x perms x 8 bytes of scratch)
_EMPTY = np.uint32(0xFFFFFFFF)
_ENTRY = np.dtype([("key", "<u8"), ("node", "<i8")])  # one bucket-file entry: (band, key) hashed, row number
_MAX_BUCKETS = 4096
_FLUSH_ENTRIES = 1 << 20  # bucket entries buffered in phase 2 before they are appended to their files
_RAY_WINDOW_ROWS = 1 << 17  # input rows handed to one RayExecutor.map call (it holds its whole task list)
KEEP = ("first", "best-reward")  # --keep: which row of a duplicate cluster stays


@dataclass
class DedupConfig:
    """The options of `prefsmith dedup` (its flags come from these fields: `add_arguments`)."""

    # `field(...)` is dataclasses.field only on this first line: from here on the class body's `field` is a str
    field: str = field(default="prompt", metadata={"help": (
        "text column to compare: a string or chat-message list column; A+B joins several (prompt+completion: the "
        "same completion of another prompt is no duplicate)")})
    threshold: float = 0.8  # Jaccard of word-shingle sets at/above which rows are near-duplicates
    ngram: int = 5  # words per shingle
    num_perm: int = 128  # MinHash permutation budget; the LSH banding, derived from --threshold, uses at most this many
    keep: str = "first"  # the row of a duplicate cluster kept: the earliest, or the highest `reward` (ties -> earliest)
    seed: int = 1  # MinHash permutation seed (an index must always use the same)
    batch_rows: int = 8192  # rows per streamed batch: the unit a killed run resumes from, and one signature task
    shard_rows: int = 100_000  # rows per output shard
    bucket_mb: float = 64.0  # memory for one LSH bucket file while clustering (16 B an entry); sets how many there are

    def validate(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise UserError(f"--threshold must be in (0, 1], got {self.threshold}")
        if self.ngram < 1:
            raise UserError(f"--ngram must be >= 1, got {self.ngram}")
        if self.num_perm < 1:
            raise UserError(f"--num-perm must be >= 1, got {self.num_perm}")
        if self.keep not in KEEP:
            raise UserError(f"--keep must be 'first' or 'best-reward', got {self.keep!r}")
        if self.batch_rows < 1:
            raise UserError(f"--batch-rows must be >= 1, got {self.batch_rows}")
        if not self.bucket_mb > 0:
            raise UserError(f"--bucket-mb must be > 0, got {self.bucket_mb}")

    def fields(self) -> list[str]:
        """`prompt+completion`: the text compared is the columns' texts joined by a newline (a sample is the same
        only with the same prompt)."""
        return self.field.split("+")

    def identity(self) -> dict:
        """The settings that change which rows are removed (batch, shard and bucket sizes do not)."""
        return {k: v for k, v in asdict(self).items() if k not in ("batch_rows", "shard_rows", "bucket_mb")}


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


class _Store:
    """Band keys and shingle sets of every row, by row number, in parts on disk (one per index round or
    signature shard). A row's keys and set are read (pread) when asked for, so resident memory holds what is in
    use: memory-mapping the files would count every page a check touched as resident, up to the whole files."""

    _OPEN = 128  # files kept open, the least recently used closed first

    def __init__(self, bands: int) -> None:
        self.bands = bands
        self.starts: list[int] = []
        self.parts: list[tuple[Path, int, Path, int, np.ndarray]] = []  # keys file, data offset, sets file, offset, offsets
        self._fds: dict[Path, int] = {}

    def add(self, start: int, keys: Path, sets: Path, offsets: Path) -> None:
        self.starts.append(start)
        self.parts.append((keys, _npy_data_offset(keys), sets, _npy_data_offset(sets), _load_npy(offsets)))

    def _at(self, row: int) -> tuple[tuple[Path, int, Path, int, np.ndarray], int]:
        p = bisect.bisect_right(self.starts, row) - 1
        return self.parts[p], row - self.starts[p]

    def _read(self, path: Path, pos: int, nbytes: int) -> np.ndarray:
        fd = self._fds.pop(path, None)
        if fd is None:
            fd = os.open(path, os.O_RDONLY)
            if len(self._fds) >= self._OPEN:
                os.close(self._fds.pop(next(iter(self._fds))))
        self._fds[path] = fd
        return np.frombuffer(os.pread(fd, nbytes, pos), np.uint64)

    def keys(self, row: int) -> list[int]:
        (keys, at, _, _, _), i = self._at(row)
        width = 8 * self.bands
        return self._read(keys, at + i * width, width).tolist()

    def set(self, row: int) -> np.ndarray:
        (_, _, sets, at, offsets), i = self._at(row)
        lo, hi = int(offsets[i]), int(offsets[i + 1])
        return self._read(sets, at + 8 * lo, 8 * (hi - lo))

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def _save_npy(path: Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr))
    ds.atomic_write_bytes(path, buf.getvalue())


def _save_npy_parts(path: Path, dtype: Any, shape: tuple[int, ...], parts: Iterable[np.ndarray]) -> None:
    """An .npy file of `shape` written part by part (header, then each part's bytes), so it is never whole in memory."""
    dtype = np.dtype(dtype)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                                                 "shape": shape})
        for part in parts:
            f.write(np.ascontiguousarray(part, dtype).tobytes())


def _load_npy(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r")


def _npy_data_offset(path: Path) -> int:
    """Where an .npy file's data starts (after its header)."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        (np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0)(f)
        return f.tell()


def _gather_sets(hashes: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The shingle sets of `rows` (ascending), concatenated: one vectorized gather from the flattened sets."""
    lo, hi = offsets[rows], offsets[rows + 1]
    sizes = hi - lo
    pos = np.arange(int(sizes.sum()), dtype=np.int64) + np.repeat(lo - np.cumsum(sizes) + sizes, sizes)
    return np.asarray(hashes[pos])


def _binary_u64(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """A binary column whose values are packed uint64s -> (all values flattened, int64 offsets into them)."""
    a = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    a = a.cast(pa.large_binary())
    _, off_buf, data_buf = a.buffers()
    off = np.frombuffer(off_buf, np.int64)[a.offset:a.offset + len(a) + 1]
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    return data[off[0]:off[-1]].view(np.uint64), (off - off[0]) // 8


# ------------------------------------------------------------------------------------------ the index
@dataclass
class _Index:
    """Kept rows of earlier rounds: exact keys in memory; ids, band keys and shingle sets on disk (row k of
    the index is row number k of phase 2, before this round's rows)."""

    dir: Path | None
    rounds: list[dict]
    exact: np.ndarray  # uint64
    parts: list[tuple[int, int, dict[str, Path]]]  # (first row, rows, its files) per round

    @property
    def rows(self) -> int:
        return len(self.exact)

    @property
    def fingerprint(self) -> str:
        return fingerprint_json([r["key"] for r in self.rounds])

    def ids_of(self, rows: np.ndarray) -> list[str]:
        """The ids of index rows `rows`, read round by round."""
        out = np.empty(len(rows), object)
        for (start, n, _), r in zip(self.parts, self.rounds):
            hit = np.flatnonzero((rows >= start) & (rows < start + n))
            if len(hit):
                ids = pq.read_table(self.dir / r["file"], columns=["id"]).column("id")
                out[hit] = ids.take(pa.array(rows[hit] - start)).to_pylist()
        return out.tolist()


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
    """Open the rounds recorded before `round_key` (all rounds when this round is new)."""
    meta = _read_index_meta(index_dir) if index_dir else None
    if meta is None:
        return _Index(index_dir, [], np.zeros(0, np.uint64), [])
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
    exact, parts, start = [np.zeros(0, np.uint64)], [], 0
    for r in rounds:
        f = _round_files(index_dir, r["file"])
        exact.append(pq.read_table(index_dir / r["file"], columns=["text_hash"]).column("text_hash").to_numpy())
        n = len(_load_npy(f["keys"]))
        parts.append((start, n, f))
        start += n
    return _Index(index_dir, rounds, np.concatenate(exact), parts)


def _append_round(index_dir: Path, settings: dict, index: _Index, round_key: str, output: Path,
                  shards: list[_Shard], kept: np.ndarray, bands: int) -> None:
    """Write this round's kept rows (`kept`: a mask over the round's rows) as new index files, shard by shard,
    then record them in index.json (every file renamed into place whole)."""
    meta = _read_index_meta(index_dir) or {"settings": settings, "rounds": []}
    rounds = meta["rounds"]
    pos = next((i for i, r in enumerate(rounds) if r["key"] == round_key), None)
    name = f"round-{len(index.rounds):05d}-{round_key[:8]}.parquet"
    f = _round_files(index_dir, name)
    local = [np.flatnonzero(kept[s.start:s.start + s.rows]) for s in shards]
    sizes = [np.diff(np.load(s.path("offsets")))[k] for s, k in zip(shards, local)]
    n = int(kept.sum())
    _save_npy_parts(f["keys"], np.uint64, (n, bands), (np.load(s.path("keys"))[k] for s, k in zip(shards, local)))
    _save_npy_parts(f["sets"], np.uint64, (int(sum(z.sum() for z in sizes)),),
                    (_gather_sets(np.load(s.path("sets")), np.load(s.path("offsets")), k) for s, k in zip(shards, local)))
    ends = np.cumsum(np.concatenate([[0]] + sizes)).astype(np.int64)
    _save_npy(f["offsets"], ends)
    schema = pa.schema([("id", pa.string()), ("text_hash", pa.uint64())])
    with atomic_path(index_dir / name) as tmp, pq.ParquetWriter(tmp, schema) as w:
        for s, k in zip(shards, local):
            t = s.meta(["id", "text_hash"]).take(pa.array(k, pa.int64()))
            w.write_table(pa.table({"id": t.column("id").cast(pa.string()), "text_hash": t.column("text_hash")},
                                   schema=schema))
    entry = {"key": round_key, "file": name, "rows": n, "output": str(output),
             "added_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if pos is None:
        rounds.append(entry)
    else:
        rounds[pos] = entry
    atomic_write_json(index_dir / "index.json", meta)


# ------------------------------------------------------------------------------------------ phase 1: signatures
class SignatureStage(Stage):
    """Phase 1 on one shard: rows `{text, id[, reward]}` -> one signature row each: `id`, `text_hash` (the
    exact key, its 64 bits as int64), `keys` (the band keys) and `shingles` (the sorted distinct shingle
    hashes), both packed uint64 bytes, and `reward` when kept. Pure: the same rows give the same bytes on any
    executor, so a resumed or Ray run clusters exactly what a local one does."""

    name = "dedup-signatures"
    shard_size = DedupConfig.batch_rows
    _runtime = ("_perm",)

    def __init__(self, ngram: int, seed: int, bands: int, rows_per_band: int, reward: bool):
        self.ngram, self.seed, self.bands, self.rows_per_band, self.reward = ngram, seed, bands, rows_per_band, reward
        self._perm: tuple[np.ndarray, np.ndarray] | None = None

    def config(self) -> dict:
        return {"ngram": self.ngram, "seed": self.seed, "bands": self.bands, "rows_per_band": self.rows_per_band,
                "reward": self.reward, "hash_scheme": tx.HASH_SCHEME}

    def setup(self) -> None:
        self._perm = permutations(self.bands * self.rows_per_band, self.seed)

    def process(self, rows: list[dict], shard: Any) -> list[dict]:
        norm = tx.normalize_array(pa.array([r["text"] for r in rows], pa.large_string()))
        sh = tx.shingles(tx.words_array(norm), self.ngram)
        keys = band_keys(signatures(sh, *self._perm), self.bands, self.rows_per_band).tobytes()
        hashes, offsets = shingle_sets(sh)
        flat, ends = hashes.tobytes(), (offsets * 8).tolist()
        width = 8 * self.bands
        out = []
        for i, (r, h) in enumerate(zip(rows, tx.text_hashes(norm).view(np.int64).tolist())):
            row = {"id": r["id"], "text_hash": h, "keys": keys[i * width:(i + 1) * width],
                   "shingles": flat[ends[i]:ends[i + 1]]}
            if self.reward:
                row["reward"] = r["reward"]
            out.append(row)
        return out


@dataclass
class _Shard:
    """One signature shard on disk, OUTPUT/.dedup/sig-NNNNN.* (opened lazily, memory-mapped)."""

    work: Path
    index: int
    start: int  # row number of its first row in this round
    rows: int

    def path(self, what: str) -> Path:
        suffix = {"meta": ".parquet", "keys": ".keys.npy", "sets": ".shingles.npy", "offsets": ".offsets.npy",
                  "done": ".done"}[what]
        return self.work / f"sig-{self.index:05d}{suffix}"

    def is_done(self) -> bool:
        p = self.path("done")
        return p.exists() and json.loads(p.read_text()) == {"rows": self.rows, "start": self.start}

    def meta(self, columns: list[str]) -> pa.Table:
        return pq.read_table(self.path("meta"), columns=columns)

    def save(self, out: list[dict] | pa.Table, bands: int) -> None:
        """Write a SignatureStage output as this shard's files, the done marker last."""
        t = out if isinstance(out, pa.Table) else ds.rows_to_table(out)
        keys, _ = _binary_u64(t.column("keys"))
        hashes, offsets = _binary_u64(t.column("shingles"))
        meta = {"id": t.column("id").cast(pa.string()),
                "text_hash": pa.array(t.column("text_hash").to_numpy().astype(np.int64).view(np.uint64))}
        if "reward" in t.column_names:
            meta["reward"] = t.column("reward").cast(pa.float64())
        _save_npy(self.path("keys"), keys.reshape(t.num_rows, bands))
        _save_npy(self.path("sets"), hashes)
        _save_npy(self.path("offsets"), offsets)
        ds.write_parquet_atomic(pa.table(meta), self.path("meta"))
        atomic_write_json(self.path("done"), {"rows": self.rows, "start": self.start}, indent=None)


def _task_table(where: str, batch: pa.RecordBatch, base: int, cfg: DedupConfig) -> pa.Table:
    """A batch as a signature task's input: its text (a chat-message list joined), id and reward, checked here
    so that a mistake names its file and row whatever executor runs the shard."""
    names = batch.schema.names
    for name in cfg.fields():
        if name not in names:
            raise UserError(f"{where}: missing column {name!r}")
    parts = [tx.column_text(batch.column(name), name, where) for name in cfg.fields()]
    texts = parts[0] if len(parts) == 1 else pc.binary_join_element_wise(*parts, pa.scalar("\n", pa.large_string()))
    if texts.null_count:
        row = base + texts.is_null().to_numpy(zero_copy_only=False).argmax()
        raise UserError(f"{where}: row {row}: column {cfg.field!r} is null; drop or fill such rows first")
    if "id" in names:
        ids = batch.column("id").cast(pa.string())
    else:
        ids = pa.array(np.arange(base, base + batch.num_rows)).cast(pa.string())
    cols = {"text": texts, "id": ids}
    if cfg.keep == "best-reward":
        col = batch.column("reward")
        if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type) or pa.types.is_null(col.type)):
            raise UserError(f"{where}: column 'reward' has type {col.type}; --keep best-reward needs numbers")
        cols["reward"] = col.cast(pa.float64())
    return pa.table(cols)


def _signature_phase(inp: ds.Input, cfg: DedupConfig, bands: int, rows_per_band: int, work: Path, runner: Any,
                     progress: bool) -> tuple[list[_Shard], int]:
    """Phase 1: every input batch as a signature shard; those without a done marker are mapped through
    `runner` and written here as they come back (in any order). Returns the shards and how many were done."""
    from tqdm.auto import tqdm

    stage = SignatureStage(cfg.ngram, cfg.seed, bands, rows_per_band, cfg.keep == "best-reward")
    want = cfg.fields() + (["id"] if "id" in inp.columns else []) + (["reward"] if cfg.keep == "best-reward" else [])
    shards: list[_Shard] = []
    resumed = [0]
    bar = tqdm(total=inp.rows, desc="dedup: signatures", unit="row", disable=not progress, dynamic_ncols=True)

    def tasks() -> Iterator[ShardTask]:
        base = 0
        for where, batch in inp.batches(cfg.batch_rows, want):
            if batch.num_rows == 0:
                continue
            s = _Shard(work, len(shards), base, batch.num_rows)
            shards.append(s)
            base += s.rows
            if s.is_done():
                resumed[0] += 1
                bar.update(s.rows)
            else:
                yield ShardTask(s.index, s.start, _task_table(where, batch, s.start, cfg))

    # the local executor pulls tasks one at a time; Ray's map holds its task list, so it gets windows of them
    window = None if runner.name == "local" else max(1, _RAY_WINDOW_ROWS // cfg.batch_rows)
    todo = tasks()
    try:
        while True:
            chunk = todo if window is None else list(itertools.islice(todo, window))
            if window is not None and not chunk:
                break
            for task, out, _ in runner.map(stage, chunk, bar.update):
                shards[task.index].save(out, bands)
            if window is None:
                break
    finally:
        bar.close()
    return shards, resumed[0]


# ------------------------------------------------------------------------------------------ phase 2: clusters
def bucket_count(entries: int, bucket_bytes: float) -> int:
    """P, the number of bucket files: the fewest that keep one file's entries (16 B each) under `bucket_bytes`."""
    return int(min(_MAX_BUCKETS, max(1, math.ceil(entries * _ENTRY.itemsize / bucket_bytes))))


def _find(parent: np.ndarray, x: int) -> int:
    while True:
        p = int(parent[x])
        if p == x:
            return x
        g = int(parent[p])
        parent[x] = g  # path halving
        x = g


class _Linker:
    """Union-find over row numbers, joining two rows when their exact Jaccard is >= the threshold. The root of
    a group is its smallest row. Pairs of two index rows are never checked (index rows are all kept)."""

    def __init__(self, parent: np.ndarray, index_rows: int, store: _Store, threshold: float):
        self.parent, self.k, self.store, self.t = parent, index_rows, store, threshold
        self.checks = 0

    def pair(self, a: int, b: int) -> None:
        if a < self.k and b < self.k:
            return
        ra, rb = _find(self.parent, a), _find(self.parent, b)
        if ra == rb:
            return
        self.checks += 1
        if exact_jaccard(self.store.set(a), self.store.set(b)) >= self.t:
            self.parent[max(ra, rb)] = min(ra, rb)

    def bucket(self, entries: np.ndarray) -> None:
        """Every pair of rows sharing a (band, key) in one bucket file's entries."""
        order = np.lexsort((entries["node"], entries["key"]))
        key, node = entries["key"][order], entries["node"][order]
        cut = np.flatnonzero(key[1:] != key[:-1]) + 1
        starts = np.concatenate([[0], cut])
        sizes = np.diff(np.concatenate([starts, [len(key)]]))
        # groups of two, deduplicated: a near-duplicate pair shares most of its bands
        two = starts[sizes == 2]
        for a, b in np.unique(np.stack([node[two], node[two + 1]], 1), axis=0).tolist():
            self.pair(a, b)
        for s, m in zip(starts[sizes > 2].tolist(), sizes[sizes > 2].tolist()):
            members = node[s:s + m].tolist()
            for j in range(1, m):
                for i in range(j):
                    self.pair(members[i], members[j])


def _write_buckets(store: _Store, rows: int, lead: np.ndarray, bands: int, p: int, bdir: Path, bar) -> None:
    """Every lead row's (band, key) entries, appended to bucket file hash(band, key) mod P."""
    shutil.rmtree(bdir, ignore_errors=True)
    bdir.mkdir(parents=True)
    salt = (np.arange(1, bands + 1, dtype=np.uint64) * tx._POLY)[None, :]
    buf: list[list[np.ndarray]] = [[] for _ in range(p)]
    held = 0

    def flush() -> None:
        for b, parts in enumerate(buf):
            if parts:
                with open(bdir / f"bucket-{b:05d}.bin", "ab") as f:
                    for part in parts:
                        part.tofile(f)
                parts.clear()

    ends = store.starts[1:] + [rows]
    for start, end, (keys, *_) in zip(store.starts, ends, store.parts):
        nodes = np.arange(start, end, dtype=np.int64)
        mine = lead[start:end]
        with np.errstate(over="ignore"):
            ck = tx._mix64(np.load(keys)[mine] ^ salt).ravel()
        ent = np.empty(len(ck), _ENTRY)
        ent["key"], ent["node"] = ck, np.repeat(nodes[mine], bands)
        dest = (ck % np.uint64(p)).astype(np.int64)
        order = np.argsort(dest, kind="stable")
        bounds = np.searchsorted(dest[order], np.arange(p + 1))
        for b in range(p):
            if bounds[b + 1] > bounds[b]:
                buf[b].append(ent[order[bounds[b]:bounds[b + 1]]])
        held += len(ent)
        if held >= _FLUSH_ENTRIES:
            flush()
            held = 0
        bar.update(end - start)
    flush()


def _resolve(root: np.ndarray, k: int, exact: np.ndarray, store: _Store, bands: int,
             threshold: float) -> tuple[np.ndarray, np.ndarray, dict]:
    """The rule of the module docstring, applied within each joined group of rows (`root`: its smallest row).
    Returns, for this round's rows, the representative's row number (index rows are < k) and the exact Jaccard
    to it."""
    n_all = len(root)
    cluster = np.arange(k, n_all, dtype=np.int64)
    jac = np.ones(n_all - k)
    size = np.bincount(root, minlength=n_all)
    grouped = np.flatnonzero(size[root] > 1)
    grouped = grouped[np.argsort(root[grouped], kind="stable")]  # by group, rows ascending within each
    cut = np.flatnonzero(np.diff(root[grouped])) + 1
    groups = largest = 0
    for rows in np.split(grouped, cut) if len(grouped) else []:
        if rows[-1] < k:  # only index rows
            continue
        groups += 1
        largest = max(largest, len(rows))
        exact_map: dict[int, int] = {}
        lsh = _Tables(bands)
        for g in rows.tolist():
            h = int(exact[g])
            if g < k:  # an earlier round's row: a representative
                exact_map.setdefault(h, g)
                lsh.insert(g, store.keys(g))
                continue
            c = exact_map.get(h)
            if c is not None:
                cluster[g - k] = c
                continue
            row = store.keys(g)
            best, best_j = None, -1.0
            cands = lsh.query(row)
            if cands:
                mine = store.set(g)
                for c in cands:
                    j = exact_jaccard(store.set(c), mine)
                    if j >= threshold and (j > best_j or (j == best_j and c < best)):
                        best, best_j = c, j
            if best is not None:
                cluster[g - k], jac[g - k] = best, best_j
                continue
            exact_map[h] = g
            lsh.insert(g, row)
    return cluster, jac, {"groups": groups, "largest_group": largest}


def _cluster_phase(shards: list[_Shard], idx: _Index, cfg: DedupConfig, bands: int, work: Path,
                   progress: bool) -> tuple[np.ndarray, np.ndarray, dict]:
    """Phase 2 (see module docstring). Row numbers: index rows 0..K-1, then this round's rows K..K+n-1.

    Memory: per row, the union-find parent and the exact key (8 B each) and, while they are computed, the
    cluster, its Jaccard and the grouping (~40 B); plus one bucket file (<= --bucket-mb) and its sort; plus
    the LSH tables of the largest joined group. Never the LSH tables of all rows."""
    from tqdm.auto import tqdm

    k = idx.rows
    n = sum(s.rows for s in shards)
    store = _Store(bands)
    for start, _, f in idx.parts:
        store.add(start, f["keys"], f["sets"], f["offsets"])
    for s in shards:
        store.add(k + s.start, s.path("keys"), s.path("sets"), s.path("offsets"))
    try:
        exact = np.concatenate([idx.exact] + [s.meta(["text_hash"]).column("text_hash").to_numpy() for s in shards])
        # rows with equal text start joined to the first of them, which alone goes into the buckets
        _, first, inverse = np.unique(exact, return_index=True, return_inverse=True)
        parent = first[inverse].astype(np.int64)
        del first, inverse
        lead = parent == np.arange(k + n)
        entries = int(lead.sum()) * bands
        p = bucket_count(entries, cfg.bucket_mb * 2**20)
        bdir = work / "buckets"
        bar = tqdm(total=k + n, desc="dedup: buckets", unit="row", disable=not progress, dynamic_ncols=True)
        try:
            _write_buckets(store, k + n, lead, bands, p, bdir, bar)
        finally:
            bar.close()
        del lead
        linker = _Linker(parent, k, store, cfg.threshold)
        bar = tqdm(total=p, desc="dedup: clusters", unit="bucket", disable=not progress, dynamic_ncols=True)
        try:
            for b in range(p):
                path = bdir / f"bucket-{b:05d}.bin"
                if path.exists():
                    linker.bucket(np.fromfile(path, _ENTRY))
                    path.unlink()
                bar.update(1)
        finally:
            bar.close()
        shutil.rmtree(bdir, ignore_errors=True)
        root = parent
        while True:  # every row straight to its group's root
            up = root[root]
            if np.array_equal(up, root):
                break
            root = up
        cluster, jac, stats = _resolve(root, k, exact, store, bands, cfg.threshold)
    finally:
        store.close()
    stats = {"buckets": p, "bucket_entries": entries, "pairs_checked": linker.checks, **stats}
    return cluster, jac, stats


# ------------------------------------------------------------------------------------------ phase 3: the filter
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


def _ids_of(shards: list[_Shard], rows: np.ndarray) -> list[str]:
    """The ids of this round's rows `rows`, read shard by shard."""
    out = np.empty(len(rows), object)
    for s in shards:
        hit = np.flatnonzero((rows >= s.start) & (rows < s.start + s.rows))
        if len(hit):
            out[hit] = s.meta(["id"]).column("id").take(pa.array(rows[hit] - s.start)).to_pylist()
    return out.tolist()


def _write_outputs(inp: ds.Input, cfg: DedupConfig, out: Path, removed: np.ndarray, rem: np.ndarray,
                   dup_of: np.ndarray, is_exact: np.ndarray, jac: np.ndarray) -> int:
    """Stream the input again, writing kept rows to OUT/data and removed ones to OUT/removed/data. Where a
    part ends depends only on the decisions and the batch sizes, so a part a killed run finished is kept."""
    pos_of = np.full(len(removed), -1, np.int64)
    pos_of[rem] = np.arange(len(rem))
    kept_buf: list[pa.Table] = []
    rem_buf: list[pa.Table] = []
    counters = {"kept": 0, "removed": 0}

    def flush(buf: list[pa.Table], directory: Path, key: str, final: bool) -> None:
        rows = sum(t.num_rows for t in buf)
        if rows == 0 or (rows < cfg.shard_rows and not final):
            return
        path = directory / ds.DATA / f"part-{counters[key]:05d}.parquet"
        if not path.exists():
            ds.write_parquet_atomic(ds.concat(buf), path)
        counters[key] += 1
        buf.clear()

    base = 0
    schema = None
    for _, batch in inp.batches(cfg.batch_rows):
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


# ------------------------------------------------------------------------------------------ the job
def _fingerprint(settings: dict, cfg: DedupConfig, input_fp: str, index_fp: str | None, index_path: str | None) -> str:
    return fingerprint_json({"stage": STAGE, "settings": settings, "config": cfg.identity(), "input": input_fp,
                             "index": index_fp, "index_path": index_path})


def _round_key(cfg: DedupConfig, input_fp: str) -> str:
    return fingerprint_json({"config": cfg.identity(), "input": input_fp})


def s_curve(threshold: float, bands: int, rows: int) -> dict[str, float]:
    """P(candidate) at J = t-0.1, t-0.05, t, t+0.04 (what the manifest and docs/hygiene.md show)."""
    js = [threshold - 0.1, threshold - 0.05, threshold, threshold + 0.04]
    return {f"{j:.2f}": round(float(p_candidate(j, bands, rows)), 5) for j in js if 0.0 <= j <= 1.0}


def dedup(input: str, output: str, config: DedupConfig | None = None, *, index: str | None = None,
          overwrite: bool = False, progress: bool = True, executor: Any = None,
          log=lambda m: print(m, file=sys.stderr)) -> DedupResult:
    """Deduplicate `input` into the dataset directory `output` (see module docstring). `executor`
    (pipelines/executors: an Executor, an ExecutorConfig, or "local"/"ray") runs phase 1; it changes nothing
    in the output."""
    from pipelines.core.runner import open_output, versions

    t0 = time.time()
    cfg = config or DedupConfig()
    cfg.validate()
    bands, rows_per_band = choose_banding(cfg.threshold, cfg.num_perm)
    out = Path(output)
    inp = ds.open_input(str(input), cfg.fields())
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
                  "rows_before": idx.rows} if index_dir else None,
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
    # the same run, killed part-way, left its work: reuse it if the input was cut the same way
    plan = {"fingerprint": fp, "batch_rows": cfg.batch_rows, "shard_rows": cfg.shard_rows}
    plan_path = work / "plan.json"
    if not (plan_path.exists() and json.loads(plan_path.read_text()) == plan):
        shutil.rmtree(work, ignore_errors=True)
        atomic_write_json(plan_path, plan, indent=None)
    ds.write_manifest(out, manifest)

    own_executor = executor is None or not hasattr(executor, "map")
    runner = make_executor(executor) if own_executor else executor
    try:
        shards, resumed = _signature_phase(inp, cfg, bands, rows_per_band, work, runner, progress)
    finally:
        if own_executor:
            runner.close()
    if resumed:
        log(f"[{STAGE}] resumed {resumed} of {len(shards)} signature shards from {work}")

    k = idx.rows
    marker = work / "clusters.json"
    if marker.exists():
        cluster, jac_rep = np.load(work / "clusters.npy"), np.load(work / "jaccard.npy")
        clustering = {**json.loads(marker.read_text()), "resumed": True}
        log(f"[{STAGE}] resumed the clusters from {work}")
    else:
        cluster, jac_rep, clustering = _cluster_phase(shards, idx, cfg, bands, work, progress)
        _save_npy(work / "clusters.npy", cluster)
        _save_npy(work / "jaccard.npy", jac_rep)
        atomic_write_json(marker, clustering, indent=None)
        clustering = {**clustering, "resumed": False}

    # phase 3: what each removed row duplicates: this round's kept row, or index row i (rep = -(i+1))
    rep = np.where(cluster >= k, cluster - k, -(cluster + 1))
    exact = np.concatenate([s.meta(["text_hash"]).column("text_hash").to_numpy() for s in shards])
    reward = (np.concatenate([s.meta(["reward"]).column("reward").to_numpy(zero_copy_only=False) for s in shards])
              if cfg.keep == "best-reward" else None)
    keeper = _keepers(rep, reward, cfg.keep)
    removed = keeper != np.arange(inp.rows)
    rem = np.flatnonzero(removed)
    by_index = rep[rem] < 0
    k_round = keeper[rem]
    k_index = cluster[rem]
    other_exact = np.empty(len(rem), np.uint64)
    other_exact[by_index] = idx.exact[k_index[by_index]]
    other_exact[~by_index] = exact[k_round[~by_index]]
    is_exact = other_exact == exact[rem]
    jac = jac_rep[rem].copy()  # exact Jaccard to the representative, which is the kept row unless best-reward
    store = _Store(bands)
    for s in shards:
        store.add(s.start, s.path("keys"), s.path("sets"), s.path("offsets"))
    for p in np.flatnonzero(~by_index & (k_round != rep[rem])):
        jac[p] = exact_jaccard(store.set(int(k_round[p])), store.set(int(rem[p])))
    store.close()
    jac[is_exact] = 1.0
    dup_of = np.empty(len(rem), object)
    if by_index.any():
        dup_of[by_index] = idx.ids_of(k_index[by_index])
    if (~by_index).any():
        dup_of[~by_index] = _ids_of(shards, k_round[~by_index])

    staged = work / "staged"
    num_shards = _write_outputs(inp, cfg, staged, removed, rem, dup_of, is_exact, jac)
    for sub in (ds.DATA, "removed"):  # the finished output replaces whatever a killed phase 3 left
        shutil.rmtree(out / sub, ignore_errors=True)
        if (staged / sub).exists():
            (staged / sub).rename(out / sub)
    if index_dir:
        _append_round(index_dir, settings, idx, round_key, out, shards, ~removed, bands)
    n_kept = int(inp.rows - len(rem))
    n_exact, n_near = int(is_exact.sum()), int((~is_exact).sum())
    manifest.update({
        "rows_out": n_kept, "num_shards": num_shards, "completed_shards": list(range(num_shards)),
        "counts": {"kept": n_kept, "removed": int(len(rem)), "removed_exact": n_exact,
                   "removed_near": n_near, "removed_by_index": int(by_index.sum())},
        "resume": {"signature_shards": len(shards), "resumed": resumed},
        "clustering": clustering, "executor": runner.name,
        "complete": True, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(time.time() - t0, 3),
    })
    ds.write_manifest(out, manifest)
    shutil.rmtree(work, ignore_errors=True)
    return _result_from_manifest(out, manifest, time.time() - t0, skipped=False)


def _result_from_manifest(out: Path, m: dict, seconds: float, skipped: bool = True) -> DedupResult:
    c = m.get("counts", {})
    return DedupResult(out, m["rows_in"], m["rows_out"], c.get("removed_exact", 0), c.get("removed_near", 0),
                       c.get("removed_by_index", 0), m["lsh"]["bands"], m["lsh"]["rows_per_band"], seconds,
                       skipped=skipped, resumed_shards=m.get("resume", {}).get("resumed", 0), manifest=m)


# ------------------------------------------------------------------------------------------ CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, help="JSONL, Parquet file, dataset directory or hub name")
    p.add_argument("--output", required=True, help="output dataset directory (removed rows go to OUTPUT/removed)")
    add_dataclass_options(p, DedupConfig, choices={"keep": KEEP})  # --field, --threshold, --ngram, ...
    p.add_argument("--index", default=None, help="directory of a persistent index: dedup against earlier rounds "
                   "stored there, then add this round's kept rows")
    p.add_argument("--overwrite", action="store_true", help="replace an output made with another config or input")
    p.add_argument("--no-progress", action="store_true")
    add_executor_arguments(p)


def run(args: argparse.Namespace) -> int:
    r = dedup(args.input, args.output, from_args(DedupConfig, args), index=args.index, overwrite=args.overwrite,
              progress=not args.no_progress, executor=executor_config(args))
    print(f"dedup: {r.rows_in} rows in, {r.rows_out} kept, {r.removed_exact} exact and {r.removed_near} near "
          f"duplicates removed ({r.removed_by_index} of them matched earlier rounds in the index); "
          f"LSH {r.bands} bands x {r.rows_per_band} rows; removed rows in {r.output / 'removed'}")
    return 0
