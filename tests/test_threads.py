"""`--threads`: the auto rule (a pure function of cores and load), the flag on every command that runs a model,
and the number reaching torch in a real `generate` and a real `train sft` (subprocesses: threads are
process-wide)."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.cli import check_args
from pipelines.core.threads import auto_threads, parse_threads, resolve_threads

ROOT = Path(__file__).resolve().parents[1]

# prints torch's thread counts after the command, in the process that ran it
PROBE = ("import sys, torch; from pipelines.cli import main; rc = main(sys.argv[1:]); "
         "print('THREADS', torch.get_num_threads(), torch.get_num_interop_threads(), rc)")


@pytest.mark.parametrize("cores, load, online, expected", [
    (2, 0.0, None, 2),  # a quiet machine: every usable core
    (2, 0.4, None, 2),  # noise rounds away
    (2, 0.5, None, 1),  # half a core busy rounds up, not to even (round(0.5) would be 0)
    (2, 1.1, None, 1),  # one busy process: one core left
    (2, 9.0, None, 1),  # overloaded: never below 1
    (8, 3.0, None, 5),
    (8, 32.0, 64, 4),  # 8 of 64 cores: our share of a load of 32 is 4
    (4, 1.0, 2, 3),  # `online` below `cores` (a stale count) is taken as `cores`
])
def test_auto_threads_is_usable_cores_minus_the_load_on_them(cores, load, online, expected):
    assert auto_threads(cores, load, online) == expected


@pytest.mark.parametrize("files, expected", [
    ({"cpu.max": "150000 100000\n"}, 1.5),  # cgroup v2 with a quota of 1.5 CPUs
    ({"cpu.max": "max 100000\n"}, None),  # v2, no quota
    ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3.0),  # v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1, no quota
    ({}, None),  # nothing readable
])
def test_the_cgroup_cpu_quota_is_read_from_either_hierarchy(tmp_path, files, expected):
    from pipelines.core.threads import cgroup_cpu_limit

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    entries = [line.split(":", 2) for line in Path("/proc/self/cgroup").read_text().splitlines()]
    if any(path.strip("/") for _, controllers, path in entries if controllers in ("", "cpu")):
        pytest.skip("this process sits in a nested cgroup; the files above stand for the root one")
    assert cgroup_cpu_limit(tmp_path) == expected


def test_the_flag_reads_a_count_or_auto():
    assert parse_threads("3") == 3
    assert parse_threads("auto") is None and parse_threads("AUTO") is None
    assert parse_threads("0") is None  # 0 meant "no setting" before; it is auto now
    for bad in ("-1", "two", "1.5", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="expected a number of threads"):
            parse_threads(bad)
    assert resolve_threads(3) == 3
    assert resolve_threads(None) == resolve_threads(0) >= 1
    with pytest.raises(ValueError):
        resolve_threads(-2)


def test_cpu_busy_sees_a_busy_process_at_once():
    """The 1-minute load average needs ~40 s to count a new process; the /proc/stat sample counts it now, and a
    process that has ended not at all (auto takes the lower of the two)."""
    from pipelines.core.threads import cpu_busy

    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        busy = cpu_busy(0.5)
    finally:
        spin.kill()
        spin.wait()
    assert busy is not None and 0.7 <= busy <= (os.cpu_count() or 1) + 0.1  # other jobs may add, never take


def test_auto_takes_omp_num_threads_when_set():
    code = "from pipelines.core.threads import resolve_threads; print(resolve_threads(None))"
    env = {**os.environ, "OMP_NUM_THREADS": "3", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "3", out.stderr


M = "some/model"
MODEL_COMMANDS = [
    ["generate", "--model", M, "--input", "i", "--output", "o"],
    ["eval", "--model", M, "--prompts", "i", "--output", "o"],
    ["judge", "--model", M, "--input", "i", "--output", "o", "--engine", "hf"],
    ["critique-revise", "--model", M, "--input", "i", "--output", "o", "--engine", "hf"],
    ["prm-label", "--model", M, "--input", "i", "--output", "o"],
    ["label", "--input", "i", "--output", "o", "--reward", "rm:some/rm"],
    ["audit-reward", "--input", "i", "--reward", "rm:some/rm"],
    *(["train", algo, "--model", M, "--data", "d", "--output", "o"] for algo in ("sft", "dpo", "kto", "rm", "prm")),
    *(["train", algo, "--model", M, "--prompts", "p", "--output", "o", "--reward", "math"]
      for algo in ("iterative-dpo", "rft", "grpo", "rloo", "ppo")),
]


@pytest.mark.parametrize("argv", MODEL_COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_every_model_command_takes_threads(argv):
    check_args([*argv, "--threads", "1"])
    check_args([*argv, "--threads", "auto"])


@pytest.mark.parametrize("argv", MODEL_COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_a_bad_thread_count_is_one_line(argv):
    from pipelines.errors import UsageError

    with pytest.raises(UsageError, match="--threads: expected a number of threads >= 1 or `auto`, got 'many'"):
        check_args([*argv, "--threads", "many"])


def test_train_threads_reach_the_config():
    from trainers.cli import build_parser, config_from_args

    args = build_parser().parse_args(["sft", "--model", M, "--data", "d", "--output", "o", "--threads", "2"])
    assert config_from_args(args).threads == 2
    args = build_parser().parse_args(["sft", "--model", M, "--data", "d", "--output", "o"])
    assert config_from_args(args).threads is None  # auto


def _run(argv: list[str]) -> tuple[int, int, int]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # torch's own default would be all cores
    env.update(PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], env=env, capture_output=True, text=True, timeout=300)
    line = next((x for x in out.stdout.splitlines() if x.startswith("THREADS")), None)
    assert line, out.stderr[-2000:]
    intra, interop, rc = map(int, line.split()[1:])
    assert rc == 0, out.stderr[-2000:]
    return intra, interop, rc


def test_generate_threads_1_reaches_torch(tiny_model, tmp_path):
    src = tmp_path / "prompts.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"What is {i} + {i}?"}) + "\n" for i in range(2)))
    intra, interop, _ = _run(["generate", "--model", str(tiny_model), "--input", str(src), "--output",
                              str(tmp_path / "out"), "--n", "2", "--max-new-tokens", "4", "--threads", "1"])
    assert (intra, interop) == (1, 1)


def test_train_threads_reach_torch(tiny_model, tmp_path):
    from pipelines.core.dataset import write_dataset

    data = write_dataset([{"prompt": f"What is {i} + {i}?", "completion": f"{2 * i}"} for i in range(4)],
                         tmp_path / "sft")
    # 3 is no machine's default here (2 cores): the number can only have come from the flag
    intra, _, _ = _run(["train", "sft", "--model", str(tiny_model), "--data", str(data), "--output",
                        str(tmp_path / "run"), "--max-steps", "1", "--batch-size", "4", "--no-progress",
                        "--no-plots", "--threads", "3"])
    assert intra == 3


def test_a_reward_model_gets_the_threads(tiny_model, tmp_path):
    """`label --reward rm:DIR` runs its model in this process: `threads` reaches torch there."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

    from pipelines.stages.label import LabelConfig, load_rewards

    path = tmp_path / "rm"
    config = AutoConfig.from_pretrained(tiny_model)
    config.num_labels = 1
    LlamaForSequenceClassification(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(path)
    before = torch.get_num_threads()
    want = before + 1
    try:
        fns, _, _ = load_rewards(LabelConfig(rewards=[f"rm:{path}"], device="cpu", threads=want))
        assert torch.get_num_threads() == want
        for f in fns:
            f.close()
    finally:
        torch.set_num_threads(before)
