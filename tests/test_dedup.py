"""`prefsmith dedup` on planted duplicates: exact copies, case/whitespace/punctuation variants, near copies
(a few words changed in a long text), heavily edited and unrelated texts; keep rules, the cross-round index,
rerun, bad input."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.core import dataset as ds
from pipelines.cli import main
from pipelines.hygiene.dedup import DedupConfig, dedup
from pipelines.errors import UserError
from pipelines.hygiene.shingles import normalize

VOCAB = [f"{a}{b}{c}" for a in "bcdfgklmnprst" for b in "aeiou" for c in "lmnrstxz"]  # 520 made-up words


def doc(seed: int, n: int = 200) -> list[str]:
    return random.Random(seed).choices(VOCAB, k=n)


def edit(words: list[str], positions: list[int], seed: int) -> str:
    w = list(words)
    rng = random.Random(seed)
    for p in positions:
        w[p] = "zz" + rng.choice(VOCAB)  # a word that never occurs in the originals
    return " ".join(w)


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def read(directory: Path) -> list[dict]:
    return ds.load_rows(str(directory)) if ds.shard_files(directory) else []


def planted() -> list[dict]:
    o = {i: doc(i) for i in range(8)}
    rows = [{"id": f"orig{i}", "prompt": " ".join(o[i]), "extra": i} for i in range(8)]
    rows += [
        {"id": "copy0", "prompt": " ".join(o[0]), "extra": 100},  # exact copy
        {"id": "case1", "prompt": "  " + " ,".join(o[1]).upper() + "!!\n", "extra": 101},  # case/space/punct
        {"id": "near2a", "prompt": edit(o[2], [20, 120], 1), "extra": 102},  # 2 words of 200 changed
        {"id": "near2b", "prompt": edit(o[2], [50, 150], 2), "extra": 103},
        {"id": "near3", "prompt": edit(o[3], [100], 3) + " " + VOCAB[7], "extra": 104},  # 1 changed + 1 added
        {"id": "heavy4", "prompt": edit(o[4], list(range(0, 200, 3)), 4), "extra": 105},  # a third changed: kept
        {"id": "other", "prompt": " ".join(doc(99)), "extra": 106},  # unrelated
    ]
    return rows


def test_normalization_is_documented_behaviour():
    assert normalize("  Hello,\tWORLD!!  ｆｕｌｌ-width  ") == "hello world full width"
    assert normalize("x+y = 2^3") == "x+y = 2^3"  # symbols are kept


def test_planted_duplicates_exact_counts(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", planted())
    out = tmp_path / "out"
    assert main(["dedup", "--input", src, "--output", str(out), "--no-progress"]) == 0
    kept = read(out)
    removed = {r["id"]: r for r in read(out / "removed")}
    assert [r["id"] for r in kept] == [f"orig{i}" for i in range(8)] + ["heavy4", "other"]
    assert kept[0]["extra"] == 0 and set(kept[0]) == {"id", "prompt", "extra"}  # columns untouched
    assert {k: (r["duplicate_of"], r["dup_kind"]) for k, r in removed.items()} == {
        "copy0": ("orig0", "exact"), "case1": ("orig1", "exact"), "near2a": ("orig2", "near"),
        "near2b": ("orig2", "near"), "near3": ("orig3", "near")}
    assert removed["copy0"]["jaccard"] == 1.0 and removed["case1"]["jaccard"] == 1.0
    for k in ("near2a", "near2b", "near3"):
        assert 0.8 <= removed[k]["jaccard"] < 1.0
    assert removed["near2a"]["extra"] == 102  # removed rows keep all their columns
    m = ds.read_manifest(out)
    assert m["complete"] and m["rows_in"] == 15 and m["rows_out"] == 10
    assert m["counts"] == {"kept": 10, "removed": 5, "removed_exact": 2, "removed_near": 3, "removed_by_index": 0}
    # banding derived from the threshold: P(candidate) >= 0.995 at J = 0.8 within 128 permutations
    assert m["lsh"] == {"bands": 18, "rows_per_band": 6, "permutations": 108,
                        "p_candidate": {"0.70": 0.89491, "0.75": 0.97063, "0.80": 0.9958, "0.84": 0.99959}}


def test_threshold_and_ngram_change_what_is_near(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", planted())
    # at 0.95 the 2-word edits (true 5-gram Jaccard ~0.9) are no longer duplicates; exact ones still are
    r = dedup(src, str(tmp_path / "strict"), DedupConfig(threshold=0.95), progress=False)
    assert (r.removed_exact, r.removed_near) == (2, 0)
    # with 1-word shingles (a bag of words) a third of the words changed is still ~0.51 similar (unrelated: ~0.2)
    r = dedup(src, str(tmp_path / "loose"), DedupConfig(threshold=0.4, ngram=1), progress=False)
    assert (r.removed_exact, r.removed_near) == (2, 4)
    assert "heavy4" in {x["id"] for x in read(tmp_path / "loose" / "removed")}


def test_keep_best_reward(tmp_path):
    a, b, c = doc(10), doc(11), doc(12)
    rows = [
        {"id": "a0", "prompt": " ".join(a), "reward": 0.1},
        {"id": "a1", "prompt": edit(a, [5], 1), "reward": 0.9},
        {"id": "a2", "prompt": " ".join(a), "reward": 0.9},  # tie with a1: the earlier (a1) wins
        {"id": "a3", "prompt": edit(a, [90], 2), "reward": None},
        {"id": "b0", "prompt": " ".join(b), "reward": None},
        {"id": "b1", "prompt": " ".join(b).upper(), "reward": None},  # all null: the earliest
        {"id": "c0", "prompt": " ".join(c), "reward": None},
        {"id": "c1", "prompt": edit(c, [7], 3), "reward": -1.0},  # any reward beats null
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out"
    assert main(["dedup", "--input", src, "--output", str(out), "--keep", "best-reward", "--no-progress"]) == 0
    assert [r["id"] for r in read(out)] == ["a1", "b0", "c1"]
    removed = {r["id"]: (r["duplicate_of"], r["dup_kind"]) for r in read(out / "removed")}
    assert removed == {"a0": ("a1", "near"), "a2": ("a1", "near"), "a3": ("a1", "near"), "b1": ("b0", "exact"),
                       "c0": ("c1", "near")}


def test_cross_round_index(tmp_path):
    o = {i: doc(100 + i) for i in range(6)}
    round1 = [{"id": f"r1-{i}", "prompt": " ".join(o[i])} for i in range(4)] + \
             [{"id": "r1-dup", "prompt": " ".join(o[0])}]
    # round 1 as a Parquet dataset directory, the streamed input path
    ds.write_dataset(round1, tmp_path / "round1")
    index = tmp_path / "index"
    r1 = dedup(str(tmp_path / "round1"), str(tmp_path / "out1"), index=str(index), progress=False)
    assert (r1.rows_out, r1.removed_exact, r1.removed_by_index) == (4, 1, 0)
    round2 = [
        {"id": "r2-copy1", "prompt": " ".join(o[1]).upper()},  # exact dup of round 1
        {"id": "r2-near2", "prompt": edit(o[2], [30, 170], 5)},  # near dup of round 1
        {"id": "r2-new4", "prompt": " ".join(o[4])},
        {"id": "r2-new4b", "prompt": edit(o[4], [60], 6)},  # near dup within round 2
        {"id": "r2-new5", "prompt": " ".join(o[5])},
    ]
    src2 = write_jsonl(tmp_path / "round2.jsonl", round2)
    out2 = tmp_path / "out2"
    assert main(["dedup", "--input", src2, "--output", str(out2), "--index", str(index), "--no-progress"]) == 0
    assert [r["id"] for r in read(out2)] == ["r2-new4", "r2-new5"]
    removed = {r["id"]: (r["duplicate_of"], r["dup_kind"]) for r in read(out2 / "removed")}
    assert removed == {"r2-copy1": ("r1-1", "exact"), "r2-near2": ("r1-2", "near"), "r2-new4b": ("r2-new4", "near")}
    assert ds.read_manifest(out2)["counts"]["removed_by_index"] == 2
    meta = json.loads((index / "index.json").read_text())
    assert [r["rows"] for r in meta["rounds"]] == [4, 2]
    # rerunning round 2 is a no-op and leaves the index alone
    assert main(["dedup", "--input", src2, "--output", str(out2), "--index", str(index), "--no-progress"]) == 0
    assert [r["rows"] for r in json.loads((index / "index.json").read_text())["rounds"]] == [4, 2]
    # round 3 sees round 2's kept rows too
    src3 = write_jsonl(tmp_path / "round3.jsonl", [{"id": "r3-a", "prompt": edit(o[5], [3], 7)},
                                                    {"id": "r3-b", "prompt": " ".join(o[0])},
                                                    {"id": "r3-c", "prompt": " ".join(doc(777))}])
    r3 = dedup(src3, str(tmp_path / "out3"), index=str(index), progress=False)
    assert (r3.rows_out, r3.removed_by_index) == (1, 2)
    assert {r["id"]: r["duplicate_of"] for r in read(tmp_path / "out3" / "removed")} == {"r3-a": "r2-new5", "r3-b": "r1-0"}
    # an index built with other settings is refused
    with pytest.raises(UserError, match="other settings"):
        dedup(src3, str(tmp_path / "out4"), DedupConfig(ngram=3), index=str(index), progress=False)


def test_rerun_is_noop_and_changed_config_refuses(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", planted())
    out = tmp_path / "out"
    assert main(["dedup", "--input", src, "--output", str(out), "--no-progress"]) == 0
    before = {p.name: p.stat().st_mtime_ns for p in (out / "data").iterdir()}
    capsys.readouterr()
    assert main(["dedup", "--input", src, "--output", str(out), "--no-progress"]) == 0
    assert "nothing to do" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in (out / "data").iterdir()} == before
    assert main(["dedup", "--input", src, "--output", str(out), "--threshold", "0.9", "--no-progress"]) == 2
    assert "threshold: 0.8 -> 0.9" in capsys.readouterr().err
    assert main(["dedup", "--input", src, "--output", str(out), "--threshold", "0.9", "--overwrite", "--no-progress"]) == 0
    assert ds.read_manifest(out)["config"]["threshold"] == 0.9


def test_small_batches_and_shards_give_the_same_rows(tmp_path):
    rows = planted()
    ds.write_dataset(rows, tmp_path / "in")
    big = dedup(str(tmp_path / "in"), str(tmp_path / "a"), progress=False)
    small = dedup(str(tmp_path / "in"), str(tmp_path / "b"), DedupConfig(batch_rows=3, shard_rows=4), progress=False)
    assert [r["id"] for r in read(tmp_path / "a")] == [r["id"] for r in read(tmp_path / "b")]
    assert (big.removed_exact, big.removed_near) == (small.removed_exact, small.removed_near) == (2, 3)
    # batches of 3 rows keep 3, 3, 2, 0, 2 rows; a shard is written once it holds >= 4 rows
    assert [pq.read_metadata(f).num_rows for f in ds.shard_files(tmp_path / "b")] == [6, 4]
    import datasets

    assert datasets.load_dataset("parquet", data_dir=str(tmp_path / "b" / "data"), split="train").num_rows == 10


def test_chat_message_field_and_row_ids(tmp_path):
    a = doc(55)
    rows = [
        {"messages": [{"role": "user", "content": " ".join(a[:100])}, {"role": "assistant", "content": " ".join(a[100:])}]},
        {"messages": [{"role": "user", "content": " ".join(a[:100]).upper()}, {"role": "assistant", "content": " ".join(a[100:])}]},
        {"messages": [{"role": "user", "content": " ".join(doc(56))}]},
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    r = dedup(src, str(tmp_path / "out"), DedupConfig(field="messages"), progress=False)
    assert (r.rows_out, r.removed_exact) == (2, 1)
    assert [(x["duplicate_of"], x["dup_kind"]) for x in read(tmp_path / "out" / "removed")] == [("0", "exact")]


def test_bad_input_clear_errors(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", planted())
    assert main(["dedup", "--input", src, "--output", str(tmp_path / "o"), "--field", "completion", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "in.jsonl" in err and "'completion'" in err and "found id, prompt, extra" in err
    assert main(["dedup", "--input", src, "--output", str(tmp_path / "o"), "--keep", "best-reward", "--no-progress"]) == 2
    assert "needs a 'reward' column" in capsys.readouterr().err
    pq.write_table(pa.table({"id": ["a", "b"], "prompt": ["x y z", None]}), tmp_path / "nulls.parquet")
    assert main(["dedup", "--input", str(tmp_path / "nulls.parquet"), "--output", str(tmp_path / "o2"), "--no-progress"]) == 2
    assert "nulls.parquet: row 1: column 'prompt' is null" in capsys.readouterr().err
    pq.write_table(pa.table({"id": ["a"], "prompt": [3]}), tmp_path / "ints.parquet")
    assert main(["dedup", "--input", str(tmp_path / "ints.parquet"), "--output", str(tmp_path / "o3"), "--no-progress"]) == 2
    assert "column 'prompt' has type int64" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ the threshold promise
def shingle_set(text: str, n: int = 5) -> set[tuple[str, ...]]:
    w = normalize(text).split()
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def true_jaccard(a: str, b: str) -> float:
    sa, sb = shingle_set(a), shingle_set(b)
    return len(sa & sb) / len(sa | sb)


def planted_copy(words: list[str], lo: float, hi: float, rng: random.Random) -> str:
    """Substitute words until the exact 5-gram Jaccard with the original is in [lo, hi] (undo overshoots)."""
    grams = lambda w: {tuple(w[i:i + 5]) for i in range(len(w) - 4)}  # noqa: E731 - words are already normalized
    orig, w = grams(words), list(words)
    while True:
        trial = list(w)
        trial[rng.randrange(len(trial))] = "zz" + rng.choice(VOCAB)
        s = grams(trial)
        j = len(s & orig) / len(s | orig)
        if j >= lo:
            w = trial
            if j <= hi:
                return " ".join(w)


def test_banding_keeps_the_recall_promise_for_any_threshold():
    from pipelines.hygiene.dedup import RECALL_AT_THRESHOLD, choose_banding, p_candidate

    for t in (0.3, 0.5, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0):
        b, r = choose_banding(t, 128)
        assert b * r <= 128 and p_candidate(t, b, r) >= RECALL_AT_THRESHOLD
        # no banding with more rows per band fits: the chosen one is the steepest S-curve within the budget
        assert all(p_candidate(t, 128 // r2, r2) < RECALL_AT_THRESHOLD for r2 in range(r + 1, 129))
    assert choose_banding(0.8, 128) == (18, 6)
    assert (choose_banding(0.7, 128), choose_banding(0.9, 128), choose_banding(0.8, 256)) == ((20, 4), (11, 9), (29, 8))
    with pytest.raises(UserError, match="--num-perm 263"):
        choose_banding(0.02, 128)


@pytest.mark.parametrize("t", [0.7, 0.8, 0.9])
def test_planted_pairs_just_above_and_below_the_threshold(tmp_path, t):
    """200-word documents; 150 copies at exact Jaccard t+0.03..t+0.05 must all go, 150 at t-0.11..t-0.09
    must all stay (the exact check makes the second a guarantee, the banding makes the first ~99.9%)."""
    rng = random.Random(int(t * 100))
    rows, dup_ids, neg_ids = [], set(), set()
    for i in range(300):
        words = rng.choices(VOCAB, k=200)
        near = i < 150
        lo, hi = (t + 0.03, t + 0.05) if near else (t - 0.11, t - 0.09)
        rows.append({"id": f"o{i}", "prompt": " ".join(words)})
        rows.append({"id": f"c{i}", "prompt": planted_copy(words, lo, hi, rng)})
        (dup_ids if near else neg_ids).add(f"c{i}")
    rng.shuffle(rows)
    r = dedup(write_jsonl(tmp_path / "in.jsonl", rows), str(tmp_path / "out"), DedupConfig(threshold=t), progress=False)
    removed = {x["id"]: x for x in read(tmp_path / "out" / "removed")}
    by_id = {x["id"]: x["prompt"] for x in rows}
    # one row of each planted duplicate pair is gone (the later one), none of a hard-negative pair
    gone = {k if k.startswith("c") else "c" + k[1:] for k in removed}
    assert gone == dup_ids and r.removed_near == 150
    for k, x in removed.items():
        assert x["jaccard"] == pytest.approx(true_jaccard(by_id[k], by_id[x["duplicate_of"]]), abs=1e-12)
        assert x["jaccard"] >= t


def test_chains_keep_one_row_per_cluster_and_drop_only_duplicates_of_kept_rows(tmp_path):
    a = doc(31)
    b_ = edit(a, [20, 120], 1).split()
    c = edit(b_, [50, 80, 170], 2).split()  # 3 more edits: a duplicate of b, not of a
    texts = [" ".join(a), " ".join(b_), " ".join(c)]
    assert true_jaccard(texts[0], texts[1]) >= 0.8 and true_jaccard(texts[1], texts[2]) >= 0.8
    assert true_jaccard(texts[0], texts[2]) < 0.8
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": k, "prompt": x} for k, x in zip("abc", texts)])
    dedup(src, str(tmp_path / "out"), progress=False)
    # a is kept, b goes as a's duplicate; c stays: b was removed, and c is not a duplicate of any kept row
    assert [x["id"] for x in read(tmp_path / "out")] == ["a", "c"]
    assert [(x["id"], x["duplicate_of"]) for x in read(tmp_path / "out" / "removed")] == [("b", "a")]


# ------------------------------------------------------------------------------------------ resume after SIGKILL
def test_killed_cli_run_resumes_from_finished_signature_shards(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    rng = random.Random(5)
    rows = []
    for i in range(8000):
        if i % 10 == 9:  # a near copy of an earlier row
            words = rows[rng.randrange(i)]["prompt"].split()
            words[rng.randrange(len(words))] = "zz" + rng.choice(VOCAB)
            rows.append({"id": f"r{i}", "prompt": " ".join(words)})
        else:
            rows.append({"id": f"r{i}", "prompt": " ".join(rng.choices(VOCAB, k=100))})
    ds.write_dataset(rows, tmp_path / "in")
    prefsmith = Path(sys.executable).parent / "prefsmith"

    def cmd(out: Path) -> list[str]:
        return [str(prefsmith), "dedup", "--input", str(tmp_path / "in"), "--output", str(out), "--batch-rows", "200",
                "--no-progress"]

    ref = tmp_path / "ref"
    subprocess.run(cmd(ref), check=True, capture_output=True)
    out = tmp_path / "out"
    proc = subprocess.Popen(cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (out / ".dedup" / "sig-00001.done").exists():
        assert proc.poll() is None and time.time() < deadline, "dedup ended before it could be killed"
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not ds.read_manifest(out)["complete"]
    done = len(list((out / ".dedup").glob("sig-*.done")))
    assert 2 <= done < 40
    rerun = subprocess.run(cmd(out), check=True, capture_output=True, text=True)
    assert f"resumed {done} of 40 signature shards" in rerun.stderr
    m = ds.read_manifest(out)
    assert m["complete"] and m["resume"] == {"signature_shards": 40, "resumed": done}
    assert read(out) == read(ref) and read(out / "removed") == read(ref / "removed")
    assert len(read(out / "removed")) >= 700 and not (out / ".dedup").exists()  # the work folder is cleaned up
