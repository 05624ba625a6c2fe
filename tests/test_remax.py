"""ReMax (`--advantage remax`): A_i = r_i − r(greedy), by hand on small tensors (null rewards and null baselines
included), the clip surrogate's gradient at μ = 1 equal to REINFORCE's, and a real `train grpo --advantage remax`
run on the tiny model whose written rollouts hold the greedy rows the advantages were computed against."""
from __future__ import annotations

import json

import pytest
import torch

from pipelines.cli import main as cli
from pipelines.core import dataset as ds
from trainers.online.rl_objectives import ADVANTAGES, PolicyLossConfig, policy_loss, remax_advantages

NAN = float("nan")


def test_remax_advantage_is_reward_minus_greedy_reward():
    r = torch.tensor([1.0, 0.0, 1.0, NAN,   # a null sample: its own advantage is NaN, its siblings' are not
                      0.0, 0.0, 1.0, 1.0,
                      1.0, 1.0, 0.0, 0.5])  # a null greedy baseline: the whole group is NaN
    b = torch.tensor([0.0, 1.0, NAN])
    a = ADVANTAGES["remax"](r, 4, baseline=b)
    torch.testing.assert_close(a, torch.tensor([1.0, 0.0, 1.0, NAN, -1.0, -1.0, 0.0, 0.0, NAN, NAN, NAN, NAN]),
                               equal_nan=True)
    # a flat group still has a signal when the greedy completion did better or worse (unlike GRPO's centring)
    assert remax_advantages(torch.tensor([0.0, 0.0]), 2, baseline=torch.tensor([1.0])).tolist() == [-1.0, -1.0]
    with pytest.raises(ValueError, match="one baseline per prompt"):
        remax_advantages(r, 4, baseline=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="groups of 5"):
        remax_advantages(r, 5, baseline=b)


def test_default_clip_surrogate_at_one_iteration_is_reinforce():
    """μ = 1: π_old is the current policy, so ρ = 1, the clip never binds and −min(ρA, clip(ρ)A) has the gradient
    of −A·log π: ReMax's REINFORCE loss under the default `--surrogate clip`, with the `--loss` aggregation."""
    torch.manual_seed(0)
    logps = torch.randn(3, 5).neg().requires_grad_()
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [0, 1, 1, 1, 1]], dtype=torch.float32)
    adv = remax_advantages(torch.tensor([1.0, 0.0, 0.5]), 3, baseline=torch.tensor([0.5]))  # 0.5, −0.5, 0
    loss, m = policy_loss(logps, logps.detach(), adv, mask, PolicyLossConfig())  # clip, dapo, β = 0
    clip_grad, = torch.autograd.grad(loss, logps)
    reinforce = -(adv.unsqueeze(-1) * logps * mask).sum() / mask.sum()  # dapo: token sum / the step's tokens
    reinforce_grad, = torch.autograd.grad(reinforce, logps)
    torch.testing.assert_close(clip_grad, reinforce_grad, rtol=0, atol=1e-7)
    assert float(m["clip_low"]) == float(m["clip_high"]) == 0.0


REWARD = '''
def greedy_null_on_odd(prompts, completions, id, **columns):
    """The completion's share of whitespace characters; sample 3 of every group is null, and so is the greedy row
    (id `qN-greedy`) of every odd-numbered prompt."""
    out = []
    for c, i in zip(completions, id):
        prompt, _, sample = str(i).rpartition("-")
        if sample == "3" or (sample == "greedy" and int(prompt[1:]) % 2):
            out.append(None)
        else:
            out.append(sum(ch.isspace() for ch in c) / max(len(c), 1))
    return out
'''


def test_train_grpo_remax_writes_greedy_baselines_and_their_cost(tmp_path, tiny_model, prompts):
    reward = tmp_path / "remax_reward.py"
    reward.write_text(REWARD)
    out = tmp_path / "remax"
    # 2 steps × 4 prompts draw 8 of the 12 (one epoch, no repeats), so both odd and even prompts come up
    assert cli(["train", "grpo", "--model", str(tiny_model), "--prompts", str(prompts), "--output", str(out),
                "--reward", f"{reward}:greedy_null_on_odd", "--advantage", "remax", "--num-generations", "4",
                "--prompts-per-step", "4", "--max-new-tokens", "6", "--lr", "1e-3", "--seed", "3", "--threads", "1",
                "--no-dynamic-sampling", "--max-steps", "2", "--save-every", "0"]) == 0
    train = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rows = ds.load_rows(out / "rollouts")
    assert len(rows) == 2 * 4 * (4 + 1)  # G samples + 1 greedy row per prompt
    nulls_seen = kept_seen = 0
    baselines: list[float] = []
    for rec in train:
        step = [r for r in rows if r["step"] == rec["step"]]
        greedy = {r["prompt_id"]: r for r in step if r["remax_baseline"]}
        assert len(greedy) == 4 and all(r["sample_idx"] == -1 and r["id"] == f"{r['prompt_id']}-greedy"
                                        and r["advantage"] is None for r in greedy.values())
        assert all(r["sampling"]["temperature"] == 0.0 and r["sampling"]["max_new_tokens"] == 6
                   for r in greedy.values())
        # the baseline's cost and value, from the written greedy rows
        assert rec["remax_greedy_tokens"] == sum(len(r["completion_ids"]) for r in greedy.values()) > 0
        assert rec["seconds_greedy"] >= 0.0 and "seconds_generation" in rec
        scored = [r["reward"] for r in greedy.values() if r["reward"] is not None]
        # (seed 3 draws q1 among 4 prompts at step 1, then only odd ones: step 2 has no baseline and trains nothing)
        assert rec["remax_baseline_reward"] == (pytest.approx(sum(scored) / len(scored)) if scored else None)
        null_groups = [pid for pid, r in greedy.items() if r["reward"] is None]
        assert null_groups == [pid for pid in greedy if int(pid[1:]) % 2]
        assert rec["remax_baseline_null"] == len(null_groups)
        assert rec["groups_trained"] == 4 - len(null_groups)  # an unbaselined group leaves the step
        assert rec["sequences"] == 3 * rec["groups_trained"]  # sample 3 is null; the greedy row is not trained
        for pid, g in greedy.items():
            samples = [r for r in step if r["prompt_id"] == pid and not r["remax_baseline"]]
            assert sorted(r["sample_idx"] for r in samples) == [0, 1, 2, 3]
            for r in samples:
                if g["reward"] is None or r["reward"] is None:
                    assert r["advantage"] is None
                else:  # A_i = r_i − r(greedy), by hand from the written rows
                    assert r["advantage"] == pytest.approx(r["reward"] - g["reward"], abs=1e-6)
        nulls_seen += len(null_groups)
        kept_seen += 4 - len(null_groups)
        baselines += [g["reward"] for g in greedy.values() if g["reward"] is not None]
    assert nulls_seen >= 2 and kept_seen >= 2  # both cases really ran
    assert any(b != 0.0 for b in baselines)  # a baseline of 0 would not tell r − b from r


def test_help_lists_remax():
    from trainers.online.grpo import build_parser

    text = " ".join(build_parser().format_help().split())
    assert "remax" in text and "greedy" in text
