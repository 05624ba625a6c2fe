"""The label stage end to end: real Parquet/JSONL in tmp dirs, run through `prefsmith label` (cli.main)."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.core import dataset as ds
from pipelines.cli import main
from pipelines.stages.label import LabelConfig, label

HERE = Path(__file__).parent
ROWS = [
    {"id": "p0-0", "prompt": "What is 2+2?", "completion": "<think>2+2=4</think> \\boxed{4}", "answer": "4",
     "completion_ids": [5, 6, 7]},
    {"id": "p0-1", "prompt": "What is 2+2?", "completion": "It is 5.", "answer": "4", "completion_ids": [5, 6]},
    {"id": "p1-0", "prompt": "3+3?", "completion": "<think>a</think><think>b</think> 6",
     "answer": "\\frac{", "completion_ids": [5]},
    {"id": "p1-1", "prompt": "3+3?", "completion": "<think>x</think> \\boxed{6}",
     "answer": "\\frac{", "completion_ids": [5, 6, 7, 8]},
    {"id": "p2-0", "prompt": "Say 7", "completion": "<think>ok</think> \\boxed{7}", "answer": "7", "completion_ids": [1]},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def rollouts(tmp_path) -> Path:
    """Rollouts as a dataset directory of Parquet shards (what `prefsmith generate` writes)."""
    return ds.write_dataset(ROWS, tmp_path / "rollouts", {"stage": "generate"})


def read(out: Path) -> list[dict]:
    return ds.load_rows(out)


def test_format_and_plugins_from_file_and_module_sync_and_async(rollouts, tmp_path, capsys):
    out = tmp_path / "labeled"
    rc = main(["label", "--input", str(rollouts), "--output", str(out), "--no-progress",
               "--reward", "format:think",
               "--reward", f"{HERE / 'plugin_rewards.py'}:length_reward",
               "--reward", "plugin_rewards:async_length_reward",
               "--reward", "plugin_rewards:ids_length",
               "--weight", "length_reward=0.5", "--weight", "async_length_reward=0", "--weight", "format=2",
               "--batch-size", "2", "--shard-size", "2"])
    assert rc == 0
    rows = read(out)
    assert [r["id"] for r in rows] == [r["id"] for r in ROWS]
    for got, src in zip(rows, ROWS):
        assert {k: got[k] for k in src} == src  # every input column kept
        n = float(len(src["completion"]))
        assert got["rewards"]["length_reward"] == n
        assert got["rewards"]["async_length_reward"] == n
        assert got["rewards"]["ids_length"] == float(len(src["completion_ids"]))
        assert got["reward"] == pytest.approx(2 * got["rewards"]["format"] + 0.5 * n + len(src["completion_ids"]))
    assert [r["rewards"]["format"] for r in rows] == [1.0, 0.0, 0.0, 1.0, 1.0]
    assert [r["reward_info"]["format"] for r in rows] == ["ok", "no_think_start", "multiple_think", "ok", "ok"]
    manifest = ds.read_manifest(out)
    s = manifest["summary"]
    assert s["rows"] == 5 and s["rows_this_run"] == 5 and s["error_rows"] == 0
    assert s["rewards"]["format"] == {"weight": 2.0, "mean": 0.6, "scored": 5, "null": 0, "null_reasons": {},
                                      "errors": 0}
    assert s["rewards"]["length_reward"]["mean"] == pytest.approx(sum(len(r["completion"]) for r in ROWS) / 5)
    assert manifest["num_shards"] == 3 and manifest["complete"]
    assert s["rows_per_s"] > 0
    printed = capsys.readouterr().out
    assert "format" in printed and "0.6000" in printed and "5 rows; this run scored 5 rows" in printed

    # rerun: a no-op that leaves the shards untouched
    before = {p: p.stat().st_mtime_ns for p in (out / "data").glob("*.parquet")}
    assert main(["label", "--input", str(rollouts), "--output", str(out), "--no-progress",
                 "--reward", "format:think", "--reward", f"{HERE / 'plugin_rewards.py'}:length_reward",
                 "--reward", "plugin_rewards:async_length_reward", "--reward", "plugin_rewards:ids_length",
                 "--weight", "length_reward=0.5", "--weight", "async_length_reward=0", "--weight", "format=2",
                 "--batch-size", "5", "--shard-size", "2"]) == 0  # batch size may change on a rerun
    assert {p: p.stat().st_mtime_ns for p in (out / "data").glob("*.parquet")} == before
    assert "nothing to do" in capsys.readouterr().out


def test_error_in_user_function_nulls_its_batch_and_stage_continues(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}" if i != 2 else "bad2", "prompt": "p",
                                               "completion": "c" * i} for i in range(5)])
    out = tmp_path / "out"
    assert main(["label", "--input", str(src), "--output", str(out), "--no-progress", "--batch-size", "2",
                 "--reward", "plugin_rewards:fails_on_bad", "--reward", "plugin_rewards:length_reward"]) == 0
    rows = read(out)
    # batches are [r0, r1], [bad2, r3], [r4]: the failing batch's two rows are null with the message
    assert [r["rewards"]["fails_on_bad"] for r in rows] == [1.0, 1.0, None, None, 1.0]
    assert [r["reward_info"]["fails_on_bad"] for r in rows][2:4] == ["error: ValueError: cannot score row bad2"] * 2
    assert [r["rewards"]["length_reward"] for r in rows] == [0.0, 1.0, 2.0, 3.0, 4.0]  # other rewards unaffected
    assert [r["reward"] for r in rows] == [1.0, 2.0, None, None, 5.0]  # null component -> null total
    s = ds.read_manifest(out)["summary"]
    assert s["error_rows"] == 2
    assert s["rewards"]["fails_on_bad"]["errors"] == 2
    assert s["rewards"]["fails_on_bad"]["null_reasons"] == {"error: ValueError: cannot score row bad2": 2}
    assert s["reward"] == {"mean": pytest.approx(8 / 3), "scored": 3, "null": 2}
    assert "errors: 2 rows had a reward function fail (fails_on_bad: 2)" in capsys.readouterr().out


def test_max_errors_aborts_keeps_finished_shards_and_rerun_resumes(tmp_path, monkeypatch, capsys):
    ids = ["r0", "r1", "r2", "bad3", "bad4", "r5"]
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "prompt": "p", "completion": "c"} for i in ids])
    out = tmp_path / "out"
    argv = ["label", "--input", str(src), "--output", str(out), "--no-progress", "--batch-size", "1",
            "--shard-size", "2", "--reward", "plugin_rewards:fails_on_bad", "--max-errors", "1"]
    monkeypatch.setenv("FAIL_MARK", "bad")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "stopped: 2 rows errored in reward functions, more than --max-errors 1" in err
    assert "rerun the same command to continue" in err
    assert sorted(p.name for p in (out / ".shards").glob("*.done")) == ["part-00000.done", "part-00001.done"]
    kept = pq.read_table(out / "data" / "part-00001.parquet").to_pylist()
    assert [r["reward_info"]["fails_on_bad"] for r in kept] == ["ok", "error: ValueError: cannot score row bad3"]
    assert not ds.read_manifest(out)["complete"]

    monkeypatch.setenv("FAIL_MARK", "")  # the cause is fixed; the same command continues from shard 2
    assert main(argv) == 0
    assert "resuming" in capsys.readouterr().err
    rows = read(out)
    assert [r["id"] for r in rows] == ids
    assert [r["rewards"]["fails_on_bad"] for r in rows] == [1.0, 1.0, 1.0, None, 1.0, 1.0]
    s = ds.read_manifest(out)["summary"]
    assert s["rows"] == 6 and s["rows_this_run"] == 2 and s["error_rows"] == 1


def test_math_reward_through_the_stage(rollouts, tmp_path):
    out = tmp_path / "math"
    assert main(["label", "--input", str(rollouts), "--output", str(out), "--no-progress", "--workers", "1",
                 "--reward", "math", "--reward", "format:think", "--weight", "format=0.1"]) == 0
    rows = read(out)
    assert [r["rewards"]["math"] for r in rows] == [1.0, 0.0, None, None, 1.0]
    # "It is 5." has no marker; the default extraction (math-verify's order) still reads 5 from it: wrong
    assert [r["reward_info"]["math"] for r in rows] == ["correct", "wrong", "bad_gold",
                                                        "bad_gold", "correct"]
    assert [r["reward"] for r in rows] == [pytest.approx(1.1), 0.0, None, None, pytest.approx(1.1)]
    s = ds.read_manifest(out)["summary"]
    assert s["rewards"]["math"]["null_reasons"] == {"bad_gold": 2}
    assert s["rewards"]["math"]["mean"] == pytest.approx(2 / 3)


def test_null_on_timeout_turns_a_checker_timeout_from_zero_into_null(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [
        {"id": "slow", "prompt": "p", "completion": "\\boxed{9^{9^{9^{9^9}}}}", "answer": "9"},
        {"id": "fine", "prompt": "p", "completion": "\\boxed{9}", "answer": "9"}])
    argv = ["label", "--input", str(src), "--no-progress", "--workers", "1", "--reward", "math"]
    assert main([*argv, "--output", str(tmp_path / "default")]) == 0
    rows = read(tmp_path / "default")
    assert [(r["rewards"]["math"], r["reward_info"]["math"]) for r in rows] == [(0.0, "timeout"), (1.0, "correct")]
    assert main([*argv, "--output", str(tmp_path / "audit"), "--null-on-timeout"]) == 0
    rows = read(tmp_path / "audit")
    assert [(r["rewards"]["math"], r["reward_info"]["math"]) for r in rows] == [(None, "timeout"), (1.0, "correct")]
    assert ds.read_manifest(tmp_path / "audit")["summary"]["rewards"]["math"]["null_reasons"] == {"timeout": 1}


def test_repeated_names_get_suffixes_and_python_api(rollouts, tmp_path, capsys):
    res = label(str(rollouts), str(tmp_path / "o"), LabelConfig(
        rewards=["format:think", r"format:.*\\boxed\{\d+\}", "overlong:4,2"], weights=["format_2=3"]),
        progress=False)
    rows = read(tmp_path / "o")
    assert list(rows[0]["rewards"]) == ["format", "format_2", "overlong"]
    assert [r["rewards"]["format_2"] for r in rows] == [1.0, 0.0, 0.0, 1.0, 1.0]
    assert [r["rewards"]["overlong"] for r in rows] == [-0.5, 0.0, 0.0, -1.0, 0.0]  # 3 ids: half-way down the ramp; 4 ids: -1
    assert [r["reward"] for r in rows] == [3.5, 0.0, 0.0, 3.0, 4.0]
    assert res.summary["rewards"]["format_2"]["weight"] == 3.0


@pytest.mark.parametrize("extra, message", [
    (["--reward", "nosuchmodule_q:fn"], "--reward nosuchmodule_q:fn: no module named 'nosuchmodule_q'"),
    (["--reward", "format:think", "--weight", "fmt=2"], "no reward named 'fmt'; reward columns are format"),
    (["--reward", "plugin_rewards:answer_in_completion"], "missing required column(s) 'answer'"),
])
def test_user_errors_stop_before_any_work(tmp_path, capsys, extra, message):
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "p", "completion": "c"}])
    out = tmp_path / "out"
    assert main(["label", "--input", str(src), "--output", str(out), "--no-progress", *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (out / "data").exists()


def test_code_reward_through_the_stage(tmp_path):
    from rewards.sandbox import Sandbox, SandboxUnavailable

    try:
        Sandbox(workers=1).close()
    except SandboxUnavailable as e:
        pytest.skip(f"no sandbox on this machine: {e}")
    good = "```python\ndef add(a, b):\n    return a + b\n```"
    bad = "```python\ndef add(a, b):\n    return a - b\n```"
    tests = ["assert add(1, 2) == 3", "assert add(2, 0) == 2"]
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "c0", "prompt": "add", "completion": good, "tests": tests},
                                              {"id": "c1", "prompt": "add", "completion": bad, "tests": tests}])
    out = tmp_path / "out"
    assert main(["label", "--input", str(src), "--output", str(out), "--no-progress", "--workers", "2",
                 "--reward", "code", "--reward", "code:fraction", "--weight", "code_2=0"]) == 0
    rows = read(out)
    assert [r["rewards"] for r in rows] == [{"code": 1.0, "code_2": 1.0}, {"code": 0.0, "code_2": 0.5}]
    assert [r["reward"] for r in rows] == [1.0, 0.0]
    assert rows[0]["reward_info"]["code"] == "passed 2/2"
