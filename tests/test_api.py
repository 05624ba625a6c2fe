"""The Python API (prefsmith/): keywords parsed by the command's own parser give what the CLI gives; results
read back the manifest, the rows and a datasets.Dataset; rows in memory; rewards without files; docs/api.md runs."""
from __future__ import annotations

import json
import pickle
import re
import sys
import types
from pathlib import Path

import pytest

import prefsmith
from pipelines.cli import main as cli
from pipelines.core import dataset as ds
from pipelines.errors import UsageError, UserError

ROOT = Path(__file__).resolve().parents[1]


def rollout(pid: str, idx: int, completion: str, reward: float | None) -> dict:
    return {"id": f"{pid}-{idx}", "prompt_id": pid, "sample_idx": idx, "prompt": f"Question {pid}?",
            "answer": "4", "completion": completion, "finish_reason": "stop", "rewards": {"math": reward},
            "reward": reward, "reward_info": {"math": "ok" if reward is not None else "bad_gold"}}


LABELED = [rollout("p0", 0, "It is 4", 1.0), rollout("p0", 1, "It is 5", 0.0), rollout("p0", 2, "4", 1.0),
           rollout("p1", 0, "x", 0.5), rollout("p1", 1, "yy", 0.25), rollout("p1", 2, "zzz", None),
           rollout("p2", 0, "a", 1.0), rollout("p2", 1, "b", 1.0)]


@pytest.fixture
def labeled(tmp_path) -> Path:
    path = tmp_path / "labeled.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in LABELED))
    return path


def test_keywords_give_what_the_cli_gives(tmp_path, labeled):
    assert cli(["pairs", "--input", str(labeled), "--output", str(tmp_path / "cli"), "--strategy", "all",
                "--min-margin", "0.2", "--max-per-prompt", "2"]) == 0
    result = prefsmith.pairs(input=labeled, output=tmp_path / "api", strategy="all", min_margin=0.2,
                             max_per_prompt=2)
    by_cli, by_api = ds.read_manifest(tmp_path / "cli"), ds.read_manifest(tmp_path / "api")
    assert by_api["fingerprint"] == by_cli["fingerprint"] and by_api["config"] == by_cli["config"]
    assert result.rows() == ds.load_rows(tmp_path / "cli")
    # p0: (It is 4, It is 5), (4, It is 5); p1: (x, yy); p2 ties: nothing
    assert [(r["chosen_id"], r["rejected_id"]) for r in result.rows()] == [("p0-0", "p0-1"), ("p0-2", "p0-1"),
                                                                          ("p1-0", "p1-1")]
    assert result.path == tmp_path / "api" and result.summary["rows"] == 3 == by_api["rows_out"]
    assert result.summary["rows_in"] == 8 and result.summary["stage"] == "pairs"
    assert result.summary["pairs"] == by_api["summary"]["pairs"] == 3


def test_dataset_comes_back_as_a_datasets_dataset(tmp_path, labeled):
    import datasets

    result = prefsmith.pairs(input=labeled, output=tmp_path / "pairs")
    data = result.dataset()
    assert isinstance(data, datasets.Dataset) and data.num_rows == 2
    assert data.to_list() == result.rows()
    assert [(r["chosen_id"], r["score_chosen"]) for r in data] == [("p0-0", 1.0), ("p1-0", 0.5)]


def test_rows_in_memory_are_the_input(tmp_path, labeled, capsys):
    import datasets

    from_file = prefsmith.pairs(input=labeled, output=tmp_path / "from_file")
    from_rows = prefsmith.pairs(input=LABELED, output=tmp_path / "from_rows")
    written = tmp_path / ".prefsmith-inputs" / "from_rows.input.jsonl"
    assert [json.loads(line) for line in written.read_text().splitlines()] == LABELED
    assert ds.read_manifest(from_rows.path)["input"]["source"] == str(written)
    assert from_rows.rows() == from_file.rows()
    capsys.readouterr()
    again = prefsmith.pairs(input=datasets.Dataset.from_list(LABELED), output=tmp_path / "from_rows")
    assert "already complete" in capsys.readouterr().err  # same rows, same file content: the finished output holds
    assert again.rows() == from_file.rows()


def test_an_unknown_keyword_is_one_error_with_a_suggestion(tmp_path, labeled):
    with pytest.raises(UsageError, match=r"^prefsmith.pairs: unknown keyword argument 'min_margn'; did you mean "
                                         r"min_margin\?$"):
        prefsmith.pairs(input=labeled, output=tmp_path / "p", min_margn=0.1)
    with pytest.raises(UsageError, match="overwrite is a switch; give True or False"):
        prefsmith.pairs(input=labeled, output=tmp_path / "p", overwrite="yes")
    with pytest.raises(UsageError, match="--strategy: invalid choice: 'best'"):  # the command's own parser
        prefsmith.pairs(input=labeled, output=tmp_path / "p", strategy="best")
    with pytest.raises(UserError, match="no such file"):  # the command's own check, raised, not printed
        prefsmith.pairs(input=tmp_path / "missing.jsonl", output=tmp_path / "p")
    assert not (tmp_path / "p").exists()


def test_stats_and_export(tmp_path, labeled):
    exported = prefsmith.export(input=labeled, output=tmp_path / "out.jsonl")
    assert exported.summary == {"rows": 8} and exported.rows() == ds.load_rows(labeled)
    stats = prefsmith.stats(input=labeled, no_plot=True)
    assert stats.summary["rows"] == 8 and stats.path == labeled
    assert stats.summary == json.loads(_printed(["stats", str(labeled), "--json", "--no-plot"]))


def _printed(argv: list[str]) -> str:
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert cli(argv) == 0
    return out.getvalue()


def test_score_rows_in_memory():
    import datasets

    rows = [{"prompt": "What is 2 + 3?", "completion": "so \\boxed{5}", "answer": "5"},
            {"prompt": "What is 2 + 3?", "completion": "\\boxed{6}", "answer": "5"},
            {"prompt": "What is 2 + 3?", "completion": "5", "answer": None}]
    scored = prefsmith.score(rows, reward=["math", "format:boxed"], weight={"format": 0.5})
    assert [r["rewards"] for r in scored] == [{"math": 1.0, "format": 1.0}, {"math": 0.0, "format": 1.0},
                                              {"math": None, "format": 0.0}]
    assert [r["reward"] for r in scored] == [1.5, 0.5, None]
    assert scored[2]["reward_info"]["math"] == "bad_gold" and scored[0]["answer"] == "5"

    def shorter(prompts, completions, **columns):  # a function in memory: no module name needed here
        return [-float(len(c)) for c in completions]

    both = prefsmith.score(datasets.Dataset.from_list(rows[:2]), reward=[shorter, "math"], weight=["shorter=0"])
    assert isinstance(both, datasets.Dataset)
    assert [r["rewards"] for r in both] == [{"shorter": -12.0, "math": 1.0}, {"shorter": -9.0, "math": 0.0}]
    assert [r["reward"] for r in both] == [1.0, 0.0]  # weight 0: recorded, not counted
    with pytest.raises(UserError, match="row 0 has no 'answer' column"):
        prefsmith.score([{"prompt": "p", "completion": "c"}], reward="math")


def test_a_reward_in_trls_signature():
    math_reward = prefsmith.rewards.get("math")
    assert math_reward.__name__ == "math"
    completions = ["\\boxed{4}", "\\boxed{5}", "no idea"]
    assert math_reward(["2+2?"] * 3, completions, answer=["4"] * 3) == [1.0, 0.0, 0.0]
    assert [r.reason for r in math_reward.results(["2+2?"] * 3, completions, answer=["4"] * 3)][:2] == ["correct",
                                                                                                       "wrong"]
    again = pickle.loads(pickle.dumps(math_reward))  # TRL and worker pools ship reward functions to processes
    assert again(["2+2?"], ["\\boxed{4}"], answer=["4"], trainer_state=None) == [1.0]
    with pytest.raises(UserError, match="--reward nonsense"):
        prefsmith.rewards.get("nonsense")


def test_train_keywords_give_what_the_cli_gives(tmp_path, tiny_model, labeled):
    pairs = prefsmith.pairs(input=labeled, output=tmp_path / "pairs", strategy="all")
    common = dict(max_steps=2, batch_size=2, max_length=64, no_plots=True, no_progress=True, seed=3,
                  ref_cache_dir=tmp_path / "ref_cache")
    flags = [f"--{k.replace('_', '-')}" + ("" if v is True else f"={v}") for k, v in common.items()]
    assert cli(["train", "dpo", "--model", str(tiny_model), "--data", str(pairs.path),
                "--output", str(tmp_path / "cli"), *flags]) == 0
    run = prefsmith.train.dpo(model=tiny_model, data=pairs.path, output=tmp_path / "api", **common)
    assert run.path == tmp_path / "api" and (run.model / "config.json").is_file()
    by_cli = [json.loads(line) for line in (tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()]
    keep = ("split", "step", "loss", "grad_norm")
    assert [{k: r.get(k) for k in keep} for r in run.records] == [{k: r.get(k) for k in keep} for r in by_cli]
    assert run.summary["steps"] == 2
    assert run.summary["train"]["loss"] == [r for r in by_cli if r["split"] == "train"][-1]["loss"]
    with pytest.raises(UsageError, match="unknown keyword argument 'max_step'; did you mean max_steps"):
        prefsmith.train.dpo(model=tiny_model, data=pairs.path, output=tmp_path / "x", max_step=1)
    with pytest.raises(UsageError, match="--loss: invalid choice: 'sigmoidal'"):  # the trainer's own parser
        prefsmith.train.dpo(model=tiny_model, data=pairs.path, output=tmp_path / "x", loss="sigmoidal")
    with pytest.raises(UserError, match=r"^prefsmith.train.dpo: .*missing.jsonl"):  # what the CLI prints, raised
        prefsmith.train.dpo(model=tiny_model, data=tmp_path / "missing.jsonl", output=tmp_path / "x")


def _python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.S | re.M)


def test_the_api_doc_runs(tmp_path, tiny_model, monkeypatch):
    """docs/api.md's walk-through, block by block in one namespace, with the tiny model: a module of its own, as a
    script's or a notebook's functions live in one (its reward function is passed by module:function)."""
    blocks = _python_blocks((ROOT / "docs" / "api.md").read_text())
    assert len(blocks) >= 6
    monkeypatch.setenv("PREFSMITH_API_MODEL", str(tiny_model))
    monkeypatch.setenv("PREFSMITH_API_WORKDIR", str(tmp_path / "api"))
    monkeypatch.setenv("PREFSMITH_CACHE", str(tmp_path / "cache"))  # DPO's reference log-probs
    monkeypatch.chdir(ROOT)  # the doc reads data/math/ from the repository's root
    doc = types.ModuleType("api_walkthrough")
    monkeypatch.setitem(sys.modules, doc.__name__, doc)
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/api.md block {i}", "exec"), doc.__dict__)
    ns = doc.__dict__
    assert ns["rollouts"].summary["rows"] == 32 and ns["rollouts"].dataset().num_rows == 32
    labeled = ns["labeled"].summary
    assert labeled["rewards"]["brevity"]["weight"] == 0.1 and labeled["rewards"]["brevity"]["scored"] == 32
    assert ds.read_manifest(ns["labeled"].path)["config"]["rewards"] == ["math", "api_walkthrough:brevity"]
    assert 0 < ns["pairs"].summary["rows"] <= 8
    assert {"chosen", "rejected"} <= set(ns["pairs"].dataset().column_names)
    policy = ns["policy"]
    assert (policy.model / "config.json").is_file() and policy.summary["steps"] == 10
    assert [r["step"] for r in policy.records if r["split"] == "train"] == list(range(1, 11))
    assert ns["report"].summary["overall"]["prompts"] == 16
    assert 0.0 <= ns["report"].summary["overall"]["accuracy"] <= 1.0
    assert (tmp_path / "api" / ".prefsmith-inputs" / "rollouts.input.jsonl").is_file()


def test_a_pipeline_file(tmp_path, labeled):
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(f"workdir: {tmp_path / 'work'}\nvars: {{margin: 0.0}}\nstages:\n"
                        f"  - {{name: pairs, command: pairs, args: {{input: {labeled}, min_margin: '${{margin}}'}}}}\n"
                        "  - {name: flat, command: export, args: {input: '@pairs', output: '{workdir}/pairs.jsonl'}}\n")
    result = prefsmith.run(pipeline=pipeline, set={"margin": 0.3})
    assert result.path == tmp_path / "work"
    assert result.summary["outputs"]["pairs"] == str(tmp_path / "work" / "pairs")  # as `prefsmith run` records it
    assert ds.read_manifest(tmp_path / "work" / "pairs")["config"]["min_margin"] == 0.3
    assert len(ds.load_rows(tmp_path / "work" / "pairs.jsonl")) == 1  # p0 only: p1's margin 0.25 is not > 0.3


def longer(prompts, completions, **columns):
    """Length in characters: a reward the tiny model's rollouts differ on (named as test_api:longer)."""
    return [float(len(c)) for c in completions]


def test_online_training_from_rows_and_a_reward_function(tmp_path, tiny_model):
    rows = [{"prompt": f"say something {i}", "answer": str(i)} for i in range(4)]
    run = prefsmith.train.grpo(model=tiny_model, prompts=rows, output=tmp_path / "grpo", reward=[longer],
                               max_steps=2, num_generations=2, prompts_per_step=2, max_new_tokens=8,
                               no_dynamic_sampling=True, seed=1)
    assert run.model == tmp_path / "grpo" / "model" and (run.model / "config.json").is_file()
    assert run.summary["steps"] == 2 and [r["step"] for r in run.records if "loss" in r] == [1, 2]
    assert all(r["reward_longer"] == r["reward"] > 0 for r in run.records if "loss" in r)
    assert (tmp_path / ".prefsmith-inputs" / "grpo.prompts.jsonl").is_file()
    assert "test_api:longer" in (run.path / "rollouts" / "manifest.json").read_text()
