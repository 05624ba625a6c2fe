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
flag; `true` → a bare flag). `executor:` at the top (every sharded stage) or in a stage (that stage) runs shards
on Ray: `executor: ray`, or `executor: {kind: ray, address: auto, num_cpus_per_worker: 2, ray_workers: 8}`.
Dataset stages skip finished work by themselves; for the others (train), a stage
that finished with the same arguments is recorded in `workdir/pipeline_state.json` and skipped on a rerun.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from pipelines.core.files import atomic_write_json, fingerprint_json
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


def load_pipeline(path: str) -> dict:
    try:
        spec = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such pipeline file") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("stages"), list) or not spec["stages"]:
        raise UserError(f"{path}: a pipeline file needs a non-empty `stages:` list")
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
        argv.append(str(args.pop("algo")))
    if command not in POSITIONAL and "output" not in args:
        args["output"] = str(workdir / stage["name"])
    positional = [args.pop(k) for k in POSITIONAL.get(command, ()) if k in args]

    def resolve(value: Any) -> str:
        value = str(value)
        if value.startswith("@"):
            if value[1:] not in outputs:
                raise UserError(f"stage {stage['name']!r}: {value} names no earlier stage")
            return outputs[value[1:]]
        return value

    argv += [resolve(v) for v in positional]
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, list):
            for v in value:
                argv += [flag, resolve(v)]
        else:
            argv += [flag, resolve(value)]
    outputs[stage["name"]] = str(args.get("output", workdir / stage["name"]))
    return argv


def run_pipeline(path: str, only: list[str] | None = None, overwrite: bool = False) -> dict[str, str]:
    from pipelines.cli import main as cli_main

    spec = load_pipeline(path)
    workdir = Path(spec.get("workdir", Path(path).with_suffix("")))
    workdir.mkdir(parents=True, exist_ok=True)
    state_path = workdir / "pipeline_state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    outputs: dict[str, str] = {}
    for stage in spec["stages"]:
        argv = stage_argv(stage, outputs, workdir, spec.get("executor"))
        if only and stage["name"] not in only:
            continue
        if overwrite and stage["command"] not in ("train", "stats", "export"):
            argv.append("--overwrite")
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


def run(args: argparse.Namespace) -> int:
    run_pipeline(args.pipeline, only=args.only, overwrite=args.overwrite)
    return 0
