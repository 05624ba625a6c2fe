"""Experiment trackers (`--report-to tensorboard,trackio,wandb,mlflow`): the run's metrics.jsonl records, its
config and sample tables, also sent to the trackers a user names. metrics.jsonl stays the record of truth.

    trackers = Trackers(["tensorboard", "trackio"], "runs/dpo", config=dataclasses.asdict(cfg))
    trackers.log({"split": "train", "step": 3, "loss": 0.61})          # -> train/loss = 0.61 at step 3
    trackers.log_table("samples", [{"prompt": ..., "completion": ..., "reward": 1.0}], step=3)
    trackers.finish()

Every tracker writes under the run's own folder (RUN/tensorboard, RUN/trackio, RUN/wandb, RUN/mlflow; trackio
keeps one store per process, see `Trackio`) and works offline: nothing is sent anywhere. The trackers are optional packages, imported only when named; a named one
that is not installed is one line saying what to install. What each writes and how to view it: docs/tracking.md.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Any

from pipelines.errors import UserError

# tracker -> (the module it needs, the pip package that installs it)
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "trackio": ("trackio", "trackio"),
            "wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}
NONE = "none"
PROJECT = "prefsmith"  # the trackio / wandb project and the mlflow experiment every run logs under
TABLE_ROWS = 8  # rows of a sample table (online RL: the step's first completions)
_NOT_LOGGED = {"split", "step"}


# ------------------------------------------------------------------------------------------- names and flag
def parse_report_to(values: str | list[str] | None) -> list[str]:
    """`--report-to` values -> the trackers, in order, each once: comma-separated or repeated; `none` adds none.

    >>> parse_report_to(["tensorboard,trackio", "none", "tensorboard"])
    ['tensorboard', 'trackio']
    """
    if values is None:
        return []
    items = [values] if isinstance(values, str) else list(values)
    names: list[str] = []
    for item in items:
        for name in (part.strip().lower() for part in str(item).split(",")):
            if not name or name == NONE:
                continue
            if name not in PACKAGES:
                raise UserError(f"--report-to {name}: choose from {NONE}, {', '.join(PACKAGES)}")
            if name not in names:
                names.append(name)
    return names


def _flag_type(text: str) -> list[str]:
    try:
        return parse_report_to(text)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--report-to ")) from None  # argparse names the flag


def add_report_to_argument(parser) -> None:
    """`--report-to` on a parser or an argument group: the same flag and help on every command."""
    parser.add_argument("--report-to", type=_flag_type, action="extend", default=[], metavar="TRACKER",
                        help=f"also log metrics, config and samples to {', '.join(PACKAGES)} (comma-separated or "
                             "repeated; default none); each writes under --output, offline (docs/tracking.md)")


def check_installed(names: list[str]) -> None:
    """Raise one UserError line for the first named tracker whose package is missing (before any work starts)."""
    for name in names:
        module, pip = PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise UserError(_missing(name, module, pip))


def _missing(name: str, module: str, pip: str) -> str:
    return (f"--report-to {name}: the {module} package is not installed; pip install {pip} "
            "(or pip install 'prefsmith[tracking]' for every tracker)")


def _import(name: str, module: str):
    """`module`, or the one-line UserError of a tracker whose package is missing."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(_missing(name, PACKAGES[name][0], PACKAGES[name][1])) from None


# ------------------------------------------------------------------------------------------------ records
def scalars(record: dict) -> dict[str, float]:
    """A metrics.jsonl record's numbers as tracker tags: `<split>/<key>` (a key already prefixed by its split,
    like `eval/loss`, keeps its name); `split`, `step`, booleans, None and non-numbers are left out.

    >>> scalars({"split": "train", "step": 3, "loss": 0.5, "tokens": 12, "note": "x"})
    {'train/loss': 0.5, 'train/tokens': 12.0}
    """
    split = record.get("split", "train")
    out = {}
    for key, value in record.items():
        if key in _NOT_LOGGED or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[key if key.startswith(f"{split}/") else f"{split}/{key}"] = float(value)
    return out


def table_rows(rows: list[dict], columns: tuple[str, ...] = ("prompt", "completion", "reward"),
               limit: int = TABLE_ROWS) -> list[dict]:
    """The first `limit` rows with the given columns, prompts and completions as plain text (a message list's
    contents joined), so every tracker shows the same table."""
    from rewards.chat import conversation_text

    out = []
    for row in rows[:limit]:
        out.append({c: conversation_text(row.get(c)) if c in ("prompt", "completion") else row.get(c)
                    for c in columns})
    return out


def run_name(output: str | Path) -> str:
    """The run's name in the trackers: its folder and that folder's parent (`runs/dpo`, `round-001/model`)."""
    path = Path(output).resolve()
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def _plain(value: Any) -> Any:
    """JSON-safe config values (paths, tuples and anything else as strings)."""
    return json.loads(json.dumps(value, default=str))


def _markdown_table(rows: list[dict]) -> str:
    if not rows:
        return "(no rows)"
    columns = list(rows[0])

    def cell(v: Any) -> str:
        text = "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))
        return "<br>".join(text.replace("|", "\\|").splitlines())  # one table row whatever breaks the lines

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- backends
class TensorBoard:
    """RUN/tensorboard: torch's SummaryWriter; scalars as scalars, config and tables as markdown text."""

    def __init__(self, run_dir: Path, name: str, config: dict, resume_step: int | None) -> None:
        _import("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.path = run_dir / "tensorboard"
        # a resumed run hides what the killed one logged after its checkpoint
        self.writer = SummaryWriter(log_dir=str(self.path),
                                    purge_step=resume_step + 1 if resume_step is not None else None)
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2, sort_keys=True) + "\n```",
                             resume_step or 0)

    def log(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()  # a killed run keeps every logged step

    def log_table(self, name: str, rows: list[dict], step: int) -> None:
        self.writer.add_text(name, _markdown_table(rows), step)
        self.writer.flush()

    def finish(self) -> None:
        self.writer.close()


class Trackio:
    """trackio's local store, project `prefsmith`, one run per run folder. trackio reads its folder
    (`TRACKIO_DIR`) once per process, when it is imported: your `TRACKIO_DIR` if set, else the first run's
    RUN/trackio; a later run in the same process (the rounds' trainings) logs to that same store."""

    def __init__(self, run_dir: Path, name: str, config: dict, resume_step: int | None) -> None:
        import sys

        os.environ.setdefault("TRACKIO_DIR", str((run_dir / "trackio").resolve()))
        with contextlib.redirect_stdout(sys.stderr):  # trackio's notes; stdout is the commands' JSON summaries
            self.trackio = _import("trackio", "trackio")
            self.path = Path(self.trackio.utils.TRACKIO_DIR)
            self.run = self.trackio.init(project=PROJECT, name=name, config=config, embed=False,
                                         resume="allow" if resume_step is not None else "never",
                                         auto_log_gpu=False, auto_log_cpu=False)

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def log_table(self, name: str, rows: list[dict], step: int) -> None:
        self.run.log({name: self.trackio.Table(data=rows)}, step=step)

    def finish(self) -> None:
        import sys

        with contextlib.redirect_stdout(sys.stderr):
            self.trackio.finish()  # the current run (ours, from init), which trackio then forgets


class WandB:
    """RUN/wandb: an offline wandb run (`wandb sync RUN/wandb/offline-run-*` uploads it later, if ever)."""

    def __init__(self, run_dir: Path, name: str, config: dict, resume_step: int | None) -> None:
        wandb = _import("wandb", "wandb")
        self.wandb = wandb
        self.path = run_dir / "wandb"
        self.path.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=PROJECT, name=name, config=config, dir=str(run_dir), mode="offline",
                              reinit="create_new", settings=wandb.Settings(silent=True, console="off"))

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def log_table(self, name: str, rows: list[dict], step: int) -> None:
        columns = list(rows[0]) if rows else []
        self.run.log({name: self.wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])},
                     step=step)

    def finish(self) -> None:
        self.run.finish()


class MLflow:
    """RUN/mlflow: a local file store (`file:` URI, never a server), experiment `prefsmith`; metric names keep
    only the characters mlflow allows (others become `_`: `pass@4` -> `pass_4`)."""

    def __init__(self, run_dir: Path, name: str, config: dict, resume_step: int | None) -> None:
        _import("mlflow", "mlflow")
        from mlflow.tracking import MlflowClient

        self.path = run_dir / "mlflow"
        # mlflow 3 keeps its file store in maintenance mode behind this switch; a file store needs no database
        # packages and no server
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = client = MlflowClient(tracking_uri=self.path.resolve().as_uri())
        experiment = client.get_experiment_by_name(PROJECT)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(PROJECT)
        self.run_id = client.create_run(experiment_id, run_name=name).info.run_id
        client.log_dict(self.run_id, config, "config.json")
        from mlflow.entities import Param

        params = [Param(k[:250], str(v)[:500]) for k, v in _flatten(config).items()]
        for i in range(0, len(params), 100):
            client.log_batch(self.run_id, params=params[i:i + 100])

    def log(self, values: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(mlflow_key(k), v, now, step) for k, v in values.items()]
        for i in range(0, len(metrics), 500):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 500])

    def log_table(self, name: str, rows: list[dict], step: int) -> None:
        columns = list(rows[0]) if rows else []
        self.client.log_table(self.run_id, {c: [r.get(c) for r in rows] for c in columns},
                              f"{name}/step-{step:06d}.json")

    def finish(self) -> None:
        self.client.set_terminated(self.run_id)


def mlflow_key(tag: str) -> str:
    """A tag as mlflow accepts it: letters, digits, `_ - . / ` and space; anything else becomes `_`."""
    return re.sub(r"[^\w\-. /]", "_", tag)


def _flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


BACKENDS = {"tensorboard": TensorBoard, "trackio": Trackio, "wandb": WandB, "mlflow": MLflow}


# ------------------------------------------------------------------------------------------------- the set
class Trackers:
    """The trackers a run named (none: every call is a no-op), opened under `run_dir` with the run's config.
    `resume_step`: the checkpoint a resumed run continues from (tensorboard hides the later steps it logged)."""

    def __init__(self, names: list[str] | str | None, run_dir: str | Path, config: dict | None = None,
                 name: str | None = None, resume_step: int | None = None) -> None:
        self.names = parse_report_to(names)
        check_installed(self.names)
        run_dir = Path(run_dir)
        config = _plain(config or {})
        self.backends = []
        try:
            for tracker in self.names:
                self.backends.append(BACKENDS[tracker](run_dir, name or run_name(run_dir), config, resume_step))
        except BaseException:
            self.finish()
            raise

    def __bool__(self) -> bool:
        return bool(self.backends)

    def log(self, record: dict, step: int | None = None) -> None:
        """A metrics.jsonl record's numbers (`scalars`) at `step` (default: the record's own)."""
        if not self.backends:
            return
        values = scalars(record)
        if not values:
            return
        step = int(record.get("step", 0) if step is None else step)
        for backend in self.backends:
            backend.log(values, step)

    def log_table(self, name: str, rows: list[dict], step: int) -> None:
        """A small table (e.g. a step's sample completions: prompt, completion, reward) under `name`."""
        if rows:
            for backend in self.backends:
                backend.log_table(name, rows, step)

    def finish(self) -> None:
        """Flush and close every tracker (each once)."""
        backends, self.backends = self.backends, []
        for backend in backends:
            backend.finish()
