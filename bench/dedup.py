"""Benchmark: `prefsmith dedup` against datatrove's MinHash dedup on one synthetic corpus with planted pairs.

    .venv/bin/python bench/dedup.py [--docs 100000] [--threshold 0.8] [--workdir /tmp/dedup-bench] \
        [--no-datatrove] [--executor local|ray] [--bucket-mb 64]

The corpus: documents of 100-300 words drawn from a 30k-word vocabulary with Zipf frequencies. Most are
originals; `--near` of them are copies of an original placed *just above* the threshold, `--far` are copies
placed *just below* it (hard negatives). Each copy is made by random word substitutions, insertions and
deletions, one at a time, with the exact word-5-gram Jaccard against its original (Python sets) measured after
each edit; an edit that would leave the target band is undone. Bands: threshold + 0.04 +- 0.01 (duplicates)
and threshold - 0.1 +- 0.01 (not duplicates). Every original has at most one copy, so each planted pair is a
group of two.

Scores, per tool: recall = planted duplicate pairs of which one row was removed; precision = removals that
are one row of a planted duplicate pair (one per pair) over all removals; hard negatives merged = planted
below-threshold pairs of which a row was removed.

Both tools use 5-word shingles and the same LSH banding (the bands x rows prefsmith derives from the threshold,
18 x 6 for 0.8 / 128), one process each, reading a file and writing kept rows. prefsmith runs as its own
`prefsmith dedup` process, so its peak RSS (the VmHWM of that process: the dedup alone, not the corpus this
script holds) is measured; `--no-datatrove` skips datatrove (about 190 docs/s here: hours at 1M docs). Datatrove runs its four
stages (signatures, buckets, clustering, filter) with LocalPipelineExecutor in a temp directory; it removes
every LSH candidate without checking its similarity, prefsmith checks each candidate's exact Jaccard.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.hygiene.dedup import choose_banding, s_curve  # noqa: E402


# ------------------------------------------------------------------------------------------ corpus
def shingle_set(words, n: int) -> set:
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)} or {tuple(words)}


def true_jaccard(a: str, b: str, n: int) -> float:
    sa, sb = shingle_set(a.split(), n), shingle_set(b.split(), n)
    return len(sa & sb) / len(sa | sb)


def plant(words: list[int], lo: float, hi: float, draw, rng: np.random.Generator, n: int = 5,
          tries: int = 400) -> tuple[list[int], float] | None:
    """Edit `words` one random substitution/insertion/deletion at a time until the exact n-gram Jaccard with
    the original is in [lo, hi]; an edit that would go below `lo` is undone. None if `tries` edits fail."""
    orig = shingle_set(words, n)
    w = list(words)
    for _ in range(tries):
        trial = list(w)
        op, pos = int(rng.integers(3)), int(rng.integers(len(trial)))
        if op == 0:
            trial[pos] = draw()
        elif op == 1:
            trial.insert(pos, draw())
        elif len(trial) > 10:
            del trial[pos]
        s = shingle_set(trial, n)
        j = len(s & orig) / len(s | orig)
        if j < lo:
            continue
        w = trial
        if j <= hi:
            return w, j
    return None


def make_corpus(n_docs: int, near: float, far: float, threshold: float,
                seed: int) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """Returns ids, texts, source (index of the original for copies, -1 for originals) and the exact Jaccard
    of each copy with its original (NaN for originals)."""
    rng = np.random.default_rng(seed)
    # letters only: datatrove's default normalization maps digits to 0, which would merge numbered words
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = np.array(["".join(letters[(i // 26**k) % 26] for k in range(4)) for i in range(30_000)])
    p = 1.0 / np.arange(1, len(vocab) + 1)
    p /= p.sum()
    pool = iter(rng.choice(len(vocab), size=10_000_000, p=p).tolist())
    draw = lambda: next(pool)  # noqa: E731 - Zipf-distributed word ids, drawn in bulk
    n_near, n_far = int(n_docs * near), int(n_docs * far)
    n_orig = n_docs - n_near - n_far
    lengths = rng.integers(100, 301, n_orig)
    flat = rng.choice(len(vocab), size=int(lengths.sum()), p=p)
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    originals = [flat[bounds[i]:bounds[i + 1]].tolist() for i in range(n_orig)]
    docs = list(originals)
    source = [-1] * n_orig
    jac = [np.nan] * n_orig
    sources = iter(rng.permutation(n_orig).tolist())  # each original is copied at most once
    for k in range(n_near + n_far):
        target = threshold + 0.04 if k < n_near else threshold - 0.1
        made = None
        while made is None:
            src = next(sources)
            made = plant(originals[src], target - 0.01, target + 0.01, draw, rng)
        docs.append(made[0])
        source.append(src)
        jac.append(made[1])
    order = rng.permutation(len(docs))  # copies land anywhere, before or after their original
    texts = [" ".join(vocab[docs[i]]) for i in order]
    ids = [f"d{j}" for j in range(len(docs))]
    inv = np.empty(len(order), np.int64)
    inv[order] = np.arange(len(order))
    src_arr = np.array([inv[source[i]] if source[i] >= 0 else -1 for i in order])
    return ids, texts, src_arr, np.array([jac[i] for i in order])


def score(removed: set[str], ids: list[str], groups: dict[int, list[int]]) -> tuple[float, float, int, int, int]:
    pos = {x: i for i, x in enumerate(ids)}
    removed_idx = {pos[r] for r in removed}
    tp = 0
    for members in groups.values():
        tp += min(sum(1 for m in members if m in removed_idx), len(members) - 1)
    want = sum(len(m) - 1 for m in groups.values())
    fp = len(removed_idx) - tp
    fn = want - tp
    return tp / max(tp + fp, 1), tp / max(want, 1), tp, fp, fn


# ------------------------------------------------------------------------------------------ runners
def run_ours(src: Path, out: Path, threshold: float, num_perm: int, extra: list[str]
             ) -> tuple[float, set[str], tuple[int, int]]:
    """`prefsmith dedup` as a child process: (seconds, removed ids, (peak RSS, peak anonymous RSS) in bytes).

    The peaks are the child's own VmHWM and the highest RssAnon seen, polled every 20 ms (a forked child's
    `ru_maxrss` also counts the pages it shared with this process before its exec). RSS includes the
    memory-mapped signature files the clustering reads (file-backed pages the kernel can drop); RssAnon is
    the memory the process itself allocated."""
    cmd = [str(Path(sys.executable).parent / "prefsmith"), "dedup", "--input", str(src), "--output", str(out),
           "--field", "text", "--threshold", str(threshold), "--ngram", "5", "--num-perm", str(num_perm),
           "--overwrite", "--no-progress", *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    peak = peak_anon = 0
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            peak = max(peak, int(status.split("VmHWM:")[1].split()[0]) * 1024)
            peak_anon = max(peak_anon, int(status.split("RssAnon:")[1].split()[0]) * 1024)
        except (OSError, IndexError):  # exiting
            pass
        time.sleep(0.02)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"prefsmith dedup failed: {' '.join(cmd)}")
    removed = set()
    for f in sorted((out / "removed" / "data").glob("*.parquet")):
        removed.update(pq.read_table(f, columns=["id"]).column("id").to_pylist())
    return dt, removed, (peak, peak_anon)


def _patch_xxhash() -> None:
    """datatrove 0.10 passes str to xxhash, which xxhash >= 4 refuses; encode first (same hash values)."""
    import xxhash

    import datatrove.utils.hashes.xxhash as dx

    dx.xxhash64 = lambda d: xxhash.xxh64_intdigest(d.encode() if isinstance(d, str) else d)
    dx.xxhash32 = lambda d: xxhash.xxh32_intdigest(d.encode() if isinstance(d, str) else d)


def run_datatrove(src_jsonl: Path, work: Path, bands: int, rows: int) -> tuple[float, set[str]]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig

    _patch_xxhash()
    cfg = MinhashConfig(n_grams=5, num_buckets=bands, hashes_per_bucket=rows, seed=1,
                        hash_config=HashConfig(precision=64))
    reader = lambda: JsonlReader(str(src_jsonl.parent), glob_pattern=src_jsonl.name, text_key="text",  # noqa: E731
                                 id_key="id", compression=None)
    t0 = time.perf_counter()
    LocalPipelineExecutor([reader(), MinhashDedupSignature(str(work / "sigs"), config=cfg)], tasks=1, workers=1,
                          logging_dir=str(work / "logs1")).run()
    LocalPipelineExecutor([MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=cfg)],
                          tasks=cfg.num_buckets, workers=1, logging_dir=str(work / "logs2")).run()
    LocalPipelineExecutor([MinhashDedupCluster(str(work / "buckets"), str(work / "remove_ids"), config=cfg)],
                          tasks=1, workers=1, logging_dir=str(work / "logs3")).run()
    LocalPipelineExecutor([reader(), MinhashDedupFilter(str(work / "remove_ids"),
                                                        exclusion_writer=JsonlWriter(str(work / "removed"), compression=None)),
                           JsonlWriter(str(work / "kept"), compression=None)],
                          tasks=1, workers=1, logging_dir=str(work / "logs4")).run()
    dt = time.perf_counter() - t0
    removed = set()
    for f in (work / "removed").glob("*.jsonl"):
        for line in f.open():
            removed.add(json.loads(line)["id"])
    return dt, removed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--near", type=float, default=0.10, help="share of near-duplicate copies")
    ap.add_argument("--far", type=float, default=0.05, help="share of similar-but-distinct copies")
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--no-datatrove", action="store_true", help="run prefsmith only")
    ap.add_argument("--executor", default="local", help="prefsmith's --executor (local | ray)")
    ap.add_argument("--bucket-mb", default=None, help="prefsmith's --bucket-mb")
    args = ap.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="dedup-bench-"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    ids, texts, source, jac = make_corpus(args.docs, args.near, args.far, args.threshold, args.seed)
    copies = np.flatnonzero(source >= 0)
    groups = {int(source[i]): [int(source[i]), int(i)] for i in copies if jac[i] >= args.threshold}
    negatives = [(int(source[i]), int(i)) for i in copies if jac[i] < args.threshold]
    jn, jf = jac[[g[1] for g in groups.values()]], jac[[i for _, i in negatives]]
    print(f"corpus: {len(ids)} docs; {len(groups)} planted duplicate pairs, exact 5-gram Jaccard "
          f"{jn.min():.3f}-{jn.max():.3f} (mean {jn.mean():.3f}); {len(negatives)} hard negatives, "
          f"{jf.min():.3f}-{jf.max():.3f} (mean {jf.mean():.3f}); built in {time.perf_counter() - t0:.1f}s")
    table = pa.table({"id": ids, "text": texts})
    pq.write_table(table, work / "corpus.parquet", row_group_size=65536)  # as datasets ship (one 1M-row group would be read whole)
    if not args.no_datatrove:
        with open(work / "corpus.jsonl", "w") as f:
            for i, t in zip(ids, texts):
                f.write(json.dumps({"id": i, "text": t}) + "\n")
    del table, texts

    bands, rows = choose_banding(args.threshold, args.num_perm)
    curve = ", ".join(f"P({j})={v:.4f}" for j, v in s_curve(args.threshold, bands, rows).items())
    print(f"settings: 5-word shingles, threshold {args.threshold}, {args.num_perm} perms -> LSH {bands} bands x {rows} rows "
          f"(datatrove: num_buckets={bands}, hashes_per_bucket={rows}); "
          f"P(candidate): {curve}")

    extra = ["--executor", args.executor] + (["--bucket-mb", args.bucket_mb] if args.bucket_mb else [])
    t_ours, rem_ours, rss = run_ours(work / "corpus.parquet", work / "ours", args.threshold, args.num_perm, extra)
    manifest = json.loads((work / "ours" / "manifest.json").read_text())
    print(f"prefsmith dedup: peak RSS {rss[0] / 2**30:.2f} GiB (anonymous {rss[1] / 2**30:.2f} GiB); "
          f"clustering {manifest['clustering']}")
    results = {"prefsmith dedup": (t_ours, rem_ours)}
    if not args.no_datatrove:
        t_dt, rem_dt = run_datatrove(work / "corpus.jsonl", work / "datatrove", bands, rows)
        results["datatrove minhash"] = (t_dt, rem_dt)

    print(f"\n{'tool':<20} {'seconds':>8} {'docs/s':>9} {'removed':>8} {'recall@t+.04':>13} {'precision':>10} "
          f"{'negatives merged@t-.1':>22} {'FP':>6} {'FN':>6}")
    for name, (dt, removed) in results.items():
        p, r, tp, fp, fn = score(removed, ids, groups)
        pos = {x: i for i, x in enumerate(ids)}
        gone = {pos[x] for x in removed}
        merged = sum(1 for a, b in negatives if a in gone or b in gone)
        print(f"{name:<20} {dt:>8.1f} {len(ids) / dt:>9.0f} {len(removed):>8} {r:>13.4f} {p:>10.4f} "
              f"{merged:>9} of {len(negatives):<9} {fp:>6} {fn:>6}")
    if not args.no_datatrove:
        print(f"\nspeed ratio (prefsmith / datatrove docs/s): {t_dt / t_ours:.2f}x")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
