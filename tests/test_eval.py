"""`prefsmith eval`: pass@k / maj@k / accuracy against hand-computed values on fixed rows (the real math
reward scores them), the vote's canonical answers and tie rule, nulls left out with their reasons, and a real
run on the tiny model (dataset, eval.json, table, PNG, resume through a pipeline file)."""
import json

import pytest
import yaml

from pipelines.cli import main as cli
from pipelines.core import dataset as ds
from pipelines.pipeline import run_pipeline
from pipelines.reports.evaluate import (answer_key, default_ks, eval_summary, maj_at_k, majority_index,
                                        score_rows)
from pipelines.reports.stats import pass_at_k
from pipelines.stages.label import LabelConfig, load_rewards


def test_answer_key_makes_spellings_of_one_answer_vote_together():
    assert {answer_key(a) for a in ("0.5", "1/2", "\\boxed{1/2}", "\\frac{1}{2}", "$\\dfrac12$", "x = 0.50")} == {"1/2"}
    assert answer_key("3,000") == answer_key("3000") == "3000"
    assert answer_key("50%") == "50%" != answer_key("50")
    assert answer_key("\\text{Monday}") == answer_key("monday") == "monday"
    assert answer_key("x^2 + 1") == answer_key("x^2+1")
    assert answer_key(None) is None and answer_key("  ") is None


def test_majority_vote_tie_goes_to_the_answer_seen_first():
    assert majority_index(["3", "1/2", None, "1/2", "3"]) == 0  # 2 votes each: 3 came first
    assert majority_index([None, "1/2", "3", "3"]) == 2  # 3 has the most votes; its first sample stands for it
    assert majority_index([None, None]) is None
    keys = [answer_key(a) for a in ("7", "1/2", "0.5", "\\frac{1}{2}")]
    correct = [False, True, True, True]
    assert maj_at_k(keys, correct, 1) == 0.0
    assert maj_at_k(keys, correct, 2) == 0.0  # 7 vs 1/2, one vote each: 7 was first
    assert maj_at_k(keys, correct, 4) == 1.0  # 1/2, 0.5 and \frac{1}{2} are one answer with 3 votes
    assert maj_at_k([None, "4"], [True, False], 2) == 0.0  # a sample with no answer does not vote
    assert maj_at_k([None, None], [True, False], 2) == 1.0  # nothing to vote on: the first sample stands
    with pytest.raises(ValueError):
        maj_at_k(keys, correct, 5)
    assert default_ks(1) == [1] and default_ks(4) == [1, 2, 4] and default_ks(6) == [1, 2, 4, 6]


PROMPTS = [  # (id, gold, level, 4 completions) -> correct, hand-checked
    ("A", "1/2", "easy", ["\\boxed{0.5}", "\\boxed{3}", "\\boxed{3}", "The answer is \\frac{1}{2}"]),  # 1 0 0 1
    ("B", "5", "hard", ["\\boxed{4}", "\\boxed{6}", "no idea", "\\boxed{4}"]),  # 0 0 0 0
    ("C", "0.5", "hard", ["\\boxed{7}", "\\boxed{1/2}", "\\boxed{0.5}", "\\boxed{\\frac{1}{2}}"]),  # 0 1 1 1
    ("D", "forty two", "hard", ["\\boxed{42}"] * 4),  # a gold in words: the math reward is null (bad_gold)
]


@pytest.fixture(scope="module")
def scored():
    rows = [{"prompt": f"q {pid}", "answer": gold, "level": level, "prompt_id": pid, "sample_idx": k,
             "completion": c} for pid, gold, level, cs in PROMPTS for k, c in enumerate(cs)]
    fns, names, weights = load_rewards(LabelConfig(rewards=["math"], workers=1))
    try:
        return score_rows(rows, fns, names, weights, "math")
    finally:
        for f in fns:
            f.close()


def test_scored_rows_carry_answer_vote_and_correctness(scored):
    assert [r["correct"] for r in scored[:12]] == [True, False, False, True, False, False, False, False,
                                                   False, True, True, True]
    assert [r["answer_key"] for r in scored[8:12]] == ["7", "1/2", "1/2", "1/2"]
    assert [r["extracted"] for r in scored[:4]] == ["0.5", "3", "3", "\\frac{1}{2}"]
    assert scored[6]["extracted"] is None and scored[6]["answer_key"] is None  # "no idea"
    bad = scored[12:]
    assert all(r["correct"] is None and r["rewards"]["math"] is None and r["reward_info"]["math"] == "bad_gold"
               for r in bad)


def test_pass_maj_accuracy_by_hand_with_nulls_left_out(scored):
    s = eval_summary(scored, ["math"], "math", [1, 2, 4], by=["level"])
    o = s["overall"]
    # scored prompts A (c=2), B (c=0), C (c=3), n=4 each; D is null and left out of every figure
    assert (o["prompts"], o["prompts_scored"], o["completions"]) == (4, 3, 16)
    assert o["accuracy"] == pytest.approx(1 / 3)  # first completions: A right, B and C wrong
    assert o["pass@1"] == pytest.approx((2 / 4 + 0 + 3 / 4) / 3)
    assert o["pass@2"] == pytest.approx(((1 - 1 / 6) + 0 + 1) / 3)  # A: 1 - C(2,2)/C(4,2); C: n - c < k
    assert o["pass@4"] == pytest.approx(2 / 3)
    assert o["maj@1"] == pytest.approx(1 / 3) and o["maj@2"] == pytest.approx(1 / 3)  # C: 7 wins its ties
    assert o["maj@4"] == pytest.approx(2 / 3)  # A: 1/2 vs 3 tie, 1/2 first; C: 1/2 three votes
    assert o["null"] == {"completions": 4, "prompts": 1, "reasons": {"bad_gold": 4}}
    assert o["rewards"]["math"] == {"mean": pytest.approx(5 / 12), "scored": 12, "null": 4,
                                    "null_reasons": {"bad_gold": 4}}
    easy, hard = s["by"]["level"]["easy"], s["by"]["level"]["hard"]
    assert (easy["accuracy"], easy["pass@2"], easy["maj@4"]) == (1.0, pytest.approx(5 / 6), 1.0)
    assert (hard["prompts"], hard["prompts_scored"], hard["accuracy"]) == (3, 2, 0.0)
    assert hard["pass@1"] == pytest.approx(3 / 8) and hard["maj@4"] == 0.5 and hard["null"]["prompts"] == 1
    assert pass_at_k(4, 2, 2) == pytest.approx(5 / 6)  # the estimator eval shares with `stats`


def flags(args: dict) -> list[str]:
    """Arguments as a pipeline file writes them -> command-line flags (as `prefsmith run` turns them)."""
    out = []
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        values = value if isinstance(value, list) else [value]
        out += [flag] if value is True else [x for v in values for x in (flag, str(v))]
    return out


PARITY = "def parity(prompts, completions, **columns):\n    return [float(len(c) % 2 == 0) for c in completions]\n"


def test_eval_on_the_tiny_model(tmp_path, tiny_model, capsys):
    rows = [{"id": f"p{i}", "prompt": f"What is {i} + {i}?", "answer": str(2 * i), "level": ["easy", "hard"][i % 2]}
            for i in range(5)]
    rows.append({"id": "p5", "prompt": "What is six times seven?", "answer": "forty two", "level": "hard"})
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "parity.py").write_text(PARITY)
    out = tmp_path / "eval"
    args = {"model": str(tiny_model), "prompts": str(prompts), "reward": ["math", f"{tmp_path}/parity.py:parity"],
            "correct_reward": "parity", "n": 4, "temperature": 1.0, "by": "level", "max_new_tokens": 8,
            "shard_size": 2, "workers": 1, "no_progress": True, "output": str(out)}
    assert cli(["eval", *flags(args)]) == 0
    table = capsys.readouterr().out
    assert "overall" in table and "level=easy" in table and "level=hard" in table and "maj@4" in table

    got = ds.load_rows(out)
    assert len(got) == 24 and ds.read_manifest(out)["stage"] == "eval"
    assert [(r["prompt_id"], r["sample_idx"]) for r in got[:5]] == [("p0", k) for k in range(4)] + [("p1", 0)]
    for r in got:
        assert isinstance(r["completion"], str) and set(r["rewards"]) == {"math", "parity"}
        assert r["correct"] == (r["rewards"]["parity"] >= 1.0)
        assert r["answer_key"] == answer_key(r["extracted"])
    assert all(r["rewards"]["math"] is None and r["reward_info"]["math"] == "bad_gold"
               for r in got if r["prompt_id"] == "p5")

    summary = json.loads((out / "eval.json").read_text())
    assert {"model", "engine", "config", "ks", "overall", "by", "generation", "plot"} <= set(summary)
    assert summary["model"] == str(tiny_model) and summary["ks"] == [1, 2, 4]
    assert summary["config"]["correct_reward"] == "parity" and summary["config"]["sampling"]["n"] == 4
    o = summary["overall"]
    correct = [r["correct"] for r in got]
    assert o["pass@1"] == pytest.approx(sum(correct) / len(correct), abs=1e-6)  # equal n: pass@1 = mean correct
    assert o["accuracy"] == pytest.approx(sum(r["correct"] for r in got if r["sample_idx"] == 0) / 6, abs=1e-6)
    by_prompt = {pid: [r["correct"] for r in got if r["prompt_id"] == pid] for pid in {r["prompt_id"] for r in got}}
    assert o["pass@4"] == pytest.approx(sum(any(c) for c in by_prompt.values()) / 6, abs=1e-6)
    assert o["maj@1"] == o["accuracy"]
    assert o["rewards"]["math"]["null"] == 4 and o["rewards"]["math"]["null_reasons"] == {"bad_gold": 4}
    assert set(summary["by"]["level"]) == {"easy", "hard"}
    assert summary["by"]["level"]["easy"]["prompts"] == 3 and summary["by"]["level"]["hard"]["completions"] == 12
    assert (out / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the same rows judged by the math reward: the bad gold's prompt is left out and counted with its reason
    by_math = eval_summary(got, ["math", "parity"], "math", [1, 2, 4])["overall"]
    assert by_math["prompts_scored"] == 5 and by_math["null"] == {"completions": 4, "prompts": 1,
                                                                  "reasons": {"bad_gold": 4}}

    # `command: eval` in a pipeline file, same arguments: the finished rows are kept, the figures rewritten
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(yaml.safe_dump({"workdir": str(tmp_path / "work"),
                                        "stages": [{"name": "ev", "command": "eval", "args": args}]}))
    before = (out / "data" / "part-00000.parquet").stat().st_mtime_ns
    assert run_pipeline(str(pipeline)) == {"ev": str(out)}
    assert (out / "data" / "part-00000.parquet").stat().st_mtime_ns == before
    again = json.loads((out / "eval.json").read_text())
    assert again["overall"] == summary["overall"] and again["by"] == summary["by"]


def test_eval_with_an_environment_scores_trajectories_and_reports_tool_use(tmp_path, tiny_model, capsys):
    """`eval --env`: each sample is a trajectory (generate's rollout driver), the final turn is scored, and eval.json
    says how the tools were used. EchoEnv answers the first turn once, so every trajectory takes two turns."""
    rows = [{"id": f"p{i}", "prompt": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(3)]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval"
    args = {"model": str(tiny_model), "prompts": str(prompts), "env": "tests/plugin_envs.py:EchoEnv",
            "env_option": ["replies=1"], "max_turns": 3, "max_new_tokens": 6, "workers": 1, "no_progress": True,
            "output": str(out)}
    assert cli(["eval", *flags(args)]) == 0
    assert "tools:" in capsys.readouterr().out
    got = ds.load_rows(out)
    assert len(got) == 3 and all(r["turns"] == 2 and len(r["completion_ids"]) == len(r["completion_mask"]) for r in got)
    assert all(0 in r["completion_mask"] for r in got)  # the environment's tokens are in the ids, masked
    summary = json.loads((out / "eval.json").read_text())
    tools = summary["tools"]
    assert tools["trajectories"] == 3 and tools["mean_turns"] == 2.0 and tools["tool_call_rate"] == 0.0
    assert sum(tools["finish_reasons"].values()) == 3
    assert summary["config"]["env"] == "tests/plugin_envs.py:EchoEnv" and summary["config"]["max_turns"] == 3
