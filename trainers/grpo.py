"""`prefsmith train grpo` / `train rloo`: the policy samples, the verifiable rewards score, the policy improves.

One step, top to bottom (`GRPORun.step`):
  1. sample: take `prompts_per_step` prompts; the live policy (the hf engine wraps the training model itself,
     no copy) samples G completions each, seeded by (seed, step, prompt id), so a resumed run samples the same;
  2. score: the `label` stage's row core with the same reward specs (`--reward math`, `code`, `format:…`,
     plug-ins), so a reward tested with `label` trains unchanged;
  3. filter: null rewards (the data or a checker failed) leave their group; with `--dynamic-sampling` a group
     whose *outcome* reward has no variance teaches nothing and is replaced by a fresh prompt (DAPO);
  4. advantages: group-centred (`--scale-rewards group|batch|none`), RLOO leave-one-out or REINFORCE++;
  5. loss: clipped ratio / CISPO / GSPO, aggregated per `--loss`, + β·KL; μ = `--num-iterations` passes over
     the same rollouts with the old log-probs computed once; AdamW, clip, schedule;
  6. log: metrics.jsonl (+ plots), the step's rollouts with rewards and advantages as a prefsmith dataset
     (OUTPUT/rollouts/), held-out greedy accuracy every `--eval-every` steps, checkpoints.

Where it departs from TRL's GRPOTrainer, on purpose:
- prompt and completion token ids are the engine's, trained as they are (no decode → re-tokenize);
- a completion cut at `--max-new-tokens` ends without its end-of-turn token; `--mask-truncated` drops it from
  the loss (DAPO's overlong filtering);
- dynamic sampling tests the outcome reward's variance, not the shaped total's (a format reward would make
  almost every group look informative);
- `--engine vllm` samples with vLLM beside the trainer (weights synced after every optimizer step); its
  log-probs differ from the trainer's, so use `--tis-cap` with it.
Formulas and defaults: docs/online_rl.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainers.rl_objectives import ADVANTAGES, PolicyLossConfig, policy_loss, truncated_is_weights


@dataclass
class GRPOConfig:
    model: str
    prompts: str
    output: str
    rewards: list[str]
    weights: list[str] = field(default_factory=list)
    outcome_reward: str | None = None  # the reward whose variance dynamic sampling tests (default: the first)
    num_generations: int = 8  # G
    prompts_per_step: int = 4
    max_new_tokens: int = 256
    temperature: float = 0.7  # a weak policy at 1.0 samples mostly noise (docs/online_rl.md)
    top_p: float = 1.0
    lr: float = 1e-5  # small models, tens of steps (docs/online_rl.md); TRL uses 1e-6 for long runs of big ones
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_steps: int = 100
    max_minutes: float | None = None
    seed: int = 0
    save_every: int = 10
    keep_checkpoints: int = 2
    resume: bool = False
    eval_prompts: list[str] = field(default_factory=list)  # held-out sets (repeatable --eval-prompts)
    eval_every: int = 10
    eval_limit: int | None = None
    eval_max_new_tokens: int | None = None  # default: max_new_tokens
    eval_batch_size: int = 64  # prompts per greedy generate call (CPU decoding is memory-bound: wide is cheap)
    advantage: str = "grpo"  # grpo | rloo | reinforce_pp
    scale_rewards: str = "none"  # grpo: group | batch | none (Dr. GRPO's none: docs/online_rl.md, measured)
    loss: str = "dapo"  # grpo | bnpo | dr_grpo | dapo
    surrogate: str = "clip"  # clip | cispo
    epsilon: float = 0.2
    epsilon_high: float | None = None
    importance_level: str = "token"  # token | sequence (GSPO)
    beta: float = 0.0
    kl: str = "k3"
    num_iterations: int = 1  # μ
    dynamic_sampling: bool = True  # DAPO's filter on the outcome reward: what made the embedded model learn
    max_resample_rounds: int = 4  # extra prompt draws per step to fill it with informative groups
    mask_truncated: bool = False
    tis_cap: float | None = None  # truncated importance sampling against the engine's log-probs (off for hf)
    engine: str = "hf"  # hf: the live policy in-process | vllm: vLLM beside the trainer, weights synced each step
    template: str | None = None
    system: str | None = None
    chat: str = "auto"
    micro_batch_size: int = 8  # sequences per forward/backward
    fsdp: bool = False  # torchrun: shard weights, gradients and AdamW state (trainers/fsdp.py); sampling gathers them
    threads: int | None = None
    MIN_GENERATIONS = 2  # not a field: PPO (trainers/ppo.py), whose baseline is a value model, allows 1

    def __post_init__(self) -> None:
        from pipelines.errors import UserError

        if not self.rewards:
            raise UserError("give at least one --reward (e.g. --reward math)")
        if self.advantage not in ADVANTAGES:
            raise UserError(f"--advantage {self.advantage!r}: choose one of {', '.join(ADVANTAGES)}")
        if self.num_generations < self.MIN_GENERATIONS:
            raise UserError(f"--num-generations must be >= {self.MIN_GENERATIONS}: advantages compare a prompt's "
                            "completions")
        for name in ("prompts_per_step", "max_new_tokens", "max_steps", "num_iterations", "micro_batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        try:
            self.loss_config()
        except ValueError as e:
            raise UserError(str(e)) from None

    def loss_config(self) -> PolicyLossConfig:
        return PolicyLossConfig(loss=self.loss, surrogate=self.surrogate, epsilon=self.epsilon,
                                epsilon_high=self.epsilon_high, importance_level=self.importance_level,
                                beta=self.beta, kl=self.kl, max_completion_length=self.max_new_tokens)

    def identity(self) -> dict:
        """What must not change across a resume (the rest — budgets, eval cadence — may)."""
        skip = {"resume", "max_steps", "max_minutes", "save_every", "keep_checkpoints", "eval_every", "threads",
                "eval_limit", "eval_batch_size", "output"}
        return {k: v for k, v in asdict(self).items() if k not in skip}


def _seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:4], "little")


class PromptSampler:
    """Prompts in a seeded order, reshuffled each epoch; its position is part of a checkpoint."""

    def __init__(self, n: int, seed: int, epoch: int = 0, index: int = 0):
        self.n, self.seed, self.epoch, self.index = n, seed, epoch, index
        self._order = self._perm(epoch)

    def _perm(self, epoch: int) -> list[int]:
        order = list(range(self.n))
        random.Random(_seed(self.seed, "epoch", epoch)).shuffle(order)
        return order

    def take(self, k: int) -> list[int]:
        out = []
        for _ in range(k):
            if self.index >= self.n:
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._perm(self.epoch)
            out.append(self._order[self.index])
            self.index += 1
        return out


@dataclass
class Group:
    rows: list[dict]  # labeled rollout rows of one prompt
    prompt_ids: list[int]


class Evaluator:
    """Greedy completions of held-out prompts by a policy, labeled by the run's rewards, and their accuracy
    (the outcome reward >= 1). The GRPO loop's held-out evaluation; bench/learning.py evaluates TRL's policy
    with the same object, so both sides are measured alike. Split over ranks under torchrun, gathered back."""

    def __init__(self, engine, gen_cfg, use_chat: bool, fns, names: list[str], weights, outcome: str,
                 batch_size: int = 64, max_new_tokens: int = 256, d=None):
        from trainers.distributed import Dist

        self.engine, self.gen_cfg, self.use_chat = engine, gen_cfg, use_chat
        self.fns, self.names, self.weights, self.outcome = fns, names, weights, outcome
        self.batch_size, self.max_new_tokens, self.d = batch_size, max_new_tokens, d or Dist()

    def rows(self, rows: list[dict], prefix: str = "eval") -> list[dict]:
        from pipelines.engines.base import SamplingConfig
        from pipelines.stages.generate import generate_rows
        from pipelines.stages.label import label_rows
        from trainers.distributed import gather_objects

        world, rank = self.d.world, self.d.rank
        gen = dataclasses.replace(self.gen_cfg, batch_size=self.batch_size, sampling=SamplingConfig(
            n=1, temperature=0.0, max_new_tokens=self.max_new_tokens, seed=0))
        ids = [str(r.get("id") if r.get("id") is not None else f"{prefix}{i:06d}") for i, r in enumerate(rows)]
        mine = list(range(rank, len(rows), world))
        width, self.engine.options.prompt_batch_size = self.engine.options.prompt_batch_size, self.batch_size
        try:
            out, _ = generate_rows(self.engine, [rows[i] for i in mine], gen, [ids[i] for i in mine], self.use_chat)
        finally:
            self.engine.options.prompt_batch_size = width
        labeled = label_rows(out, self.fns, self.names, self.weights)
        if world == 1:
            return labeled
        merged: list[dict] = [None] * len(rows)  # type: ignore[list-item]
        for r, part in enumerate(gather_objects(labeled, self.d)):
            merged[r::world] = part
        return merged

    def summary(self, labeled: list[dict]) -> dict:
        """Greedy accuracy, nulls (rows no reward could score), mean reward per component."""
        outcome = [r["rewards"][self.outcome] for r in labeled]
        scored = [o for o in outcome if o is not None]
        rec = {"accuracy": round(sum(o >= 1.0 for o in scored) / len(scored), 6) if scored else None,
               "eval_null": len(outcome) - len(scored)}
        for name in self.names:
            vals = [r["rewards"][name] for r in labeled if r["rewards"].get(name) is not None]
            rec[f"reward_{name}"] = round(sum(vals) / len(vals), 6) if vals else None
        return rec

    def evaluate(self, sets: dict[str, list[dict]]) -> dict:
        """{accuracy (the first set's), accuracy_<set> for each set, …}."""
        rec: dict[str, Any] = {}
        for k, (name, rows) in enumerate(sets.items()):
            summary = self.summary(self.rows(rows, prefix=name))
            if k == 0:
                rec.update(summary)
            rec.update({f"{key}_{name}": v for key, v in summary.items()})
        return rec


class GRPORun:
    """Set-up, `step()`, `finish()` for one run directory."""

    NAME = "grpo"

    def __init__(self, cfg: GRPOConfig, log=lambda msg: print(f"prefsmith train grpo: {msg}", file=sys.stderr,
                                                               flush=True)):
        self.cfg, self.log = cfg, log

    # ---------------------------------------------------------------------------------------- set-up
    def setup(self) -> None:
        from transformers import AutoModelForCausalLM

        from pipelines.core import dataset as ds
        from pipelines.engines.base import SamplingConfig, load_tokenizer
        from pipelines.engines.hf import HFEngine
        from pipelines.stages.generate import GenerateConfig
        from pipelines.stages.label import LabelConfig, load_rewards
        from trainers import checkpoint as ckpt
        from trainers.metrics import MetricsLog

        from trainers.distributed import setup_distributed

        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.d = setup_distributed()  # torchrun: each rank samples whole groups, gradients are summed
        if self.d.world > 1 and cfg.engine == "vllm":
            from pipelines.errors import UserError

            raise UserError("--engine vllm runs in one trainer process; use --engine hf under torchrun")
        self.out = Path(cfg.output)
        from pipelines.core.files import ensure_writable_dir

        ensure_writable_dir(self.out)
        self.prompts = ds.load_rows(cfg.prompts, required=["prompt"])
        self.eval_sets = {}
        for path in cfg.eval_prompts:
            name = Path(path.rstrip("/")).stem
            if name in self.eval_sets:
                name = f"{name}{len(self.eval_sets)}"
            self.eval_sets[name] = ds.load_rows(path, required=["prompt"])[: cfg.eval_limit]
        self.fns, self.names, self.weights = load_rewards(LabelConfig(rewards=list(cfg.rewards), weights=list(cfg.weights)))
        self.outcome = cfg.outcome_reward or self.names[0]
        if self.outcome not in self.names:
            from pipelines.errors import UserError

            raise UserError(f"--outcome-reward {self.outcome!r} is not one of the rewards ({', '.join(self.names)})")

        self.resume_dir = resume_dir = ckpt.latest_checkpoint(self.out) if cfg.resume else None
        if resume_dir is not None:
            _check_same_run(resume_dir, cfg)
        elif (self.out / "checkpoints").exists() and any((self.out / "checkpoints").iterdir()):
            from pipelines.errors import UserError

            raise UserError(f"{self.out} already holds checkpoints; pass --resume to continue, or another --output")
        source = str(resume_dir) if resume_dir is not None else cfg.model
        self.tokenizer = load_tokenizer(cfg.model)
        self.model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        self.model.config.use_cache = True
        if cfg.fsdp:
            from pipelines.errors import UserError
            from trainers import fsdp

            fsdp.check_supported(self.d)
            if cfg.engine != "hf" or self.d.device.type != "cpu":
                raise UserError("train grpo --fsdp shards over CPU processes with --engine hf (this trainer's "
                                "policy trains on the CPU; its GPU path is --engine vllm in one process)")
            fsdp.shard_model(self.model, self.d)
        if cfg.engine == "vllm":
            from pipelines.engines.vllm import VLLMPolicyEngine

            self.engine = VLLMPolicyEngine(cfg.model, prompt_batch_size=cfg.prompts_per_step)
            if resume_dir is not None:
                self.engine.sync_weights(self.model)  # the checkpoint's weights, not the starting model's
        else:
            self.engine = HFEngine.wrap(self.model, self.tokenizer, device="cpu", prompt_batch_size=cfg.prompts_per_step)
        self.gen_cfg = GenerateConfig(model=cfg.model, sampling=SamplingConfig(), template=cfg.template,
                                      chat=cfg.chat, system=cfg.system, batch_size=cfg.prompts_per_step,
                                      engine=cfg.engine)
        self.use_chat = cfg.chat == "always" or (cfg.chat == "auto" and bool(getattr(self.tokenizer, "chat_template", None)))
        self.evaluator = Evaluator(self.engine, self.gen_cfg, self.use_chat, self.fns, self.names, self.weights,
                                   self.outcome, cfg.eval_batch_size, cfg.eval_max_new_tokens or cfg.max_new_tokens,
                                   self.d)
        self.ref = None
        if cfg.beta:
            self.ref = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32).eval()
            for p in self.ref.parameters():
                p.requires_grad_(False)
            if cfg.fsdp:
                from trainers import fsdp

                fsdp.shard_model(self.ref, self.d)
        from trainers.optim import adamw, lr_schedule

        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = adamw(self.model, cfg.lr, cfg.weight_decay)
        self.scheduler = lr_schedule(self.optimizer, cfg.max_steps, cfg.warmup_steps, "constant")
        self.state = ckpt.TrainerState()
        if resume_dir is not None:
            self.state = ckpt.load_training_state(resume_dir, self.optimizer, self.scheduler, self.d.rank, self.model)
            self.log(f"resuming from {resume_dir} (step {self.state.step})")
        self.sampler = PromptSampler(len(self.prompts), cfg.seed, self.state.epoch, self.state.batch_in_epoch)
        self.metrics = MetricsLog(self.out, resume_step=self.state.step if resume_dir is not None else None) \
            if self.d.main else None
        if self.d.main:
            self._trim_rollouts(self.state.step)
        self.t_start = time.time()
        self.eval_seconds = 0.0  # held-out evaluation is not training time (`minutes`, `--max-minutes`)
        if cfg.tis_cap and (cfg.top_p < 1.0):
            self.log("warning: --tis-cap with --top-p < 1: the sampler's log-probs are of the truncated "
                     "distribution, so the importance weights are biased")

    def train_minutes(self) -> float:
        return (time.time() - self.t_start - self.eval_seconds) / 60

    # ---------------------------------------------------------------------------------------- sampling
    def _rollouts(self, indices: list[int], step: int, round_: int) -> list[Group]:
        from pipelines.engines.base import SamplingConfig
        from pipelines.stages.generate import build_prompt, generate_rows
        from pipelines.stages.label import label_rows

        cfg = self.cfg
        rows = [self.prompts[i] for i in indices]
        ids = [str(r.get("id") if r.get("id") is not None else f"row{i:07d}") for r, i in zip(rows, indices)]
        gen = dataclasses.replace(self.gen_cfg, sampling=SamplingConfig(
            n=cfg.num_generations, temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
            seed=_seed(cfg.seed, "step", step, round_)))
        t0 = time.time()
        out, stats = generate_rows(self.engine, rows, gen, ids, self.use_chat)
        self.timing["generation"] += time.time() - t0
        self.tokens += stats["tokens"]
        t0 = time.time()
        labeled = label_rows(out, self.fns, self.names, self.weights)
        self.timing["scoring"] += time.time() - t0
        groups = []
        for k, row in enumerate(rows):
            g = labeled[k * cfg.num_generations:(k + 1) * cfg.num_generations]
            groups.append(Group(g, self.engine.prompt_ids(build_prompt(row, gen, self.use_chat))))
        return groups

    def _collect(self, step: int) -> tuple[list[Group], dict]:
        """Groups for this step: null rows dropped; with dynamic sampling, zero-variance groups replaced."""
        cfg = self.cfg
        kept: list[Group] = []
        counts = {"groups_sampled": 0, "groups_zero_variance": 0, "null_rows": 0, "all_correct": 0,
                  "all_wrong": 0, "mixed": 0}
        seen: list[Group] = []
        for round_ in range(1 + (cfg.max_resample_rounds if cfg.dynamic_sampling else 0)):
            need = cfg.prompts_per_step - len(kept)
            if need <= 0:
                break
            for g in self._gathered_rollouts(self.sampler.take(need), step, round_):
                counts["groups_sampled"] += 1
                valid = [r for r in g.rows if not self._null(r)]
                counts["null_rows"] += len(g.rows) - len(valid)
                seen.append(g)
                outcome = [float(r["rewards"][self.outcome]) for r in valid]
                if outcome:
                    correct = [o >= 1.0 for o in outcome]
                    counts["all_correct" if all(correct) else "all_wrong" if not any(correct) else "mixed"] += 1
                flat = len(set(outcome)) <= 1
                counts["groups_zero_variance"] += flat
                if len(valid) >= cfg.MIN_GENERATIONS and not (cfg.dynamic_sampling and flat):
                    kept.append(g)
            if not cfg.dynamic_sampling:
                break
        return kept, {**counts, "_seen": seen}

    def _gathered_rollouts(self, indices: list[int], step: int, round_: int) -> list[Group]:
        """Under torchrun, rank r samples prompts r, r + world, …; every rank then holds every group, in prompt
        order, so filtering and advantages are the same everywhere (and equal one process's)."""
        from trainers.distributed import gather_objects

        world, rank = self.d.world, self.d.rank
        before = self.tokens
        from trainers.fsdp import full_weights

        with full_weights(self.model):  # --fsdp: sampling runs on the whole weights, gathered once per call
            mine = self._rollouts(indices[rank::world], step, round_) if indices[rank::world] else []
        if world == 1:
            return mine
        parts = gather_objects((mine, self.tokens - before), self.d)  # this call's tokens, every rank's
        self.tokens = before + sum(t for _, t in parts)
        out: list[Group] = [None] * len(indices)  # type: ignore[list-item]
        for r, (groups, _) in enumerate(parts):
            out[r::world] = groups
        return out

    def _null(self, row: dict) -> bool:
        """A row that could not be scored (the data or a checker failed): it leaves its group, counted."""
        return row["reward"] is None or row["rewards"].get(self.outcome) is None

    # ---------------------------------------------------------------------------------------- one step
    def step(self) -> dict:
        cfg = self.cfg
        step = self.state.step
        self.timing = {"generation": 0.0, "scoring": 0.0, "training": 0.0}
        self.tokens = 0
        t_step = time.time()
        groups, counts = self._collect(step)
        seen = counts.pop("_seen")
        if cfg.engine == "vllm":
            self.engine.sleep()  # frees the GPU for training (a no-op on CPU)
        record: dict[str, Any] = {"split": "train", "step": step + 1, **counts}

        seqs = self._sequences(groups)
        t0 = time.time()
        stats = self._optimize(seqs)
        self.scheduler.step()
        self.timing["training"] = time.time() - t0
        if cfg.engine == "vllm":  # always, even without an update: a level-2 sleep dropped the weights
            self.timing["sync"] = self.engine.sync_weights(self.model)

        rows = [r for g in seen for r in g.rows]
        record.update(self._reward_metrics(rows))
        record.update({k: round(v, 6) for k, v in stats.items()})
        record.update({"groups_trained": len(groups), "sequences": len(seqs), "lr": self.scheduler.get_last_lr()[0],
                       **{f"seconds_{k}": round(v, 2) for k, v in self.timing.items()},
                       "tokens_per_s": round(self.tokens / self.timing["generation"], 1) if self.timing["generation"] else 0.0,
                       "step_seconds": round(time.time() - t_step, 2),
                       "minutes": round(self.train_minutes(), 3)})
        if self.d.main:
            self._write_rollouts(step + 1, rows)
        self.state.step += 1
        self.state.epoch, self.state.batch_in_epoch = self.sampler.epoch, self.sampler.index
        self.state.examples_seen += counts["groups_sampled"]
        if self.d.main:
            self.metrics.write(record)
        return record

    def _row_advantages(self, rewards: torch.Tensor) -> torch.Tensor | None:
        """One advantage per completion from the step's rewards (prompts × G, NaN for null rows)."""
        cfg = self.cfg
        kwargs = {"scale": cfg.scale_rewards} if cfg.advantage == "grpo" else {}
        return ADVANTAGES[cfg.advantage](rewards, cfg.num_generations, **kwargs)

    def _sequences(self, groups: list[Group]) -> list[dict]:
        """The step's trainable sequences: the engine's prompt + completion ids, the loss mask, the sampler's
        log-probs, the completion's advantage and reward, and the rank that trains it (whole groups per rank)."""
        cfg = self.cfg
        # advantages over the whole step: a null row keeps its place as NaN (left out of every baseline, advantage
        # 0) so groups stay G wide, then is left out of the loss
        flat = [row for g in groups for row in g.rows]
        rewards = torch.tensor([float("nan") if self._null(r) else float(r["reward"]) for r in flat])
        adv_all = self._row_advantages(rewards) if flat else None
        if adv_all is None:  # token-level advantages come later (PPO)
            adv_all = torch.full((len(flat),), float("nan"))
        advs = list(torch.split(adv_all, [len(g.rows) for g in groups])) if flat else []
        seqs = []
        for k, (g, a) in enumerate(zip(groups, advs)):
            for row, value in zip(g.rows, a.tolist()):
                row["advantage"] = None if self._null(row) or math.isnan(value) else value
                ids = list(row["completion_ids"] or [])
                if not ids or self._null(row):
                    continue
                train = not (cfg.mask_truncated and row["finish_reason"] == "length")
                seqs.append({"input_ids": g.prompt_ids + ids,
                             "loss_mask": [0] * len(g.prompt_ids) + [int(train)] * len(ids),
                             "sampler_logps": [0.0] * len(g.prompt_ids) + list(row["logprobs"] or [0.0] * len(ids)),
                             "advantage": value, "reward": float(row["reward"]), "owner": k % self.d.world})
        return seqs

    def _optimize(self, seqs: list[dict]) -> dict:
        """μ passes of the policy loss over the step's sequences (this rank's share); returns the metrics."""
        from trainers import fsdp
        from trainers.distributed import all_reduce_grads, gather_objects
        from trainers.logprobs import token_logps

        cfg = self.cfg
        sharded = fsdp.is_sharded(self.model)
        stats = {"loss": 0.0, "clip_low": 0.0, "clip_high": 0.0, "kl": 0.0, "entropy": 0.0, "grad_norm": 0.0}
        # the step's totals (every rank holds every group): the loss normalizers are global, so the ranks'
        # summed gradients are one process's
        n_items = float(sum(sum(s["loss_mask"]) for s in seqs))
        n_seqs = len(seqs)
        local = [i for i in range(n_seqs) if seqs[i]["owner"] == self.d.rank]
        if seqs and n_items > 0:
            self.model.train()
            mbs = [local[i:i + cfg.micro_batch_size] for i in range(0, len(local), cfg.micro_batch_size)]
            real = len(mbs)
            if sharded:  # every rank runs as many forwards and backwards (trainers/fsdp.py); the padding ones weigh 0
                mbs += [[0]] * (fsdp.common_count(real, self.d) - real)
            batches = [self._pad([seqs[i] for i in mb]) for mb in mbs]
            adv_t = [torch.tensor([seqs[i]["advantage"] for i in mb]) for mb in mbs]
            with torch.no_grad():  # old log-probs once (μ > 1), and the reference's
                old = [token_logps(self.model, b) for b in batches] if cfg.num_iterations > 1 else None
                ref = [token_logps(self.ref, b) for b in batches] if self.ref is not None else None
            passes = 0
            for it in range(cfg.num_iterations):
                self.optimizer.zero_grad(set_to_none=True)
                for k, b in enumerate(batches):
                    logps, entropy = token_logps(self.model, b, with_entropy=True)
                    old_k = old[k] if old is not None else logps.detach()
                    isw = (truncated_is_weights(old_k, b["sampler_logps"], b["loss_mask"], cfg.tis_cap)
                           if cfg.tis_cap else None)
                    weight = 1.0 if cfg.loss == "dapo" else len(mbs[k]) / n_seqs
                    loss, m = policy_loss(logps, old_k, adv_t[k], b["loss_mask"], cfg.loss_config(),
                                          ref_logps=ref[k] if ref is not None else None, is_weights=isw,
                                          num_items=n_items)
                    if k >= real:
                        (loss * 0.0).backward()
                        continue
                    (loss * weight).backward()
                    mask = b["loss_mask"].float()
                    share = float(mask.sum()) / n_items
                    stats["loss"] += float(loss.detach()) * weight / cfg.num_iterations
                    stats["clip_low"] += m["clip_low"] * share / cfg.num_iterations
                    stats["clip_high"] += m["clip_high"] * share / cfg.num_iterations
                    stats["kl"] += m.get("kl", 0.0) * share / cfg.num_iterations
                    stats["entropy"] += float((entropy * mask).sum()) / n_items / cfg.num_iterations
                if not sharded:  # FSDP summed the gradients in backward
                    all_reduce_grads(self.params, self.d)
                norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
                stats["grad_norm"] += float(norm) / cfg.num_iterations
                self.optimizer.step()
                passes += 1
            self.optimizer.zero_grad(set_to_none=True)
            self.model.eval()
            if self.d.world > 1:  # each rank summed its share of the step's metrics; grad_norm is already global
                names = [k for k in stats if k != "grad_norm"]
                total = gather_objects([stats[k] for k in names], self.d)
                stats.update({k: sum(t[i] for t in total) for i, k in enumerate(names)})
        return stats

    def _pad(self, feats: list[dict]) -> dict[str, torch.Tensor]:
        from trainers.data import collate

        pad = self.engine.pad_id
        batch = collate([{"input_ids": f["input_ids"], "loss_mask": f["loss_mask"]} for f in feats], pad)
        width = batch["input_ids"].shape[1]
        batch["sampler_logps"] = torch.tensor([f["sampler_logps"] + [0.0] * (width - len(f["sampler_logps"]))
                                               for f in feats])
        return batch

    def _reward_metrics(self, rows: list[dict]) -> dict:
        out: dict[str, Any] = {}
        for name in self.names:
            vals = [r["rewards"][name] for r in rows if r["rewards"].get(name) is not None]
            if vals:
                mean = sum(vals) / len(vals)
                out[f"reward_{name}"] = round(mean, 6)
                out[f"reward_{name}_std"] = round(math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals)), 6)
        totals = [r["reward"] for r in rows if r["reward"] is not None]
        out["reward"] = round(sum(totals) / len(totals), 6) if totals else None
        outcome = [r["rewards"][self.outcome] for r in rows if r["rewards"].get(self.outcome) is not None]
        out["accuracy"] = round(sum(o >= 1.0 for o in outcome) / len(outcome), 6) if outcome else None
        lengths = [len(r["completion_ids"] or []) for r in rows]
        out["completion_length"] = round(sum(lengths) / len(lengths), 2) if lengths else 0.0
        out["truncated"] = round(sum(r["finish_reason"] == "length" for r in rows) / len(rows), 4) if rows else 0.0
        return out

    # ---------------------------------------------------------------------------------------- outputs
    def _rollout_dir(self) -> Path:
        return self.out / "rollouts"

    def _trim_rollouts(self, step: int) -> None:
        from pipelines.core import dataset as ds

        data = self._rollout_dir() / ds.DATA
        for f in sorted(data.glob("part-*.parquet")) if data.is_dir() else []:
            if int(f.stem.split("-")[1]) > step:
                f.unlink()

    def _write_rollouts(self, step: int, rows: list[dict]) -> None:
        from pipelines.core import dataset as ds

        if not rows:
            return
        keep = [{**{k: v for k, v in r.items() if k not in ("policy",)}, "step": step,
                 "advantage": r.get("advantage")} for r in rows]
        ds.write_parquet_atomic(ds.rows_to_table(keep), self._rollout_dir() / ds.DATA / f"part-{step:05d}.parquet")
        ds.write_manifest(self._rollout_dir(), {"stage": "train-grpo-rollouts", "complete": True,
                                                "steps": step, "config": self.cfg.identity()})

    def evaluate(self) -> dict | None:
        """Held-out greedy accuracy on every `--eval-prompts` set: `accuracy` is the first set's, and each set
        also gets `accuracy_<file stem>`. Its time is not training time."""
        if not self.eval_sets:
            return None
        t0 = time.time()
        from trainers.fsdp import full_weights

        with full_weights(self.model):
            rec: dict[str, Any] = {"split": "eval", "step": self.state.step, **self.evaluator.evaluate(self.eval_sets)}
        self.eval_seconds += time.time() - t0
        rec.update({"minutes": round(self.train_minutes(), 3), "eval_seconds": round(time.time() - t0, 2)})
        if self.d.main:
            self.metrics.write(rec)
        return rec

    def save(self) -> None:
        from trainers import checkpoint as ckpt

        self.model.config.use_cache = True
        ckpt.save_checkpoint_all_ranks(self.d, self.out, self.model, self.tokenizer, self.optimizer, self.scheduler,
                                       self.state, json.dumps({"identity": self.cfg.identity()}, default=str),
                                       keep=self.cfg.keep_checkpoints, extra=self.save_extra)

    def save_extra(self, folder: Path) -> None:
        """More state for a checkpoint, written inside it before it is marked complete (PPO: the value model)."""

    def finish(self) -> dict:
        from trainers.metrics import plot_run

        from trainers.distributed import barrier

        from trainers import fsdp

        plots = []
        weights = fsdp.full_state(self.model)[0] if fsdp.is_sharded(self.model) else None  # every rank gathers
        if self.d.main:
            self.model.save_pretrained(self.out / "model", state_dict=weights)
            self.tokenizer.save_pretrained(self.out / "model")
            plots = plot_run(self.out)
        barrier(self.d)
        for f in self.fns:
            f.close()
        if self.cfg.engine == "vllm":
            self.engine.close()
        return {"steps": self.state.step, "output": str(self.out), "plots": [str(p) for p in plots]}


def _check_same_run(checkpoint: Path, cfg: GRPOConfig) -> None:
    """--resume: the checkpoint must come from a run with the same identity (the settings that decide the run)."""
    saved = json.loads((checkpoint / "prefsmith_train.json").read_text()).get("identity", {})
    now = json.loads(json.dumps(cfg.identity()))
    if saved != now:
        from pipelines.errors import UserError

        changed = sorted(k for k in now if saved.get(k) != now[k])
        raise UserError(f"--resume: {checkpoint} was made with other settings ({', '.join(changed)}); "
                        "use another --output")


def finished_summary(cfg: GRPOConfig) -> dict | None:
    """With `--resume`, the summary of a run that already reached `--max-steps` in `cfg.output` (it is neither
    trained nor evaluated again); None when there are steps left. A finished run with no checkpoint to continue
    from cannot take a larger --max-steps: one clear error instead of training again from step 0."""
    from trainers import checkpoint as ckpt

    result = Path(cfg.output) / "train_result.json"
    if not cfg.resume or not result.is_file():
        return None
    summary = json.loads(result.read_text())
    latest = ckpt.latest_checkpoint(Path(cfg.output))
    if latest is not None:
        _check_same_run(latest, cfg)
    if summary.get("steps", 0) >= cfg.max_steps:
        return summary
    if latest is None:
        from pipelines.errors import UserError

        raise UserError(f"{cfg.output} finished at step {summary.get('steps')} and holds no checkpoint to continue "
                        f"to --max-steps {cfg.max_steps} from; start a new --output with --model "
                        f"{Path(cfg.output) / 'model'}")
    return None


def train_grpo(cfg: GRPOConfig, run_class: type[GRPORun] | None = None) -> dict:
    """Run to `max_steps` (or `max_minutes`), evaluating and checkpointing on the way; returns a summary.
    `run_class`: a GRPORun subclass with its own update (trainers/ppo.py)."""
    from tqdm.auto import tqdm

    done = finished_summary(cfg)
    if done is not None:
        print(f"prefsmith train: {cfg.output} already finished ({done['steps']} steps); nothing to do", file=sys.stderr)
        return done
    run = (run_class or GRPORun)(cfg)
    run.setup()
    evals = []
    if run.state.step == 0 and run.eval_sets:
        evals.append(run.evaluate())
    bar = tqdm(total=cfg.max_steps, initial=run.state.step, desc=run.NAME, unit="step", dynamic_ncols=True)
    try:
        while run.state.step < cfg.max_steps:
            if cfg.max_minutes is not None and run.train_minutes() >= cfg.max_minutes:
                run.log(f"stopping at the --max-minutes budget ({cfg.max_minutes} min) after step {run.state.step}")
                break
            rec = run.step()
            bar.update(1)
            bar.set_postfix(reward=rec.get("reward"), acc=rec.get("accuracy"), s=rec["step_seconds"])
            s = run.state.step
            if run.eval_sets and cfg.eval_every and s % cfg.eval_every == 0:
                evals.append(run.evaluate())
            if cfg.save_every and s % cfg.save_every == 0:
                run.save()
    finally:
        bar.close()
    if run.eval_sets and (not evals or evals[-1]["step"] != run.state.step):
        evals.append(run.evaluate())
    if cfg.save_every:
        run.save()
    summary = run.finish()
    summary["eval"] = [e for e in evals if e]
    if run.d.main:
        (run.out / "train_result.json").write_text(json.dumps(summary, indent=2))
    return summary


# ------------------------------------------------------------------------------------------------ CLI
def build_parser(prog: str = "prefsmith train grpo") -> argparse.ArgumentParser:
    d = GRPOConfig.__dataclass_fields__
    from pipelines.cli import Parser

    p = Parser(prog=prog, description="Online RL from the policy's own rollouts (GRPO family, RLOO).")
    p.add_argument("--model", required=True)
    p.add_argument("--prompts", required=True, help="prompts with the reward's gold columns (e.g. answer)")
    p.add_argument("--output", required=True)
    p.add_argument("--reward", action="append", required=True, dest="rewards", help="as in `prefsmith label`")
    p.add_argument("--weight", action="append", default=[], dest="weights", metavar="NAME=W")
    p.add_argument("--outcome-reward", default=None, help="reward whose variance --dynamic-sampling tests (default: first)")
    for name, kind in (("num_generations", int), ("prompts_per_step", int), ("max_new_tokens", int),
                       ("temperature", float), ("top_p", float), ("lr", float), ("warmup_steps", int),
                       ("weight_decay", float), ("max_grad_norm", float), ("max_steps", int),
                       ("max_minutes", float), ("seed", int), ("save_every", int), ("eval_every", int),
                       ("eval_limit", int), ("eval_max_new_tokens", int), ("eval_batch_size", int), ("epsilon", float),
                       ("epsilon_high", float), ("beta", float), ("num_iterations", int),
                       ("max_resample_rounds", int), ("tis_cap", float), ("micro_batch_size", int), ("threads", int)):
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=d[name].default)
    p.add_argument("--eval-prompts", action="append", default=[],
                   help="held-out prompts for greedy accuracy (repeat for several sets)")
    p.add_argument("--advantage", choices=list(ADVANTAGES), default="grpo")
    p.add_argument("--scale-rewards", choices=["group", "batch", "none"], default=d["scale_rewards"].default)
    p.add_argument("--loss", choices=["grpo", "bnpo", "dr_grpo", "dapo"], default="dapo")
    p.add_argument("--surrogate", choices=["clip", "cispo"], default="clip")
    p.add_argument("--importance-level", choices=["token", "sequence"], default="token")
    p.add_argument("--kl", choices=["k1", "k2", "k3"], default="k3")
    p.add_argument("--dynamic-sampling", action=argparse.BooleanOptionalAction, default=d["dynamic_sampling"].default,
                   help="drop groups whose outcome reward has zero variance and sample more prompts to fill the "
                        "step (on by default; --no-dynamic-sampling trains on every group)")
    p.add_argument("--mask-truncated", action="store_true")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--template", default=None)
    p.add_argument("--system", default=None)
    p.add_argument("--chat", choices=["auto", "always", "never"], default="auto")
    p.add_argument("--fsdp", action="store_true",
                   help="torchrun: shard weights, gradients and optimizer state over the processes (FSDP2)")
    p.add_argument("--engine", choices=["hf", "vllm"], default="hf",
                   help="hf: sample with the training model itself; vllm: a vLLM engine synced after each step")
    return p


def main(argv: list[str], algo: str = "grpo") -> int:
    from pipelines.engines.models import resolve_model
    from pipelines.errors import UserError

    args = vars(build_parser(f"prefsmith train {algo}").parse_args(argv))
    if algo == "rloo":
        args["advantage"] = "rloo"
    try:
        args["model"] = resolve_model(args["model"])
        summary = train_grpo(GRPOConfig(**args))
    except UserError as e:
        print(f"prefsmith train {algo}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in summary.items() if k != "plots"}))
    return 0
