"""PPO's pieces against hand-computed values: the KL-penalized reward, GAE, whitening, the clipped value loss."""
from __future__ import annotations

import json

import pytest
import torch

from pipelines.cli import main as cli
from pipelines.core import dataset as ds

from trainers.online.rl_objectives import clipped_value_loss, gae, kl_penalized_rewards, masked_whiten


def test_gae_hand_computed_trajectory():
    # row 0: 2 prompt tokens, then 3 completion tokens; row 1: 1 prompt token, 2 completion tokens, 2 padding
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]], dtype=torch.float32)
    values = torch.tensor([[9.0, 9.0, 0.5, 0.4, 0.2], [9.0, 0.3, 0.6, 7.0, 7.0]])  # 9s, 7s: must be ignored
    rewards = torch.tensor([[0.0, 0.0, -0.1, 0.0, 1.0], [0.0, 0.0, 2.0, 0.0, 0.0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # by hand: row 0, t=4: δ = 1 - .2 = .8; t=3: δ = .9·.2 - .4 = -.22, A = -.22 + .72·.8 = .356;
    # t=2: δ = -.1 + .9·.4 - .5 = -.24, A = -.24 + .72·.356 = .01632
    # row 1, t=2: δ = 2 - .6 = 1.4; t=1: δ = .9·.6 - .3 = .24, A = .24 + .72·1.4 = 1.248
    want = torch.tensor([[0, 0, 0.01632, 0.356, 0.8], [0, 1.248, 1.4, 0, 0]])
    assert torch.allclose(adv, want, atol=1e-6)
    assert torch.allclose(ret, (want + values) * mask, atol=1e-6)


def test_gae_gamma_lambda_one_is_reward_to_go_minus_value():
    mask = torch.ones(1, 4)
    rewards, values = torch.tensor([[0.5, -1.0, 0.0, 2.0]]), torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    togo = torch.tensor([[1.5, 1.0, 2.0, 2.0]])
    assert torch.allclose(adv, togo - values) and torch.allclose(ret, togo)


def test_kl_penalized_rewards_put_the_score_on_the_last_token():
    mask = torch.tensor([[0, 1, 1, 1], [0, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.float32)
    logps = torch.tensor([[0.0, -1.0, -2.0, -0.5]] * 3)
    ref = torch.tensor([[0.0, -1.5, -1.0, -0.5]] * 3)
    r, kl = kl_penalized_rewards(torch.tensor([1.0, 0.0, 5.0]), logps, ref, mask, kl_coef=0.1)
    # k1 = logπ - logπ_ref = .5, -1, 0 on row 0's tokens
    assert torch.allclose(r[0], torch.tensor([0.0, -0.05, 0.1, 1.0]))
    assert torch.allclose(r[1], torch.tensor([0.0, -0.05 + 0.0, 0.0, 0.0]))
    assert torch.equal(r[2], torch.zeros(4))  # no completion tokens: no score lands anywhere
    assert torch.allclose(kl[0], torch.tensor([0.0, 0.5, -1.0, 0.0]))


def test_masked_whiten_uses_only_masked_entries():
    x = torch.tensor([[100.0, 1.0, 2.0], [-50.0, 3.0, 4.0]])
    mask = torch.tensor([[0, 1, 1], [0, 1, 1]], dtype=torch.float32)
    w = masked_whiten(x, mask)
    vals = torch.tensor([1.0, 2.0, 3.0, 4.0])
    want = (vals - 2.5) / vals.std(unbiased=True)
    assert torch.allclose(w[mask.bool()], want, atol=1e-5) and w[0, 0] == 0 and w[1, 0] == 0
    assert torch.allclose(masked_whiten(x, mask, shift_mean=False)[mask.bool()], want + 2.5, atol=1e-5)


def test_clipped_value_loss_hand_computed():
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    old = torch.tensor([[0.0, 1.0, 0.0]])
    new = torch.tensor([[0.5, 1.1, 9.0]])
    ret = torch.tensor([[1.0, 0.0, 0.0]])
    loss, frac = clipped_value_loss(new, old, ret, mask, clip_range=0.2)
    # token 0: unclipped (.5-1)² = .25, clipped V = .2 -> (.2-1)² = .64: max .64 (clipped wins)
    # token 1: unclipped (1.1)² = 1.21, clipped V = 1.1 (within .2) -> 1.21: max 1.21
    assert loss.item() == pytest.approx(0.5 * (0.64 + 1.21) / 2)
    assert frac == pytest.approx(0.5)
    v = new.clone().requires_grad_(True)
    l2, _ = clipped_value_loss(v, old, ret, mask, clip_range=0.2)
    l2.backward()
    # token 0's loss is the clipped branch, constant in V: no gradient; token 1: d/dV ½·(V-0)²/2 = V/2 = .55
    assert torch.allclose(v.grad, torch.tensor([[0.0, 0.55, 0.0]]))


# ------------------------------------------------------------------------------------------ the loop, tiny model
def _prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"say something {i}"}) + "\n" for i in range(12)))
    return path


def ppo_args(model, prompts, out, *extra):
    return ["train", "ppo", "--model", str(model), "--prompts", str(prompts), "--output", str(out),
            "--reward", "plugin_rewards:first_char_reward", "--prompts-per-step", "4", "--max-new-tokens", "6",
            "--lr", "1e-3", "--seed", "3", "--threads", "1", "--num-iterations", "2", *extra]


def test_ppo_loop_trains_policy_and_value(tmp_path, tiny_model):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    out = tmp_path / "run"
    assert cli(ppo_args(tiny_model, _prompts(tmp_path), out, "--max-steps", "3", "--save-every", "0")) == 0
    train = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in train] == [1, 2, 3]
    for r in train:
        assert r["groups_sampled"] == 4 and r["sequences"] + r["null_rows"] == 4  # one completion per prompt
        assert r["value_loss"] > 0 and r["value_grad_norm"] > 0 and r["grad_norm"] > 0
        assert 0.0 <= r["value_clipfrac"] <= 1.0
    assert train[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the first rollouts come from the reference itself
    assert any(abs(r["kl"]) > 1e-6 for r in train[1:])  # ... later ones do not
    rows = ds.load_rows(out / "rollouts")
    assert len(rows) == 12 and all(r["advantage"] is None for r in rows)  # advantages are per token
    before = AutoModelForCausalLM.from_pretrained(tiny_model)
    after = AutoModelForCausalLM.from_pretrained(out / "model")
    assert max(float((a - b).abs().max()) for a, b in zip(after.parameters(), before.parameters())) > 0
    value = AutoModelForSequenceClassification.from_pretrained(out / "value_model", num_labels=1)
    assert value.score.weight.shape == (1, before.config.hidden_size)


def test_ppo_resume_gives_the_uninterrupted_weights(tmp_path, tiny_model):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    prompts = _prompts(tmp_path)
    clean, split = tmp_path / "clean", tmp_path / "split"
    assert cli(ppo_args(tiny_model, prompts, clean, "--max-steps", "4", "--save-every", "2")) == 0
    assert cli(ppo_args(tiny_model, prompts, split, "--max-steps", "2", "--save-every", "2")) == 0
    assert (split / "checkpoints" / "step-00000002" / "value" / "optimizer.pt").exists()
    assert cli(ppo_args(tiny_model, prompts, split, "--max-steps", "4", "--save-every", "2", "--resume")) == 0
    for loader, folder in ((AutoModelForCausalLM, "model"), (AutoModelForSequenceClassification, "value_model")):
        a, b = loader.from_pretrained(clean / folder), loader.from_pretrained(split / folder)
        for (name, p), q in zip(a.named_parameters(), b.parameters()):
            assert torch.allclose(p, q, atol=1e-6), (folder, name)


def test_value_model_starts_from_a_reward_model_head(tmp_path, tiny_model):
    from transformers import AutoModelForSequenceClassification

    from trainers.online.ppo import ValueModel

    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)
    with torch.no_grad():
        rm.score.weight.fill_(0.01)
    rm.save_pretrained(tmp_path / "rm")
    v = ValueModel(str(tmp_path / "rm"), pad_token_id=0)
    assert torch.equal(v.model.score.weight, rm.score.weight)
    batch = {"input_ids": torch.tensor([[5, 6, 7, 8]]), "attention_mask": torch.ones(1, 4, dtype=torch.long),
             "loss_mask": torch.tensor([[0, 0, 1, 1]])}
    out = v(batch)
    # V at position t is the head on the hidden state of t - 1; prompt positions are zeroed
    with torch.no_grad():
        hidden = rm.base_model(input_ids=batch["input_ids"]).last_hidden_state
        want = rm.score(hidden).squeeze(-1)
    assert out[0, 0] == 0 and out[0, 1] == 0
    assert torch.allclose(out[0, 2:], want[0, 1:3], atol=1e-5)
