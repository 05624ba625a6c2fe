"""`--report-to`: tiny real runs log to tensorboard and trackio (wandb and mlflow too where installed), and what
the trackers wrote, read back from their files, equals metrics.jsonl; the online loop's sample table is there; a
named tracker that is not installed stops the command in one line; docs/tracking.md's examples run."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.cli import main as cli
from pipelines.core.dataset import write_dataset
from pipelines.core.tracking import mlflow_key, parse_report_to
from pipelines.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
# not imported here: trackio reads TRACKIO_DIR when it is first imported (by the first run that names it)
pytestmark = pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in ("tensorboard", "trackio")),
                                reason="needs tensorboard and trackio (pip install -e '.[dev]')")
HAVE = [name for name in ("wandb", "mlflow") if importlib.util.find_spec(name) is not None]


def sft_data(path: Path) -> Path:
    return write_dataset([{"prompt": f"What is {i} + {i}?", "completion": f"{2 * i}."} for i in range(8)], path)


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def expected(recs: list[dict]) -> dict[str, dict[int, float]]:
    """tag -> {step: value}: every finite number of every record, named `<split>/<key>`."""
    out: dict[str, dict[int, float]] = {}
    for r in recs:
        for key, value in r.items():
            if key in ("split", "step") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            tag = key if key.startswith(r["split"] + "/") else f"{r['split']}/{key}"
            out.setdefault(tag, {})[r["step"]] = float(value)
    return out


def tensorboard_scalars(run: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def tensorboard_texts(run: Path) -> dict[str, dict[int, str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag.removesuffix("/text_summary"): {e.step: make_ndarray(e.tensor_proto).item().decode()
                                               for e in acc.Tensors(tag)} for tag in acc.Tags()["tensors"]}


def trackio_store(run: Path) -> Path:
    """The trackio store a run in this process wrote to: the first such run's OUTPUT/trackio (trackio reads its
    folder once per process; docs/tracking.md)."""
    import trackio

    return Path(trackio.utils.TRACKIO_DIR)


def trackio_logs(store: Path, name: str) -> list[tuple[int, dict]]:
    """(step, metrics) rows of run `name` in a trackio store (project prefsmith), read with sqlite."""
    with sqlite3.connect(store / "prefsmith.db") as db:
        rows = db.execute("SELECT step, metrics FROM metrics WHERE run_name = ? ORDER BY id", (name,)).fetchall()
    return [(step, json.loads(m)) for step, m in rows]


def trackio_config(store: Path, name: str) -> dict:
    with sqlite3.connect(store / "prefsmith.db") as db:
        (config,) = db.execute("SELECT config FROM configs WHERE run_name = ?", (name,)).fetchone()
    return json.loads(config)


def wandb_scalars(run: Path) -> dict[str, dict[int, float]]:
    """The history rows of the run's offline wandb file (RUN/wandb/offline-run-*/run-*.wandb: LevelDB-style log
    blocks of wandb's protobuf records), as tag -> {step: value}."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    out: dict[str, dict[int, float]] = {}
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk  # full, first | middle, last
        if kind not in (1, 4):
            continue
        record = pb.Record()
        record.ParseFromString(buf)
        if record.WhichOneof("record_type") == "history":
            items = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item}
            for tag, value in items.items():
                if not tag.startswith("_") and isinstance(value, (int, float)):
                    out.setdefault(tag, {})[items["_step"]] = float(value)
    return out


def assert_same(got: dict[str, dict[int, float]], want: dict[str, dict[int, float]], tracker: str) -> None:
    assert set(got) == set(want), (tracker, set(got) ^ set(want))
    for tag, by_step in want.items():
        assert set(got[tag]) == set(by_step), (tracker, tag)
        for step, value in by_step.items():
            if math.isfinite(value):
                assert got[tag][step] == pytest.approx(value, rel=1e-6, abs=1e-7), (tracker, tag, step)


def trackio_scalars(store: Path, name: str) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for step, metrics in trackio_logs(store, name):
        for tag, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out.setdefault(tag, {})[step] = float(value)
    return out


def test_report_to_names():
    assert parse_report_to(["tensorboard,trackio", "none", "tensorboard"]) == ["tensorboard", "trackio"]
    assert parse_report_to("none") == [] and parse_report_to(None) == []
    with pytest.raises(UserError, match="--report-to tensorbord: choose from none, tensorboard, trackio"):
        parse_report_to("tensorbord")
    assert mlflow_key("eval/pass@4") == "eval/pass_4"


def test_sft_run_reads_back_equal_to_metrics_jsonl(tmp_path, tiny_model):
    run = tmp_path / "runs" / "sft-tracked"
    # the default store (tests/conftest.py sets TRACKIO_DIR for the suite; a user's run without it gets its own)
    first_trackio = "trackio" not in sys.modules and "TRACKIO_DIR" not in os.environ
    trackers = ",".join(["tensorboard", "trackio", *HAVE])
    assert cli(["train", "sft", "--model", str(tiny_model), "--data", str(sft_data(tmp_path / "sft")),
                "--output", str(run), "--max-steps", "2", "--batch-size", "4", "--eval-split", "0.25", "--lr", "1e-3",
                "--threads", "1", "--no-progress", "--no-plots", "--report-to", trackers]) == 0
    recs = records(run)
    want = expected(recs)
    assert {"train/loss", "train/grad_norm", "train/lr", "eval/loss"} <= set(want)
    assert sorted(want["train/loss"]) == [1, 2] and sorted(want["eval/loss"]) == [0, 2]  # before and after
    assert_same(tensorboard_scalars(run), want, "tensorboard")
    store = trackio_store(run)
    if first_trackio:  # the default store: the first run's own folder (later runs in this process share it)
        assert store == run / "trackio"
    assert_same(trackio_scalars(store, "runs/sft-tracked"), want, "trackio")
    # the run's full config, as prefsmith_train.json holds it
    saved = json.loads((run / "prefsmith_train.json").read_text())
    tb_config = tensorboard_texts(run)["config"][0]
    assert json.loads(tb_config.strip().strip("`")) == saved
    config = trackio_config(store, "runs/sft-tracked")
    assert {k: config[k] for k in saved} == saved and saved["lr"] == 1e-3 and saved["report_to"] == trackers.split(",")
    if "wandb" in HAVE:
        assert_same(wandb_scalars(run), want, "wandb")
    if "mlflow" in HAVE:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=(run / "mlflow").as_uri())
        (mrun,) = client.search_runs([client.get_experiment_by_name("prefsmith").experiment_id])
        for tag, by_step in want.items():
            got = {m.step: m.value for m in client.get_metric_history(mrun.info.run_id, mlflow_key(tag))}
            assert got == pytest.approx(by_step), tag
        assert mrun.data.params["lr"] == "0.001"


def test_grpo_logs_a_samples_table_per_step(tmp_path, tiny_model, prompts):
    run = tmp_path / "grpo"
    assert cli(["train", "grpo", "--model", str(tiny_model), "--prompts", str(prompts), "--output", str(run),
                "--reward", "plugin_rewards:first_char_reward", "--num-generations", "4", "--prompts-per-step", "2",
                "--max-new-tokens", "6", "--lr", "1e-3", "--seed", "3", "--threads", "1", "--no-dynamic-sampling",
                "--max-steps", "2", "--save-every", "0", "--eval-prompts", str(prompts), "--eval-limit", "2",
                "--eval-every", "2", "--report-to", "tensorboard", "--report-to", "trackio"]) == 0
    recs = records(run)
    want = expected(recs)
    assert {"train/reward", "train/loss", "train/entropy", "eval/accuracy"} <= set(want)
    assert_same(tensorboard_scalars(run), want, "tensorboard")
    store, name = trackio_store(run), f"{tmp_path.name}/grpo"
    assert_same(trackio_scalars(store, name), want, "trackio")
    # the sample table: one per step, the step's first completions with their rewards and advantages
    from pipelines.core import dataset as ds

    rollouts = ds.load_rows(run / "rollouts")
    tables = tensorboard_texts(run)["train/samples"]
    assert sorted(tables) == [1, 2]
    for step, text in tables.items():
        lines = text.splitlines()
        assert lines[0] == "| prompt | completion | reward | advantage |"
        first = [r for r in rollouts if r["step"] == step][0]
        assert lines[2].startswith(f"| {first['prompt']} | ")
        assert len(lines) == 2 + 8
    logged = {step: m["train/samples"]["_value"] for step, m in trackio_logs(store, name) if "train/samples" in m}
    assert sorted(logged) == [1, 2]
    for step, rows in logged.items():
        first = [r for r in rollouts if r["step"] == step][:8]
        assert [(r["prompt"], r["completion"], r["reward"]) for r in rows] == \
            [(r["prompt"], r["completion"], r["reward"]) for r in first]


def _blocked(modules: list[str], commands: list[list[str]]) -> list[tuple[int, str]]:
    """Each `prefsmith ARGV` in one fresh process where `modules` cannot be imported (as if not installed):
    [(exit status, stderr)]."""
    code = f"""
import contextlib, io, json, sys
for name in {modules!r}:
    sys.modules[name] = None
sys.path.insert(0, {str(ROOT)!r})
from pipelines.cli import main
out = []
for argv in {commands!r}:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        out.append((main(argv), err.getvalue()))
print(json.dumps(out))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_tracker_that_is_not_installed_is_one_line(tmp_path, tiny_model, prompts, capsys):
    data = sft_data(tmp_path / "sft")
    commands = {  # a missing tracker stops each kind of command before any work
        "trackio": ["train", "dpo", "--model", str(tiny_model), "--data", str(data), "--output", str(tmp_path / "a"),
                    "--report-to", "tensorboard,trackio"],
        "wandb": ["train", "grpo", "--model", str(tiny_model), "--prompts", str(prompts), "--reward", "math",
                  "--output", str(tmp_path / "b"), "--report-to", "wandb"],
        "mlflow": ["eval", "--model", str(tiny_model), "--prompts", str(prompts), "--output", str(tmp_path / "c"),
                   "--report-to", "mlflow"],
    }
    for module, (status, err) in zip(commands, _blocked(list(commands), list(commands.values()))):
        assert status == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].endswith(f"--report-to {module}: the {module} package is not installed; "
                                                     f"pip install {module} (or pip install 'prefsmith[tracking]' "
                                                     "for every tracker)"), err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b" / "metrics.jsonl").exists()
    assert not (tmp_path / "c").exists()
    # an unknown name is a usage error, also one line
    assert cli(["train", "sft", "--model", "m", "--data", "d", "--output", "o", "--report-to", "tensorboard,wandbb"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["prefsmith train: error: argument --report-to: wandbb: choose from none, tensorboard, trackio, "
                   "wandb, mlflow (see `prefsmith train --help`)"]


def test_docs_examples_run_at_tiny_size(tmp_path, tiny_model, monkeypatch):
    """docs/tracking.md's commands, with the tiny model, tiny data and a few steps; each run's tensorboard
    scalars equal its metrics.jsonl (eval: its eval.json)."""
    text = (ROOT / "docs" / "tracking.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    commands = [line.split("#")[0].split() for line in block.splitlines() if line.startswith("prefsmith ")]
    assert [c[1] for c in commands] == ["train", "train", "eval"]
    monkeypatch.chdir(tmp_path)
    sft_data(tmp_path / "runs" / "sft_set")
    math_prompts = tmp_path / "data" / "math"
    math_prompts.mkdir(parents=True)
    for name in ("train", "heldout"):
        (math_prompts / f"{name}.jsonl").write_text("".join(
            json.dumps({"prompt": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n" for i in range(4)))
    tiny = {"sft": ["--max-steps", "2", "--batch-size", "4", "--no-progress", "--no-plots"],
            "grpo": ["--max-steps", "1", "--num-generations", "2", "--prompts-per-step", "2", "--max-new-tokens", "4",
                     "--no-dynamic-sampling", "--save-every", "0"],
            "eval": ["--max-new-tokens", "4", "--no-progress", "--no-plot"]}
    ran = []
    for argv in commands:
        argv = [str(tiny_model) if a == "default" else a for a in argv[1:]]
        kind = argv[1] if argv[0] == "train" else "eval"
        assert cli([*argv, *tiny[kind], "--threads", "1"]) == 0, argv
        out = Path(argv[argv.index("--output") + 1])
        scalars = tensorboard_scalars(out)
        if kind == "eval":
            summary = json.loads((out / "eval.json").read_text())
            assert scalars["eval/accuracy"] == {0: pytest.approx(summary["overall"]["accuracy"])}
            assert scalars["eval/prompts"] == {0: 4.0}
        else:
            assert_same(scalars, expected(records(out)), "tensorboard")
        ran.append(kind)
    assert ran == ["sft", "grpo", "eval"]
    assert_same(trackio_scalars(trackio_store(tmp_path), "runs/sft"), expected(records(tmp_path / "runs" / "sft")),
                "trackio")


def test_rounds_log_each_training_and_the_rounds_figures(tmp_path, tiny_model, prompts):
    run = tmp_path / "rft"
    assert cli(["train", "rft", "--model", str(tiny_model), "--prompts", str(prompts), "--eval-prompts", str(prompts),
                "--eval-limit", "2", "--reward", "format:.*in.*", "--rounds", "1", "--output", str(run), "--n", "4",
                "--prompts-per-round", "6", "--max-new-tokens", "8", "--lr", "1e-3", "--batch-size", "2",
                "--max-steps", "2", "--no-progress", "--no-plots", "--threads", "1",
                "--report-to", "tensorboard"]) == 0
    train = run / "round-000" / "train"
    assert_same(tensorboard_scalars(train), expected(records(train)), "tensorboard")
    rounds = [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()]
    want = expected([{"split": "rounds", "step": r["round"], **r} for r in rounds])
    assert {"rounds/accuracy", "rounds/steps"} <= set(want)
    assert_same(tensorboard_scalars(run), want, "tensorboard")


def test_a_resumed_run_logs_each_step_once(tmp_path, tiny_model):
    """Killed after step 4 with its last checkpoint at step 2 (the later checkpoint and the final model removed,
    as a kill leaves them), then `--resume`: metrics.jsonl keeps each step once, tensorboard shows it so, and the
    trackio run holds each train step once (steps 3 and 4 from the resumed run only)."""
    import shutil

    from trainers.core.checkpoint import list_checkpoints

    run = tmp_path / "runs" / "sft-resumed"
    args = ["train", "sft", "--model", str(tiny_model), "--data", str(sft_data(tmp_path / "sft")),
            "--output", str(run), "--max-steps", "4", "--batch-size", "2", "--lr", "1e-3", "--save-every", "2",
            "--save-total-limit", "3", "--threads", "1", "--no-progress", "--no-plots",
            "--report-to", "tensorboard,trackio"]
    assert cli(args) == 0
    assert sorted(r["step"] for r in records(run) if r["split"] == "train") == [1, 2, 3, 4]
    for ckpt in list_checkpoints(run)[1:]:  # keep step 2 only
        shutil.rmtree(ckpt)
    shutil.rmtree(run / "model")
    assert cli(args + ["--resume"]) == 0
    recs = records(run)
    assert sorted(r["step"] for r in recs if r["split"] == "train") == [1, 2, 3, 4]  # each step once
    assert_same(tensorboard_scalars(run), expected(recs), "tensorboard")
    steps = [step for step, m in trackio_logs(trackio_store(run), "runs/sft-resumed") if "train/loss" in m]
    assert steps == [1, 2, 3, 4], steps


def test_without_trackio_dir_a_run_keeps_its_store_in_its_folder(tmp_path, tiny_model):
    """A user's run with no TRACKIO_DIR: trackio's store is OUTPUT/trackio, not the home cache (a fresh process,
    HOME pointed at the test's folder so nothing reaches the real one)."""
    run = tmp_path / "runs" / "sft-default-store"
    env = {k: v for k, v in os.environ.items() if k != "TRACKIO_DIR"}
    env.update(HOME=str(tmp_path / "home"), HF_HOME=str(tmp_path / "home" / "hf"))
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "train", "sft", "--model", str(tiny_model),
                           "--data", str(sft_data(tmp_path / "sft")), "--output", str(run), "--max-steps", "1",
                           "--batch-size", "4", "--threads", "1", "--no-progress", "--no-plots",
                           "--report-to", "trackio"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    steps = [step for step, m in trackio_logs(run / "trackio", "runs/sft-default-store") if "train/loss" in m]
    assert steps == [1]
    assert not (tmp_path / "home" / "hf" / "trackio").exists()
