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


def test_the_demo_pipeline_file_is_valid():
    from pipelines.pipeline import load_pipeline, stage_argv

    root = Path(__file__).resolve().parents[1]
    spec = load_pipeline(str(root / "data/pipelines/demo.yaml"))
    outputs: dict[str, str] = {}
    argvs = [stage_argv(stage, outputs, Path(spec["workdir"])) for stage in spec["stages"]]
    assert argvs[0][:3] == ["generate", "--model", "default"]
    import argparse
    import importlib

    from pipelines.cli import COMMANDS

    for argv in argvs:  # every stage's flags parse with its command's own parser
        if argv[0] == "train":
            continue
        parser = argparse.ArgumentParser()
        importlib.import_module(COMMANDS[argv[0]][0]).add_arguments(parser)
        parser.parse_args(argv[1:])
    assert argvs[-1][:2] == ["train", "dpo"] and "runs/demo/pairs" in argvs[-1]
