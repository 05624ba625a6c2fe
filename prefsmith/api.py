"""Every `prefsmith` command as a Python function of keyword arguments named like its flags.

    import prefsmith

    rollouts = prefsmith.generate(model="default", input="prompts.jsonl", output="runs/rollouts", n=4,
                                  max_new_tokens=128)
    rollouts.summary["rows"], rollouts.dataset()   # the manifest's counts; the rows as a datasets.Dataset

A call becomes the command line the CLI would parse: `max_new_tokens=128` is `--max-new-tokens=128`, a list
repeats a repeatable flag (`reward=["math", "format:boxed"]`), a dict gives a repeatable `NAME=VALUE` flag one
item per key (`weight={"format": 0.2}`), `True` sets a switch and `False` or `None` leaves it out. That line is
parsed by the command's own parser and run by the command's own `run`, exactly as `prefsmith COMMAND` does, so
the API and the CLI cannot disagree; a keyword no flag has is one `UsageError` naming it, with a did-you-mean.

Where a flag takes a dataset (`input`, `prompts`, `data`...), rows in memory work too: a list of dicts, a
`datasets.Dataset` or a `pyarrow.Table` is written as JSONL to `.prefsmith-inputs/` beside the output (named after
the output and the flag, so a rerun with the same rows resumes) and the command reads that file. A function where
a flag takes a reward spec (`reward=[my_reward]`) is passed by its name, `module:function`, which works for a
function defined at the top level of a module, a script or a notebook.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import io
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from pipelines.cli import COMMANDS, Parser, command_parser
from pipelines.core import dataset as ds
from pipelines.core.files import atomic_write_text
from pipelines.errors import UsageError, UserError

INPUTS_DIR = ".prefsmith-inputs"  # beside an output: rows given in memory, as the JSONL the command read

# manifest fields about how a dataset was made, not what it holds (left out of `Result.summary`)
_MANIFEST_BOOKKEEPING = {"stage", "fingerprint", "config", "input", "shard_size", "group_by", "num_shards",
                         "completed_shards", "shards", "rows_in", "rows_out", "complete", "versions", "started_at",
                         "finished_at", "executor", "run", "reward_sources", "summary", "stats", "seconds"}


# ------------------------------------------------------------------------------------------------ results
@dataclass
class Result:
    """What a command wrote: `path` (a dataset directory, or the file `export` wrote) and `summary` (the rows
    written and the stage's own figures from its manifest; `eval` adds eval.json, `stats` is its statistics)."""

    path: Path
    summary: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> list[dict]:
        """The rows, as dicts."""
        return ds.load_rows(self.path) if self.summary.get("rows") != 0 else []

    def dataset(self):
        """The rows as a `datasets.Dataset` (in memory, from the Parquet shards or the JSONL)."""
        try:
            import datasets
        except ImportError:
            raise UserError("Result.dataset() needs the `datasets` package: pip install datasets") from None
        if self.summary.get("rows") == 0:
            return datasets.Dataset.from_list([])
        return datasets.Dataset(ds.load_table(self.path))

    def __repr__(self) -> str:
        return f"Result(path={str(self.path)!r}, rows={self.summary.get('rows')})"


def dataset_summary(path: str | os.PathLike) -> dict[str, Any]:
    """A dataset directory's figures: rows written (`rows`), rows read (`rows_in`), the stage's counters (`stats`)
    and summary, its other results (decontamination, prm, KTO weights...) and `eval.json` where there is one."""
    path = Path(path)
    manifest = ds.read_manifest(path) or {}
    out: dict[str, Any] = {"stage": manifest.get("stage"), "rows": manifest.get("rows_out"),
                           "rows_in": manifest.get("rows_in"), "seconds": manifest.get("seconds")}
    if manifest.get("stats"):
        out["stats"] = manifest["stats"]
    out.update(manifest.get("summary") or {})
    out.update({k: v for k, v in manifest.items() if k not in _MANIFEST_BOOKKEEPING})
    if (path / "eval.json").is_file():
        out.update(json.loads((path / "eval.json").read_text()))
    return out


# ------------------------------------------------------------------------------------------------ keywords -> argv
def _options(parser: Parser) -> list[argparse.Action]:
    """The parser's actions once its finishing pass (canonical aliases, --config) has run."""
    parser.finish()
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]


def keywords(parsers: Sequence[Parser]) -> tuple[dict[str, tuple[str, argparse.Action]], list[str]]:
    """Keyword name -> (flag, action) for every `--flag` of `parsers` (first parser wins), and the first
    parser's positional arguments by name."""
    flags: dict[str, tuple[str, argparse.Action]] = {}
    for parser in parsers:
        for action in _options(parser):
            for flag in action.option_strings:
                if flag.startswith("--"):
                    flags.setdefault(flag[2:].replace("-", "_"), (flag, action))
    positional = [a.dest for a in _options(parsers[0]) if not a.option_strings]
    return flags, positional


def command_line(parsers: Sequence[Parser], options: dict[str, Any], where: str,
                 fixed: Sequence[str] = ()) -> list[str]:
    """Keyword arguments -> the argv `parsers` parse (module docstring). `fixed`: positionals the caller fills."""
    flags, positional = keywords(parsers)
    known = [*flags, *(p for p in positional if p not in fixed)]
    argv = [_text(options[p], p, where) for p in positional if p not in fixed and options.get(p) is not None]
    for key, value in options.items():
        name = key[:-1] if key.endswith("_") and key[:-1] in flags else key  # from_ -> --from
        if name in positional and name not in fixed:
            continue
        if name not in flags:
            close = difflib.get_close_matches(name, known, 1, 0.6)
            hint = f"did you mean {close[0]}?" if close else f"the keywords are `{parsers[0].prog} --help`'s flags"
            raise UsageError(f"{where}: unknown keyword argument {key!r}; {hint}")
        if value is None:
            continue
        flag, action = flags[name]
        if action.nargs == 0:  # a switch
            if not isinstance(value, bool):
                raise UsageError(f"{where}: {key} is a switch; give True or False, not {value!r}")
            if isinstance(action, argparse.BooleanOptionalAction):  # --x / --no-x
                on = value if flag == action.option_strings[0] else not value
                argv.append(action.option_strings[0 if on else 1])
            elif value:
                argv.append(flag)
        elif isinstance(action, argparse._AppendAction):
            items = ([f"{k}={json.dumps(v)}" for k, v in value.items()] if isinstance(value, dict)
                     else list(value) if isinstance(value, (list, tuple)) else [value])
            argv += [f"{flag}={_text(v, key, where)}" for v in items]
        else:
            if isinstance(value, (list, tuple, dict, set)):
                raise UsageError(f"{where}: {key} takes one value, not a {type(value).__name__}")
            argv.append(f"{flag}={_text(value, key, where)}")
    return argv


def _text(value: Any, key: str, where: str) -> str:
    """One value as the command line spells it; a function as `module:function` (how reward specs name one)."""
    if callable(value) and not isinstance(value, type):
        module = sys.modules.get(getattr(value, "__module__", "") or "")
        name = getattr(value, "__qualname__", "")
        if module is None or getattr(module, name, None) is not value:
            raise UsageError(f"{where}: {key}: {value!r} cannot be named as module:function; define it at the top "
                             "level of a module, script or notebook (not a lambda or a nested function), or give "
                             "its spec as a string")
        return f"{value.__module__}:{name}"
    if isinstance(value, bool):
        return str(value).lower()
    return os.fspath(value) if isinstance(value, os.PathLike) else str(value)


# ------------------------------------------------------------------------------------------------ rows in memory
def is_rows(value: Any) -> bool:
    """Rows in memory: a `datasets.Dataset`, a `pyarrow.Table`, or a non-empty list of dicts."""
    if isinstance(value, (list, tuple)):
        return bool(value) and all(isinstance(r, dict) for r in value)
    kind = type(value).__module__.split(".")[0]
    return (kind == "datasets" and hasattr(value, "to_list")) or (kind == "pyarrow" and hasattr(value, "to_pylist"))


def as_rows(value: Any) -> list[dict]:
    if isinstance(value, (list, tuple)):
        return list(value)
    return value.to_list() if hasattr(value, "to_list") else value.to_pylist()


def write_rows(rows: Any, path: Path, where: str) -> Path:
    """Rows in memory -> a JSONL file (atomically; unchanged content is not rewritten, so resume holds)."""
    lines = []
    for i, row in enumerate(as_rows(rows)):
        try:
            lines.append(json.dumps(row, ensure_ascii=False) + "\n")
        except (TypeError, ValueError) as e:
            raise UserError(f"{where}: row {i}: cannot be written as JSON ({e})") from None
    text = "".join(lines)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)
    return path


def materialize(options: dict[str, Any], where: str) -> dict[str, Any]:
    """Options whose value is rows in memory (or a list of such, for a repeatable flag) -> JSONL paths under
    OUTPUT's parent/.prefsmith-inputs/ (a temporary folder for a command without an output directory)."""
    out = dict(options)
    target = options.get("output")
    folder = Path(target).parent / INPUTS_DIR if target is not None else None
    stem = Path(target).name if target is not None else "rows"
    for key, value in options.items():
        many = isinstance(value, (list, tuple)) and not is_rows(value) and any(is_rows(v) for v in value)
        if not is_rows(value) and not many:
            continue
        folder = folder or Path(tempfile.mkdtemp(prefix="prefsmith-"))
        if many:
            out[key] = [write_rows(v, folder / f"{stem}.{key}-{i}.jsonl", where) if is_rows(v) else v
                        for i, v in enumerate(value)]
        else:
            out[key] = write_rows(value, folder / f"{stem}.{key}.jsonl", where)
    return out


# ------------------------------------------------------------------------------------------------ commands
def run_command(name: str, options: dict[str, Any]) -> argparse.Namespace:
    """Parse `options` with command `name`'s own parser and run it (as `prefsmith NAME ...` does); raises
    UserError / UsageError where the CLI would print one line. Returns the parsed arguments."""
    where = f"prefsmith.{FUNCTIONS[name].__name__}"
    module = importlib.import_module(COMMANDS[name][0])
    parser = command_parser(name, module)
    args = parser.parse_args(command_line([parser], materialize(options, where), where))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    status = int(module.run(args) or 0)
    if status:
        raise UserError(f"{where}: `prefsmith {name}` ended with status {status}")
    return args


def _dataset_command(name: str, options: dict[str, Any]) -> Result:
    args = run_command(name, options)
    return Result(Path(args.output), dataset_summary(args.output))


def generate(**options: Any) -> Result:
    """`prefsmith generate`: N completions per prompt (options: `prefsmith generate --help`, docs/engines.md)."""
    return _dataset_command("generate", options)


def label(**options: Any) -> Result:
    """`prefsmith label`: reward columns for rollouts (docs/rewards.md); `reward=` takes specs or functions."""
    return _dataset_command("label", options)


def prm_label(**options: Any) -> Result:
    """`prefsmith prm-label`: Monte Carlo step labels for process reward models (docs/prm.md)."""
    return _dataset_command("prm-label", options)


def judge(**options: Any) -> Result:
    """`prefsmith judge`: an LLM judge's pointwise scores or pairwise preferences (docs/judges.md)."""
    return _dataset_command("judge", options)


def critique_revise(**options: Any) -> Result:
    """`prefsmith critique-revise`: critique and revise responses against principles (docs/judges.md)."""
    return _dataset_command("critique-revise", options)


def dedup(**options: Any) -> Result:
    """`prefsmith dedup`: exact and near-duplicate removal (docs/hygiene.md)."""
    return _dataset_command("dedup", options)


def decontaminate(**options: Any) -> Result:
    """`prefsmith decontaminate`: drop rows overlapping evaluation sets (docs/hygiene.md)."""
    return _dataset_command("decontaminate", options)


def pairs(**options: Any) -> Result:
    """`prefsmith pairs`: DPO preference pairs from labeled rollouts (docs/builders.md)."""
    return _dataset_command("pairs", options)


def kto(**options: Any) -> Result:
    """`prefsmith kto`: KTO rows with binary labels from labeled rollouts (docs/builders.md)."""
    return _dataset_command("kto", options)


def select(**options: Any) -> Result:
    """`prefsmith select`: rejection-sampling (RFT) SFT sets (docs/builders.md)."""
    return _dataset_command("select", options)


def evaluate(**options: Any) -> Result:
    """`prefsmith eval`: accuracy, pass@k, maj@k (docs/eval.md); `summary` holds eval.json
    (`summary["overall"]["accuracy"]`). Also `prefsmith.eval`."""
    return _dataset_command("eval", options)


def stats(**options: Any) -> Result:
    """`prefsmith stats INPUT`: the statistics as `summary` (what `--json` prints; nothing is printed), and
    the histograms' PNG unless `no_plot=True`."""
    options = {**options, "json": True}
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        args = run_command("stats", options)
    return Result(Path(args.input), json.loads(printed.getvalue()))


def export(**options: Any) -> Result:
    """`prefsmith export INPUT OUTPUT`: any dataset as JSONL."""
    args = run_command("export", options)
    with open(args.output, encoding="utf-8") as f:
        rows = sum(1 for _ in f)
    return Result(Path(args.output), {"rows": rows})


def run(**options: Any) -> Result:
    """`prefsmith run PIPELINE.yaml`: `path` is the workdir, `summary["outputs"]` each stage's output."""
    import yaml

    from pipelines import pipeline

    args = run_command("run", options)
    overrides = {}
    for item in args.set:  # as `prefsmith run` read them (a malformed one was refused there)
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    spec = pipeline.load_pipeline(args.pipeline, overrides)
    workdir = Path(spec.get("workdir") or Path(args.pipeline).with_suffix(""))
    outputs: dict[str, str] = {}
    for stage in spec["stages"]:
        pipeline.stage_argv(stage, outputs, workdir, spec.get("executor"))
    return Result(workdir, {"outputs": outputs})


# command name -> its function (pipelines/cli.py COMMANDS; `train` is prefsmith.train)
FUNCTIONS: dict[str, Callable[..., Result]] = {
    "generate": generate, "label": label, "prm-label": prm_label, "judge": judge, "critique-revise": critique_revise,
    "dedup": dedup, "decontaminate": decontaminate, "pairs": pairs, "kto": kto, "select": select, "eval": evaluate,
    "stats": stats, "export": export, "run": run,
}
