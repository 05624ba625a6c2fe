"""`prefsmith train ppo`: PPO with a learned value function — the last stage of the InstructGPT pipeline
(`train sft` → `train rm` on pairs → `train ppo --reward rm:DIR`), on the GRPO loop (trainers/online/grpo.py).

One step, top to bottom (`PPORun._optimize`; sampling, scoring and bookkeeping are GRPORun's):
  1. sample and score as GRPO does (any `--reward`, `rm:DIR` included), `--num-generations` 1 by default;
  2. with no gradient: the policy's log-probs (π_old), the frozen reference's (π_ref), the value model's V(s_t);
  3. reward per token: r_t = -β·KL_t(π_old‖π_ref), plus the sequence's reward at its last token (InstructGPT);
  4. GAE(γ, λ) over the completion tokens → advantages and returns; advantages whitened over the step;
  5. μ = `--num-iterations` epochs (4, as TRL's PPOTrainer): clipped policy loss (token mean over the step) +
     `--vf-coef` × clipped value loss; one AdamW for the policy, one for the value model.

Simplifications, on purpose:
- the value model is a separate network (policy weights or a reward-model folder, plus a scalar `score` head),
  not a head on the policy: it keeps its own optimizer and learning rate and never perturbs the policy;
- the episode ends at the completion's last token: V = 0 after it (TRL's PPOTrainer bootstraps from the value
  one position past the end, which is not a state the policy can be in);
- no mini-batches inside an epoch: each epoch is one optimizer step over the whole step's sequences (the
  micro-batches only bound memory), as GRPO's μ passes are;
- trajectories (`--env`): the loss mask is the policy's tokens (`completion_mask`), so GAE runs over them as if
  the environment's tokens were not there (γ, λ discount policy tokens only) and an environment token gets no
  reward, no value loss and no advantage.
Formulas: docs/online_rl.md#ppo.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from trainers.online.grpo import GRPOConfig, GRPORun, build_parser as grpo_parser


@dataclass
class PPOConfig(GRPOConfig):
    num_generations: int = 1  # the value model is the baseline; no group needed
    prompts_per_step: int = 16
    num_iterations: int = 4  # PPO epochs over each step's rollouts (TRL's num_ppo_epochs)
    dynamic_sampling: bool = False  # one sample per prompt: no group whose variance could be tested
    kl_coef: float = 0.05  # β of the per-token KL penalty in the reward (TRL's PPOTrainer default)
    gamma: float = 1.0  # GAE discount γ
    lam: float = 0.95  # GAE λ
    vf_coef: float = 0.1  # weight of the value loss
    cliprange_value: float = 0.2  # clip range of the value prediction around the old one
    value_model: str | None = None  # value model folder: a `train rm` model or any decoder (default: the policy's weights with a fresh scalar head)
    value_lr: float | None = None  # the value model's learning rate (default: --lr)
    whiten_advantages: bool = True  # whiten the GAE advantages over the step
    MIN_GENERATIONS = 1

    def __post_init__(self) -> None:
        from pipelines.errors import UserError

        super().__post_init__()
        if self.dynamic_sampling:
            raise UserError("--dynamic-sampling filters groups by reward variance; PPO has no groups to filter")
        if self.beta:
            raise UserError("PPO puts the KL to the reference in the reward: use --kl-coef, not --beta")
        if not 0.0 <= self.gamma <= 1.0 or not 0.0 <= self.lam <= 1.0:
            raise UserError(f"--gamma and --lam must lie in [0, 1], got {self.gamma} and {self.lam}")
        if self.asynchronous():
            raise UserError("--max-staleness / --rollout-process: asynchronous rollouts are for grpo and rloo; "
                            "PPO samples synchronously")
        if self.advantage not in ("grpo",):
            raise UserError(f"--advantage {self.advantage}: PPO's advantages come from its value model (GAE)")


class ValueModel(torch.nn.Module):
    """V(s_t) at every position: a transformer backbone and a scalar `score` head (a reward model's folder,
    as `train rm` writes, gives both; a policy's folder gives the backbone and a fresh head)."""

    def __init__(self, path: str, pad_token_id: int | None):
        super().__init__()
        from transformers import AutoModelForSequenceClassification

        from pipelines.errors import UserError

        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
        if not isinstance(getattr(model, "score", None), torch.nn.Linear):
            raise UserError(f"value model {path}: {type(model).__name__} has no `score` head (Llama, Qwen, Mistral "
                            "and most decoders do)")
        model.config.pad_token_id = pad_token_id
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, T) aligned with token_logps: out[:, t] = V(tokens < t)."""
        from trainers.core.logprobs import _position_ids

        hidden = self.model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                       position_ids=_position_ids(batch["attention_mask"]), use_cache=False)
        v = self.model.score(hidden.last_hidden_state).squeeze(-1).float()
        return torch.nn.functional.pad(v[:, :-1], (1, 0)) * batch["loss_mask"].float()

    def save(self, folder: Path, tokenizer=None, weights: dict | None = None) -> None:
        """A `from_pretrained` folder (a reward model's layout). `weights`: the full state dict of a sharded
        value model, as `fsdp.full_state` gathers it (keys under `model.`)."""
        state = None if weights is None else {k.removeprefix("model."): v for k, v in weights.items()}
        self.model.save_pretrained(folder, state_dict=state)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)


class PPORun(GRPORun):
    NAME = "ppo"
    cfg: PPOConfig

    def setup(self) -> None:
        from trainers.core import fsdp
        from trainers.core.optim import adamw, lr_schedule

        super().setup()  # the policy, and the reference (`uses_reference`) placed by the Learner
        cfg = self.cfg
        torch.manual_seed(cfg.seed)  # a fresh value head starts the same on every process and every run
        from rewards.rm import model_folder  # a `train rm` run directory stands for its OUTPUT/model

        source = (self.resume_dir / "value" if self.resume_dir is not None
                  else model_folder(cfg.value_model or cfg.model))
        value = ValueModel(str(source), self.engine.pad_id)
        # under --fsdp the wrapper is the root unit, so its forward gathers the embeddings and the score head
        self.value = self.learner.place(value, layers=fsdp.decoder_layers(value.model) if cfg.fsdp else None)
        self.value_optimizer = adamw(self.value, cfg.value_lr or cfg.lr, cfg.weight_decay)
        self.value_scheduler = lr_schedule(self.value_optimizer, cfg.max_steps, cfg.warmup(), "constant")
        self.learner.add(self.value, self.value_optimizer, self.value_scheduler, cfg.max_grad_norm, name="value_")
        self._value_state: tuple[dict, dict | None] | None = None  # a sharded value model's gathered state
        if self.resume_dir is not None:
            state = torch.load(self.resume_dir / "value" / "optimizer.pt", map_location="cpu", weights_only=False)
            if fsdp.is_sharded(self.value):  # the full, name-keyed state: rank 0's copy is scattered as shards
                fsdp.load_optimizer(self.value, self.value_optimizer, state["optimizer"] if self.d.main else None)
            else:
                self.value_optimizer.load_state_dict(state["optimizer"])
            self.value_scheduler.load_state_dict(state["scheduler"])

    def uses_reference(self) -> bool:
        return bool(self.cfg.kl_coef)

    def _row_advantages(self, rewards: torch.Tensor, baseline: torch.Tensor | None = None) -> None:
        return None  # token-level, from the value model (below)

    METRICS = ("loss", "clip_low", "clip_high", "entropy", "value_loss", "value_clipfrac")
    ROLLOUT_METRICS = ("kl", "returns", "values")

    def _optimize(self, seqs: list[dict]) -> dict:
        from trainers.core.distributed import reduce_stats
        from trainers.online.grpo import policy_stats
        from trainers.core.logprobs import token_logps
        from trainers.core.metrics import Stats
        from trainers.online.rl_objectives import PolicyLossConfig, clipped_value_loss, gae, kl_penalized_rewards, policy_loss

        cfg, learner = self.cfg, self.learner
        names = (*self.METRICS, *self.ROLLOUT_METRICS, "grad_norm", "value_grad_norm")
        n_items = float(sum(sum(s["loss_mask"]) for s in seqs))
        if not seqs or n_items == 0:
            return {k: 0.0 for k in names}
        mbs, real = self._micro_batches(seqs)
        batches = [learner.to_device(self._pad([seqs[i] for i in mb])) for mb in mbs]
        masks = [b["loss_mask"].float() for b in batches]
        # the rollouts' π_old, π_ref and V(s_t), with no gradient
        old = learner.forward(batches, lambda k, b: token_logps(self.model, b))
        ref = learner.forward(batches, lambda k, b: self.ref_logps(b)) if self.uses_reference() else old
        old_values = learner.forward(batches, lambda k, b: self.value(b))
        rollout = Stats()
        advs, rets = [], []
        with torch.no_grad():
            for k, mb in enumerate(mbs):
                scores = learner.tensor([seqs[i]["reward"] for i in mb])
                rewards, per_kl = kl_penalized_rewards(scores, old[k], ref[k], masks[k], cfg.kl_coef, cfg.kl)
                a, r = gae(rewards, old_values[k], masks[k], cfg.gamma, cfg.lam)
                advs.append(a)
                rets.append(r)
                if k < real:
                    tokens = masks[k].sum()
                    rollout.add("kl", per_kl.sum(), tokens)
                    rollout.add("returns", r.sum(), tokens)
                    rollout.add("values", old_values[k].sum(), tokens)
            if cfg.whiten_advantages:  # over the whole step: every micro-batch, every rank
                learner.whiten(advs[:real], masks[:real])
        loss_cfg = PolicyLossConfig(loss="dapo", surrogate=cfg.surrogate, epsilon=cfg.epsilon,
                                    epsilon_high=cfg.epsilon_high, importance_level=cfg.importance_level)

        def loss_fn(k: int, b: dict):
            logps, entropy = token_logps(self.model, b, with_entropy=True)
            loss, m = policy_loss(logps, old[k], advs[k], masks[k], loss_cfg, num_items=n_items)
            vloss, vclip = clipped_value_loss(self.value(b), old_values[k], rets[k], masks[k], cfg.cliprange_value,
                                              num_items=n_items)
            tokens = masks[k].sum()
            share = tokens.detach() / n_items  # both losses are token sums over the step's tokens: shares add to 1
            stats = policy_stats(loss, share, m, entropy, masks[k])
            stats.add("value_loss", vloss.detach(), share)
            stats.add("value_clipfrac", vclip * tokens, tokens)
            return loss + cfg.vf_coef * vloss, stats

        self.model.train()
        self.value.train()
        passes = [learner.update(batches, loss_fn, self.METRICS, real=real) for _ in range(cfg.num_iterations)]
        self.model.eval()
        self.value.eval()
        out = {k: sum(p.get(k, 0.0) for p in passes) / len(passes)
               for k in (*self.METRICS, "grad_norm", "value_grad_norm")}
        means = reduce_stats(rollout, self.ROLLOUT_METRICS, self.d).means()
        out.update({k: means.get(k, 0.0) for k in self.ROLLOUT_METRICS})
        return out

    def _gather_value(self, optimizer: bool) -> tuple[dict | None, dict | None]:
        """A sharded value model's full weights (and optimizer state), gathered by every rank onto rank 0."""
        from trainers.core import fsdp

        if not fsdp.is_sharded(self.value):
            return None, None
        return fsdp.full_state(self.value, self.value_optimizer if optimizer else None)

    def save(self) -> None:
        self._value_state = self._gather_value(optimizer=True)  # every rank, before rank 0 writes
        try:
            super().save()
        finally:
            self._value_state = None

    def save_extra(self, folder: Path) -> None:
        weights, optim = self._value_state or (None, None)
        self.value.save(folder / "value", weights=weights)
        torch.save({"optimizer": optim if optim is not None else self.value_optimizer.state_dict(),
                    "scheduler": self.value_scheduler.state_dict()}, folder / "value" / "optimizer.pt")

    def finish(self) -> dict:
        weights, _ = self._gather_value(optimizer=False)
        if self.d.main:
            self.value.save(self.out / "value_model", self.tokenizer, weights=weights)
        return super().finish()


def build_parser(prog: str = "prefsmith train ppo") -> argparse.ArgumentParser:
    p = grpo_parser(prog, PPOConfig)  # every PPOConfig field, PPO's own defaults for the ones it shares with GRPO
    p.description = "PPO with a value model (InstructGPT): GAE, per-token KL penalty, clipped value loss."
    return p


def main(argv: list[str]) -> int:
    from pipelines.core.options import from_args
    from pipelines.engines.models import resolve_model
    from pipelines.errors import UserError
    from trainers.online.grpo import train_grpo

    args = build_parser().parse_args(argv)
    try:  # the config's fields, not the hub flags
        summary = train_grpo(from_args(PPOConfig, args, model=resolve_model(args.model)), run_class=PPORun)
    except UserError as e:
        print(f"prefsmith train ppo: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in summary.items() if k != "plots"}))
    return 0
