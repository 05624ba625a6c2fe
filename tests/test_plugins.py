"""Reward specs -> functions: user plug-ins (module / file, sync / async), built-in names, weights and totals."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from rewards.combine import parse_weights, total, unique_names
from rewards.plugins import RewardSpecError, build, load_function, to_results
from rewards.result import RewardResult

HERE = Path(__file__).parent


def test_module_and_file_plugins_score_with_trl_signature():
    by_module = build("plugin_rewards:length_reward")
    by_file = build(f"{HERE / 'plugin_rewards.py'}:length_reward")
    assert by_module.name == by_file.name == "length_reward"
    for fn in (by_module, by_file):
        res = fn.score(["p", "q"], ["abc", "hello"], {"answer": ["1", "2"]})
        assert [(r.score, r.reason) for r in res] == [(3.0, "ok"), (5.0, "ok")]
    assert by_file.fingerprint and len(by_file.fingerprint) == 16


def test_async_plugin_runs_with_and_without_a_running_loop():
    fn = build("plugin_rewards:async_length_reward")
    assert [r.score for r in fn.score(["p"] * 3, ["a", "bb", "ccc"], {})] == [1.0, 2.0, 3.0]

    async def inside_loop():
        return fn.score(["p"], ["abcd"], {})

    assert [r.score for r in asyncio.run(inside_loop())] == [4.0]


def test_required_columns_come_from_the_signature():
    assert build("plugin_rewards:answer_in_completion").required == ["answer"]
    assert build("plugin_rewards:length_reward").required == []
    assert build("plugin_rewards:ids_length").required == []  # completion_ids is always passed
    assert build("math").required == ["answer"]


def test_rewardresult_returns_keep_their_reasons():
    fn = build("plugin_rewards:answer_in_completion")
    res = fn.score(["p"] * 3, ["x = 4", "x = 5", "x"], {"answer": ["4", "4", None]})
    assert [(r.score, r.reason) for r in res] == [(1.0, "found"), (0.0, "missing"), (None, "no_gold")]


def test_bad_returns_and_exceptions_become_nulls_with_reasons():
    res = build("plugin_rewards:wrong_length").score(["p"] * 2, ["a", "b"], {})
    assert [(r.score, r.reason) for r in res] == [(None, "error: returned 3 scores for 2 rows")] * 2
    res = build("plugin_rewards:fails_on_bad").score(["p"] * 2, ["a", "b"], {"id": ["ok-0", "bad-1"]})
    assert [(r.score, r.reason) for r in res] == [(None, "error: ValueError: cannot score row bad-1")] * 2
    assert [(r.score, r.reason) for r in to_results([1, True, None, float("nan"), "x", RewardResult(0.5, "half")], 6)] == [
        (1.0, "ok"), (1.0, "ok"), (None, "returned_none"), (None, "returned_nan"),
        (None, "error: score 'x' is not a finite number"), (0.5, "half")]
    assert to_results(7.0, 2)[0].reason == "error: returned float, expected a list of 2 scores"
    import numpy as np

    assert [r.score for r in to_results(np.array([0.25, 1.0]), 2)] == [0.25, 1.0]


@pytest.mark.parametrize("spec, message", [
    ("nosuchmodule_xyz:fn", "no module named 'nosuchmodule_xyz'"),
    ("plugin_rewards:nope", "has no function 'nope' (it defines answer_in_completion, async_length_reward"),
    ("missing/dir/rewards.py:fn", "file missing/dir/rewards.py not found"),
    ("justaname", "name a built-in"),
    ("format", "format needs an argument"),
    ("format:(unclosed", "invalid regular expression"),
    ("math:fancy", "use `math`, `math:last_number` or `math:markers`"),
    ("overlong:abc", "overlong:MAX,CACHE"),
    ("overlong:10,20", "0 < cache < max_len"),
    ("rm:/no/such/model", "could not load a sequence-classification model"),
])
def test_bad_specs_fail_early_with_clear_messages(spec, message):
    with pytest.raises(RewardSpecError, match=message.replace("(", r"\(").replace(")", r"\)").replace("`", ".")):
        build(spec)


def test_file_that_fails_to_import_names_the_file(tmp_path):
    bad = tmp_path / "broken.py"
    bad.write_text("import nosuchthing_abc\n\ndef f(prompts, completions, **kw):\n    return []\n")
    with pytest.raises(RewardSpecError, match=r"broken.py: running the file failed: ModuleNotFoundError"):
        load_function(f"{bad}:f")


def test_builtin_names_and_args():
    regex = build(r"format:\d+")
    assert regex.name == "format"
    assert [r.score for r in regex.score([None] * 2, ["42", "x42"], {})] == [1.0, 0.0]
    think = build("format:think")
    assert [r.reason for r in think.score([None], ["<think>a</think>"], {})] == ["empty_answer"]
    over = build("overlong:100,20")
    assert over.name == "overlong"
    assert [r.score for r in over.score([None], ["x"], {"completion_ids": [[0] * 90]})] == [-0.5]


def test_math_markers_scores_an_unmarked_answer_no_answer():
    cols = {"answer": ["9", "9"]}
    completions = ["Answer $9$", "The answer is $9$"]
    default = build("math").score([None] * 2, completions, cols)
    markers = build("math:markers").score([None] * 2, completions, cols)
    assert [(r.score, r.reason) for r in default] == [(1.0, "correct"), (1.0, "correct")]
    assert [(r.score, r.reason) for r in markers] == [(0.0, "no_answer"), (1.0, "correct")]


def test_total_weights_and_null_propagation():
    assert total({"math": 1.0, "format": 0.0}, {"format": 0.5}) == 1.0
    assert total({"math": 1.0, "format": 1.0}, {"format": 0.5}) == 1.5
    assert total({"math": None, "format": 1.0}, {}) is None
    assert total({"math": 1.0, "len": None}, {"len": 0.0}) == 1.0  # weight 0: recorded, not counted
    assert unique_names(["format", "format", "math", "format"]) == ["format", "format_2", "math", "format_3"]
    assert unique_names(["a", "a", "a_2"]) == ["a", "a_3", "a_2"]
    assert parse_weights(["format=0.5", "math=2"], ["math", "format"]) == {"format": 0.5, "math": 2.0}
    with pytest.raises(ValueError, match="no reward named 'fmt'; reward columns are math, format"):
        parse_weights(["fmt=1"], ["math", "format"])
    with pytest.raises(ValueError, match="is not a number"):
        parse_weights(["math=high"], ["math"])


def test_sync_plugins_run_in_worker_processes_when_asked():
    import os

    from rewards.plugins import Options

    pids = build("plugin_rewards:worker_pid", Options(workers=2))
    try:
        got = [r.score for r in pids.score(["p"] * 4, ["a"] * 4, {})]
        assert os.getpid() not in got and got[0] == got[1] and got[2] == got[3]  # two slices, in workers
    finally:
        pids.close()
    by_file = build(f"{HERE / 'plugin_rewards.py'}:fails_on_bad", Options(workers=2))
    try:
        res = by_file.score(["p"] * 4, ["a"] * 4, {"id": ["r0", "r1", "bad2", "r3"]})
        assert [(r.score, r.reason) for r in res] == [(1.0, "ok")] * 2 + [
            (None, "error: ValueError: cannot score row bad2")] * 2
    finally:
        by_file.close()
    assert build("plugin_rewards:async_length_reward", Options(workers=2)).workers == 1  # async stays here
