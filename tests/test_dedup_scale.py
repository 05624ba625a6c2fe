"""`prefsmith dedup` run in three phases (signatures per shard through an executor, clustering from disk
buckets, the filter): the same rows as the one-pass rule however it is cut into shards and buckets, the same
output on a real local Ray as locally, and a run SIGKILLed after its clustering resumes to the same output."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from pipelines.cli import main
from pipelines.core import dataset as ds
from pipelines.hygiene import shingles as tx
from pipelines.hygiene.dedup import (DedupConfig, band_keys, bucket_count, choose_banding, dedup, exact_jaccard,
                                     permutations, shingle_sets, signatures)
from test_dedup import VOCAB, read

ROOT = Path(__file__).resolve().parents[1]


def families(seed: int, n_families: int = 60, words: int = 120) -> list[dict]:
    """Families of near copies: each member is a previous member with 1-3 words changed, so a family holds
    chains (A~B, B~C, A-C below the threshold); some originals also come back upper-cased (exact copies)."""
    rng = random.Random(seed)
    texts = []
    for f in range(n_families):
        fam = [rng.choices(VOCAB, k=words)]
        for _ in range(rng.randrange(1, 9)):
            w = list(rng.choice(fam))
            for _ in range(rng.randrange(1, 4)):
                w[rng.randrange(len(w))] = "zz" + rng.choice(VOCAB)
            fam.append(w)
        texts += [" ".join(w) for w in fam]
        if f % 5 == 0:
            texts.append(" ".join(fam[0]).upper())
    rng.shuffle(texts)
    return [{"id": f"t{i}", "prompt": t, "reward": float(rng.randrange(5)) if i % 7 else None}
            for i, t in enumerate(texts)]


def one_pass(texts: list[str], t: float = 0.8) -> tuple[list[int], list[float]]:
    """The rule as the in-memory implementation ran it: rows in order against LSH tables of every
    representative so far. Returns each row's representative and the exact Jaccard to it."""
    bands, r = choose_banding(t, 128)
    norm = tx.normalize_array(pa.array(texts, pa.large_string()))
    sh = tx.shingles(tx.words_array(norm), 5)
    keys = band_keys(signatures(sh, *permutations(bands * r, 1)), bands, r).tolist()
    hashes, offsets = shingle_sets(sh)
    sets = [hashes[offsets[i]:offsets[i + 1]] for i in range(len(texts))]
    tables: list[dict[int, list[int]]] = [{} for _ in range(bands)]
    reps: dict[int, int] = {}
    rep, jac = [], []
    for g, h in enumerate(tx.text_hashes(norm).tolist()):
        if h in reps:
            rep.append(reps[h])
            jac.append(1.0)
            continue
        cands = {c for table, k in zip(tables, keys[g]) for c in table.get(k, [])}
        best, best_j = None, -1.0
        for c in sorted(cands):
            j = exact_jaccard(sets[c], sets[g])
            if j >= t and j > best_j:
                best, best_j = c, j
        if best is None:
            reps[h] = g
            for table, k in zip(tables, keys[g]):
                table.setdefault(k, []).append(g)
            best, best_j = g, 1.0
        rep.append(best)
        jac.append(best_j)
    return rep, jac


def components(texts: list[str], t: float = 0.8) -> int:
    """Groups that union-find over every pair at or above the threshold would make (all pairs, Python sets)."""
    sets = []
    for x in texts:
        w = tx.normalize(x).split()
        sets.append({tuple(w[i:i + 5]) for i in range(len(w) - 4)})
    parent = list(range(len(texts)))

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for j in range(len(texts)):
        for i in range(j):
            if len(sets[i] & sets[j]) >= t * len(sets[i] | sets[j]):
                parent[max(find(i), find(j))] = min(find(i), find(j))
    return len({find(i) for i in range(len(texts))})


def outcome(out: Path) -> tuple[list[str], list[tuple]]:
    return ([r["id"] for r in read(out)],
            [(r["id"], r["duplicate_of"], r["dup_kind"], r["jaccard"]) for r in read(out / "removed")])


def test_same_rows_as_the_one_pass_rule_for_any_shards_and_buckets(tmp_path):
    rows = families(3)
    texts = [r["prompt"] for r in rows]
    rep, jac = one_pass(texts)
    want_kept = [rows[g]["id"] for g in range(len(rows)) if rep[g] == g]
    want_removed = [(rows[g]["id"], rows[rep[g]]["id"], jac[g]) for g in range(len(rows)) if rep[g] != g]
    # chains are present: union-find over all duplicate pairs would keep fewer rows
    assert components(texts) < len(want_kept) < len(rows)
    ds.write_dataset(rows, tmp_path / "in")
    for name, cfg in {"one": DedupConfig(), "many": DedupConfig(batch_rows=17, bucket_mb=0.01)}.items():
        r = dedup(str(tmp_path / "in"), str(tmp_path / name), cfg, progress=False)
        kept, removed = outcome(tmp_path / name)
        assert kept == want_kept
        assert [(i, d, pytest.approx(j, abs=1e-12)) for i, d, _, j in removed] == want_removed
        c = r.manifest["clustering"]
        assert c["buckets"] == bucket_count(c["bucket_entries"], cfg.bucket_mb * 2**20)
    assert ds.read_manifest(tmp_path / "one")["clustering"]["buckets"] == 1
    assert ds.read_manifest(tmp_path / "many")["clustering"]["buckets"] == 10  # 332 texts x 18 bands x 16 B, 10 KiB each
    assert ds.read_manifest(tmp_path / "many")["resume"]["signature_shards"] == 21


def test_bucket_count_keeps_one_bucket_under_the_budget():
    assert bucket_count(0, 64 * 2**20) == 1
    assert bucket_count(4 * 2**20, 64 * 2**20) == 1  # 4M entries x 16 B = 64 MiB: one bucket
    assert bucket_count(4 * 2**20 + 1, 64 * 2**20) == 2
    assert bucket_count(18_000_000, 64 * 2**20) == 5  # 1M rows x 18 bands
    assert bucket_count(10**12, 1) == 4096  # capped: beyond it a bucket outgrows the budget


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}})
    yield ray
    ray.shutdown()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_ray_executor_gives_the_local_output(tmp_path, local_ray):
    rows = families(4, n_families=25)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(__import__("json").dumps(r) + "\n" for r in rows))
    ds.write_dataset(families(5, n_families=10) + [dict(r, id=f"old-{r['id']}") for r in rows[::9]], tmp_path / "round1")
    for kind in ("local", "ray"):  # the index holds an earlier round, so rows matching it go too
        index = tmp_path / f"index-{kind}"
        assert main(["dedup", "--input", str(tmp_path / "round1"), "--output", str(tmp_path / f"r1-{kind}"),
                     "--index", str(index), "--no-progress"]) == 0
        assert main(["dedup", "--input", str(src), "--output", str(tmp_path / kind), "--index", str(index),
                     "--keep", "best-reward", "--batch-rows", "16", "--no-progress", "--executor", kind,
                     "--ray-workers", "2"]) == 0
    local, remote = ds.read_manifest(tmp_path / "local"), ds.read_manifest(tmp_path / "ray")
    assert (local["executor"], remote["executor"]) == ("local", "ray")
    assert outcome(tmp_path / "ray") == outcome(tmp_path / "local")
    assert read(tmp_path / "ray") == read(tmp_path / "local")  # every column, in order
    assert remote["counts"] == local["counts"] and local["counts"]["removed"] > 20
    assert local["counts"]["removed_by_index"] >= 14
    assert remote["resume"] == local["resume"] == {"signature_shards": 8, "resumed": 0}
    for f in sorted((tmp_path / "index-local").glob("round-*")):  # the same rounds went into each index
        g = tmp_path / "index-ray" / f.name
        if f.suffix == ".parquet":
            assert ds.load_rows(f) == ds.load_rows(g)
        else:
            assert f.read_bytes() == g.read_bytes()


def test_killed_after_clustering_resumes_from_the_clusters(tmp_path):
    rng = random.Random(11)
    rows = []
    for i in range(6000):
        if i % 4 == 3:  # a near copy of an earlier row
            words = rows[rng.randrange(i)]["prompt"].split()
            words[rng.randrange(len(words))] = "zz" + rng.choice(VOCAB)
            rows.append({"id": f"r{i}", "prompt": " ".join(words)})
        else:
            rows.append({"id": f"r{i}", "prompt": " ".join(rng.choices(VOCAB, k=80))})
    ds.write_dataset(rows, tmp_path / "in")
    prefsmith = Path(sys.executable).parent / "prefsmith"

    def cmd(out: Path) -> list[str]:
        return [str(prefsmith), "dedup", "--input", str(tmp_path / "in"), "--output", str(out), "--batch-rows", "500",
                "--bucket-mb", "0.1", "--no-progress"]

    subprocess.run(cmd(tmp_path / "ref"), check=True, capture_output=True)
    out = tmp_path / "out"
    proc = subprocess.Popen(cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (out / ".dedup" / "clusters.json").exists():
        assert proc.poll() is None and time.time() < deadline, "dedup ended before it could be killed"
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not ds.read_manifest(out)["complete"]
    rerun = subprocess.run(cmd(out), check=True, capture_output=True, text=True)
    assert "resumed 12 of 12 signature shards" in rerun.stderr and "resumed the clusters" in rerun.stderr
    m = ds.read_manifest(out)
    assert m["complete"] and m["clustering"]["resumed"] and m["clustering"]["buckets"] == 17  # 6000 rows x 18 bands x 16 B in 0.1 MiB buckets
    assert read(out) == read(tmp_path / "ref") and read(out / "removed") == read(tmp_path / "ref" / "removed")
    assert len(read(out / "removed")) == 1256 and not (out / ".dedup").exists()
