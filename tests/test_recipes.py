"""Every recipe in data/pipelines/ runs end to end on the tiny model, shrunk with `--set` (the same files run on
the embedded default with `prefsmith run`). The tiny random model never solves math, so the accuracy reward is
a plug-in whose outcomes vary within a group (tests/plugin_rewards.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.core import dataset as ds
from pipelines.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = ROOT / "data" / "pipelines"
ACCURACY = "plugin_rewards:parity_reward"


@pytest.fixture()
def small(tmp_path):
    rows = [{"id": f"q{i}", "prompt": f"say something {i}", "answer": str(i), "level": "easy" if i % 2 else "hard"}
            for i in (10, *range(1, 9))]
    prompts, heldout = tmp_path / "prompts.jsonl", tmp_path / "heldout.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    heldout.write_text("".join(json.dumps({**r, "id": f"h{i}", "prompt": f"tell me {i}"}) + "\n"
                               for i, r in enumerate(rows[:4], 1)))
    return {"prompts": str(prompts), "heldout": str(heldout), "accuracy": ACCURACY}


def run(name: str, tmp_path: Path, tiny_model: Path, **overrides) -> dict[str, str]:
    return run_pipeline(str(PIPELINES / f"{name}.yaml"),
                        overrides={"workdir": str(tmp_path / name), "model": str(tiny_model), **overrides})


def _eval_rows(run_dir: Path) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["split"] == "eval"]


def test_r1_recipe(tmp_path, tiny_model, small):
    out = run("r1", tmp_path, tiny_model, **small, max_new_tokens=8, grpo_steps=2, grpo_minutes=5,
              prompts_per_step=2, num_generations=4, rs_prompts=4, rs_n=4, rs_min_reward=1.0, sft_epochs=1,
              eval_limit=4, threads=1)
    for stage in ("reasoning_rl", "all_scenario_rl"):  # both RL stages trained and evaluated before and after
        evals = _eval_rows(Path(out[stage]))
        assert [e["step"] for e in evals] == [0, 2]
    selected = ds.load_rows(out["rs_selected"])
    assert {r["source"] for r in selected} >= {"rft"}  # rejection-sampled rows, mixed with the SFT set
    assert all(r["reward"] is None or r["reward"] >= 1.0 for r in selected if r["source"] == "rft")
    # stage 3 retrains the starting model (R1), and stage 4 starts from stage 3's
    argv = json.loads((Path(out["rs_sft"]) / "prefsmith_train.json").read_text())
    assert argv["model"] == str(tiny_model)
    summary = json.loads((Path(out["eval"]) / "eval.json").read_text())
    assert summary["overall"]["prompts"] == 4 and summary["model"] == str(Path(out["all_scenario_rl"]) / "model")


def test_instructgpt_recipe(tmp_path, tiny_model, small):
    out = run("instructgpt", tmp_path, tiny_model, **small, accuracy_name="parity_reward", comparison_prompts=6, n=4, max_new_tokens=8,
              ppo_steps=2, prompts_per_step=4, eval_limit=4, threads=1)
    assert ds.load_rows(out["pairs"])  # comparisons became pairs, the reward model trained on them
    assert (Path(out["rm"]) / "model" / "config.json").exists()
    ppo = Path(out["ppo"])
    train = [r for r in map(json.loads, (ppo / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]
    assert len(train) == 2 and all("value_loss" in r and "reward_rm" in r for r in train)
    assert [e["step"] for e in _eval_rows(ppo)] == [0, 2]  # held-out accuracy by the verifier (weight 0)
    assert (ppo / "model" / "config.json").exists() and (ppo / "value_model" / "config.json").exists()


@pytest.mark.parametrize("name", ["iterative_dpo", "rft"])
def test_round_recipes(tmp_path, tiny_model, small, name):
    out = run(name, tmp_path, tiny_model, **small, rounds=2, n=4, prompts_per_round=4, max_new_tokens=8,
              eval_limit=4)
    rounds = [json.loads(x) for x in (Path(out[name]) / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1]
    assert (Path(out[name]) / "rounds.png").exists()


def test_rounds_written_as_a_pipeline_file(tmp_path, tiny_model, small):
    out = run("rft_rounds", tmp_path, tiny_model, **small, rounds=2, prompts_per_round=6, n=4, max_new_tokens=8,
              eval_limit=4)
    root = tmp_path / "rft_rounds"
    for r in (0, 1):
        assert (root / f"round-{r:03d}" / "policy" / "model" / "config.json").exists()
        assert json.loads((root / f"round-{r:03d}" / "eval" / "eval.json").read_text())["overall"]
    # round 1 sampled with round 0's model
    rows = ds.load_rows(root / "round-001" / "rollouts")
    assert rows and {r["policy"]["model"] for r in rows} == {str(root / "round-000" / "policy" / "model")}
    assert out["rounds.policy"] == str(root / "round-001" / "policy")


def test_tir_recipe(tmp_path, tiny_model, small):
    """Cold-start SFT on the tool-using traces, then GRPO with the `python` environment (a real sandbox): the
    rollouts are trajectories, held-out accuracy comes from greedy trajectories before and after."""
    out = run("tir", tmp_path, tiny_model, **small, max_new_tokens=8, max_turns=2, grpo_steps=2, grpo_minutes=5,
              prompts_per_step=2, num_generations=4, sft_epochs=1, eval_limit=4, threads=1)
    sft = Path(out["cold_start_sft"])
    assert (sft / "model" / "config.json").exists()
    rl = Path(out["tir_rl"])
    assert [e["step"] for e in _eval_rows(rl)] == [0, 2]
    train = [r for r in map(json.loads, (rl / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]
    assert len(train) == 2 and all("turns" in r and "reward_tool_use" in r for r in train)
    rows = ds.load_rows(rl / "rollouts")
    assert rows and all(len(r["completion_mask"]) == len(r["completion_ids"]) and 1 <= r["turns"] <= 2 for r in rows)
    assert all(r["messages"][0]["content"].startswith("You can run Python code") for r in rows)
    config = ds.read_manifest(rl / "rollouts")["config"]  # the run's identity: from the SFT model, with the env
    assert config["model"].startswith(str(sft)) and config["env"] == "python" and config["max_turns"] == 2
    assert config["env_options"] == ["timeout_s=5"]
    summary = json.loads((Path(out["eval"]) / "eval.json").read_text())  # the final policy, with the environment
    assert summary["overall"]["prompts"] == 4 and summary["model"] == str(rl / "model")
    assert summary["config"]["env"] == "python" and "tools" in summary
