"""Bad input that used to crash, mislead or waste hours: each is one clear line (or a per-row null with its reason),
and nothing already done is lost. A "clear line" is the CLI's `prefsmith CMD: error: ...`, exit 2, no traceback."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipelines.cli import main as cli
from pipelines.core import dataset as ds


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ----------------------------------------------------------------------------------------------- gold answers

@pytest.mark.parametrize("second, kind", [("4", "string"), ([4], "list")])
def test_mixed_gold_types_name_the_column_and_the_line(tmp_path, capsys, second, kind):
    rows = [{"prompt": "2+2?", "completion": "4", "answer": 4}, {"prompt": "1+3?", "completion": "4", "answer": second}]
    path = _jsonl(tmp_path / "rows.jsonl", rows)
    assert cli(["label", "--input", str(path), "--output", str(tmp_path / "out"), "--reward", "math",
                "--no-progress"]) == 2
    line = _one_error_line(capsys)
    assert f"rows.jsonl:2: column 'answer' is a {kind} here but a number on line 1" in line


def test_a_nested_type_clash_is_named_too(tmp_path):
    path = _jsonl(tmp_path / "rows.jsonl", [{"prompt": "a", "answer": ["4"]}, {"prompt": "b", "answer": [4]}])
    with pytest.raises(ds.UserError, match=r"rows.jsonl:2: column 'answer\[\]' is a number here but a string on line 1"):
        ds.load_table(str(path))


def test_a_null_gold_is_a_per_row_bad_gold_not_a_refused_file(tmp_path, capsys):
    rows = [{"prompt": "2+2?", "completion": "The answer is 4", "answer": "4"},
            {"prompt": "?", "completion": "The answer is 4", "answer": None},
            {"prompt": "3+3?", "completion": "The answer is 5", "answer": "6"}]
    path = _jsonl(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "out"
    assert cli(["label", "--input", str(path), "--output", str(out), "--reward", "math", "--no-progress"]) == 0
    labeled = ds.load_rows(out)
    assert [r["reward"] for r in labeled] == [1.0, None, 0.0]
    assert [r["reward_info"]["math"] for r in labeled] == ["correct", "bad_gold", "wrong"]
    assert ds.read_manifest(out)["summary"]["rewards"]["math"]["null_reasons"] == {"bad_gold": 1}


# ----------------------------------------------------------------------------------------------- trainers

def _pairs(tmp_path: Path) -> Path:
    rows = [{"prompt": f"What is {i} + 1?", "chosen": f"{i + 1}.", "rejected": f"{i * 7}.", "label": True,
             "completion": f"{i + 1}."} for i in range(8)]
    return ds.write_dataset(rows, tmp_path / "data")


@pytest.mark.parametrize("algo", ["dpo", "sft", "kto", "rm"])
def test_a_missing_model_folder_is_one_line(tmp_path, capsys, algo):
    missing = tmp_path / "no" / "model"
    assert cli(["train", algo, "--model", str(missing), "--data", str(_pairs(tmp_path)),
                "--output", str(tmp_path / "run")]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("prefsmith train: error: --model ") and str(missing) in line and "no such folder" in line
    assert not (tmp_path / "run").exists()


def test_a_model_folder_without_config_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli(["train", "sft", "--model", str(tmp_path / "empty"), "--data", str(_pairs(tmp_path)),
                "--output", str(tmp_path / "run")]) == 2
    assert "has no config.json" in _one_error_line(capsys)


def _dpo(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "dpo", "--model", str(model), "--data", str(data), "--output", str(out), "--max-steps", "2",
            "--batch-size", "4", "--no-progress", "--no-plots", "--ref-cache-dir", str(out.parent / "cache"), *extra]


def test_resume_of_a_finished_dpo_run_does_nothing(tmp_path, tiny_model, capsys):
    data, out = _pairs(tmp_path), tmp_path / "run"
    assert cli(_dpo(tiny_model, data, out, "--eval-split", "0.25")) == 0
    files = {p: p.read_bytes() for p in (out / "metrics.jsonl", out / "model" / "model.safetensors", out / "train_result.json")}
    capsys.readouterr()
    assert cli(_dpo(tiny_model, data, out, "--eval-split", "0.25", "--resume")) == 0
    assert "already finished (2 steps); nothing to do" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in files} == files  # not retrained, no second final evaluation row
    # a finished run is not silently extended: a changed step budget is one line
    assert cli(_dpo(tiny_model, data, out, "--eval-split", "0.25", "--resume", "--max-steps", "4")) == 2
    assert "holds a finished run and --max-steps 2 -> 4 changed" in _one_error_line(capsys)


def _grpo(model: Path, prompts: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "grpo", "--model", str(model), "--prompts", str(prompts), "--output", str(out),
            "--reward", "plugin_rewards:length_reward", "--num-generations", "2", "--prompts-per-step", "2",
            "--max-new-tokens", "4", "--seed", "3", "--threads", "1", "--no-dynamic-sampling", "--save-every", "0",
            "--eval-prompts", str(prompts), "--eval-limit", "2", "--eval-max-new-tokens", "4", *extra]


def test_resume_of_a_finished_grpo_run_does_nothing(tmp_path, tiny_model, capsys):
    prompts = _jsonl(tmp_path / "prompts.jsonl", [{"id": f"q{i}", "prompt": f"say {i}"} for i in range(4)])
    out = tmp_path / "grpo"
    assert cli(_grpo(tiny_model, prompts, out, "--max-steps", "1")) == 0
    metrics = (out / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    assert cli(_grpo(tiny_model, prompts, out, "--max-steps", "1", "--resume")) == 0
    assert "already finished (1 steps); nothing to do" in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_bytes() == metrics  # no duplicate eval row
    # more steps, but nothing to continue from: one line, not training again from step 0
    assert cli(_grpo(tiny_model, prompts, out, "--max-steps", "2", "--resume")) == 2
    assert "holds no checkpoint to continue to --max-steps 2" in _one_error_line(capsys)
    assert (out / "metrics.jsonl").read_bytes() == metrics


# ----------------------------------------------------------------------------------------------- generate

def test_a_prompt_longer_than_the_context_is_not_sampled(tmp_path, tiny_model, capsys):
    """The tiny model has 1024 positions: the long prompt gets `too_long` rows at once, the others are sampled
    exactly as without it, and label scores its rows null with that reason."""
    short = [{"id": "a", "prompt": "Count to 3."}, {"id": "c", "prompt": "Say hi."}]
    long = {"id": "b", "prompt": "word " * 1500}
    both = _jsonl(tmp_path / "both.jsonl", [short[0], long, short[1]])
    only_short = _jsonl(tmp_path / "short.jsonl", short)
    common = ["--model", str(tiny_model), "--n", "2", "--max-new-tokens", "6", "--seed", "1"]
    assert cli(["generate", "--input", str(both), "--output", str(tmp_path / "gen"), *common]) == 0
    assert "1 prompt(s) did not fit the model's context" in capsys.readouterr().err
    assert cli(["generate", "--input", str(only_short), "--output", str(tmp_path / "ref"), *common]) == 0
    rows, ref = ds.load_rows(tmp_path / "gen"), ds.load_rows(tmp_path / "ref")
    cut = [(r["completion"], r["completion_ids"], r["finish_reason"]) for r in rows if r["prompt_id"] == "b"]
    assert cut == [("", [], "too_long")] * 2
    sampled = [r for r in rows if r["prompt_id"] != "b"]
    assert [(r["id"], r["completion_ids"]) for r in sampled] == [(r["id"], r["completion_ids"]) for r in ref]
    manifest = ds.read_manifest(tmp_path / "gen")
    assert manifest["generation"]["too_long_prompts"] == 1
    assert manifest["stats"]["too_long_prompts"] == 1
    assert cli(["label", "--input", str(tmp_path / "gen"), "--output", str(tmp_path / "lab"),
                "--reward", "plugin_rewards:length_reward", "--no-progress"]) == 0
    labeled = {r["id"]: r for r in ds.load_rows(tmp_path / "lab")}
    assert labeled["b-0"]["reward"] is None and labeled["b-0"]["reward_info"] == {"length_reward": "too_long"}
    assert labeled["a-0"]["reward"] == float(len(labeled["a-0"]["completion"]))
    summary = ds.read_manifest(tmp_path / "lab")["summary"]
    assert summary["rewards"]["length_reward"]["null_reasons"] == {"too_long": 2}


# ----------------------------------------------------------------------------------------------- outputs

def test_an_output_that_cannot_be_written_is_one_line(tmp_path, capsys):
    rows = _jsonl(tmp_path / "rows.jsonl", [{"prompt": "a", "completion": "b"}])
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for output, says in ((blocker / "out", "cannot write there (Not a directory)"),
                         (blocker, "is a file; it must name a folder"),
                         (Path("/proc/prefsmith-out"), "cannot write there")):
        assert cli(["label", "--input", str(rows), "--output", str(output), "--reward",
                    "plugin_rewards:length_reward", "--no-progress"]) == 2
        line = _one_error_line(capsys)
        assert line.startswith(f"prefsmith label: error: --output {output}") and says in line
    assert cli(["train", "sft", "--model", str(tmp_path), "--data", str(rows), "--output", str(blocker / "run")]) == 2
    assert "has no config.json" in _one_error_line(capsys)  # the model is checked first, then the output


def test_a_training_output_that_cannot_be_written_is_one_line(tmp_path, tiny_model, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert cli(["train", "sft", "--model", str(tiny_model), "--data", str(_pairs(tmp_path)),
                "--output", str(blocker / "run"), "--no-progress"]) == 2
    assert f"--output {blocker / 'run'}: cannot write there" in _one_error_line(capsys)


# ----------------------------------------------------------------------------------------------- flags

@pytest.mark.parametrize("argv, wrong, right", [
    (["label", "--input", "x", "--output", "y", "--reward", "math", "--max-error", "3"], "--max-error", "--max-errors"),
    (["generate", "--model", "m", "--input", "x", "--output", "y", "--max-new-token", "5"], "--max-new-token",
     "--max-new-tokens"),
    (["train", "dpo", "--model", "m", "--data", "d", "--output", "o", "--max-step", "3"], "--max-step", "--max-steps"),
    (["train", "grpo", "--model", "m", "--prompts", "p", "--output", "o", "--reward", "math", "--max-step", "3"],
     "--max-step", "--max-steps"),
    (["train", "iterative-dpo", "--model", "m", "--prompts", "p", "--output", "o", "--reward", "math",
      "--round", "2"], "--round", "--rounds"),
    (["models", "fetch-default", "--forc"], "--forc", "--force"),
    (["run", "p.yaml", "--overwrit"], "--overwrit", "--overwrite"),
])
def test_abbreviated_flags_are_refused_not_guessed(capsys, argv, wrong, right):
    assert cli(argv) == 2
    line = _one_error_line(capsys)
    assert f"unrecognized arguments: {wrong}" in line and f"did you mean {right}?" in line


# ----------------------------------------------------------------------------------------------- pipeline files

@pytest.mark.parametrize("bad_stage, says", [
    ({"name": "pairs", "command": "pairs", "args": {"input": "@labled"}}, "stage 'pairs': @labled names no earlier stage"),
    ({"name": "pairs", "command": "pairs", "args": {"input": "@labeled", "strategy": "best-worst", "min_margn": 1}},
     "stage 'pairs': unrecognized arguments: --min-margn 1; did you mean --min-margin?"),
    ({"name": "pairs", "command": "pairs", "args": {"input": "@labeled", "max_per": 2}},  # an abbreviation
     "stage 'pairs': unrecognized arguments: --max-per 2"),
    ({"name": "train", "command": "train", "args": {"model": "m", "data": "@labeled"}},
     "stage 'train': a train stage needs `algo`"),
    ({"name": "train", "command": "train", "args": {"algo": "dpo", "data": "@labeled", "max_step": 3}},
     "stage 'train': the following arguments are required: --model"),
])
def test_a_pipeline_file_is_checked_whole_before_the_first_stage(tmp_path, capsys, bad_stage, says):
    prompts = _jsonl(tmp_path / "prompts.jsonl", [{"prompt": "hi", "completion": "there"}])
    workdir = tmp_path / "work"
    spec = {"workdir": str(workdir), "stages": [
        {"name": "labeled", "command": "label", "args": {"input": str(prompts), "reward": "plugin_rewards:length_reward"}},
        bad_stage]}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert cli(["run", str(path)]) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"prefsmith run: error: {path}: ") and says in line, line
    assert not workdir.exists()  # nothing ran
