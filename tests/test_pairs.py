"""`prefsmith pairs`: pair rules on real labeled Parquet/JSONL inputs, through the CLI and the Python API."""
import json

import pyarrow.parquet as pq
import pytest

from pipelines.core import dataset as ds
from pipelines.cli import main
from pipelines.errors import UserError
from pipelines.builders.similarity import edit_distance, levenshtein
from pipelines.builders.pairs import PairsConfig, build_pairs


def rollout(pid, idx, completion, reward, reason=None, prompt=None):
    """One labeled rollout row in the project's column conventions."""
    return {
        "id": f"{pid}-{idx}", "prompt_id": pid, "sample_idx": idx,
        "prompt": prompt if prompt is not None else f"Question {pid}?", "answer": f"ans-{pid}",
        "completion": completion, "finish_reason": "stop",
        "rewards": {"math": reward}, "reward": reward,
        "reward_info": {"math": reason or ("correct" if reward == 1.0 else "ok")},
    }


def labeled_rows():
    return [
        # p0: two correct, two wrong -> best-worst picks the earliest of each
        rollout("p0", 0, "A is 4", 1.0), rollout("p0", 1, "A is 5", 0.0),
        rollout("p0", 2, "A = 4", 1.0), rollout("p0", 3, "A is 6", 0.0),
        # p1: all tied
        rollout("p1", 0, "x", 1.0), rollout("p1", 1, "y", 1.0), rollout("p1", 2, "z", 1.0),
        # p2: one valid sample, two nulls
        rollout("p2", 0, "q", None, "unparseable gold"), rollout("p2", 1, "r", 0.5),
        rollout("p2", 2, "s", None, "unparseable gold"),
        # p3: all null
        rollout("p3", 0, "t", None, "timeout"), rollout("p3", 1, "u", None, "timeout"),
        # p4: best and first-worst are the same text after whitespace normalization
        rollout("p4", 0, "x = 4", 1.0), rollout("p4", 1, "x  =  4\n", 0.0), rollout("p4", 2, "x = 5", 0.0),
        # p5: continuous rewards (exact binary fractions)
        rollout("p5", 0, "a", 0.25), rollout("p5", 1, "bb", 1.0), rollout("p5", 2, "ccc", 0.5),
        rollout("p5", 3, "dddd", 0.875),
        # p6: near-identical best/worst
        rollout("p6", 0, "The answer is 42.", 1.0), rollout("p6", 1, "The answer is 41.", 0.0),
        rollout("p6", 2, "I do not know how to solve this one", 0.0),
    ]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def labeled(tmp_path):
    return write_jsonl(tmp_path / "labeled.jsonl", labeled_rows())


def read(out):
    return ds.load_rows(out)


def ids(rows):
    return [(r["chosen_id"], r["rejected_id"]) for r in rows]


def test_best_worst_cli_pairs_ties_nulls_and_summary(labeled, tmp_path, capsys):
    out = tmp_path / "pairs"
    assert main(["pairs", "--input", str(labeled), "--output", str(out)]) == 0
    rows = read(out)
    assert ids(rows) == [("p0-0", "p0-1"), ("p4-0", "p4-2"), ("p5-1", "p5-0"), ("p6-0", "p6-1")]
    first = rows[0]
    assert first["prompt"] == "Question p0?" and first["chosen"] == "A is 4" and first["rejected"] == "A is 5"
    assert (first["score_chosen"], first["score_rejected"]) == (1.0, 0.0)
    assert first["answer"] == "ans-p0" and first["prompt_id"] == "p0"
    assert "completion" not in first and "reward" not in first  # per-sample columns are not carried
    manifest = ds.read_manifest(out)
    s = manifest["summary"]
    assert s["prompts"] == 7 and s["prompts_with_pairs"] == 4 and s["pairs"] == 4
    assert s["prompts_without_pair"] == {"all_null": 1, "all_tied": 1, "single_valid_sample": 1}
    assert s["null_rows_skipped"] == 4
    assert s["null_reasons"] == {"math: timeout": 2, "math: unparseable gold": 2}
    assert s["pairs_skipped_identical"] == 1  # p4's (0, 1) pair
    printed = capsys.readouterr().out
    assert "pairs: 4" in printed and "no pair (all_tied): 1 prompts" in printed
    skipped = read(out / "skipped")
    assert sorted(r["id"] for r in skipped) == ["p2-0", "p2-2", "p3-0", "p3-1"]
    # datasets can load the output directly
    import datasets
    assert datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train").num_rows == 4


def test_all_strategy_margin_and_cap(labeled, tmp_path):
    rows = read(_run(labeled, tmp_path / "all", PairsConfig(strategy="all")))
    assert ids(r for r in rows if r["prompt_id"] == "p0") == [
        ("p0-0", "p0-1"), ("p0-0", "p0-3"), ("p0-2", "p0-1"), ("p0-2", "p0-3")]
    assert ids(r for r in rows if r["prompt_id"] == "p4") == [("p4-0", "p4-2")]  # identical texts never pair
    assert len([r for r in rows if r["prompt_id"] == "p5"]) == 6
    assert all(r["score_chosen"] > r["score_rejected"] for r in rows)
    assert all(r["chosen"].split() != r["rejected"].split() for r in rows)

    rows = read(_run(labeled, tmp_path / "margin", PairsConfig(strategy="all", min_margin=0.25)))
    # p5 margins: .75 .625 .5 .375 kept; .25 (not > .25) and .125 dropped; largest margin first
    assert ids(r for r in rows if r["prompt_id"] == "p5") == [
        ("p5-1", "p5-0"), ("p5-3", "p5-0"), ("p5-1", "p5-2"), ("p5-3", "p5-2")]

    rows = read(_run(labeled, tmp_path / "cap", PairsConfig(strategy="all", min_margin=0.25, max_per_prompt=2)))
    assert ids(r for r in rows if r["prompt_id"] == "p5") == [("p5-1", "p5-0"), ("p5-3", "p5-0")]
    assert ids(r for r in rows if r["prompt_id"] == "p0") == [("p0-0", "p0-1"), ("p0-0", "p0-3")]


def test_min_margin_above_all_differences_counts_prompts(labeled, tmp_path):
    out = _run(labeled, tmp_path / "m", PairsConfig(min_margin=0.8))
    s = ds.read_manifest(out)["summary"]
    # p0, p4, p6 have margin 1.0; p5's largest margin is .75
    assert ids(read(out)) == [("p0-0", "p0-1"), ("p4-0", "p4-2"), ("p6-0", "p6-1")]
    assert s["prompts_without_pair"]["below_margin"] == 1


def test_near_identical_filter(labeled, tmp_path):
    assert levenshtein("The answer is 42.", "The answer is 41.") == 1
    assert edit_distance("The answer is 42.", "The answer is 41.") == pytest.approx(1 / 17)
    out = tmp_path / "near"
    assert main(["pairs", "--input", str(labeled), "--output", str(out), "--min-edit-distance", "0.1"]) == 0
    by_prompt = {r["prompt_id"]: (r["chosen_id"], r["rejected_id"]) for r in read(out)}
    assert by_prompt["p6"] == ("p6-0", "p6-2")
    assert ds.read_manifest(out)["summary"]["pairs_skipped_similar"] == 1
    # --max-similarity 0.9 is the same filter
    out2 = tmp_path / "near2"
    assert main(["pairs", "--input", str(labeled), "--output", str(out2), "--max-similarity", "0.9"]) == 0
    assert ids(read(out2)) == ids(read(out))
    assert ds.read_manifest(out2)["config"]["min_edit_distance"] == pytest.approx(0.1)


def test_random_strategy_is_seeded(tmp_path):
    rows = [rollout("p0", i, f"completion number {i}", float(i % 4) / 4) for i in range(8)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    a = read(_run(src, tmp_path / "a", PairsConfig(strategy="random", seed=1, max_per_prompt=3)))
    b = read(_run(src, tmp_path / "b", PairsConfig(strategy="random", seed=1, max_per_prompt=3)))
    c = read(_run(src, tmp_path / "c", PairsConfig(strategy="random", seed=2, max_per_prompt=3)))
    assert ids(a) == ids(b) and len(a) == 3 and len(set(ids(a))) == 3
    assert ids(a) != ids(c)
    assert all(r["score_chosen"] > r["score_rejected"] for r in a + c)
    one = read(_run(src, tmp_path / "d", PairsConfig(strategy="random", seed=1)))
    assert len(one) == 1  # default: one random pair per prompt


def test_chat_prompts_give_trl_conversational_pairs(tmp_path):
    from trl.data_utils import is_conversational

    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    src = tmp_path / "chat.parquet"
    pq.write_table(ds.rows_to_table([rollout("c0", 0, "4", 1.0, prompt=msgs),
                                     rollout("c0", 1, "5", 0.0, prompt=msgs)]), src)
    row = read(_run(src, tmp_path / "out", PairsConfig()))[0]
    assert row["prompt"] == msgs
    assert row["chosen"] == [{"role": "assistant", "content": "4"}]
    assert row["rejected"] == [{"role": "assistant", "content": "5"}]
    assert is_conversational({k: row[k] for k in ("prompt", "chosen", "rejected")})


def test_rerun_is_noop_and_changed_config_refuses(labeled, tmp_path, capsys):
    out = tmp_path / "pairs"
    assert main(["pairs", "--input", str(labeled), "--output", str(out)]) == 0
    shard = out / "data" / "part-00000.parquet"
    mtime = shard.stat().st_mtime_ns
    manifest = (out / "manifest.json").read_text()
    assert main(["pairs", "--input", str(labeled), "--output", str(out)]) == 0
    assert shard.stat().st_mtime_ns == mtime and (out / "manifest.json").read_text() == manifest
    assert "already complete" in capsys.readouterr().err
    assert main(["pairs", "--input", str(labeled), "--output", str(out), "--strategy", "all"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_missing_reward_column_is_a_clear_error(tmp_path, capsys):
    rows = [{k: v for k, v in rollout("p0", i, "x", 1.0).items() if k not in ("reward", "rewards")} for i in range(2)]
    src = write_jsonl(tmp_path / "rollouts.jsonl", rows)
    assert main(["pairs", "--input", str(src), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "rollouts.jsonl" in err and "'reward'" in err and "prefsmith label" in err
    assert not (tmp_path / "o").exists()
    with pytest.raises(UserError, match="'reward'"):
        build_pairs(str(src), str(tmp_path / "o2"))
    assert main(["pairs", "--input", str(src), "--output", str(tmp_path / "o3"), "--max-per-prompt", "2"]) == 2
    assert "best-worst makes one pair per prompt" in capsys.readouterr().err


def _run(src, out, cfg):
    build_pairs(str(src), str(out), cfg, progress=False)
    return out


def test_trl_dpo_trainer_trains_on_our_pairs(tmp_path, tiny_model):
    """The output is TRL's conversational preference format: DPOTrainer tokenizes it and takes a step."""
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    msgs = [{"role": "user", "content": "What is 2+2?"}]
    rows = [rollout(f"c{p}", i, f"the answer is {4 + i}", float(i == 0), prompt=msgs) for p in range(2) for i in range(2)]
    src = tmp_path / "chat.parquet"
    pq.write_table(ds.rows_to_table(rows), src)
    out = _run(src, tmp_path / "pairs", PairsConfig())
    data = datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train")
    tok = AutoTokenizer.from_pretrained(tiny_model)
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=1, per_device_train_batch_size=2, report_to=[],
                     use_cpu=True, save_strategy="no", logging_steps=1)
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model), args=args, train_dataset=data,
                         processing_class=tok)
    first = trainer.train_dataset[0]
    assert "the answer is 4" in tok.decode(first["chosen_ids"])
    assert "the answer is 5" in tok.decode(first["rejected_ids"])
    assert trainer.train().global_step == 1


def test_levenshtein_matches_dynamic_programming():
    import random

    def dp(a, b):
        prev = list(range(len(b) + 1))
        for i, ca in enumerate(a, 1):
            cur = [i]
            for j, cb in enumerate(b, 1):
                cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
            prev = cur
        return prev[-1]

    rng = random.Random(0)
    for _ in range(300):
        a = "".join(rng.choice("ab c") for _ in range(rng.randint(0, 70)))
        b = "".join(rng.choice("ab c") for _ in range(rng.randint(0, 70)))
        assert levenshtein(a, b) == dp(a, b)
    assert levenshtein("kitten", "sitting") == 3 and edit_distance("", "") == 0.0


def test_resume_after_crash_gives_the_same_pairs_and_summary(labeled, tmp_path):
    out = tmp_path / "pairs"
    first = build_pairs(str(labeled), str(out), progress=False)
    expected = ids(read(out))
    # a kill after the shard was written but before it was recorded complete
    (out / ".shards" / "part-00000.done").unlink()
    manifest = ds.read_manifest(out)
    ds.write_manifest(out, {**manifest, "complete": False, "summary": None})
    assert build_pairs(str(labeled), str(out), progress=False) == first
    assert ids(read(out)) == expected and ds.read_manifest(out)["summary"] == first


def test_prompt_level_columns_carried_per_sample_ones_null(tmp_path):
    rows = [{**rollout("p0", i, f"c{i}", float(i == 0)), "policy": {"model": "tiny", "round": 2},
             "judge_note": f"note {i}"} for i in range(3)]
    row = read(_run(write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "o", PairsConfig()))[0]
    assert row["policy"] == {"model": "tiny", "round": 2} and row["answer"] == "ans-p0"
    assert row["judge_note"] is None  # differs between the samples: not a prompt-level value
    assert not {"completion", "reward", "rewards", "reward_info", "sample_idx", "finish_reason"} & set(row)
