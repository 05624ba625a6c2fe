"""Objectives checked against hand-computed values and the papers' formulas (no model needed)."""
from __future__ import annotations

import math

import pytest
import torch

from trainers.offline.objectives import (
    bradley_terry_loss,
    dpo_loss,
    kto_loss,
    orpo_loss,
    ranking_to_pairs,
    sft_loss,
    simpo_loss,
)


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_bradley_terry_is_log2_at_equal_scores_and_respects_margin():
    s = torch.tensor([0.3, -1.2, 4.0])
    assert torch.allclose(bradley_terry_loss(s, s), torch.full((3,), math.log(2)))
    # chosen ahead by exactly the margin: back to log 2
    assert torch.allclose(bradley_terry_loss(s + 0.5, s, torch.tensor(0.5)), torch.full((3,), math.log(2)))
    assert bradley_terry_loss(torch.tensor([2.0]), torch.tensor([0.0])).item() == pytest.approx(
        -math.log(_sigmoid(2.0))
    )


def test_ranking_to_pairs_expands_k_way_ranking():
    assert ranking_to_pairs(2) == [(0, 1)]
    pairs = ranking_to_pairs(4)
    assert len(pairs) == 6 and all(i < j for i, j in pairs)  # best-first: the lower index wins
    assert len(ranking_to_pairs(9)) == 36  # InstructGPT's K=9 -> 36 comparisons
    scores = torch.tensor([3.0, 2.0, 1.0, 0.0])  # a correctly ordered ranking
    i, j = zip(*pairs)
    loss = bradley_terry_loss(scores[list(i)], scores[list(j)]).mean()
    assert loss.item() < math.log(2)
    with pytest.raises(ValueError):
        ranking_to_pairs(1)


def test_dpo_sigmoid_value_and_gradient_weight():
    """d loss / d margin = -β σ(-β h) (Rafailov et al., Sec. 4 'What does the DPO update do?')."""
    beta = 0.1
    pc = torch.tensor([-10.0, -20.0], requires_grad=True)
    pr = torch.tensor([-12.0, -15.0])
    rc = torch.tensor([-11.0, -19.0])
    rr = torch.tensor([-11.5, -16.0])
    losses, chosen_r, rejected_r = dpo_loss(pc, pr, rc, rr, beta=beta)
    h = ((pc - rc) - (pr - rr)).detach()
    assert torch.allclose(losses, -torch.log(torch.sigmoid(beta * h)))
    assert torch.allclose(chosen_r, beta * (pc - rc).detach()) and torch.allclose(rejected_r, beta * (pr - rr))
    losses.sum().backward()
    # the margin depends on pc with coefficient 1, so the gradient on pc is the gradient on the margin
    assert torch.allclose(pc.grad, -beta * torch.sigmoid(-beta * h))


def test_dpo_label_smoothing_and_robust():
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-5.0, -7.0, -6.0, -6.0))
    h, beta, eps = 2.0, 0.5, 0.2
    cdpo, _, _ = dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=eps)
    want = -(1 - eps) * math.log(_sigmoid(beta * h)) - eps * math.log(_sigmoid(-beta * h))
    assert cdpo.item() == pytest.approx(want)
    robust, _, _ = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="robust", label_smoothing=eps)
    want = (-(1 - eps) * math.log(_sigmoid(beta * h)) + eps * math.log(_sigmoid(-beta * h))) / (1 - 2 * eps)
    assert robust.item() == pytest.approx(want)
    hinge, _, _ = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="hinge")
    assert hinge.item() == pytest.approx(max(0.0, 1 - beta * h))
    with pytest.raises(ValueError):
        dpo_loss(pc, pr, rc, rr, loss_type="robust", label_smoothing=0.5)
    with pytest.raises(ValueError):
        dpo_loss(pc, pr, rc, rr, loss_type="nope")


def test_ipo_pulls_margin_to_one_over_two_beta():
    beta = 0.25
    margin = torch.tensor([0.0], requires_grad=True)  # free scalar: policy_chosen - policy_rejected
    zero = torch.zeros(1)
    opt = torch.optim.SGD([margin], lr=0.1)
    for _ in range(300):
        opt.zero_grad()
        losses, _, _ = dpo_loss(margin, zero, zero, zero, beta=beta, loss_type="ipo")
        losses.sum().backward()
        opt.step()
    assert margin.item() == pytest.approx(1 / (2 * beta), abs=1e-4)
    # with token counts, the per-token log-ratio margin is what is pulled to 1/(2β)
    losses, _, _ = dpo_loss(torch.tensor([8.0]), zero, zero, zero, beta=beta, loss_type="ipo",
                            chosen_n_tokens=torch.tensor([4]), rejected_n_tokens=torch.tensor([2]))
    assert losses.item() == pytest.approx(0.0)


def test_dpop_penalizes_chosen_below_reference_only():
    beta, lam = 0.1, 5.0
    rr = pr = torch.tensor([-10.0])
    rc = torch.tensor([-5.0])
    below, _, _ = dpo_loss(torch.tensor([-6.0]), pr, rc, rr, beta=beta, dpop_lambda=lam)
    h = -1.0  # chosen log-ratio -1, rejected 0
    assert below.item() == pytest.approx(-math.log(_sigmoid(beta * (h - lam * 1.0))))
    above, _, _ = dpo_loss(torch.tensor([-4.0]), pr, rc, rr, beta=beta, dpop_lambda=lam)
    plain, _, _ = dpo_loss(torch.tensor([-4.0]), pr, rc, rr, beta=beta)
    assert above.item() == pytest.approx(plain.item())


def test_simpo_matches_paper_formula():
    beta, gamma = 2.0, 1.0
    # avg log-probs: chosen -0.8 over 5 tokens, rejected -1.1 over 3 tokens (sums -4.0 and -3.3)
    losses, cr, rr = simpo_loss(torch.tensor([-4.0 / 5]), torch.tensor([-3.3 / 3]), beta=beta, gamma=gamma)
    want = -math.log(_sigmoid(beta / 5 * -4.0 - beta / 3 * -3.3 - gamma))
    assert losses.item() == pytest.approx(want)
    assert cr.item() == pytest.approx(beta * -0.8) and rr.item() == pytest.approx(beta * -1.1)


def test_orpo_matches_paper_formula():
    lam = 0.1
    avg_c, avg_r, nll = -0.5, -1.5, 0.5
    losses, log_odds = orpo_loss(torch.tensor([avg_c]), torch.tensor([avg_r]), torch.tensor([nll]), lam=lam)
    pc, pr = math.exp(avg_c), math.exp(avg_r)
    want_log_odds = math.log(pc / (1 - pc)) - math.log(pr / (1 - pr))
    assert log_odds.item() == pytest.approx(want_log_odds)
    assert losses.item() == pytest.approx(nll - lam * math.log(_sigmoid(want_log_odds)))
    # stable for avg log-probs near 0 (P -> 1) and very negative
    l2, _ = orpo_loss(torch.tensor([-1e-6]), torch.tensor([-200.0]), torch.tensor(0.0))
    assert torch.isfinite(l2).all()


def test_sft_loss_is_token_mean():
    loss = sft_loss(torch.tensor([-6.0, -2.0]), torch.tensor([3, 1]))
    assert loss.item() == pytest.approx(8.0 / 4)
    assert sft_loss(torch.tensor([-6.0, -2.0]), torch.tensor([3, 1]), total_tokens=8).item() == pytest.approx(1.0)


def test_kto_all_desirable_batch():
    beta = 0.1
    logps = torch.tensor([-10.0, -12.0, -8.0], requires_grad=True)
    ref = torch.tensor([-11.0, -12.5, -9.0])
    kl_pol, kl_ref = torch.tensor([-20.0, -21.0, -19.0]), torch.tensor([-21.0, -23.0, -19.0])
    losses, rewards, kl = kto_loss(logps, ref, torch.tensor([True, True, True]), kl_pol, kl_ref, beta=beta)
    z0 = 1.0  # mean of (1, 2, 0)
    assert kl.item() == pytest.approx(z0) and not kl.requires_grad
    r = [1.0, 0.5, 1.0]
    assert losses.tolist() == pytest.approx([1 - _sigmoid(beta * (x - z0)) for x in r])
    assert rewards.tolist() == pytest.approx([beta * x for x in r])
    losses.sum().backward()
    assert (logps.grad < 0).all()  # desirable: push log-probs up


def test_kto_weights_labels_and_clamped_kl():
    beta = 0.5
    logps, ref = torch.tensor([-3.0, -4.0]), torch.tensor([-2.0, -5.0])
    # KL estimate negative -> clamped to 0
    losses, _, kl = kto_loss(logps, ref, torch.tensor([False, True]), torch.tensor([-9.0, -9.0]),
                             torch.tensor([-8.0, -7.0]), beta=beta, desirable_weight=2.0, undesirable_weight=0.5)
    assert kl.item() == 0.0
    assert losses[0].item() == pytest.approx(0.5 * (1 - _sigmoid(beta * (0.0 - (-1.0)))))
    assert losses[1].item() == pytest.approx(2.0 * (1 - _sigmoid(beta * (1.0 - 0.0))))


def test_kto_odd_batch_and_batch_of_one():
    from trainers.core.data import kto_mismatched_pairs

    rows = [{"prompt": f"p{i}", "completion": f"c{i}", "label": i % 2 == 0} for i in range(3)]
    pairs = kto_mismatched_pairs(rows)
    assert [(r["prompt"], r["completion"]) for r in pairs] == [("p0", "c2"), ("p1", "c0"), ("p2", "c1")]
    assert all(r["prompt"][1:] != r["completion"][1:] for r in pairs)  # every pair mismatched, odd size too
    assert [r["label"] for r in pairs] == [r["label"] for r in rows]
    # batch of one: no mismatched pair exists; z0 = 0 and the loss is the reference-point-free KTO term
    assert kto_mismatched_pairs(rows[:1]) == []
    empty = torch.empty(0)
    losses, _, kl = kto_loss(torch.tensor([-3.0]), torch.tensor([-4.0]), torch.tensor([True]), empty, empty, beta=1.0)
    assert kl.item() == 0.0
    assert losses.item() == pytest.approx(1 - _sigmoid(1.0))
