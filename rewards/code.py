"""Code reward: run the completion's program against the row's tests inside the sandbox (rewards/sandbox.py).

`tests` per row is one of:
- a test program (string), e.g. HumanEval's `test` defining `check(candidate)`; with an `entry_point` column the
  call `check(<entry_point>)` is appended;
- a list of test statements (MBPP style asserts); each is one test;
- stdin/stdout cases: a list of `{"input": ..., "output": ...}` (or APPS' `{"inputs": [...], "outputs": [...]}`,
  also as a JSON string); output is compared line by line after trimming whitespace.

Each test ends as one of `TEST_STATUSES`. The score is 1.0 when all pass, else 0.0 (`fraction=True`: the share
passed); null when the row could not be scored (no or malformed tests, sandbox failure), with the reason.

Example:
    >>> completion = "```python\\ndef add(a, b):\\n    return a + b\\n```"
    >>> code_results(["Add."], [completion], tests=[["assert add(1, 2) == 3"]])
    [RewardResult(score=1.0, reason='passed 1/1', info={...})]
"""
from __future__ import annotations

import ast
import functools
import json
import marshal
import math
import os
import re
import secrets
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from rewards.code_harness import STATUS_NAMES, boot_command, frames
from rewards.chat import completion_text
from rewards.result import RewardResult, trl_reward
from rewards.sandbox import Sandbox, SandboxLimits, SandboxRun

TEST_STATUSES = ("passed", "failed", "compile_error", "runtime_error", "timeout", "memory_limit", "sandbox_error")
HARNESS_SOURCE = (Path(__file__).parent / "code_harness.py").read_text()
HARNESS_CODE = marshal.dumps(compile(HARNESS_SOURCE, "harness.py", "exec"))
_FENCE = re.compile(r"```([^\n`]*)\n(.*?)```", re.DOTALL)
_STARTUP_SLACK_S = 3.0  # interpreter start-up on a loaded machine, on top of the per-test time


@dataclass(frozen=True)
class TestSuite:
    """A row's tests: `asserts` (test snippets run after the program, in its namespace) or `stdio` cases."""

    mode: str
    items: tuple  # asserts: tuple[str]; stdio: tuple[tuple[str, str]] of (stdin, expected stdout)


def extract_program(text: str) -> str:
    """The last ```python fenced block, else the last fenced block, else the whole text."""
    blocks = _FENCE.findall(text)
    if not blocks:
        return text
    python_blocks = [body for lang, body in blocks if lang.strip().lower() in ("python", "py", "python3")]
    return (python_blocks or [body for _, body in blocks])[-1]


def parse_tests(tests: Any, entry_point: str | None = None) -> TestSuite:
    """Normalize one row's `tests` value; raises ValueError saying what shape was expected."""
    if hasattr(tests, "tolist") and not isinstance(tests, str):  # numpy / pandas arrays from a DataFrame
        tests = tests.tolist()
    if isinstance(tests, str) and tests.lstrip().startswith(("{", "[")):
        try:
            tests = json.loads(tests)
        except json.JSONDecodeError:
            pass  # a test program that happens to start with a bracket
    if isinstance(tests, dict) and tests.get("fn_name"):
        raise ValueError("call-based APPS tests (`fn_name`) are not supported; give asserts or stdin/stdout cases")
    if isinstance(tests, dict) and "inputs" in tests and "outputs" in tests:
        if len(tests["inputs"]) != len(tests["outputs"]):
            raise ValueError("`tests` has different numbers of inputs and outputs")
        tests = [{"input": i, "output": o} for i, o in zip(tests["inputs"], tests["outputs"])]
    if isinstance(tests, str):
        program = tests + (f"\n\ncheck({entry_point})\n" if entry_point else "")
        items: tuple = (program,)
        mode = "asserts"
    elif isinstance(tests, (list, tuple)) and tests and all(isinstance(t, str) for t in tests):
        items, mode = tuple(tests), "asserts"
    elif isinstance(tests, (list, tuple)) and tests and all(isinstance(t, dict) for t in tests):
        try:
            items = tuple((_as_text(t["input"]), _as_text(t["output"])) for t in tests)
        except KeyError as exc:
            raise ValueError(f"stdin/stdout test case lacks the {exc} key") from None
        mode = "stdio"
    else:
        raise ValueError(
            "`tests` must be a test program (string), a non-empty list of test statements, or a list of "
            f'{{"input": ..., "output": ...}} cases; got {type(tests).__name__}'
        )
    if mode == "asserts":
        for index, test in enumerate(items):
            try:
                compile(test, f"test_{index}", "exec")  # compiling never runs code; a broken test is the data's fault
            except (SyntaxError, ValueError) as exc:
                raise ValueError(f"test {index} does not compile: {exc}") from None
    return TestSuite(mode, items)


def _as_text(value: Any) -> str:
    return "\n".join(map(str, value)) if isinstance(value, list) else str(value)


def build_program(prompt: Any, completion: Any, entry_point: str | None) -> str:
    """The program to test: the extracted code; for a HumanEval-style continuation that does not define the entry
    point itself, the prompt (function signature and docstring) followed by the completion."""
    text = completion_text(completion)
    program = extract_program(text)
    if entry_point and not re.search(rf"def\s+{re.escape(entry_point)}\s*\(", program):
        if isinstance(prompt, str) and re.search(rf"def\s+{re.escape(entry_point)}\s*\(", prompt):
            return prompt + text
    return program


def prompt_helpers(prompt: Any, entry_point: str | None) -> tuple[str, tuple[str, ...]]:
    """The problem's own code that its tests may call (HumanEval/32's `poly`), and the names it defines: the
    prompt's top-level statements minus the entry point and every stub the program is meant to fill in (a function
    whose body is only a docstring, `pass`, `...` or `raise NotImplementedError`, or a class holding one). The judge
    runs it itself, so a program that redefines `poly` changes nothing the tests compute. Only rows with an entry
    point have prompt code (the prompt as a whole, else its last fenced block that parses); ("", ()) otherwise."""
    if not entry_point:
        return "", ()
    if isinstance(prompt, list):
        try:
            prompt = "\n".join(str(m.get("content") or "") for m in prompt if isinstance(m, dict))
        except AttributeError:
            return "", ()
    return _prompt_helpers(prompt, entry_point) if isinstance(prompt, str) else ("", ())


@functools.lru_cache(maxsize=4096)
def _prompt_helpers(prompt: str, entry_point: str) -> tuple[str, tuple[str, ...]]:
    for source in [prompt] + [body for _, body in reversed(_FENCE.findall(prompt))]:
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            continue
        keep = [node for node in tree.body if not _is_stub(node, entry_point)]
        names = []
        for node in keep:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.append(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names += [t.id for t in targets if isinstance(t, ast.Name)]
        if not names:
            return "", ()
        return ast.unparse(ast.Module(body=keep, type_ignores=[])), tuple(names)
    return "", ()


def _is_stub(node: ast.stmt, entry_point: str) -> bool:
    if isinstance(node, ast.ClassDef):
        return node.name == entry_point or any(_is_stub(item, "") for item in node.body)
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return False
    if node.name == entry_point:
        return True
    body = node.body[1:] if _is_docstring(node.body[0]) else node.body
    return all(isinstance(s, ast.Pass) or (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)
                                           and s.value.value is Ellipsis) or _raises_not_implemented(s)
               for s in body)


def _is_docstring(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def _raises_not_implemented(stmt: ast.stmt) -> bool:
    if not isinstance(stmt, ast.Raise) or stmt.exc is None:
        return False
    exc = stmt.exc.func if isinstance(stmt.exc, ast.Call) else stmt.exc
    return isinstance(exc, ast.Name) and exc.id == "NotImplementedError"


@dataclass
class _Outcome:
    statuses: list[str]
    details: list[str]
    truncated: bool = False


class _Runner:
    """Runs one row's tests through a shared Sandbox: one fresh box per row, with the judge and the submission as
    separate processes in it (rewards/code_harness.py)."""

    def __init__(self, sandbox: Sandbox, timeout_s: float, site_packages: bool = False):
        self.sandbox = sandbox
        self.timeout_s = timeout_s
        self.flags = ["-I"] if site_packages else ["-I", "-S"]

    def _judge(self, job: dict, n_timed: int) -> tuple[bool, dict | None, SandboxRun]:
        """Launch the judge on `job`; returns (it started, its reply naming this job, the launch)."""
        job_id = secrets.token_hex(8)
        wall = self.timeout_s * n_timed + _STARTUP_SLACK_S
        job.update(id=job_id, timeout_s=self.timeout_s, interpreter_flags=self.flags,
                   rlimits=self.sandbox.rlimits(cpu_s=math.ceil(wall) + 1),
                   output_bytes=self.sandbox.limits.output_bytes)
        files = {"harness.py": HARNESS_SOURCE}
        if os.path.realpath(self.sandbox.python) == os.path.realpath(sys.executable) or \
                os.path.realpath(self.sandbox.python) == os.path.realpath(sys._base_executable):  # type: ignore
            files["harness.bin"] = HARNESS_CODE  # same interpreter: no compiling in the box
            argv = ["{python}", *self.flags, *boot_command("{job}"), "--judge", "{channel_fd}"]
        else:
            argv = ["{python}", *self.flags, "{job}/harness.py", "--judge", "{channel_fd}"]
        if not self.sandbox.unsandboxed:  # PID 1 of its own box: it may sweep every other process in it
            argv.append("--isolated")
        run = self.sandbox.run(argv, files=files, stdin=marshal.dumps(job), wall_s=wall)
        started, reply = False, None
        for message in frames(run.channel):
            if type(message) is dict and message.get("id") == job_id:
                started |= message.get("event") == "started"
                if message.get("event") == "done":
                    reply = message
        return started, reply, run

    @staticmethod
    def _lost(run: SandboxRun) -> tuple[str, str]:
        """The judge started but the box ended before it answered: only the submission can have caused that."""
        if run.timed_out:
            return "timeout", "wall-clock limit"
        if run.extra.get("memory_limit"):
            return "memory_limit", "the box's memory cgroup limit"
        return "runtime_error", f"the box ended before the judge answered: {_stderr_tail(run)}"

    def run_asserts(self, program: str, tests: Sequence[str], entry_point: str | None = None,
                    prompt: tuple[str, tuple[str, ...]] = ("", ())) -> _Outcome:
        n = len(tests)
        job = {"mode": "asserts", "program": program, "tests": list(tests), "entry_point": entry_point,
               "prompt_code": prompt[0], "prompt_names": list(prompt[1])}
        started, reply, run = self._judge(job, n + 1)
        if not started:
            return _Outcome(["sandbox_error"] * n, [_stderr_tail(run)] * n, run.truncated)
        if reply is None:
            status, detail = self._lost(run)
            return _Outcome([status] * n, [detail] * n, run.truncated)
        program_status, program_detail = reply["program"]
        if program_status != "ok":
            return _Outcome([program_status] * n, [program_detail] * n)
        codes, details = reply["codes"], reply["details"]
        if len(codes) != n:
            return _Outcome(["sandbox_error"] * n, [f"the judge answered for {len(codes)} of {n} tests"] * n)
        return _oom(run, _Outcome([STATUS_NAMES[c] for c in codes], [str(details.get(i, "")) for i in range(n)]))

    def run_case(self, program: str, stdin: str, expected: str) -> _Outcome:
        """One stdin/stdout case; the judge compares the output with `expected` itself and answers a verdict."""
        started, reply, run = self._judge({"mode": "stdio", "program": program, "stdin": stdin,
                                           "expected": expected}, 1)
        if not started:
            return _Outcome(["sandbox_error"], [_stderr_tail(run)], run.truncated)
        if reply is None:
            status, detail = self._lost(run)
            return _Outcome([status], [detail], run.truncated)
        return _oom(run, _Outcome([reply["verdict"]], [reply["detail"]], reply["truncated"]))


def _oom(run: SandboxRun, outcome: _Outcome) -> _Outcome:
    """The kernel killed in the box for its memory cgroup while the judge lived on: the submission it killed shows
    as a runtime error in the judge's reply; name it for what it was."""
    if run.extra.get("memory_limit"):
        for i, status in enumerate(outcome.statuses):
            if status == "runtime_error":
                outcome.statuses[i], outcome.details[i] = "memory_limit", "the box's memory cgroup limit"
    return outcome


def _stderr_tail(run: SandboxRun) -> str:
    return run.stderr.decode(errors="replace").strip().replace("\n", " ")[-200:] or f"exit {run.returncode}"


def _summarize(outcome: _Outcome, fraction: bool, null_on_timeout: bool = False) -> RewardResult:
    statuses = outcome.statuses
    total = len(statuses)
    passed = statuses.count("passed")
    info = {"statuses": statuses, "details": outcome.details, "passed": passed, "total": total,
            "truncated": outcome.truncated}
    failures = [s for s in statuses if s != "passed"]
    reason = f"passed {passed}/{total}" + (f"; first failure: {failures[0]}" if failures else "")
    if "sandbox_error" in statuses:
        first = statuses.index("sandbox_error")
        return RewardResult(None, f"sandbox_error: {outcome.details[first]}", info)
    if null_on_timeout and "timeout" in statuses:
        return RewardResult(None, f"timeout: {outcome.details[statuses.index('timeout')]}", info)
    score = passed / total if fraction else float(passed == total)
    return RewardResult(score, reason, info)


def code_results(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    tests: Sequence[Any] | None = None,
    entry_point: Sequence[str | None] | None = None,
    fraction: bool = False,
    workers: int | None = None,
    timeout_s: float = 5.0,
    limits: SandboxLimits | None = None,
    python: str | None = None,
    site_packages: bool = False,
    allow_unsandboxed_code_execution: bool = False,
    sandbox: Sandbox | None = None,
    null_on_timeout: bool = False,
    **columns: Any,
) -> list[RewardResult]:
    """Run each completion's program against its row's `tests` in the sandbox; see the module docstring.

    `timeout_s` is per test; `workers` launches run in parallel (default: CPU cores); `limits` sets the sandbox's
    memory/process/file/output limits; `python` is the interpreter used inside the sandbox (its install prefix, and
    for a virtual environment the venv, are mounted read-only; default: the base interpreter of this one);
    `site_packages=True` lets programs import that interpreter's installed packages (default: standard library).
    `sandbox`: an open `Sandbox` to use instead of making one for this call (its limits, interpreter, workers and
    unsandboxed flag then apply). A test that runs out of time scores 0 like any other failure (a policy must not
    escape the penalty by being slow); `null_on_timeout=True` makes such rows null instead, reason `timeout`.
    """
    n = len(completions)
    if tests is None:
        raise ValueError("code reward needs a `tests` column (test program, list of asserts, or stdin/stdout cases)")
    if len(tests) != n or len(prompts) != n:
        raise ValueError(f"code reward got {len(prompts)} prompts, {n} completions and {len(tests)} tests rows")
    if entry_point is None or isinstance(entry_point, str):
        entry_points = [entry_point] * n
    else:  # a missing value in a DataFrame column (None, NaN) means "no entry point"
        entry_points = [e if isinstance(e, str) and e else None for e in entry_point]
    results: list[RewardResult | None] = [None] * n
    jobs = []  # (row, kind, payload)
    for row in range(n):
        try:
            suite = parse_tests(tests[row], entry_points[row])
        except (ValueError, TypeError) as exc:
            results[row] = RewardResult(None, f"bad_tests: row {row}: {exc}", {})
            continue
        try:
            program = build_program(prompts[row], completions[row], entry_points[row])
        except TypeError as exc:
            results[row] = RewardResult(None, f"bad_completion: row {row}: {exc}", {})
            continue
        if suite.mode == "asserts":
            helpers = prompt_helpers(prompts[row], entry_points[row])
            jobs.append((row, "asserts", (program, suite.items, entry_points[row], helpers)))
        else:
            jobs.extend((row, "stdio", (program, stdin, expected)) for stdin, expected in suite.items)
    if not jobs:
        return [r for r in results]  # type: ignore[misc]
    if sandbox is not None:
        return _finish(results, jobs, _run_jobs(sandbox, jobs, timeout_s, site_packages), fraction,
                       null_on_timeout)
    workers = max(1, min(workers or len(os.sched_getaffinity(0)), len(jobs)))
    with Sandbox(limits or SandboxLimits(), workers=workers, python=python,
                 allow_unsandboxed_code_execution=allow_unsandboxed_code_execution) as own:
        outcomes = _run_jobs(own, jobs, timeout_s, site_packages)
    return _finish(results, jobs, outcomes, fraction, null_on_timeout)


def _run_jobs(sandbox: Sandbox, jobs: list, timeout_s: float, site_packages: bool) -> list[_Outcome]:
    runner = _Runner(sandbox, timeout_s, site_packages=site_packages)

    def do(job) -> _Outcome:
        _, kind, payload = job
        try:
            if kind == "asserts":
                return runner.run_asserts(*payload)
            return runner.run_case(*payload)
        except Exception as exc:  # noqa: BLE001 - one broken launch must not sink the batch
            size = len(payload[1]) if kind == "asserts" else 1
            return _Outcome(["sandbox_error"] * size, [f"{type(exc).__name__}: {exc}"] * size)

    with ThreadPoolExecutor(min(sandbox.workers, len(jobs))) as pool:
        return list(pool.map(do, jobs))


def _finish(results: list, jobs: list, outcomes: list[_Outcome], fraction: bool,
            null_on_timeout: bool = False) -> list[RewardResult]:
    per_row: dict[int, _Outcome] = {}
    for (row, _, _), outcome in zip(jobs, outcomes):
        merged = per_row.setdefault(row, _Outcome([], []))
        merged.statuses += outcome.statuses
        merged.details += outcome.details
        merged.truncated |= outcome.truncated
    for row, outcome in per_row.items():
        results[row] = _summarize(outcome, fraction, null_on_timeout)
    return results  # type: ignore[return-value]


def code_fraction_results(prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[RewardResult]:
    """`code_results` scored by the share of tests passed (CLI: `--reward code:fraction`)."""
    return code_results(prompts, completions, **{**columns, "fraction": True})


code_reward = trl_reward(code_results)
code_fraction_reward = trl_reward(code_fraction_results)
