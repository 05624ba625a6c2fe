"""`prefsmith run PIPELINE.yaml`: stages in order, @references, resumable as a whole, clear errors."""
import json
from pathlib import Path

import pytest
import yaml

from pipelines.core import dataset as ds
from pipelines.cli import main as cli
from pipelines.errors import UserError
from pipelines.pipeline import run_pipeline

PLUGIN = Path(__file__).parent / "plugin_rewards.py"


def write_pipeline(path: Path, workdir: Path, model: Path, prompts: Path) -> Path:
    spec = {"workdir": str(workdir), "stages": [
        {"name": "rollouts", "command": "generate",
         "args": {"model": str(model), "input": str(prompts), "n": 3, "max_new_tokens": 8, "shard_size": 2}},
        {"name": "labeled", "command": "label", "args": {"input": "@rollouts", "reward": [f"{PLUGIN}:length_reward"]}},
        {"name": "pairs", "command": "pairs", "args": {"input": "@labeled", "strategy": "best-worst"}},
        {"name": "dump", "command": "export", "args": {"input": "@pairs", "output": str(workdir / "pairs.jsonl")}},
    ]}
    path.write_text(yaml.safe_dump(spec))
    return path


def test_pipeline_runs_stages_in_order_and_reruns_as_a_noop(tmp_path, tiny_model, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Count to {i}."}) + "\n" for i in range(4)))
    workdir = tmp_path / "work"
    pipeline = write_pipeline(tmp_path / "p.yaml", workdir, tiny_model, prompts)
    assert cli(["run", str(pipeline)]) == 0
    rollouts = ds.load_rows(workdir / "rollouts")
    labeled = ds.load_rows(workdir / "labeled")
    assert len(rollouts) == len(labeled) == 12
    assert [r["id"] for r in labeled] == [r["id"] for r in rollouts]
    assert all(r["rewards"]["length_reward"] == r["reward"] for r in labeled)
    pairs = [json.loads(line) for line in (workdir / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == ds.read_manifest(workdir / "pairs")["rows_out"] > 0
    assert all(p["score_chosen"] > p["score_rejected"] for p in pairs)
    capsys.readouterr()
    assert cli(["run", str(pipeline)]) == 0  # everything done: each stage says so, nothing is recomputed
    err = capsys.readouterr().err
    assert err.count("nothing to do") == 3
    assert json.loads((workdir / "pipeline_state.json").read_text()).keys() == {"rollouts", "labeled", "pairs", "dump"}


def test_pipeline_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [{name: a, command: generate, args: {input: '@nope'}}]")
    with pytest.raises(UserError, match="@nope names no earlier stage"):
        run_pipeline(str(bad))
    bad.write_text("stages: [{name: a, command: frobnicate}]")
    with pytest.raises(UserError, match="unknown command 'frobnicate'"):
        run_pipeline(str(bad))
    bad.write_text("stages: {not: a list}")
    with pytest.raises(UserError, match="needs a non-empty `stages:` list"):
        run_pipeline(str(bad))
    bad.write_text("stages: [{name: a, command: export}, {name: a, command: export}]")
    with pytest.raises(UserError, match="used twice"):
        run_pipeline(str(bad))


def _parse_stage(argv: list[str]) -> None:
    """Parse a stage's flags with its command's own parser (UsageError on an unknown or malformed flag)."""
    from pipelines.cli import check_args

    check_args(argv)


@pytest.mark.parametrize("name", ["demo", "r1", "instructgpt", "iterative_dpo", "rft", "rft_rounds"])
def test_every_pipeline_file_is_valid(name):
    from pipelines.pipeline import load_pipeline, stage_argv

    root = Path(__file__).resolve().parents[1]
    spec = load_pipeline(str(root / f"data/pipelines/{name}.yaml"))
    outputs: dict[str, str] = {}
    argvs = [stage_argv(stage, outputs, Path(spec["workdir"])) for stage in spec["stages"]]
    for argv in argvs:  # every stage's flags parse with its command's own parser
        _parse_stage(argv)
    if name == "demo":
        assert argvs[0][:3] == ["generate", "--model", "default"]
        assert argvs[-1][:2] == ["train", "grpo"] and "data/math/heldout.jsonl" in argvs[-1]


def test_vars_substitute_and_set_overrides(tmp_path):
    from pipelines.pipeline import load_pipeline

    f = tmp_path / "p.yaml"
    f.write_text("workdir: ${out}\nvars: {out: runs/x, steps: 40, model: m}\n"
                 "stages: [{name: a, command: export, args: {input: '${model}/data', limit: '${steps}'}}]\n")
    spec = load_pipeline(str(f), {"steps": 2})
    assert spec["workdir"] == "runs/x"
    assert spec["stages"][0]["args"] == {"input": "m/data", "limit": 2}  # a whole `${steps}` keeps its type
    with pytest.raises(UserError, match="not a variable"):
        load_pipeline(str(f), {"stepz": 2})
    f.write_text("stages: [{name: a, command: export, args: {input: '${nope}'}}]\n")
    with pytest.raises(UserError, match=r"\$\{nope\} is not a variable"):
        load_pipeline(str(f))


def test_repeat_block_expands_into_rounds(tmp_path):
    from pipelines.pipeline import load_pipeline, stage_argv

    f = tmp_path / "p.yaml"
    f.write_text("""
workdir: WD
stages:
  - {name: seed, command: select, args: {input: data.jsonl}}
  - repeat: {name: rounds, rounds: 3}
    first: {policy: "@seed"}
    stages:
      - {name: rollouts, command: generate, args: {model: "@prev.policy/model", input: prompts.jsonl}}
      - {name: policy, command: train, args: {algo: sft, model: "@prev.policy/model", data: "@rollouts"}}
  - {name: final, command: stats, args: {input: "@rounds.rollouts"}}
""")
    spec = load_pipeline(str(f))
    names = [s["name"] for s in spec["stages"]]
    assert names == ["seed", "rounds.0.rollouts", "rounds.0.policy", "rounds.1.rollouts", "rounds.1.policy",
                     "rounds.2.rollouts", "rounds.2.policy", "final"]
    outputs: dict[str, str] = {}
    argvs = {s["name"]: stage_argv(s, outputs, Path("WD")) for s in spec["stages"]}

    def flag(argv, name):
        return argv[argv.index(name) + 1]

    assert flag(argvs["rounds.0.rollouts"], "--model") == "WD/seed/model"  # round 0: the `first:` value
    assert flag(argvs["rounds.0.rollouts"], "--output") == "WD/round-000/rollouts"
    assert flag(argvs["rounds.1.rollouts"], "--model") == "WD/round-000/policy/model"  # @prev: the last round's
    assert flag(argvs["rounds.2.policy"], "--data") == "WD/round-002/rollouts"  # @NAME: this round's
    assert argvs["final"][1] == "WD/round-002/rollouts"  # after the block: the last round's
    f.write_text("stages: [{repeat: {name: r, rounds: 2}, stages: [{name: a, command: export, "
                 "args: {input: '@prev.a'}}]}]\n")
    with pytest.raises(UserError, match="needs `first"):
        load_pipeline(str(f))
