"""Reward specs from the command line -> reward functions that always answer with one result per row.

A spec is `NAME[:ARG]`. Built-in names (the one name -> function map, `BUILTINS`):

    math              math_results (gold in the `answer` column); `math:last_number` adds the last-number fallback;
                      `math:markers` scores a completion with no answer marker `no_answer` (extraction="markers")
    code              code_results (tests in the `tests` column); `code:fraction` scores the fraction of tests passed
    format:think      the R1 `<think>...</think> answer` template
    format:boxed      exactly one non-empty `\\boxed{...}` (shaping for math policies that don't mark answers yet)
    format:REGEX      any other argument is a regex the whole completion must match (re.fullmatch, DOTALL)
    overlong:MAX,CACHE[,TOKENIZER]   DAPO soft overlong penalty
    rm:MODEL          a sequence-classification reward model (local folder or hub name)
    prm:DIR[:AGG]     a process reward model (`train prm` output): its step scores aggregated by min (default),
                      prod, last or mean; the reason lists every step's score (rewards/prm.py)
    turn_reward       a trajectory's summed per-turn rewards from its environment (`turn_reward` column, written by
                      `generate --env`); null `no_turn_reward` when the environment gave none
    tool_use          1 when a trajectory made at least one tool call and none failed, else 0 (`no_tool_call`,
                      `tool_errors: N`): shaping for a policy that does not call its tools yet
    judge:RUBRIC@URL#MODEL   an LLM judge's pointwise score (built by pipelines/stages/label.py, since this leaf
                      library may not import judges/; docs/judges.md)

Anything else is a user function with TRL's signature, `fn(prompts, completions, **columns)`, named as
`my_module:my_fn` (importable; the current directory is on the path) or `path/to/file.py:my_fn`. It may be
`async def`, and may return floats / None or `RewardResult`s. A built-in name wins over a module of the same
name; use the file form for such a module.

`RewardFn.score` never raises for a bad batch: an exception in the function, a list of the wrong length or a
value that is not a number become null results whose reason starts with `error:` (counted by the label stage).
A failure of the worker pool itself (`rewards.pool.PoolError`) is not a fact about the rows: it is raised, and
the stage stops without writing the batch.
A spec that cannot load (missing module, file, function, model) raises `RewardSpecError` before any work.
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import importlib
import importlib.util
import inspect
import math
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from rewards.pool import PoolError
from rewards.result import RewardResult

ERROR_PREFIX = "error: "


class RewardSpecError(ValueError):
    """A `--reward` spec that cannot be turned into a function (the CLI shows the message, no traceback)."""


@dataclass
class Options:
    """Settings the label stage passes to the built-ins that use them."""

    workers: int | None = None  # worker processes for math / code
    device: str | None = None  # reward-model device (default: PREFSMITH_RM_DEVICE, else cuda if available)
    batch_size: int = 16  # reward-model batch size
    allow_unsandboxed_code: bool = False  # code reward without isolation (loudly named CLI flag only)
    null_on_timeout: bool = False  # math / code: None instead of 0 when the checker times out (audits)


@dataclass
class RewardFn:
    """One reward ready to run. `fn` returns floats (TRL) or RewardResults; `score` turns either into results."""

    name: str  # the column name in `rewards` / `reward_info` (before de-duplication)
    spec: str
    fn: Callable[..., Any]
    required: list[str] = field(default_factory=list)  # dataset columns it needs
    fingerprint: str = ""  # changes when the function's source file changes
    workers: int = 1  # > 1: a user function runs on slices of each batch in this many worker processes
    nullable: bool = False  # its `required` columns may hold nulls: it scores such a row null itself (bad_gold)
    _pool: Any = field(default=None, repr=False)

    def score(self, prompts: Sequence[Any], completions: Sequence[Any], columns: dict[str, list]) -> list[RewardResult]:
        n = len(completions)
        if self.workers > 1 and n > 1:
            return self._score_in_workers(list(prompts), list(completions), columns)
        try:
            value = self.fn(list(prompts), list(completions), **columns)
            if inspect.isawaitable(value):
                value = run_coroutine(value)
        except PoolError:  # the worker pool failed, not the rows: the caller stops (no null is recorded)
            raise
        except Exception as e:  # the user's function failed on this batch: null these rows, keep going
            return [RewardResult(None, f"{ERROR_PREFIX}{type(e).__name__}: {_one_line(e)}")] * n
        return to_results(value, n)

    def _score_in_workers(self, prompts: list, completions: list, columns: dict[str, list]) -> list[RewardResult]:
        from rewards.pool import WorkerPool

        if self._pool is None:
            self._pool = WorkerPool(self.workers, timeout=WORKER_TIMEOUT_S, preload=["rewards.plugins"])
        n = len(completions)
        step = -(-n // self.workers)
        cuts = [(a, min(a + step, n)) for a in range(0, n, step)]
        items = [(self.spec, prompts[a:b], completions[a:b], {k: v[a:b] for k, v in columns.items()}) for a, b in cuts]
        out: list[RewardResult] = []
        for (a, b), outcome in zip(cuts, self._pool.map(call_in_worker, items)):
            if outcome.status == "ok":
                out.extend(outcome.value)
            else:  # the worker reports "ValueError: message\n<traceback>"; keep the first line
                msg = outcome.error.splitlines()[0] if outcome.error else outcome.status
                out.extend([RewardResult(None, f"{ERROR_PREFIX}{_one_line(Exception(msg))}")] * (b - a))
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


WORKER_TIMEOUT_S = 600.0  # per slice of a batch; a hung user function is killed and its rows get null
_WORKER_FNS: dict[str, Callable] = {}


def call_in_worker(item: tuple[str, list, list, dict[str, list]]) -> list[RewardResult]:
    """Worker-process side of `RewardFn` with workers > 1: load the spec once, score one slice."""
    spec, prompts, completions, columns = item
    if spec not in _WORKER_FNS:
        _WORKER_FNS[spec] = load_function(spec)
    value = _WORKER_FNS[spec](prompts, completions, **columns)
    if inspect.isawaitable(value):
        value = run_coroutine(value)
    return to_results(value, len(completions))


def _one_line(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_coroutine(coro) -> Any:
    """Run a coroutine to completion, also when called from inside a running event loop (e.g. Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as e:  # re-raised in the calling thread
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def to_results(value: Any, n: int) -> list[RewardResult]:
    """A reward function's return value -> exactly n RewardResults (nulls with reasons for what is not usable)."""
    if hasattr(value, "tolist") and not isinstance(value, (list, tuple)):  # numpy array / torch tensor
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        return [RewardResult(None, f"{ERROR_PREFIX}returned {type(value).__name__}, expected a list of {n} scores")] * n
    if len(value) != n:
        return [RewardResult(None, f"{ERROR_PREFIX}returned {len(value)} scores for {n} rows")] * n
    return [_one_result(v) for v in value]


def _one_result(v: Any) -> RewardResult:
    if isinstance(v, RewardResult):
        if v.score is None:
            return v if v.reason != "ok" else RewardResult(None, "returned_none", v.info)
        return _one_result(v.score) if _bad_number(v.score) else RewardResult(float(v.score), v.reason, v.info)
    if v is None:
        return RewardResult(None, "returned_none")
    if _bad_number(v):
        if isinstance(v, float) and math.isnan(v):
            return RewardResult(None, "returned_nan")
        return RewardResult(None, f"{ERROR_PREFIX}score {v!r} is not a finite number")
    return RewardResult(float(v), "ok")


def _bad_number(v: Any) -> bool:
    try:
        return isinstance(v, (str, bytes)) or not math.isfinite(float(v))
    except (TypeError, ValueError):
        return True


# ------------------------------------------------------------------------------------------------ built-ins
def _math(arg: str, opts: Options) -> Callable:
    from rewards import math as m

    if arg not in ("", "last_number", "markers"):
        raise RewardSpecError(f"math:{arg}: unknown option; use `math`, `math:last_number` or `math:markers`")
    return functools.partial(m.math_results, last_number_fallback=arg == "last_number",
                             extraction="markers" if arg == "markers" else "mathverify", workers=opts.workers,
                             null_on_timeout=opts.null_on_timeout)


def _code(arg: str, opts: Options) -> Callable:
    try:
        from rewards import code as c
    except ImportError as e:
        raise RewardSpecError(f"code reward is not available here ({e})") from None
    if arg not in ("", "fraction"):
        raise RewardSpecError(f"code:{arg}: unknown option; use `code` or `code:fraction`")
    from rewards.sandbox import Sandbox, SandboxUnavailable

    try:  # fail before any work when the isolation layer cannot start here
        with Sandbox(workers=1, allow_unsandboxed_code_execution=opts.allow_unsandboxed_code):
            pass
    except SandboxUnavailable as e:
        raise RewardSpecError(f"code reward: {e}") from None
    # null_on_timeout only where code_results takes it by name (**columns would take it as a column)
    extra = {"null_on_timeout": True} if opts.null_on_timeout and "null_on_timeout" in inspect.signature(
        c.code_results).parameters else {}
    return functools.partial(c.code_results, fraction=arg == "fraction", workers=opts.workers,
                             allow_unsandboxed_code_execution=opts.allow_unsandboxed_code, **extra)


def _format(arg: str, opts: Options) -> Callable:
    from rewards import format as f

    if not arg:
        raise RewardSpecError("format needs an argument: `format:think`, `format:boxed` or `format:REGEX`")
    if arg == "think":
        return f.think_format_results
    if arg == "boxed":
        return f.boxed_format_results
    try:
        return f.RegexFormat(arg).results
    except ValueError as e:
        raise RewardSpecError(str(e)) from None


def _overlong(arg: str, opts: Options) -> Callable:
    from rewards import format as f

    parts = [p.strip() for p in arg.split(",")]
    try:
        max_len, cache = int(parts[0]), int(parts[1])
    except (ValueError, IndexError):
        raise RewardSpecError(f"overlong:{arg}: write overlong:MAX,CACHE[,TOKENIZER] with token counts, "
                              "e.g. overlong:20480,4096 (DAPO)") from None
    tokenizer = parts[2] if len(parts) > 2 and parts[2] else None
    try:
        return f.Overlong(max_len, cache, tokenizer).results
    except ValueError as e:
        raise RewardSpecError(str(e)) from None


def _rm(arg: str, opts: Options) -> Callable:
    from rewards import rm

    if not arg:
        raise RewardSpecError("rm needs a model: rm:path/to/model or rm:org/name")
    try:
        return rm.RewardModel(arg, device=opts.device, batch_size=opts.batch_size).results
    except ValueError as e:
        raise RewardSpecError(str(e)) from None


def _prm(arg: str, opts: Options) -> Callable:
    from rewards import prm

    model, _, how = arg.rpartition(":")
    if how not in prm.AGGREGATES:  # no aggregate given (or a colon inside the path)
        model, how = arg, "min"
    if not model:
        raise RewardSpecError("prm needs a model: prm:path/to/prm[:min|prod|last|mean]")
    try:
        return prm.ProcessRewardModel(model, how, device=opts.device, batch_size=opts.batch_size).results
    except ValueError as e:
        raise RewardSpecError(str(e)) from None


def turn_reward_results(prompts, completions, turn_reward=None, **columns) -> list[RewardResult]:
    """The environment's per-turn rewards summed over the trajectory (`turn_reward`, pipelines/envs/base.py). A row
    without them (an environment that gives none, or a row that is no trajectory) is data missing: null."""
    values = turn_reward if turn_reward is not None else [None] * len(completions)
    return [RewardResult(None, "no_turn_reward") if v is None else RewardResult(float(v), "turn_reward")
            for v in values]


def tool_use_results(prompts, completions, tool_calls=None, tool_errors=None, **columns) -> list[RewardResult]:
    """1 when the trajectory made at least one tool call and none of its calls failed, else 0 with the reason
    (`no_tool_call`, `tool_errors: N`); null `not_a_trajectory` on a row without the counts."""
    n = len(completions)
    calls = tool_calls if tool_calls is not None else [None] * n
    errors = tool_errors if tool_errors is not None else [None] * n
    out = []
    for c, e in zip(calls, errors):
        if c is None:
            out.append(RewardResult(None, "not_a_trajectory"))
        elif int(c) < 1:
            out.append(RewardResult(0.0, "no_tool_call"))
        elif e:
            out.append(RewardResult(0.0, f"tool_errors: {int(e)}"))
        else:
            out.append(RewardResult(1.0, "clean_tool_use"))
    return out


def _turn_reward(arg: str, opts: Options) -> Callable:
    if arg:
        raise RewardSpecError(f"turn_reward:{arg}: takes no argument")
    return turn_reward_results


def _tool_use(arg: str, opts: Options) -> Callable:
    if arg:
        raise RewardSpecError(f"tool_use:{arg}: takes no argument")
    return tool_use_results


BUILTINS: dict[str, Callable[[str, Options], Callable]] = {
    "math": _math,
    "code": _code,
    "format": _format,
    "overlong": _overlong,
    "rm": _rm,
    "prm": _prm,
    "turn_reward": _turn_reward,
    "tool_use": _tool_use,
}
# columns a built-in reads: they must exist in the input, and may hold nulls (that row's reward is null)
REQUIRED_COLUMNS = {"math": ["answer"], "code": ["tests"], "turn_reward": ["turn_reward"],
                    "tool_use": ["tool_calls", "tool_errors"]}
# built-ins that read the trajectory columns `generate --env` writes (the online trainers need `--env` for them)
TRAJECTORY_REWARDS = ("turn_reward", "tool_use")


# ------------------------------------------------------------------------------------------------ user functions
def _file_module(path: Path):
    key = "prefsmith_plugin_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, path)
    if spec is None or spec.loader is None:
        raise RewardSpecError(f"{path}: cannot be loaded as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module  # so dataclasses, pickling and relative lookups inside the file work
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[key]
        raise RewardSpecError(f"{path}: running the file failed: {type(e).__name__}: {e}") from None
    return module


def _import_module(name: str, what: str = "reward", form: str = "path/to/file.py:function"):
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: modules in the current directory are found
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and (name == e.name or name.startswith(e.name + ".")):
            raise RewardSpecError(f"no module named {e.name!r} (from {what} {name!r}); run from the folder that holds "
                                  f"it, add that folder to PYTHONPATH, or name the file: {form}") from None
        raise RewardSpecError(f"importing {name!r} failed: {type(e).__name__}: {e}") from None
    except Exception as e:
        raise RewardSpecError(f"importing {name!r} failed: {type(e).__name__}: {e}") from None


# the same loading for other plug-ins (pipelines/envs loads environment classes with them)
load_file_module = _file_module
import_plugin_module = _import_module


def load_function(spec: str) -> Callable:
    """`module:fn` or `path/to/file.py:fn` -> the function (RewardSpecError with a clear message otherwise)."""
    target, sep, fn_name = spec.rpartition(":")
    if not sep or not target or not fn_name:
        raise RewardSpecError(f"reward {spec!r}: name a built-in ({', '.join(BUILTINS)}) or a function as "
                              "module:function or path/to/file.py:function")
    is_file = target.endswith(".py") or "/" in target or os.sep in target
    if is_file:
        path = Path(target).expanduser()
        if not path.is_file():
            raise RewardSpecError(f"reward {spec!r}: file {target} not found")
        module = _file_module(path)
    else:
        module = _import_module(target)
    fn = getattr(module, fn_name, None)
    if fn is None:
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
                       and getattr(v, "__module__", None) == module.__name__)
        raise RewardSpecError(f"reward {spec!r}: {target} has no function {fn_name!r}"
                              + (f" (it defines {', '.join(found)})" if found else ""))
    if not callable(fn):
        raise RewardSpecError(f"reward {spec!r}: {fn_name} is a {type(fn).__name__}, not a function")
    return fn


def _needed_columns(fn: Callable) -> list[str]:
    """Parameters after (prompts, completions) with no default: columns the dataset must have."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return []
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    extra = positional[2:] + [p for p in params if p.kind == p.KEYWORD_ONLY]
    return [p.name for p in extra if p.default is p.empty and p.name not in ("completion_ids",)]


def _file_fingerprint(fn: Callable) -> str:
    try:
        src = inspect.getsourcefile(inspect.unwrap(fn)) or ""
        return hashlib.sha256(Path(src).read_bytes()).hexdigest()[:16] if src else ""
    except (TypeError, OSError):
        return ""


def build(spec: str, options: Options | None = None) -> RewardFn:
    """A `--reward` spec -> RewardFn (see module docstring for the forms).

    Built-ins manage their own parallelism (math/code pools get `options.workers`); a synchronous user function
    runs in `options.workers` worker processes when that is > 1 (async ones stay in this process).
    """
    options = options or Options()
    head, _, arg = spec.partition(":")
    if head in BUILTINS:
        return RewardFn(head, spec, BUILTINS[head](arg, options), list(REQUIRED_COLUMNS.get(head, [])), nullable=True)
    fn = load_function(spec)
    name = spec.rpartition(":")[2]
    workers = 1 if inspect.iscoroutinefunction(fn) else (options.workers or 1)
    return RewardFn(name, spec, fn, _needed_columns(fn), _file_fingerprint(fn), workers=workers)
