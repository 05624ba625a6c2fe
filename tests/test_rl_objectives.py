"""Online RL objectives (trainers/online/rl_objectives.py): hand-computed cases, and TRL 1.16's GRPOTrainer loss and
RLOOTrainer / GRPOTrainer advantages on identical inputs (fp32, CPU, the tiny model)."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from trainers.online.rl_objectives import (AGGREGATIONS, PolicyLossConfig, group_advantages, kl_k1, kl_k2, kl_k3,
                                    policy_loss, reinforce_pp_advantages, rloo_advantages, truncated_is_weights)

REWARDS = [0.0, 1.0, 0.5, 0.5, 1.0, 1.0, 0.2, 0.0]


# ------------------------------------------------------------------------------------------ by hand
def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0])
    a = group_advantages(r, 4, scale="none")
    assert a.tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0])
    std = math.sqrt((0.75 ** 2 + 3 * 0.25 ** 2) / 3)  # sample std of the first group
    assert group_advantages(r, 4).tolist()[:2] == pytest.approx([0.75 / (std + 1e-4), -0.25 / (std + 1e-4)])
    assert group_advantages(r, 4)[4:].abs().max() == 0  # zero-variance group: no signal
    # a null reward leaves its group's statistics and gets 0
    n = torch.tensor([1.0, float("nan"), 0.0, 0.0])
    assert group_advantages(n, 4, scale="none").tolist() == pytest.approx([2 / 3, 0.0, -1 / 3, -1 / 3])


def test_rloo_and_reinforce_pp_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0])
    assert rloo_advantages(r, 4).tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3])  # r_i - mean(others)
    r2 = torch.tensor([1.0, float("nan"), 0.0, 0.0])  # baselines over the 2 other scorable siblings
    assert rloo_advantages(r2, 4).tolist() == pytest.approx([1.0, 0.0, -0.5, -0.5])
    pp = reinforce_pp_advantages(torch.tensor(REWARDS), 4)
    assert float(pp.mean()) == pytest.approx(0.0, abs=1e-6) and float(pp.std()) == pytest.approx(1.0, abs=1e-3)


def test_kl_estimators():
    lp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -2.0])
    assert kl_k1(lp, ref).tolist() == pytest.approx([0.5, 0.0])
    assert kl_k2(lp, ref).tolist() == pytest.approx([0.125, 0.0])
    assert kl_k3(lp, ref).tolist() == pytest.approx([math.exp(-0.5) + 0.5 - 1, 0.0])


def test_aggregations_weigh_short_and_long_completions_as_each_paper_says():
    """A 1-token and a 100-token completion with the same advantage, at ratio 1 (on-policy)."""
    T = 100
    mask = torch.zeros(2, T)
    mask[0, 0] = 1
    mask[1, :] = 1
    logps = torch.zeros(2, T, requires_grad=True)
    adv = torch.tensor([1.0, 1.0])

    def token_weights(loss: str) -> tuple[float, float]:
        cfg = PolicyLossConfig(loss=loss, max_completion_length=T)
        l, _ = policy_loss(logps, logps.detach(), adv, mask, cfg)
        g, = torch.autograd.grad(l, logps)
        return float(-g[0, 0]), float(-g[1, 0])  # weight of one token of each completion

    # GRPO: per-sequence mean: the short completion's token weighs 100x a long one's token
    assert token_weights("grpo") == pytest.approx((1 / 2, 1 / (2 * T)))
    # DAPO / BNPO: token-level: every token the same, 1 / total tokens
    assert token_weights("dapo") == pytest.approx((1 / (T + 1), 1 / (T + 1)))
    assert token_weights("bnpo") == pytest.approx((1 / (T + 1), 1 / (T + 1)))
    # Dr. GRPO: a constant normalizer B * L_max
    assert token_weights("dr_grpo") == pytest.approx((1 / (2 * T), 1 / (2 * T)))
    assert set(AGGREGATIONS) == {"grpo", "bnpo", "dr_grpo", "dapo"}


def test_clip_higher_and_cispo_and_truncated_is():
    logps = torch.log(torch.tensor([[1.5, 0.5]]))  # ratios 1.5 and 0.5 against old log-probs of 0
    old = torch.zeros(1, 2)
    mask = torch.ones(1, 2)
    _, m = policy_loss(logps, old, torch.tensor([1.0]), mask, PolicyLossConfig(epsilon=0.2, epsilon_high=0.28))
    assert m["clip_high"] == 0.5 and m["clip_low"] == 0.0  # 1.5 > 1.28 with A > 0; 0.5 is not clipped for A > 0
    _, m = policy_loss(logps, old, torch.tensor([-1.0]), mask, PolicyLossConfig())
    assert m["clip_low"] == 0.5 and m["clip_high"] == 0.0
    # CISPO: every token keeps its gradient; the weight is min(ρ, cap), detached
    lp = logps.clone().requires_grad_(True)
    loss, _ = policy_loss(lp, old, torch.tensor([1.0]), mask, PolicyLossConfig(surrogate="cispo", epsilon_high=1.2))
    g, = torch.autograd.grad(loss, lp)
    assert (-g * 2).tolist()[0] == pytest.approx([1.2, 0.5])
    w = truncated_is_weights(torch.tensor([[0.0, -1.0]]), torch.tensor([[-1.0, 0.0]]), torch.tensor([[1, 1]]), cap=2.0)
    assert w.tolist()[0] == pytest.approx([2.0, math.exp(-1)])


# ------------------------------------------------------------------------------------------ against TRL
trl = pytest.importorskip("trl")


@pytest.fixture(scope="module")
def tok_policy(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return tok, model


def _trainer(kind, tok, model, tmp_path, rewards=None, **cfg):
    from datasets import Dataset

    state = {"i": 0}

    def fixed_reward(prompts, completions, **kw):
        out = (rewards or REWARDS)[state["i"]: state["i"] + len(completions)]
        state["i"] += len(completions)
        return out

    Config, Trainer = ((trl.GRPOConfig, trl.GRPOTrainer) if kind == "grpo" else (trl.RLOOConfig, trl.RLOOTrainer))
    args = Config(output_dir=str(tmp_path), bf16=False, num_generations=4, per_device_train_batch_size=8,
                  max_completion_length=6, report_to=[], use_cpu=True, **cfg)
    return Trainer(model=copy.deepcopy(model), reward_funcs=[fixed_reward], args=args, processing_class=tok,
                   train_dataset=Dataset.from_list([{"prompt": f"p{i}"} for i in range(8)]))


@pytest.mark.parametrize("kind,cfg", [("rloo", {"beta": 0.0}), ("rloo", {"beta": 0.0, "normalize_advantages": True}),
                                      ("grpo", {"scale_rewards": "group"}), ("grpo", {"scale_rewards": "batch"}),
                                      ("grpo", {"scale_rewards": "none"})])
def test_advantages_equal_trl(tmp_path, tok_policy, kind, cfg):
    tok, model = tok_policy
    tr = _trainer(kind, tok, model, tmp_path, **cfg)
    out = tr._generate_and_score_completions([{"prompt": "p0"}] * 4 + [{"prompt": "p1"}] * 4)
    r = torch.tensor(REWARDS)
    ours = (rloo_advantages(r, 4, normalize=cfg.get("normalize_advantages", False)) if kind == "rloo"
            else group_advantages(r, 4, scale=cfg["scale_rewards"]))
    assert ours.tolist() == pytest.approx(out["advantages"].tolist(), abs=1e-6)


def _batch(tok):
    """Equal-length prompts (no padding, so TRL's positions and ours agree) and right-padded completions."""
    g = torch.Generator().manual_seed(0)
    B, P, C = 4, 5, 6
    prompt_ids = torch.randint(5, 1000, (B, P), generator=g)
    completion_ids = torch.randint(5, 1000, (B, C), generator=g)
    lengths = torch.tensor([6, 1, 4, 6])
    completion_mask = (torch.arange(C)[None, :] < lengths[:, None]).long()
    return prompt_ids, torch.ones(B, P, dtype=torch.long), completion_ids, completion_mask


CASES = [("grpo", {}), ("bnpo", {}), ("dr_grpo", {}), ("dapo", {}), ("dapo", {"beta": 0.04}),
         ("grpo", {"beta": 0.1}), ("dapo", {"beta": 0.04, "use_bias_correction_kl": False}), ("dapo", {"epsilon_high": 0.28}), ("cispo", {"epsilon_high": 1.5}),
         ("grpo", {"importance_sampling_level": "sequence"})]


@pytest.mark.parametrize("loss_type,extra", CASES)
def test_policy_loss_equals_trl_grpo_trainer(tmp_path, tok_policy, loss_type, extra):
    from trainers.core.logprobs import token_logps

    tok, model = tok_policy
    tr = _trainer("grpo", tok, model, tmp_path, loss_type=loss_type, **extra)
    tr.model.train()
    tr.current_gradient_accumulation_steps = 1
    prompt_ids, prompt_mask, completion_ids, completion_mask = _batch(tok)
    g = torch.Generator().manual_seed(1)
    B, C = completion_ids.shape
    old = -torch.rand(B, C, generator=g) * 3
    ref = -torch.rand(B, C, generator=g) * 3
    adv = torch.tensor([1.0, -0.5, 0.25, -1.0])
    inputs = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
              "completion_mask": completion_mask, "advantages": adv, "old_per_token_logps": old,
              "num_items_in_batch": completion_mask.sum()}
    if extra.get("beta"):
        inputs["ref_per_token_logps"] = ref
    trl_loss = tr._compute_loss(tr.model, inputs)
    trl_loss.backward()
    trl_grad = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in tr.model.parameters() if p.grad is not None))

    ours_model = copy.deepcopy(model).train()
    ids = torch.cat([prompt_ids, completion_ids], 1)
    att = torch.cat([prompt_mask, completion_mask], 1)
    loss_mask = torch.cat([torch.zeros_like(prompt_mask), completion_mask], 1)
    logps = token_logps(ours_model, {"input_ids": ids, "attention_mask": att, "loss_mask": loss_mask})[:, -C:]
    surrogate = "cispo" if loss_type == "cispo" else "clip"
    cfg = PolicyLossConfig(loss="dapo" if loss_type == "cispo" else loss_type, surrogate=surrogate,
                           epsilon=0.2, epsilon_high=extra.get("epsilon_high"), beta=extra.get("beta", 0.0),
                           importance_level=extra.get("importance_sampling_level", "token"),
                           kl_ratio_correction=extra.get("use_bias_correction_kl", True), max_completion_length=C)
    loss, _ = policy_loss(logps, old, adv, completion_mask, cfg, ref_logps=ref if cfg.beta else None,
                          num_items=float(completion_mask.sum()))
    loss.backward()
    grad = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in ours_model.parameters() if p.grad is not None))
    assert float(loss) == pytest.approx(float(trl_loss), abs=1e-6)
    assert grad == pytest.approx(trl_grad, rel=1e-5)
