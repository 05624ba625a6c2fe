"""Stages on a real local Ray (2 CPUs): the same rows, ids and order as the local executor, and the two faults —
a worker actor's process killed mid-shard (Ray restarts it and retries the shard) and the driver SIGKILLed (the
same command continues from the markers)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.cli import main as cli
from pipelines.core import dataset as ds

ray = pytest.importorskip("ray")
ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One local Ray for the module; the tests' drivers join it (a subprocess driver joins by address)."""
    pid_dir = tmp_path_factory.mktemp("pids")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["PID_DIR"] = str(pid_dir)  # inherited by the workers: tests/plugin_rewards.py:slow_reward
    sys_path = os.pathsep.join([str(ROOT), str(ROOT / "tests")])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": sys_path}})
    yield {"address": ray.get_runtime_context().gcs_address, "pids": pid_dir}
    ray.shutdown()
    os.environ.pop("PID_DIR", None)


def rows(path: Path) -> list[dict]:
    return ds.load_rows(path)


def write_jsonl(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in items))
    return path


RAY = ["--executor", "ray", "--ray-workers", "2"]


def test_generate_on_ray_equals_local(tmp_path, tiny_model, cluster):
    src = write_jsonl(tmp_path / "p.jsonl", [{"id": f"q{i}", "prompt": f"what is {i} plus {i}?"} for i in range(6)])
    base = ["generate", "--model", str(tiny_model), "--input", str(src), "--n", "2", "--max-new-tokens", "8",
            "--shard-size", "2", "--temperature", "1.0"]
    assert cli([*base, "--output", str(tmp_path / "local")]) == 0
    assert cli([*base, "--output", str(tmp_path / "ray"), *RAY]) == 0
    local, remote = rows(tmp_path / "local"), rows(tmp_path / "ray")
    assert len(local) == 12 and [r["id"] for r in remote] == [r["id"] for r in local]
    # tokens, text and every carried column are identical; log-probs agree to float rounding, since Ray gives a
    # 1-CPU replica one torch thread and the local run sums with two
    strip = lambda rs: [{k: v for k, v in r.items() if k != "logprobs"} for r in rs]  # noqa: E731
    assert strip(remote) == strip(local)
    for a, b in zip(remote, local):
        assert a["logprobs"] == pytest.approx(b["logprobs"], abs=1e-5)
    m = ds.read_manifest(tmp_path / "ray")
    assert m["executor"] == "ray" and m["complete"] and m["num_shards"] == 3
    assert m["generation"]["tokens"] == sum(len(r["completion_ids"]) for r in local)
    assert m["fingerprint"] == ds.read_manifest(tmp_path / "local")["fingerprint"]  # where it ran is not config


def test_prm_label_on_ray_equals_local(tmp_path, tiny_model, cluster):
    """prm-label's shards on Ray replicas (openai engine, the scripted policy server of test_prm on loopback):
    the same step labels, soft values and rollout counts as the local run, for both methods."""
    from test_prm import K, PolicyServer, chain_rows

    server = PolicyServer(str(tiny_model))
    try:
        src = write_jsonl(tmp_path / "chains.jsonl", chain_rows())
        for method in ("mc", "binary-search"):
            base = ["prm-label", "--input", str(src), "--model", str(tiny_model), "--method", method,
                    "--rollouts-per-step", str(K), "--shard-size", "3", "--engine", "openai", "--base-url",
                    server.url, "--engine-option", "cache_dir=null"]
            assert cli([*base, "--output", str(tmp_path / f"{method}-local")]) == 0
            assert cli([*base, "--output", str(tmp_path / f"{method}-ray"), *RAY]) == 0
            local, remote = rows(tmp_path / f"{method}-local"), rows(tmp_path / f"{method}-ray")
            assert len(local) == len(chain_rows()) - 1  # the row with no gold answer is set aside, with its reason
            assert remote == local, method
            assert rows(tmp_path / f"{method}-ray" / "unlabeled") == rows(tmp_path / f"{method}-local" / "unlabeled")
            assert any(r["first_error_step"] is not None for r in local)
            m = ds.read_manifest(tmp_path / f"{method}-ray")
            assert m["executor"] == "ray" and m["complete"] and m["num_shards"] == 3
            assert m["prm"]["rollouts"] == ds.read_manifest(tmp_path / f"{method}-local")["prm"]["rollouts"]
    finally:
        server.close()


def labeled_input(tmp_path: Path) -> Path:
    good = "def add(a, b):\n    return a + b\n"
    bad = "def add(a, b):\n    return a - b\n"
    tests = "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n"
    items = []
    for i in range(10):
        items.append({"id": f"r{i}", "prompt_id": f"p{i // 2}", "sample_idx": i % 2, "prompt": "q",
                      "completion": f"\\boxed{{{i}}} ```python\n{good if i % 3 else bad}```", "answer": str(i if i % 4 else i + 1),
                      "tests": tests})
    return write_jsonl(tmp_path / "rollouts.jsonl", items)


def test_label_math_and_code_then_pairs_on_ray_equal_local(tmp_path, cluster):
    src = labeled_input(tmp_path)
    base = ["label", "--input", str(src), "--reward", "math", "--reward", "code", "--shard-size", "3",
            "--no-progress"]
    assert cli([*base, "--output", str(tmp_path / "l-local")]) == 0
    assert cli([*base, "--output", str(tmp_path / "l-ray"), *RAY, "--num-cpus-per-worker", "1"]) == 0
    local, remote = rows(tmp_path / "l-local"), rows(tmp_path / "l-ray")
    assert remote == local and len(local) == 10
    assert {r["reward_info"]["math"] for r in local} == {"correct", "wrong"}
    assert {r["rewards"]["code"] for r in local} == {0.0, 1.0}  # the sandbox ran inside the replicas
    assert any(r["reward_info"]["code"].startswith("passed 1/1") for r in remote)
    for kind, extra in (("pairs", []), ("select", []), ("kto", ["--threshold", "1.5"])):
        cmd = [kind, "--input", str(tmp_path / "l-local"), *extra]
        assert cli([*cmd, "--output", str(tmp_path / f"{kind}-local")]) == 0
        assert cli([*cmd, "--output", str(tmp_path / f"{kind}-ray"), *RAY]) == 0
        assert rows(tmp_path / f"{kind}-ray") == rows(tmp_path / f"{kind}-local"), kind


def test_decontaminate_on_ray_equals_local(tmp_path, cluster):
    heldout = [json.loads(line) for line in (ROOT / "data/math/heldout.jsonl").read_text().splitlines()[:5]]
    train = [{"id": f"t{i}", "prompt": f"an unrelated question number {i} about apples"} for i in range(7)]
    train += [{"id": f"c{i}", "prompt": h["prompt"]} for i, h in enumerate(heldout)]
    src = write_jsonl(tmp_path / "train.jsonl", train)
    base = ["decontaminate", "--input", str(src), "--against", "math-heldout", "--no-progress"]
    assert cli([*base, "--output", str(tmp_path / "d-local")]) == 0
    assert cli([*base, "--output", str(tmp_path / "d-ray"), *RAY]) == 0
    assert rows(tmp_path / "d-ray") == rows(tmp_path / "d-local")
    removed = ds.load_rows(tmp_path / "d-ray" / "removed")
    assert sorted(r["id"] for r in removed) == [f"c{i}" for i in range(5)]


def slow_rows(tmp_path: Path, n: int = 24) -> Path:
    return write_jsonl(tmp_path / "slow.jsonl",
                       [{"id": f"s{i:03d}", "prompt": "p", "completion": f"c{i}"} for i in range(n)])


def test_killed_worker_actor_its_shard_is_retried_no_duplicates_no_losses(tmp_path, cluster, monkeypatch):
    from pipelines.executors.ray import RayExecutor
    from pipelines.stages.label import LabelConfig, label

    src = slow_rows(tmp_path)
    monkeypatch.setenv("SLOW_S", "0.3")
    for p in cluster["pids"].glob("*.pid"):
        p.unlink()
    executor = RayExecutor(workers=2, num_cpus=1)
    killed: list[int] = []

    def killer():
        deadline = time.time() + 120
        while time.time() < deadline:
            pids = sorted(int(p.stem) for p in cluster["pids"].glob("*.pid"))
            if pids:
                os.kill(pids[0], signal.SIGKILL)  # the replica's own process, mid-shard
                killed.append(pids[0])
                return
            time.sleep(0.05)

    import threading

    t = threading.Thread(target=killer)
    t.start()
    cfg = LabelConfig(rewards=["plugin_rewards:slow_reward"], batch_size=2, shard_size=4, workers=1)
    label(str(src), str(tmp_path / "out"), cfg, progress=False, executor=executor)
    t.join()
    assert killed, "no replica process was seen scoring a shard"
    out = rows(tmp_path / "out")
    assert [r["id"] for r in out] == [f"s{i:03d}" for i in range(24)]  # every row once, in input order
    assert all(r["reward"] == 1.0 for r in out)
    assert len(list((tmp_path / "out" / ".shards").glob("*.done"))) == 6
    # a new process scored after the kill: Ray restarted the replica
    assert any(int(p.stem) not in killed for p in cluster["pids"].glob("*.pid"))


def test_sigkilled_driver_rerun_continues_from_markers(tmp_path, cluster):
    src = slow_rows(tmp_path, 32)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), "SLOW_S": "0.25",
           "RAY_ADDRESS": cluster["address"]}
    cmd = [sys.executable, "-m", "pipelines.cli", "label", "--input", str(src), "--output", str(out),
           "--reward", "plugin_rewards:slow_reward", "--batch-size", "2", "--shard-size", "4", "--no-progress",
           "--executor", "ray", "--ray-workers", "2", "--num-cpus-per-worker", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if len(list((out / ".shards").glob("*.done"))) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the stage finished or failed before it could be killed: {proc.stderr.read()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list((out / ".shards").glob("*.done")))
    assert 2 <= done_before < 8
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"resuming {out}: " in result.stderr
    got = rows(out)
    assert [r["id"] for r in got] == [f"s{i:03d}" for i in range(32)]
    assert not list(out.rglob(".*.tmp"))


def test_pipeline_file_executor_ray_top_level_and_per_stage(tmp_path, cluster):
    from pipelines.errors import UserError
    from pipelines.pipeline import run_pipeline

    src = labeled_input(tmp_path)
    spec = tmp_path / "p.yaml"
    spec.write_text(f"""
workdir: {tmp_path / "work"}
executor: {{kind: ray, ray_workers: 2, num_cpus_per_worker: 1}}
stages:
  - name: labeled
    command: label
    args: {{input: {src}, reward: [math], shard_size: 3, no_progress: true}}
  - name: pairs
    command: pairs
    executor: local
    args: {{input: "@labeled"}}
""")
    run_pipeline(str(spec))
    assert ds.read_manifest(tmp_path / "work" / "labeled")["executor"] == "ray"
    assert ds.read_manifest(tmp_path / "work" / "pairs")["executor"] == "local"
    assert cli(["label", "--input", str(src), "--reward", "math", "--shard-size", "3", "--no-progress",
                "--output", str(tmp_path / "plain")]) == 0
    assert rows(tmp_path / "work" / "labeled") == rows(tmp_path / "plain")

    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  - {name: t, command: stats, executor: ray, args: {input: x}}\n")
    with pytest.raises(UserError, match="`executor` applies to sharded commands"):
        run_pipeline(str(bad))
    bad.write_text("executor: {kind: ray, gpus: 1}\nstages:\n  - {name: l, command: label, args: {input: x}}\n")
    with pytest.raises(UserError, match="unknown executor key"):
        run_pipeline(str(bad))
