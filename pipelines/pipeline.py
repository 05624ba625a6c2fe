"""`prefsmith run PIPELINE.yaml`: run stages in order, each into its own directory, resumable as a whole.

    workdir: runs/demo              # each stage writes workdir/<name> unless it sets `output`
    stages:
      - name: rollouts
        command: generate           # any prefsmith command
        args: {model: default, input: data/math/train.jsonl, n: 4}
      - name: labeled
        command: label
        args: {input: "@rollouts", reward: [math, "format:think"]}   # @NAME = an earlier stage's output

`args` become command-line flags (`max_new_tokens` or `max-new-tokens` → `--max-new-tokens`; a list repeats the
flag; `true` → a bare flag). `@NAME/sub/path` is a path inside an earlier stage's output (a GRPO run's
`@grpo/model`).

Variables: a top-level `vars: {model: default, steps: 40}` mapping; `${model}` anywhere in a stage's args is
replaced (a value that is exactly `${steps}` keeps its type), and `prefsmith run FILE --set steps=2` overrides
a variable from the command line (how a recipe is shrunk for a test or grown for a GPU).

Rounds: a `repeat:` entry runs a block of stages R times, each round into `workdir/round-NNN/<stage>`:

    - repeat: {name: rounds, rounds: 3}
      first: {policy: default}                  # what `@prev.policy` means in round 0
      stages:
        - {name: rollouts, command: generate, args: {model: "@prev.policy", input: prompts.jsonl}}
        - {name: policy, command: train, args: {algo: sft, model: "@prev.policy", data: "@rollouts"}}

Inside the block `@NAME` is this round's stage, `@prev.NAME` the previous round's (round 0: the `first:` value,
itself a path or an `@stage` of the stages before the block); after the block `@rounds.NAME` is the last
round's. The block is expanded when the file is read (stage `rounds.2.policy` is round 2's `policy`), so
resume, `--only` and skipping work per round as for any stage. `executor:` at the top (every sharded stage) or in a stage (that stage) runs shards
on Ray: `executor: ray`, or `executor: {kind: ray, address: auto, num_cpus_per_worker: 2, ray_workers: 8}`.
Dataset stages skip finished work by themselves; for the others (train), a stage
that finished with the same arguments is recorded in `workdir/pipeline_state.json` and skipped on a rerun.

The whole file is checked before the first stage runs: every `@stage` reference, and every stage's arguments
parsed by its command's own parser (an unknown, misspelled or abbreviated argument is an error naming the file
and the stage), so a typo in the last stage is not found after the first ones ran for an hour.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from pipelines.core.files import atomic_write_json, ensure_writable_dir, fingerprint_json
from pipelines.errors import UserError

POSITIONAL = {"export": ("input", "output"), "stats": ("input",)}
TRAIN_COMMANDS = ("train",)
# commands whose shards an executor runs (they take --executor)
SHARDED = ("generate", "label", "eval", "dedup", "decontaminate", "pairs", "kto", "select")
EXECUTOR_KEYS = {"kind": "executor", "address": "ray_address", "ray_workers": "ray_workers", "workers": "ray_workers",
                 "num_cpus_per_worker": "num_cpus_per_worker", "num_gpus_per_worker": "num_gpus_per_worker"}


def executor_args(value: Any, where: str) -> dict[str, Any]:
    """A pipeline's `executor:` value (a kind, or a mapping) as the stage arguments it stands for."""
    if value is None:
        return {}
    if isinstance(value, str):
        value = {"kind": value}
    if not isinstance(value, dict) or "kind" not in value:
        raise UserError(f"{where}: `executor` must be local, ray, or a mapping with `kind` (e.g. {{kind: ray, "
                        "address: auto}})")
    unknown = sorted(set(value) - set(EXECUTOR_KEYS))
    if unknown:
        raise UserError(f"{where}: unknown executor key(s) {unknown}; expected {sorted(EXECUTOR_KEYS)}")
    return {EXECUTOR_KEYS[k]: v for k, v in value.items()}


def _substitute(value: Any, variables: dict[str, Any], where: str) -> Any:
    """`${name}` in every string of a stage's args; a string that is exactly `${name}` becomes the value itself."""
    if isinstance(value, dict):
        return {k: _substitute(v, variables, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, variables, where) for v in value]
    if not isinstance(value, str) or "${" not in value:
        return value

    def lookup(name: str) -> Any:
        if name not in variables:
            raise UserError(f"{where}: ${{{name}}} is not a variable of this pipeline (vars: {sorted(variables)})")
        return variables[name]

    whole = re.fullmatch(r"\$\{(\w+)\}", value)
    if whole:
        return lookup(whole.group(1))
    return re.sub(r"\$\{(\w+)\}", lambda m: str(lookup(m.group(1))), value)


def _expand_repeat(entry: dict, path: str, i: int) -> list[dict]:
    """A `repeat:` block as plain stages: round r's stage X is `BLOCK.r.X`, writing workdir/round-NNN/X."""
    rep = entry["repeat"]
    if not isinstance(rep, dict) or not isinstance(rep.get("rounds"), int) or rep["rounds"] < 1 or "name" not in rep:
        raise UserError(f"{path}: stage {i}: `repeat` needs `name` and a positive integer `rounds`")
    inner = entry.get("stages")
    if not isinstance(inner, list) or not inner:
        raise UserError(f"{path}: repeat block {rep['name']!r} needs a non-empty `stages:` list")
    block, first = rep["name"], dict(entry.get("first") or {})
    names = {st.get("name") for st in inner if isinstance(st, dict)}

    def rewrite(value: Any, r: int, where: str) -> Any:
        if isinstance(value, dict):
            return {k: rewrite(v, r, where) for k, v in value.items()}
        if isinstance(value, list):
            return [rewrite(v, r, where) for v in value]
        if not isinstance(value, str) or not value.startswith("@"):
            return value
        ref, _, sub = value[1:].partition("/")
        tail = f"/{sub}" if sub else ""
        if ref.startswith("prev."):
            name = ref[5:]
            if name not in names:
                raise UserError(f"{where}: {value} names no stage of block {block!r}")
            if r > 0:
                return f"@{block}.{r - 1}.{name}{tail}"
            if name not in first:
                raise UserError(f"{where}: {value} in round 0 needs `first: {{{name}: ...}}` in block {block!r}")
            return f"{first[name]}{tail}"
        if ref in names:
            return f"@{block}.{r}.{ref}{tail}"
        return value

    out = []
    for r in range(rep["rounds"]):
        for st in inner:
            if not isinstance(st, dict) or "name" not in st or "command" not in st:
                raise UserError(f"{path}: block {block!r}: every stage needs `name` and `command`")
            where = f"stage {block}.{r}.{st['name']!r}"
            args = rewrite(dict(st.get("args") or {}), r, where)
            if "output" not in args and st["command"] not in POSITIONAL:
                args["output"] = f"{{workdir}}/round-{r:03d}/{st['name']}"
            last = r == rep["rounds"] - 1  # the stages after the block read the last round as @BLOCK.NAME
            out.append({**st, "name": f"{block}.{r}.{st['name']}", "args": args,
                        **({"alias": f"{block}.{st['name']}"} if last else {})})
    return out


def load_pipeline(path: str, overrides: dict[str, Any] | None = None) -> dict:
    """Read a pipeline file: variables substituted, `repeat:` blocks expanded into plain stages."""
    try:
        spec = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such pipeline file") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("stages"), list) or not spec["stages"]:
        raise UserError(f"{path}: a pipeline file needs a non-empty `stages:` list")
    variables = dict(spec.get("vars") or {})
    unknown = sorted(set(overrides or {}) - set(variables))
    if unknown:
        raise UserError(f"{path}: --set {', '.join(unknown)}: not a variable of this pipeline (vars: {sorted(variables)})")
    variables.update(overrides or {})
    stages = []
    for i, entry in enumerate(spec["stages"]):
        if isinstance(entry, dict) and "repeat" in entry:
            stages += _expand_repeat(_substitute(entry, variables, f"{path}: stage {i}"), path, i)
        elif isinstance(entry, dict):
            stages.append(_substitute(entry, variables, f"{path}: stage {entry.get('name', i)!r}"))
        else:
            stages.append(entry)
    spec = {**spec, "stages": stages, "workdir": _substitute(spec.get("workdir"), variables, f"{path}: workdir")}
    names = set()
    for i, stage in enumerate(spec["stages"]):
        if not isinstance(stage, dict) or "name" not in stage or "command" not in stage:
            raise UserError(f"{path}: stage {i} needs `name` and `command`")
        if stage["name"] in names:
            raise UserError(f"{path}: stage name {stage['name']!r} is used twice")
        names.add(stage["name"])
    return spec


def stage_argv(stage: dict, outputs: dict[str, str], workdir: Path, executor: Any = None) -> list[str]:
    from pipelines.cli import COMMANDS

    command = stage["command"]
    if command not in COMMANDS or command == "run":
        raise UserError(f"stage {stage['name']!r}: unknown command {command!r}")
    args: dict[str, Any] = dict(stage.get("args") or {})
    own = stage.get("executor")
    if own is not None and command not in SHARDED:
        raise UserError(f"stage {stage['name']!r}: `executor` applies to sharded commands ({', '.join(SHARDED)}), "
                        f"not {command!r}")
    if command in SHARDED:
        args = {**executor_args(own if own is not None else executor, f"stage {stage['name']!r}"), **args}
    argv = command.split()
    if command == "train":
        if "algo" not in args:
            raise UserError(f"stage {stage['name']!r}: a train stage needs `algo` in its args (sft, dpo, grpo...)")
        argv.append(str(args.pop("algo")))
    if command not in POSITIONAL and "output" not in args:
        args["output"] = str(workdir / stage["name"])
    args = {k: (v.replace("{workdir}", str(workdir)) if k == "output" and isinstance(v, str) else v)
            for k, v in args.items()}
    positional = [args.pop(k) for k in POSITIONAL.get(command, ()) if k in args]

    def resolve(value: Any) -> str:
        value = str(value).replace("{workdir}", str(workdir))
        if value.startswith("@"):
            ref, _, sub = value[1:].partition("/")
            if ref not in outputs:
                raise UserError(f"stage {stage['name']!r}: {value} names no earlier stage")
            return str(Path(outputs[ref]) / sub) if sub else outputs[ref]
        return value

    argv += [resolve(v) for v in positional]
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False:  # the parser turns it into --no-KEY, or nothing for a plain switch; a typo stays one
            argv.append(f"{flag}=false")
        elif value is None:
            continue
        elif isinstance(value, list):
            for v in value:
                argv += [flag, resolve(v)]
        else:
            argv += [flag, resolve(value)]
    outputs[stage["name"]] = str(args.get("output", workdir / stage["name"]))
    if stage.get("alias"):
        outputs[stage["alias"]] = outputs[stage["name"]]
    return argv


def stage_argv_checked(stage: dict, outputs: dict[str, str], workdir: Path, executor: Any, path: str) -> list[str]:
    """`stage_argv`, then parsed by its command's own parser: an unknown `@stage`, an unknown or misspelled
    argument or a missing required one is found here, for every stage, before the first one runs."""
    from pipelines.cli import check_args

    try:
        argv = stage_argv(stage, outputs, workdir, executor)
        check_args(argv)
    except UserError as e:
        message = str(e)
        prefix = f"stage {stage['name']!r}: "
        raise UserError(f"{path}: {prefix}{message.removeprefix(prefix)}") from None
    return argv


def run_pipeline(path: str, only: list[str] | None = None, overwrite: bool = False,
                 overrides: dict[str, Any] | None = None) -> dict[str, str]:
    from pipelines.cli import main as cli_main

    spec = load_pipeline(path, overrides)
    workdir = Path(spec.get("workdir") or Path(path).with_suffix(""))
    outputs: dict[str, str] = {}
    plan = []
    for stage in spec["stages"]:
        argv = stage_argv_checked(stage, outputs, workdir, spec.get("executor"), path)
        if overwrite and stage["command"] not in ("train", "stats", "export"):
            argv.append("--overwrite")
        plan.append((stage, argv))
    unknown = sorted(set(only or ()) - {stage["name"] for stage, _ in plan})
    if unknown:
        raise UserError(f"{path}: --only {', '.join(unknown)}: no such stage (stages: "
                        f"{', '.join(stage['name'] for stage, _ in plan)})")
    ensure_writable_dir(workdir, "the pipeline's workdir")
    state_path = workdir / "pipeline_state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    for stage, argv in plan:
        if only and stage["name"] not in only:
            continue
        key = fingerprint_json(argv)
        if stage["command"] in TRAIN_COMMANDS and state.get(stage["name"]) == key:
            print(f"[run] {stage['name']}: already done with these arguments; skipping", file=sys.stderr)
            continue
        print(f"[run] {stage['name']}: prefsmith {' '.join(argv)}", file=sys.stderr)
        t0 = time.time()
        status = cli_main(argv)
        if status != 0:
            raise UserError(f"stage {stage['name']!r} failed with status {status}; fix it and rerun: finished stages are skipped")
        state[stage["name"]] = key
        atomic_write_json(state_path, state)
        print(f"[run] {stage['name']}: done in {time.time() - t0:.1f}s -> {outputs[stage['name']]}", file=sys.stderr)
    return outputs


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pipeline", help="pipeline YAML file")
    p.add_argument("--only", action="append", help="run only this stage (repeatable); earlier outputs must exist")
    p.add_argument("--overwrite", action="store_true", help="rerun every dataset stage from scratch")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="override a variable of the file's `vars:` (repeatable; VALUE is read as YAML: 2, 1e-5, true)")


def run(args: argparse.Namespace) -> int:
    overrides = {}
    for item in args.set:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise UserError(f"--set {item!r}: expected NAME=VALUE")
        overrides[name] = yaml.safe_load(value)
    run_pipeline(args.pipeline, only=args.only, overwrite=args.overwrite, overrides=overrides)
    return 0
