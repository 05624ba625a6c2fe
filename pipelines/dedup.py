"""`prefsmith dedup`: remove exact and near-duplicate rows, within a dataset and across rounds.

Two passes over the input, streamed in Arrow record batches (the text is never held beyond one batch):

pass 1  for each batch: normalize the `--field` text (pipelines.text), hash it (exact key), build word
        n-gram shingles and their MinHash signatures (numpy, `num_perm` 32-bit values per row). Then row by
        row, in input order: a row whose exact key was seen joins that cluster (`exact`); otherwise the
        datasketch `MinHashLSH` index proposes candidates, whose estimated Jaccard (share of equal signature
        values) is checked against `--threshold`; the row joins the most similar cluster above it (`near`),
        or starts a new cluster and is inserted into the index as that cluster's representative.
        Clusters therefore grow around their first row: every member is within the threshold of it.
pass 2  read the input again and write the rows each cluster keeps (`--keep first`: the earliest row;
        `--keep best-reward`: the highest `reward`, ties -> earliest, null reward last) to OUTPUT/data/, and
        the others to OUTPUT/removed/data/ with `duplicate_of` (id of the row kept), `dup_kind`
        (`exact` when its normalized text equals the kept row's, else `near`) and `jaccard` (estimated).

`--index DIR` keeps the representatives of earlier rounds (ids, exact keys, signatures) on disk: they are
loaded into the LSH index first, rows matching them are removed (`duplicate_of` = the earlier round's id), and
this round's kept rows are appended. Memory: per input row ~30 bytes of bookkeeping plus `num_perm` x 4 bytes
of signature (512 B at 128 perms), plus ~5 KB per cluster representative in the LSH index, plus one batch's
working set; see docs/hygiene.md for the measured numbers.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import dataset as ds
from pipelines import text as tx
from pipelines.errors import UserError

STAGE = "dedup"
INDEX_FORMAT = 1
_BLOCK = 16384  # shingles per numpy block when computing signatures (block x num_perm x 8 bytes of scratch)
_EMPTY = np.uint32(0xFFFFFFFF)


@dataclass
class DedupConfig:
    field: str = "prompt"
    threshold: float = 0.8  # estimated Jaccard of the shingle sets at or above which two rows are duplicates
    ngram: int = 5  # words per shingle
    num_perm: int = 128  # MinHash permutations
    keep: str = "first"  # first | best-reward
    seed: int = 1  # MinHash permutation seed (an index must always use the same)
    batch_rows: int = 8192  # rows per streamed input batch
    shard_rows: int = 100_000  # rows per output shard

    def validate(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise UserError(f"--threshold must be in (0, 1], got {self.threshold}")
        if self.ngram < 1:
            raise UserError(f"--ngram must be >= 1, got {self.ngram}")
        if self.num_perm < 4:
            raise UserError(f"--num-perm must be >= 4, got {self.num_perm}")
        if self.keep not in ("first", "best-reward"):
            raise UserError(f"--keep must be 'first' or 'best-reward', got {self.keep!r}")

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
    manifest: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ MinHash math
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


def jaccard(s: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Estimated Jaccard: the share of equal signature values (row-wise for 2-D inputs)."""
    return (s == t).mean(axis=-1)


class _Sig:
    """What datasketch's MinHashLSH reads from a MinHash: `hashvalues` and `len()`."""

    __slots__ = ("hashvalues",)

    def __init__(self, hashvalues: np.ndarray):
        self.hashvalues = hashvalues

    def __len__(self) -> int:
        return len(self.hashvalues)


def make_lsh(threshold: float, num_perm: int, params: tuple[int, int] | None = None):
    from datasketch import MinHashLSH

    # recall-oriented banding: every LSH candidate is verified against the threshold with the full signature,
    # so a false candidate costs a comparison while a missed one is a duplicate left in the data
    return MinHashLSH(threshold=threshold, num_perm=num_perm, params=params, weights=(0.05, 0.95))


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
    """Representatives of earlier rounds: ids, exact keys and signatures."""

    ids: list[str]
    exact: np.ndarray  # uint64
    sig: np.ndarray  # (K, num_perm) uint32
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


def _load_index(index_dir: Path | None, settings: dict, round_key: str) -> _Index:
    """Load the rounds recorded before `round_key` (all rounds when this round is new)."""
    meta = _read_index_meta(index_dir) if index_dir else None
    if meta is None:
        return _Index([], np.zeros(0, np.uint64), np.zeros((0, settings["num_perm"]), np.uint32), [])
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
    ids, exact, sigs = [], [], []
    for r in rounds:
        t = pq.read_table(index_dir / r["file"])
        ids += t.column("id").to_pylist()
        exact.append(t.column("text_hash").to_numpy())
        raw = t.column("signature").combine_chunks()
        width = settings["num_perm"] * 4
        buf = np.frombuffer(raw.buffers()[1], np.uint8)[raw.offset * width:(raw.offset + len(raw)) * width]
        sigs.append(buf.view(np.uint32).reshape(len(raw), settings["num_perm"]))
    P = settings["num_perm"]
    return _Index(ids, np.concatenate(exact) if exact else np.zeros(0, np.uint64),
                  np.concatenate(sigs) if sigs else np.zeros((0, P), np.uint32), rounds)


def _append_round(index_dir: Path, settings: dict, index: _Index, round_key: str, output: Path,
                  ids: list[str], exact: np.ndarray, sig: np.ndarray) -> None:
    """Write this round's kept rows as a new index file, then record it in index.json (atomic renames)."""
    meta = _read_index_meta(index_dir) or {"settings": settings, "rounds": []}
    rounds = meta["rounds"]
    pos = next((i for i, r in enumerate(rounds) if r["key"] == round_key), None)
    number = len(index.rounds)
    name = f"round-{number:05d}-{round_key[:8]}.parquet"
    width = sig.shape[1] * 4
    table = pa.table({
        "id": pa.array(ids, pa.string()),
        "text_hash": pa.array(exact, pa.uint64()),
        "signature": pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(ids),
                                                          [None, pa.py_buffer(np.ascontiguousarray(sig).tobytes())]),
    })
    ds.write_parquet_atomic(table, index_dir / name)
    entry = {"key": round_key, "file": name, "rows": len(ids), "output": str(output),
             "added_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if pos is None:
        rounds.append(entry)
    else:
        rounds[pos] = entry
    ds.atomic_write_bytes(index_dir / "index.json", json.dumps(meta, indent=2).encode())


# ------------------------------------------------------------------------------------------ pass 1
@dataclass
class _Clusters:
    cluster: np.ndarray  # int64 per row: rep row (>= 0) or -(k+1) for index representative k
    exact: np.ndarray  # uint64 per row
    sig: np.ndarray  # (N, num_perm) uint32
    ids: pa.Array  # string per row
    reward: np.ndarray | None  # float64 per row, NaN for null


def _cluster(inp: _Input, cfg: DedupConfig, index: _Index, lsh, progress: bool) -> _Clusters:
    from tqdm.auto import tqdm

    N, P = inp.rows, cfg.num_perm
    a, b = permutations(P, cfg.seed)
    cluster = np.empty(N, np.int64)
    exact_all = np.empty(N, np.uint64)
    sig_all = np.empty((N, P), np.uint32)
    reward = np.full(N, np.nan) if cfg.keep == "best-reward" else None
    id_chunks: list[pa.Array] = []
    # exact keys of cluster representatives -> cluster id
    exact_map: dict[int, int] = {int(h): -(k + 1) for k, h in enumerate(index.exact)}
    for k in range(len(index.ids)):
        lsh.insert(-(k + 1), _Sig(index.sig[k]), check_duplication=False)
    order_key = lambda key: key + N if key < 0 else key  # noqa: E731 - earlier rounds come first on ties
    want = [cfg.field] + (["id"] if "id" in inp.columns else []) + (["reward"] if reward is not None else [])
    base = 0
    bar = tqdm(total=N, desc="dedup: signatures", unit="row", disable=not progress, dynamic_ncols=True)
    try:
        for where, batch in _batches(inp, cfg.batch_rows, want):
            m = batch.num_rows
            if m == 0:
                continue
            if cfg.field not in batch.schema.names:
                raise UserError(f"{where}: missing column {cfg.field!r}")
            texts = tx.column_text(batch.column(cfg.field), cfg.field, where)
            if texts.null_count:
                row = base + texts.is_null().to_numpy(zero_copy_only=False).argmax()
                raise UserError(f"{where}: row {row}: column {cfg.field!r} is null; drop or fill such rows first")
            norm = tx.normalize_array(texts)
            exact = tx.text_hashes(norm)
            sig = signatures(tx.shingles(tx.words_array(norm), cfg.ngram), a, b)
            exact_all[base:base + m] = exact
            sig_all[base:base + m] = sig
            if "id" in batch.schema.names:
                id_chunks.append(batch.column("id").cast(pa.string()))
            else:
                id_chunks.append(pa.array(np.arange(base, base + m)).cast(pa.string()))
            if reward is not None:
                col = batch.column("reward")
                if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type) or pa.types.is_null(col.type)):
                    raise UserError(f"{where}: column 'reward' has type {col.type}; --keep best-reward needs numbers")
                reward[base:base + m] = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
            for i in range(m):
                g = base + i
                h = int(exact[i])
                c = exact_map.get(h)
                if c is not None:
                    cluster[g] = c
                    continue
                s = sig[i]
                cands = lsh.query(_Sig(s))
                if cands:
                    keys = np.fromiter(cands, np.int64, len(cands))
                    cs = _rows_sig(keys, sig_all, index.sig)
                    js = jaccard(cs, s)
                    ok = js >= cfg.threshold
                    if ok.any():
                        best = min(np.flatnonzero(ok), key=lambda t: (-js[t], order_key(int(keys[t]))))
                        cluster[g] = keys[best]
                        continue
                cluster[g] = g
                exact_map[h] = g
                lsh.insert(g, _Sig(s), check_duplication=False)
            base += m
            bar.update(m)
    finally:
        bar.close()
    return _Clusters(cluster, exact_all, sig_all, pa.chunked_array(id_chunks, pa.string()).combine_chunks(), reward)


def _rows_sig(keys: np.ndarray, sig: np.ndarray, index_sig: np.ndarray) -> np.ndarray:
    """Signatures of cluster keys: a row of this round (>= 0) or index representative -(k+1)."""
    out = np.empty((len(keys), sig.shape[1]), np.uint32)
    neg = keys < 0
    out[neg] = index_sig[-keys[neg] - 1]
    out[~neg] = sig[keys[~neg]]
    return out


def _keepers(c: _Clusters, keep: str) -> np.ndarray:
    """Row kept for each row's cluster (-1 for rows matching an earlier round)."""
    N = len(c.cluster)
    rows = np.arange(N)
    in_round = c.cluster >= 0
    keeper_of = np.arange(N)  # keep=first: the representative is its cluster's earliest row
    if keep == "best-reward":
        g = rows[in_round]
        cl = c.cluster[in_round]
        r = c.reward[in_round]
        null = np.isnan(r)
        order = np.lexsort((g, -np.nan_to_num(r, nan=0.0), null, cl))
        cl_sorted = cl[order]
        first = np.ones(len(cl_sorted), bool)
        first[1:] = cl_sorted[1:] != cl_sorted[:-1]
        keeper_of[cl_sorted[first]] = g[order][first]
    return np.where(in_round, keeper_of[np.maximum(c.cluster, 0)], -1)


# ------------------------------------------------------------------------------------------ the job
def _fingerprint(settings: dict, cfg: DedupConfig, input_fp: str, index_fp: str | None, index_path: str | None) -> str:
    blob = json.dumps({"stage": STAGE, "settings": settings, "config": cfg.identity(), "input": input_fp,
                       "index": index_fp, "index_path": index_path}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _round_key(cfg: DedupConfig, input_fp: str) -> str:
    return hashlib.sha256(json.dumps({"config": cfg.identity(), "input": input_fp}, sort_keys=True).encode()).hexdigest()[:16]


def dedup(input: str, output: str, config: DedupConfig | None = None, *, index: str | None = None,
          overwrite: bool = False, progress: bool = True, log=lambda m: print(m, file=sys.stderr)) -> DedupResult:
    """Deduplicate `input` into the dataset directory `output` (see module docstring)."""
    from pipelines.runner import open_output, versions

    t0 = time.time()
    cfg = config or DedupConfig()
    cfg.validate()
    out = Path(output)
    inp = _open_input(str(input), [cfg.field])
    if cfg.keep == "best-reward" and "reward" not in inp.columns:
        raise UserError(f"{input}: --keep best-reward needs a 'reward' column; found {', '.join(inp.columns)}. "
                        "Run `prefsmith label` first, or use --keep first.")
    input_fp = ds.fingerprint(input)
    lsh = make_lsh(cfg.threshold, cfg.num_perm)
    settings = _index_settings(cfg, lsh.b, lsh.r)
    round_key = _round_key(cfg, input_fp)
    index_dir = Path(index) if index else None
    idx = _load_index(index_dir, settings, round_key)
    fp = _fingerprint(settings, cfg, input_fp, idx.fingerprint if index_dir else None, str(index_dir) if index_dir else None)

    manifest = {
        "stage": STAGE, "fingerprint": fp, "config": asdict(cfg),
        "input": {"source": str(input), "fingerprint": input_fp, "rows": inp.rows},
        "index": {"path": str(index_dir), "fingerprint": idx.fingerprint, "rounds_before": len(idx.rounds),
                  "rows_before": len(idx.ids)} if index_dir else None,
        "lsh": {"bands": lsh.b, "rows_per_band": lsh.r},
        "rows_in": inp.rows, "rows_out": None, "complete": False, "num_shards": 0, "completed_shards": [],
        "versions": versions(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    # "index" compares the index's fingerprint (and where it lives) with the old run's
    old = open_output(out, manifest, overwrite, extra_keys=("index",))
    if old is not None and old.get("complete"):
        log(f"[{STAGE}] {out} is already complete ({old.get('rows_out')} rows); nothing to do")
        return _result_from_manifest(out, old, time.time() - t0)
    if old is not None:  # the same run, killed part-way: dedup is global, so it starts over
        shutil.rmtree(out)
        out.mkdir(parents=True)
    ds.write_manifest(out, manifest)

    c = _cluster(inp, cfg, idx, lsh, progress)
    del lsh
    keeper = _keepers(c, cfg.keep)
    rows = np.arange(inp.rows)
    removed = keeper != rows
    # what each removed row duplicates
    rem = np.flatnonzero(removed)
    by_index = c.cluster[rem] < 0
    k_round = keeper[rem]
    k_index = -c.cluster[rem] - 1
    # the row each removed row duplicates, as a cluster key: this round's row, or -(k+1) for index row k
    target = np.where(by_index, c.cluster[rem], k_round)
    other_exact = np.empty(len(rem), np.uint64)
    other_exact[by_index] = idx.exact[k_index[by_index]]
    other_exact[~by_index] = c.exact[k_round[~by_index]]
    is_exact = other_exact == c.exact[rem]
    jac = np.ones(len(rem))
    for s in range(0, len(rem), 65536):
        sl = slice(s, s + 65536)
        jac[sl] = jaccard(_rows_sig(target[sl], c.sig, idx.sig), c.sig[rem[sl]])
    jac[is_exact] = 1.0
    dup_of = np.empty(len(rem), object)
    if by_index.any():
        dup_of[by_index] = [idx.ids[k] for k in k_index[by_index]]
    if (~by_index).any():
        dup_of[~by_index] = c.ids.take(pa.array(k_round[~by_index])).to_pylist()

    shards = _write_outputs(inp, cfg, out, removed, rem, dup_of, is_exact, jac)
    kept_rows = np.flatnonzero(~removed)
    if index_dir:
        _append_round(index_dir, settings, idx, round_key, out, c.ids.take(pa.array(kept_rows)).to_pylist(),
                      c.exact[kept_rows], c.sig[kept_rows])
    n_exact, n_near = int(is_exact.sum()), int((~is_exact).sum())
    manifest.update({
        "rows_out": int(len(kept_rows)), "num_shards": shards, "completed_shards": list(range(shards)),
        "counts": {"kept": int(len(kept_rows)), "removed": int(len(rem)), "removed_exact": n_exact,
                   "removed_near": n_near, "removed_by_index": int(by_index.sum())},
        "complete": True, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(time.time() - t0, 3),
    })
    ds.write_manifest(out, manifest)
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
                       skipped=skipped, manifest=m)


# ------------------------------------------------------------------------------------------ CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    d = DedupConfig()
    p.add_argument("--input", required=True, help="JSONL, Parquet file, dataset directory or hub name")
    p.add_argument("--output", required=True, help="output dataset directory (removed rows go to OUTPUT/removed)")
    p.add_argument("--field", default=d.field, help="text column to compare: a string or chat-message list column "
                   f"(default {d.field})")
    p.add_argument("--threshold", type=float, default=d.threshold,
                   help=f"estimated Jaccard of word-shingle sets at/above which rows are near-duplicates (default {d.threshold})")
    p.add_argument("--ngram", type=int, default=d.ngram, help=f"words per shingle (default {d.ngram})")
    p.add_argument("--num-perm", type=int, default=d.num_perm, help=f"MinHash permutations (default {d.num_perm})")
    p.add_argument("--keep", choices=["first", "best-reward"], default=d.keep,
                   help="which row of a duplicate cluster to keep: the earliest, or the highest `reward` (ties -> earliest)")
    p.add_argument("--index", default=None, help="directory of a persistent index: dedup against earlier rounds "
                   "stored there, then add this round's kept rows")
    p.add_argument("--seed", type=int, default=d.seed, help="MinHash permutation seed")
    p.add_argument("--overwrite", action="store_true", help="replace an output made with another config or input")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    cfg = DedupConfig(field=args.field, threshold=args.threshold, ngram=args.ngram, num_perm=args.num_perm,
                      keep=args.keep, seed=args.seed)
    r = dedup(args.input, args.output, cfg, index=args.index, overwrite=args.overwrite, progress=not args.no_progress)
    print(f"dedup: {r.rows_in} rows in, {r.rows_out} kept, {r.removed_exact} exact and {r.removed_near} near "
          f"duplicates removed ({r.removed_by_index} of them matched earlier rounds in the index); "
          f"LSH {r.bands} bands x {r.rows_per_band} rows; removed rows in {r.output / 'removed'}")
    return 0
