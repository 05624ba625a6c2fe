"""`prefsmith select`: best / all-correct rejection-sampling sets and mixing with another SFT set."""
import json

import pytest

from pipelines.core import dataset as ds
from pipelines.cli import main
from pipelines.errors import UserError
from pipelines.builders.rft import SelectConfig, build_select, parse_mix


def r(pid, idx, completion, reward, reason="ok", prompt=None):
    return {"id": f"{pid}-{idx}", "prompt_id": pid, "sample_idx": idx, "prompt": prompt or f"Solve {pid}",
            "answer": f"gold-{pid}", "completion": completion, "finish_reason": "stop",
            "rewards": {"math": reward}, "reward": reward, "reward_info": {"math": reason}}


ROWS = [
    r("p0", 0, "x = 4 because 2 + 2 = 4", 1.0), r("p0", 1, "x = 4", 1.0), r("p0", 2, "x = 5", 0.0),
    r("p0", 3, "x  =  4 ", 1.0),  # same text as p0-1 after whitespace normalization
    r("p1", 0, "no", 0.0), r("p1", 1, "nope", 0.0),
    r("p2", 0, "?", None, "unparseable gold"), r("p2", 1, "ok", 1.0),
    r("p3", 0, "aaaa", 0.5), r("p3", 1, "bb", 0.75), r("p3", 2, "c", 0.75),
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(x) + "\n" for x in rows))
    return str(path)


@pytest.fixture
def labeled(tmp_path):
    return write_jsonl(tmp_path / "labeled.jsonl", ROWS)


def ids(out):
    return [x["id"] for x in ds.load_rows(out)]


def test_best_one_per_prompt(labeled, tmp_path, capsys):
    out = tmp_path / "best"
    assert main(["select", "--input", labeled, "--output", str(out)]) == 0
    rows = ds.load_rows(out)
    assert [x["id"] for x in rows] == ["p0-1", "p2-1"]  # p0: shortest of the correct ones
    assert rows[0] == {"prompt": "Solve p0", "completion": "x = 4", "id": "p0-1", "prompt_id": "p0",
                       "reward": 1.0, "source": "rft", "answer": "gold-p0"}
    s = ds.read_manifest(out)["summary"]
    assert s["prompts"] == 4 and s["prompts_with_correct"] == 2 and s["selected"] == 2
    assert s["null_rows_skipped"] == 1 and s["null_reasons"] == {"math: unparseable gold": 1}
    assert "selected: 2" in capsys.readouterr().out

    build_select(labeled, str(tmp_path / "b2"), SelectConfig(min_reward=0.5), progress=False)
    assert ids(tmp_path / "b2") == ["p0-1", "p2-1", "p3-2"]  # p3: highest reward .75, then shortest


def test_all_correct_distinct(labeled, tmp_path):
    build_select(labeled, str(tmp_path / "a"), SelectConfig(keep="all-correct"), progress=False)
    assert ids(tmp_path / "a") == ["p0-0", "p0-1", "p2-1"]
    assert ds.read_manifest(tmp_path / "a")["summary"]["duplicates_removed"] == 1
    build_select(labeled, str(tmp_path / "b"), SelectConfig(keep="all-correct", min_reward=0.75), progress=False)
    assert ids(tmp_path / "b") == ["p0-0", "p0-1", "p2-1", "p3-1", "p3-2"]


def test_mix_ratio_exact_counts_and_seed(labeled, tmp_path, capsys):
    other = write_jsonl(tmp_path / "general.jsonl",
                        [{"id": f"g{i}", "prompt": f"general {i}", "completion": f"reply {i}"} for i in range(10)])
    out = tmp_path / "mix"
    args = ["select", "--input", labeled, "--output", str(out), "--keep", "all-correct", "--min-reward", "0.5"]
    assert main(args + ["--mix", f"{other}:0.4"]) == 0  # 6 selected -> round(6 * .4 / .6) = 4 mixed
    rows = ds.load_rows(out)
    assert len(rows) == 10
    assert [x["source"] for x in rows].count("rft") == 6
    mixed = [x for x in rows if x["source"] == "mix:general"]
    assert len(mixed) == 4 and all(x["prompt"].startswith("general") and x["reward"] is None for x in mixed)
    s = ds.read_manifest(out)["summary"]
    assert s["rows"] == 10 and s["mix"]["rows"] == 4 and s["mix"]["achieved_ratio"] == pytest.approx(0.4)
    assert ds.read_manifest(out)["rows_out"] == 10
    assert "mixed in 4 rows" in capsys.readouterr().out
    import datasets
    assert datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train").num_rows == 10

    cfg = dict(keep="all-correct", min_reward=0.5, mix=other, mix_ratio=0.25)
    build_select(labeled, str(tmp_path / "s1"), SelectConfig(**cfg, seed=1), progress=False)
    build_select(labeled, str(tmp_path / "s1b"), SelectConfig(**cfg, seed=1), progress=False)
    build_select(labeled, str(tmp_path / "s2"), SelectConfig(**cfg, seed=2), progress=False)
    mixed_ids = {k: [i for i in ids(tmp_path / k) if i.startswith("g")] for k in ("s1", "s1b", "s2")}
    assert len(mixed_ids["s1"]) == 2  # round(6 * .25 / .75) = 2
    assert mixed_ids["s1"] == mixed_ids["s1b"] and mixed_ids["s1"] != mixed_ids["s2"]

    # rerun: no-op, the mix is not appended twice
    manifest = (out / "manifest.json").read_text()
    assert main(args + ["--mix", f"{other}:0.4"]) == 0
    assert len(ds.load_rows(out)) == 10 and (out / "manifest.json").read_text() == manifest


def test_mix_with_messages_converts_everything_to_messages(labeled, tmp_path):
    other = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": f"hello {i}"}]}
        for i in range(5)])
    build_select(labeled, str(tmp_path / "m"), SelectConfig(mix=other, mix_ratio=0.5), progress=False)
    rows = ds.load_rows(tmp_path / "m")
    assert len(rows) == 4  # 2 selected + round(2 * .5 / .5) = 2
    assert all("prompt" not in x and "completion" not in x for x in rows)
    assert rows[0]["messages"] == [{"role": "user", "content": "Solve p0"}, {"role": "assistant", "content": "x = 4"}]
    assert rows[0]["source"] == "rft" and rows[2]["source"] == "mix:chat" and rows[2]["id"].startswith("chat-")


def test_mix_errors(labeled, tmp_path):
    other = write_jsonl(tmp_path / "small.jsonl", [{"prompt": "a", "completion": "b"}] * 3)
    with pytest.raises(UserError, match=r"has 3 rows .* needs 18; use a ratio <= 0.6000"):
        build_select(labeled, str(tmp_path / "x"), SelectConfig(mix=other, mix_ratio=0.9), progress=False)
    with pytest.raises(UserError, match="OTHER_SFT:RATIO"):
        parse_mix("sft.jsonl")
    with pytest.raises(UserError, match=r"\[0, 1\)"):
        SelectConfig(mix=other, mix_ratio=1.0)
    assert parse_mix("dir/a:b.jsonl:0.3") == ("dir/a:b.jsonl", 0.3)


def test_missing_reward_and_noop_rerun(labeled, tmp_path, capsys):
    bad = write_jsonl(tmp_path / "rollouts.jsonl", [{k: v for k, v in x.items() if k != "reward"} for x in ROWS])
    assert main(["select", "--input", bad, "--output", str(tmp_path / "x")]) == 2
    assert "missing column(s) 'reward'" in capsys.readouterr().err
    out = tmp_path / "ok"
    assert main(["select", "--input", labeled, "--output", str(out)]) == 0
    manifest = (out / "manifest.json").read_text()
    assert main(["select", "--input", labeled, "--output", str(out)]) == 0
    assert (out / "manifest.json").read_text() == manifest
