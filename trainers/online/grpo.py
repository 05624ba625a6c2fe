"""`prefsmith train grpo` / `train rloo`: the policy samples, the verifiable rewards score, the policy improves.

One step, top to bottom (`GRPORun.step`):
  1. sample: take `prompts_per_step` prompts; the live policy (the hf engine wraps the training model itself,
     no copy) samples G completions each, seeded by (seed, step, prompt id), so a resumed run samples the same;
  2. score: the `label` stage's row core with the same reward specs (`--reward math`, `code`, `format:…`,
     plug-ins), so a reward tested with `label` trains unchanged;
  3. filter: null rewards (the data or a checker failed) leave their group; with `--dynamic-sampling` a group
     whose *outcome* reward has no variance teaches nothing and is replaced by a fresh prompt (DAPO);
  4. advantages: group-centred (`--scale-rewards group|batch|none`), RLOO leave-one-out, REINFORCE++ or ReMax
     (r − the reward of one extra greedy completion per prompt, sampled and scored in step 1, never trained on);
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
  log-probs differ from the trainer's, so use `--tis-cap` with it;
- `--env SPEC`: each sample is a multi-turn trajectory with an environment (pipelines/envs/rollout.py), scored on
  its final turn; only the policy's tokens are in the loss (`completion_mask`), the environment's are context.
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

from pipelines.envs.base import DEFAULT_MAX_TURNS
from trainers.online.rl_objectives import (ADVANTAGES, AGGREGATIONS, KL_ESTIMATORS, STALENESS_CORRECTIONS, SURROGATES,
                                          PolicyLossConfig, policy_loss, staleness_weights, truncated_is_weights)


@dataclass
class GRPOConfig:
    model: str  # the policy: `default` (the embedded model) or a local model folder
    prompts: str  # prompts with the rewards' gold columns (e.g. answer): JSONL, Parquet or a dataset directory
    output: str  # run directory: model/, checkpoints/, rollouts/, metrics.jsonl, plots/
    rewards: list[str] = field(metadata={"flag": "--reward", "metavar": "SPEC",
                                         "help": "reward spec as in `prefsmith label` (repeatable)"})
    weights: list[str] = field(default_factory=list, metadata={"flag": "--weight", "metavar": "NAME=W"})
    outcome_reward: str | None = None  # the reward whose variance dynamic sampling tests (default: the first)
    num_generations: int = 8  # G
    prompts_per_step: int = 4  # prompts sampled per optimizer step (each gives a group of G completions)
    max_new_tokens: int = 256  # most tokens per completion (longer ones are cut: finish_reason length)
    temperature: float = 0.7  # a weak policy at 1.0 samples mostly noise (docs/online_rl.md)
    top_p: float = 1.0  # nucleus sampling (1.0: off)
    lr: float = 1e-5  # small models, tens of steps (docs/online_rl.md); TRL uses 1e-6 for long runs of big ones
    warmup_steps: int = 0  # steps of linear learning-rate warm-up from 0 (overrides --warmup-ratio when > 0)
    warmup_ratio: float = 0.0  # the warm-up as a fraction of --max-steps
    weight_decay: float = 0.0  # AdamW weight decay
    max_grad_norm: float = 1.0  # clip the global gradient norm (0: off)
    max_steps: int = 100  # optimizer steps to run
    max_minutes: float | None = None  # also stop (after a checkpoint) once this much wall time has passed
    seed: int = 0  # sampling and prompt-order seed
    save_every: int = 10  # checkpoint every N steps (and at the end)
    keep_checkpoints: int = 2  # keep the newest N checkpoints
    resume: bool = False  # continue from the newest checkpoint in --output
    eval_prompts: list[str] = field(default_factory=list)  # held-out sets (repeatable --eval-prompts)
    eval_every: int = 10  # greedy accuracy on --eval-prompts every N steps (and before the first, after the last)
    eval_limit: int | None = None  # only the first N prompts of each eval set
    eval_max_new_tokens: int | None = None  # default: max_new_tokens
    eval_batch_size: int = 64  # prompts per greedy generate call (CPU decoding is memory-bound: wide is cheap)
    advantage: str = "grpo"  # grpo | rloo | reinforce_pp | remax (+1 greedy sample per prompt as the baseline)
    scale_rewards: str = "none"  # grpo: group | batch | none (Dr. GRPO's none: docs/online_rl.md, measured)
    loss: str = "dapo"  # grpo | bnpo | dr_grpo | dapo
    surrogate: str = "clip"  # clip | cispo
    epsilon: float = 0.2  # PPO clip range ε of the ratio
    epsilon_high: float | None = None  # DAPO's clip-higher upper range (default: --epsilon)
    importance_level: str = "token"  # token | sequence (GSPO)
    beta: float = 0.0  # KL penalty weight against the reference model (0: no reference pass)
    kl: str = "k3"  # KL estimator of the penalty (Schulman's k1 | k2 | k3)
    num_iterations: int = 1  # μ
    dynamic_sampling: bool = True  # DAPO's filter on the outcome reward: what made the embedded model learn
    max_resample_rounds: int = 4  # extra prompt draws per step to fill it with informative groups
    mask_truncated: bool = False  # DAPO: truncated completions (finish_reason length) get no loss
    tis_cap: float | None = None  # truncated importance sampling against the engine's log-probs (off for hf)
    engine: str = "hf"  # hf: the live policy in-process | vllm: vLLM beside the trainer, weights synced each step
    template: str | None = None
    system: str | None = None  # system message put before chat prompts
    chat: str = "auto"  # auto (when the model has a chat template) | always | never: string prompts as a user message
    chat_template: str | None = None  # a Jinja chat template file used instead of the model's (and saved with it)
    prompt_column: str = "prompt"  # the prompts' column: a string or messages (e.g. `messages`; docs/cli.md)
    gold_column: str = "answer"  # the rewards' gold-answer column
    micro_batch_size: int = 8  # sequences per forward/backward
    micro_batch_tokens: int | None = None  # also at most this many padded tokens per forward/backward
    device: str = "auto"  # auto | cpu | cuda | cuda:N (trainers/core/distributed.py pick_device)
    dtype: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32: autocast compute, fp32 weights and AdamW
    gradient_checkpointing: bool = False
    lora_r: int = 0  # > 0: train LoRA adapters of this rank; the reference is the base with adapters off
    lora_alpha: int = 16  # LoRA scaling α (the update is scaled by α / r)
    lora_dropout: float = 0.0  # dropout on the LoRA adapters' input
    lora_target: str = "all-linear"  # peft's target_modules: all-linear, or comma-separated module names
    fsdp: bool = False  # torchrun: shard weights, gradients and AdamW state (trainers/core/fsdp.py); sampling gathers them
    threads: int | None = None
    report_to: list[str] = field(default_factory=list)  # trackers besides metrics.jsonl (pipelines/core/tracking.py)
    # bounded-staleness asynchronous rollouts (trainers/online/async_rollouts.py): a step trains on groups sampled
    # from weights at most this many updates old, generated by a separate process while the trainer updates
    max_staleness: int = 0  # 0: the synchronous loop
    staleness_correction: str = "tis"  # tis: weight min(π_prox/π_behaviour, cap) | mis: drop tokens above cap
    staleness_cap: float = 2.0  # the cap of --staleness-correction
    rollout_process: bool | None = None  # None: a separate generation process when max_staleness >= 1
    generation_threads: int | None = None  # the rollout process's CPU threads (None: half of --threads, >= 1)
    # where the rollout process samples: cpu, cuda:N (None: the trainer's device on the CPU; on GPUs the last
    # visible GPU when there are two or more, else the trainer's GPU, shared)
    generation_device: str | None = None
    # multi-turn rollouts (docs/environments.md): the policy and an environment take turns; rewards score the final
    # turn, the loss covers the policy's tokens only (tool outputs never trained)
    env: str | None = None  # an environment: python, tools:FILE.py, module:Class or path/to/file.py:Class (None: single-turn)
    max_turns: int = DEFAULT_MAX_TURNS  # --env: most policy turns per trajectory (a trajectory still calling tools then: outcome 0)
    env_options: list[str] = field(default_factory=list, metadata={
        "flag": "--env-option", "metavar": "KEY=VALUE",
        "help": "an option of the --env environment, VALUE as JSON or text (repeatable), e.g. timeout_s=10"})
    MIN_GENERATIONS = 2  # not a field: PPO (trainers/online/ppo.py), whose baseline is a value model, allows 1

    def __post_init__(self) -> None:
        from pipelines.errors import UserError

        if not self.rewards:
            raise UserError("give at least one --reward (e.g. --reward math)")
        if self.advantage not in ADVANTAGES:
            raise UserError(f"--advantage {self.advantage!r}: choose one of {', '.join(ADVANTAGES)}")
        if self.num_generations < self.MIN_GENERATIONS:
            raise UserError(f"--num-generations must be >= {self.MIN_GENERATIONS}: advantages compare a prompt's "
                            "completions")
        if self.micro_batch_tokens is not None and self.micro_batch_tokens < 1:
            raise UserError(f"--micro-batch-tokens must be >= 1, got {self.micro_batch_tokens}")
        if self.lora_r < 0:
            raise UserError(f"--lora-r must be >= 0, got {self.lora_r}")
        if self.max_staleness < 0:
            raise UserError(f"--max-staleness must be >= 0, got {self.max_staleness}")
        if self.staleness_correction not in STALENESS_CORRECTIONS:
            raise UserError(f"--staleness-correction {self.staleness_correction!r}: choose one of "
                            f"{', '.join(STALENESS_CORRECTIONS)}")
        if self.staleness_cap <= 0:
            raise UserError(f"--staleness-cap must be > 0, got {self.staleness_cap}")
        if self.asynchronous() and self.fsdp:
            raise UserError("--max-staleness >= 1 (asynchronous rollouts) runs one trainer process next to its "
                            "generation process: drop --fsdp, or use --max-staleness 0")
        if self.generation_device is not None and not self.asynchronous():
            raise UserError("--generation-device places the asynchronous rollout process: give --max-staleness >= 1")
        self._check_env()
        for name in ("prompts_per_step", "max_new_tokens", "max_steps", "num_iterations", "micro_batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        try:
            self.loss_config()
        except ValueError as e:
            raise UserError(str(e)) from None
        from pipelines.core.tracking import check_installed, parse_report_to

        self.report_to = parse_report_to(self.report_to)
        check_installed(self.report_to)

    def _check_env(self) -> None:
        from pipelines.errors import UserError
        from rewards.plugins import TRAJECTORY_REWARDS

        if self.env is None:
            reads = [r for r in self.rewards if r.split(":")[0] in TRAJECTORY_REWARDS]
            if reads or self.env_options or self.max_turns != DEFAULT_MAX_TURNS:
                what = f"--reward {reads[0]} reads trajectories" if reads else "--max-turns / --env-option set one up"
                raise UserError(f"{what}: give --env (e.g. --env python)")
            return
        if self.max_turns < 1:
            raise UserError(f"--max-turns must be >= 1, got {self.max_turns}")
        if self.asynchronous():
            raise UserError("--env: multi-turn rollouts run in the synchronous loop; drop --max-staleness / "
                            "--rollout-process")
        self.env_option_values()

    def env_option_values(self) -> dict[str, Any]:
        """`--env-option KEY=VALUE` as keywords for the environment: VALUE read as JSON, else as text (as
        `generate --env-option`)."""
        from pipelines.stages.generate import _parse_options

        return _parse_options(self.env_options, "--env-option")

    def warmup(self) -> int:
        """Warm-up steps: --warmup-steps when > 0, else --warmup-ratio of --max-steps."""
        return self.warmup_steps or math.ceil(self.warmup_ratio * self.max_steps)

    def asynchronous(self) -> bool:
        """Whether rollouts come from the separate generation process."""
        return self.max_staleness >= 1 if self.rollout_process is None else bool(self.rollout_process)

    def loss_config(self) -> PolicyLossConfig:
        # Dr. GRPO's constant: the most policy tokens a completion (a trajectory: every turn) can have
        longest = self.max_new_tokens * (self.max_turns if self.env else 1)
        return PolicyLossConfig(loss=self.loss, surrogate=self.surrogate, epsilon=self.epsilon,
                                epsilon_high=self.epsilon_high, importance_level=self.importance_level,
                                beta=self.beta, kl=self.kl, max_completion_length=longest)

    def identity(self) -> dict:
        """What must not change across a resume (the rest — budgets, eval cadence — may)."""
        skip = {"resume", "max_steps", "max_minutes", "save_every", "keep_checkpoints", "eval_every", "threads",
                "eval_limit", "eval_batch_size", "output", "device", "micro_batch_size", "micro_batch_tokens",
                "gradient_checkpointing", "dtype", "generation_threads",
                "generation_device"}
        # options added later are left out at their defaults, so a run made before them resumes
        later = {"chat_template": None, "prompt_column": "prompt", "gold_column": "answer", "warmup_ratio": 0.0,
                 "env": None, "max_turns": DEFAULT_MAX_TURNS, "env_options": []}
        out = {k: v for k, v in asdict(self).items()
               if k not in skip and k != "report_to" and not (k in later and v == later[k])}
        if self.env is not None:  # the file behind a tools: or plug-in environment is part of the run
            from pipelines.envs import EnvSpecError, env_fingerprint
            from pipelines.errors import UserError

            try:
                out["env_source"] = env_fingerprint(self.env, self.env_option_values())
            except EnvSpecError as e:
                raise UserError(f"--env: {e}") from None
        return out


def load_policy(cfg: GRPOConfig, resume_dir: Path | None):
    """The policy to train, on the CPU in fp32 (the Learner places it): the model, or a checkpoint's weights;
    with `--lora-r`, the base model with new (or the checkpoint's) LoRA adapters, everything else frozen."""
    from transformers import AutoModelForCausalLM

    if not cfg.lora_r:
        model = AutoModelForCausalLM.from_pretrained(str(resume_dir or cfg.model), dtype=torch.float32)
        model.config.use_cache = True
        return model
    try:
        from peft import LoraConfig, PeftModel, get_peft_model
    except ImportError:
        from pipelines.errors import UserError

        raise UserError("--lora-r needs peft: pip install 'prefsmith[peft]'") from None
    base = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32)
    base.config.use_cache = True
    if resume_dir is not None:
        return PeftModel.from_pretrained(base, resume_dir, is_trainable=True)
    target = cfg.lora_target if cfg.lora_target == "all-linear" else [t.strip() for t in cfg.lora_target.split(",")]
    torch.manual_seed(cfg.seed)  # LoRA's A matrices are drawn at random: the same run starts from the same adapters
    return get_peft_model(base, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                           target_modules=target, task_type="CAUSAL_LM"))


def export_weights(model):
    """The policy's weights as its base architecture names them (`model.layers.0.self_attn.q_proj.weight`…), one
    tensor at a time, on the device they live on: LoRA adapters merged in (W + B·A·α/r, the adapters themselves
    untouched), an FSDP shard gathered to the full tensor. What a separate engine (vLLM) loads after each update."""
    base = model.get_base_model() if hasattr(model, "peft_config") else model
    with torch.no_grad():
        for name, p in base.named_parameters():
            if "lora_" in name:
                continue
            full = p.full_tensor() if hasattr(p, "full_tensor") else p
            if ".base_layer." in name:
                module_name, _, leaf = name.partition(".base_layer.")
                name = f"{module_name}.{leaf}"
                if leaf == "weight":
                    module = base.get_submodule(module_name)
                    full = full + sum(module.get_delta_weight(a) for a in module.active_adapters)
            yield name, full.detach()


def policy_stats(loss: torch.Tensor, share: float, m: dict, entropy: torch.Tensor, mask: torch.Tensor):
    """A micro-batch's policy-loss metrics as step sums: the loss (its part of the step's, counted as the
    micro-batch's share of the step's sequences), the clip fractions, KL and entropy per completion token."""
    from trainers.core.metrics import Stats

    mask = mask.float()
    tokens = mask.sum()
    stats = Stats()
    stats.add("loss", loss.detach(), share)
    for name in ("clip_low", "clip_high", "kl"):
        if name in m:
            stats.add(name, m[name] * tokens, tokens)
    stats.add("entropy", (entropy * mask).sum(), tokens)
    return stats


def _hf_engine(run):
    """The live policy samples (no copy, nothing to sync): the training model itself on its device."""
    from pipelines.engines.hf import HFEngine

    return HFEngine.wrap(run.model, run.tokenizer, device=str(run.learner.device),
                         prompt_batch_size=run.cfg.prompts_per_step)


def _vllm_engine(run):
    """vLLM beside the trainer in its process (colocated on its GPU with sleep mode), synced after each update."""
    from pipelines.errors import UserError

    if run.d.world > 1:
        raise UserError("--engine vllm runs in one trainer process; use --engine hf under torchrun")
    from pipelines.engines.vllm import VLLMPolicyEngine

    engine = VLLMPolicyEngine(run.cfg.model, prompt_batch_size=run.cfg.prompts_per_step)
    if run.resume_dir is not None:
        engine.load_weights(export_weights(run.model))  # the checkpoint's weights, not the starting model's
    return engine


# How the policy samples (`--engine`): each engine has the same lifecycle, called by the step in this order:
# before_generation(), generate…, after_generation(), [update], load_weights(export_weights(policy)).
POLICY_ENGINES = {"hf": _hf_engine, "vllm": _vllm_engine}


# finish reasons of a cut completion, left out of the loss with --mask-truncated (DAPO's overlong filtering): the
# last turn hit --max-new-tokens (length), or a trajectory filled the context (context)
TRUNCATED = ("length", "context")
AUTO_FORMAT_WEIGHT = 0.2  # format:boxed's weight when the trainer adds it (the weight docs/online_rl.md measured)


def staleness_metrics(step: int, groups: list, seen: list, waited_rollouts: float, waited_weights: float) -> dict[str, Any]:
    """Per trained step: the staleness of its groups, each side's wait, and what was trained against what was
    generated (completion length, share of correct samples) — dropping stale or slow groups would show here."""
    def mean(xs):
        return round(sum(xs) / len(xs), 4) if xs else None

    stale = [step - g.version for g in groups]
    trained = [r for g in groups for r in g.rows]
    generated = [r for g in seen for r in g.rows]
    length = lambda rows: mean([len(r["completion_ids"] or []) for r in rows])  # noqa: E731
    correct = lambda rows: mean([float(r["reward"] is not None and r["reward"] >= 1.0) for r in rows])  # noqa: E731
    return {"staleness_mean": mean(stale), "staleness_max": max(stale) if stale else None,
            "seconds_waiting_for_rollouts": round(waited_rollouts, 2),
            "seconds_waiting_for_weights": round(waited_weights, 2),
            "trained_length": length(trained), "generated_length": length(generated),
            "trained_correct": correct(trained), "generated_correct": correct(generated)}


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
    baseline: dict | None = None  # ReMax: the prompt's greedy row, labeled; its reward is the baseline (not trained)
    version: int = 0  # the policy version that sampled it (updates applied to those weights)


class Evaluator:
    """Greedy completions of held-out prompts by a policy, labeled by the run's rewards, and their accuracy
    (the outcome reward >= 1). The GRPO loop's held-out evaluation; bench/learning.py evaluates TRL's policy
    with the same object, so both sides are measured alike. Split over ranks under torchrun, gathered back."""

    def __init__(self, engine, gen_cfg, use_chat: bool, fns, names: list[str], weights, outcome: str,
                 batch_size: int = 64, max_new_tokens: int = 256, d=None, env=None):
        from trainers.core.distributed import Dist

        self.engine, self.gen_cfg, self.use_chat = engine, gen_cfg, use_chat
        self.fns, self.names, self.weights, self.outcome = fns, names, weights, outcome
        self.batch_size, self.max_new_tokens, self.d = batch_size, max_new_tokens, d or Dist()
        self.env = env  # with an environment (gen_cfg.env, .max_turns), greedy trajectories

    def rows(self, rows: list[dict], prefix: str = "eval") -> list[dict]:
        from tqdm.auto import tqdm

        from pipelines.engines.base import SamplingConfig
        from pipelines.stages.generate import sample_rows
        from pipelines.stages.label import label_rows
        from trainers.core.distributed import gather_objects

        world, rank = self.d.world, self.d.rank
        gen = dataclasses.replace(self.gen_cfg, batch_size=self.batch_size, sampling=SamplingConfig(
            n=1, temperature=0.0, max_new_tokens=self.max_new_tokens, seed=0))
        ids = [str(r.get("id") if r.get("id") is not None else f"{prefix}{i:06d}") for i, r in enumerate(rows)]
        mine = list(range(rank, len(rows), world))
        width, self.engine.options.prompt_batch_size = self.engine.options.prompt_batch_size, self.batch_size
        bar = tqdm(total=len(mine), desc=f"eval {prefix}", unit="prompt", disable=not self.d.main, dynamic_ncols=True)
        try:
            out, _ = sample_rows(self.engine, self.env, [rows[i] for i in mine], gen, [ids[i] for i in mine],
                                 self.use_chat, bar.update)
        finally:
            bar.close()
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
    format_added = False  # format:boxed added by _setup_data (prompts ask for a box, no format reward given)
    worker = None  # the asynchronous rollout process (--max-staleness >= 1), else None

    def __init__(self, cfg: GRPOConfig, log=lambda msg: print(f"prefsmith train grpo: {msg}", file=sys.stderr,
                                                               flush=True)):
        self.cfg, self.log = cfg, log

    # ---------------------------------------------------------------------------------------- set-up
    def setup(self) -> None:
        from pipelines.core import dataset as ds
        from pipelines.core.columns import standard_rows
        from pipelines.core.files import ensure_writable_dir
        from pipelines.engines.base import load_tokenizer
        from pipelines.errors import UserError
        from trainers.core import checkpoint as ckpt
        from trainers.core.distributed import setup_distributed
        from trainers.core.learner import Learner, resolve_dtype
        from trainers.core.metrics import MetricsLog
        from trainers.core.optim import adamw, lr_schedule

        from pipelines.core.threads import apply_threads

        cfg = self.cfg
        apply_threads(cfg.threads)  # auto: the cores not busy now (pipelines/core/threads.py)
        self.d = setup_distributed(cfg.device)  # torchrun: each rank samples whole groups, gradients are summed
        cfg.dtype = resolve_dtype(cfg.dtype, self.d.device)
        self.learner = Learner(self.d, cfg.dtype, cfg.gradient_checkpointing, shard=cfg.fsdp)
        if cfg.fsdp:
            from trainers.core import fsdp

            fsdp.check_supported(self.d, lora=bool(cfg.lora_r))
        self.out = Path(cfg.output)
        ensure_writable_dir(self.out)
        self._setup_data()
        self.eval_sets = {}
        for path in cfg.eval_prompts:
            name = Path(path.rstrip("/")).stem
            if name in self.eval_sets:
                name = f"{name}{len(self.eval_sets)}"
            self.eval_sets[name] = standard_rows(ds.load_rows(path, required=[cfg.prompt_column])[: cfg.eval_limit],
                                                 cfg.prompt_column, cfg.gold_column, path)

        self.resume_dir = resume_dir = ckpt.latest_checkpoint(self.out) if cfg.resume else None
        if resume_dir is not None:
            _check_same_run(resume_dir, cfg)
        elif (self.out / "checkpoints").exists() and any((self.out / "checkpoints").iterdir()):
            raise UserError(f"{self.out} already holds checkpoints; pass --resume to continue, or another --output")
        self.tokenizer = load_tokenizer(cfg.model, cfg.chat_template)
        self.model = self.learner.place(load_policy(cfg, resume_dir))
        # asynchronous: `--engine` samples in the rollout process; this one keeps the live model for evaluations
        self.engine = POLICY_ENGINES["hf" if cfg.asynchronous() else cfg.engine](self)
        self._setup_generation_config()
        self.env = self._load_env()
        self.evaluator = Evaluator(self.engine, self.gen_cfg, self.use_chat, self.fns, self.names, self.weights,
                                   self.outcome, cfg.eval_batch_size, cfg.eval_max_new_tokens or cfg.max_new_tokens,
                                   self.d, self.env)
        # the reference: with LoRA the base model itself, adapters off (no second copy); else a frozen copy
        self.ref = None
        if self.uses_reference() and not cfg.lora_r:
            from transformers import AutoModelForCausalLM

            self.ref = self.learner.place(AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32),
                                          train=False)
        self.optimizer = adamw(self.model, cfg.lr, cfg.weight_decay)
        self.scheduler = lr_schedule(self.optimizer, cfg.max_steps, cfg.warmup(), "constant")
        self.learner.add(self.model, self.optimizer, self.scheduler, cfg.max_grad_norm)
        self.state = ckpt.TrainerState()
        if resume_dir is not None:
            self.state = ckpt.load_training_state(resume_dir, self.optimizer, self.scheduler, self.d.rank, self.model)
            self.log(f"resuming from {resume_dir} (step {self.state.step})")
        self.sampler = PromptSampler(len(self.prompts), cfg.seed, self.state.epoch, self.state.batch_in_epoch)
        self.groups_sampled, self.groups_kept = self.state.examples_seen, self.state.groups_kept
        self.worker = None
        if cfg.asynchronous():
            self.worker = self._start_worker()
        self.metrics = MetricsLog(self.out, resume_step=self.state.step if resume_dir is not None else None,
                                  report_to=cfg.report_to, config=asdict(cfg)) if self.d.main else None
        if self.d.main:
            self._trim_rollouts(self.state.step)
        self.t_start = time.time()
        self.eval_seconds = 0.0  # held-out evaluation is not training time (`minutes`, `--max-minutes`)
        if cfg.tis_cap and (cfg.top_p < 1.0):
            self.log("warning: --tis-cap with --top-p < 1: the sampler's log-probs are of the truncated "
                     "distribution, so the importance weights are biased")

    def _setup_data(self) -> None:
        """The training prompts and the rewards (the trainer and the asynchronous rollout worker alike)."""
        from pipelines.core import dataset as ds
        from pipelines.core.columns import standard_rows
        from pipelines.errors import UserError
        from pipelines.stages.label import LabelConfig, load_rewards

        cfg = self.cfg
        self.prompts = standard_rows(ds.load_rows(cfg.prompts, required=[cfg.prompt_column]), cfg.prompt_column,
                                     cfg.gold_column, cfg.prompts)
        self.template = self._default_template()
        rewards, weights = list(cfg.rewards), list(cfg.weights)
        self.format_added = self._format_missing()
        if self.format_added:
            rewards, weights = rewards + ["format:boxed"], weights + [f"format={AUTO_FORMAT_WEIGHT}"]
            self.log(f"the prompts ask for \\boxed{{}} and no --reward checks the format: adding format:boxed at weight "
                     f"{AUTO_FORMAT_WEIGHT}, and dynamic sampling tests the total reward (give any format: reward to "
                     "choose yourself)")
        self.fns, self.names, self.weights = load_rewards(LabelConfig(rewards=rewards, weights=weights))
        self.outcome = cfg.outcome_reward or self.names[0]
        if self.outcome not in self.names:
            raise UserError(f"--outcome-reward {self.outcome!r} is not one of the rewards ({', '.join(self.names)})")

    env = None  # the --env environment, else None (single-turn completions)

    def _load_env(self):
        """The `--env` environment (its sandbox opened now: a machine where it cannot start fails before training)."""
        from pipelines.errors import UserError

        if self.cfg.env is None:
            return None
        if not self.use_chat:
            raise UserError("--env needs chat prompts: the model has no chat template (give one with --chat-template "
                            "FILE), or --chat never was passed")
        from pipelines.envs import EnvSpecError, load_env

        try:
            return load_env(self.cfg.env, self.cfg.env_option_values())
        except EnvSpecError as e:
            raise UserError(f"--env: {e}") from None

    def close_env(self) -> None:
        if self.env is not None and hasattr(self.env, "close"):
            self.env.close()
        self.env = None

    def _format_missing(self) -> bool:
        """Whether the prompts, as the policy sees them, ask for `\\boxed{}` while the rewards give a `math` reward
        and no format reward: then nothing pays the format on the way to a correct boxed answer, and a weak policy
        that rarely boxes gets no signal at all (the embedded model: 0 correct boxed answers in 160 samples)."""
        from rewards.math import asks_for_boxed

        kinds = [r.split(":")[0] for r in self.cfg.rewards]
        if "math" not in kinds or "format" in kinds:
            return False
        texts = [r["prompt"] for r in self.prompts]
        return asks_for_boxed(self.template or "") or any(asks_for_boxed(t) for t in texts)

    def _default_template(self) -> str | None:
        """`--template` left unset (auto): with a `math` reward and string prompts none of which names an answer
        format, the prompts get the format instruction the reward checks (rewards/math.py, format as asked), so
        the task the policy is rewarded for is the one the prompt poses; else the prompts as they are."""
        from rewards.math import BOXED_INSTRUCTION, asks_for_boxed

        cfg = self.cfg
        if cfg.template is not None or not any(r.split(":")[0] == "math" for r in cfg.rewards):
            return cfg.template
        texts = [r["prompt"] for r in self.prompts]
        if not any(isinstance(t, str) for t in texts) or any(asks_for_boxed(t) for t in texts):
            return None
        template = "{prompt} " + BOXED_INSTRUCTION.replace("{", "{{").replace("}", "}}")
        self.log(f"--template auto: the prompts name no answer format, so each gets {BOXED_INSTRUCTION!r} (what the "
                 "math reward checks); --template '{prompt}' keeps them as they are")
        return template

    def _setup_generation_config(self) -> None:
        from pipelines.engines.base import SamplingConfig
        from pipelines.stages.generate import GenerateConfig

        cfg = self.cfg
        self.gen_cfg = GenerateConfig(model=cfg.model, sampling=SamplingConfig(), template=self.template,
                                      chat=cfg.chat, system=cfg.system, batch_size=cfg.prompts_per_step,
                                      engine=cfg.engine, env=cfg.env, max_turns=cfg.max_turns,
                                      env_options=list(cfg.env_options))
        self.use_chat = cfg.chat == "always" or (cfg.chat == "auto" and bool(getattr(self.tokenizer, "chat_template", None)))

    def setup_sampling(self, engine, model=None) -> None:
        """Only the sampling half, around `engine` (and the hf engine's `model`): the asynchronous rollout worker
        (trainers/online/async_rollouts.py), which runs `_collect` and nothing else."""
        from pipelines.engines.base import load_tokenizer
        from trainers.core.distributed import Dist

        self.d = Dist()
        self._setup_data()
        self.tokenizer = load_tokenizer(self.cfg.model, self.cfg.chat_template)
        self.model, self.engine = model, engine
        self._setup_generation_config()

    def generation_device(self) -> str:
        """Where the rollout process samples (`--generation-device`; see the field)."""
        if self.cfg.generation_device is not None:
            return self.cfg.generation_device
        dev = self.d.device
        if dev.type == "cuda" and torch.cuda.device_count() > 1:
            return f"cuda:{torch.cuda.device_count() - 1}"
        return str(dev)

    def _start_worker(self):
        """The rollout process, with its share of the CPU threads (the trainer keeps the rest)."""
        from pipelines.core.threads import apply_threads
        from pipelines.errors import UserError
        from trainers.online.async_rollouts import RolloutWorker

        if self.d.world > 1:
            raise UserError("--max-staleness >= 1 runs one trainer process; launch it without torchrun")
        total = torch.get_num_threads()
        device = self.generation_device()
        gen = self.cfg.generation_threads or max(1, total // 2)
        if device == "cpu" and total > 1:
            apply_threads(max(1, total - gen))
        where = (f"with {gen} CPU thread(s), the trainer with {torch.get_num_threads()} (each side takes all {total} "
                 "while the other waits)") if device == "cpu" else f"on {device}, the trainer on {self.d.device}"
        self.log(f"asynchronous rollouts: max staleness {self.cfg.max_staleness}, the {self.cfg.engine} engine in a "
                 f"generation process {where}")
        return RolloutWorker(self, gen, export_weights, total_threads=total, device=device)

    def policy_version(self) -> int:
        """The version of the weights that sample now: the updates applied to them (the synchronous loop samples
        with the weights it is about to update)."""
        return self.state.step

    def uses_reference(self) -> bool:
        """Whether the loss needs the reference policy's log-probs (GRPO: β > 0; PPO: its KL coefficient)."""
        return bool(self.cfg.beta)

    def ref_logps(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The reference policy's per-token log-probs: the frozen copy, or under LoRA the base (adapters off)."""
        from trainers.core.logprobs import token_logps

        if self.ref is not None:
            return token_logps(self.ref, batch)
        with self.model.disable_adapter():
            return token_logps(self.model, batch)

    def train_minutes(self) -> float:
        return (time.time() - self.t_start - self.eval_seconds) / 60

    # ---------------------------------------------------------------------------------------- sampling
    def _rollouts(self, indices: list[int], step: int, round_: int) -> list[Group]:
        from pipelines.engines.base import SamplingConfig
        from pipelines.stages.generate import sample_rows
        from pipelines.stages.label import label_rows

        cfg = self.cfg
        rows = [self.prompts[i] for i in indices]
        ids = [str(r.get("id") if r.get("id") is not None else f"row{i:07d}") for r, i in zip(rows, indices)]
        gen = dataclasses.replace(self.gen_cfg, sampling=SamplingConfig(
            n=cfg.num_generations, temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
            seed=_seed(cfg.seed, "step", step, round_)))
        t0 = time.time()
        # sampling runs on the weights as they are (fp32): the hf engine's static cache has the weights' dtype
        # with --env: trajectories, scored on their final turn (docs/rewards.md for faults)
        out, stats = sample_rows(self.engine, self.env, rows, gen, ids, self.use_chat)
        self.timing["generation"] += time.time() - t0
        self.tokens += stats["tokens"]
        greedy: list[dict] = []
        if cfg.advantage == "remax":  # ReMax's baseline: one greedy completion per prompt, same length budget
            t0 = time.time()
            greedy, _ = sample_rows(self.engine, self.env, rows, dataclasses.replace(self.gen_cfg, sampling=SamplingConfig(
                n=1, temperature=0.0, max_new_tokens=cfg.max_new_tokens, seed=0)), ids, self.use_chat)
            self.timing["greedy"] = self.timing.get("greedy", 0.0) + time.time() - t0
            for r in greedy:  # its own id in the step's rollouts, apart from the G samples 0..G-1
                r.update(id=f"{r['prompt_id']}-greedy", sample_idx=-1)
        t0 = time.time()
        labeled = label_rows(out + greedy, self.fns, self.names, self.weights)  # one scoring pass for both
        self.timing["scoring"] += time.time() - t0
        if greedy:
            for k, r in enumerate(labeled):
                r["remax_baseline"] = k >= len(out)
        # the prompt ids the engine sampled from, as generate recorded them (never rendered again here)
        version = self.policy_version()
        for r in labeled:  # every rollout records the weights that sampled it
            r["policy_version"] = version
        G = cfg.num_generations
        return [Group(labeled[k * G:(k + 1) * G], list(labeled[k * G]["prompt_token_ids"]),
                      labeled[len(out) + k] if greedy else None, version) for k in range(len(rows))]

    def _collect(self, step: int) -> tuple[list[Group], dict]:
        """Groups for this step: null rows dropped; with dynamic sampling, zero-variance groups replaced; under
        ReMax a group whose greedy baseline is null cannot be baselined and is dropped (and replaced) too."""
        cfg = self.cfg
        remax = cfg.advantage == "remax"
        kept: list[Group] = []
        counts = {"groups_sampled": 0, "groups_zero_variance": 0, "null_rows": 0, "all_correct": 0,
                  "all_wrong": 0, "mixed": 0, **({"remax_baseline_null": 0} if remax else {})}
        seen: list[Group] = []
        for round_ in range(1 + (cfg.max_resample_rounds if cfg.dynamic_sampling else 0)):
            need = cfg.prompts_per_step - len(kept)
            if need <= 0:
                break
            draw = self._draw(need, self.groups_sampled + counts["groups_sampled"], self.groups_kept + len(kept))
            for g in self._gathered_rollouts(self.sampler.take(draw), step, round_):
                counts["groups_sampled"] += 1
                valid = [r for r in g.rows if not self._null(r)]
                counts["null_rows"] += len(g.rows) - len(valid)
                seen.append(g)
                outcome = [float(r["rewards"][self.outcome]) for r in valid]
                if outcome:
                    correct = [o >= 1.0 for o in outcome]
                    counts["all_correct" if all(correct) else "all_wrong" if not any(correct) else "mixed"] += 1
                # the variance dynamic sampling tests: the outcome's, or the total's when the format reward was added
                signal = [float(r["reward"]) for r in valid] if self.format_added else outcome
                flat = len(set(signal)) <= 1
                counts["groups_zero_variance"] += flat
                unbaselined = remax and self._null(g.baseline)
                if remax:
                    counts["remax_baseline_null"] += unbaselined
                if len(valid) >= cfg.MIN_GENERATIONS and not (cfg.dynamic_sampling and flat) and not unbaselined:
                    kept.append(g)
            if not cfg.dynamic_sampling:
                break
        self.groups_sampled += counts["groups_sampled"]
        self.groups_kept += len(kept)
        return kept, {**counts, **(self._baseline_metrics(seen) if remax else {}), "_seen": seen}

    groups_sampled = groups_kept = 0  # over the run so far (a checkpoint keeps them): dynamic sampling's keep rate

    def _draw(self, need: int, sampled: int, kept: int) -> int:
        """Prompts to sample for `need` more groups, given the groups `sampled` and `kept` so far in the run (this
        step's earlier draws included). With dynamic sampling, `need` over the share kept (at most 4x `need`):
        one wide batch instead of several narrow rounds, each waiting for its own longest sample (DAPO's
        over-sampling). Every kept group is trained, the surplus too."""
        if not self.cfg.dynamic_sampling or not sampled:
            return need
        rate = max(kept / sampled, 0.25)
        return min(4 * need, math.ceil(need / rate))

    def _baseline_metrics(self, seen: list[Group]) -> dict:
        """ReMax's cost and baseline over the step's sampled groups: greedy tokens generated, mean greedy reward."""
        greedy = [g.baseline for g in seen if g.baseline is not None]
        scored = [float(r["reward"]) for r in greedy if not self._null(r)]
        return {"remax_greedy_tokens": sum(len(r["completion_ids"] or []) for r in greedy),
                "remax_baseline_reward": round(sum(scored) / len(scored), 6) if scored else None}

    def _gathered_rollouts(self, indices: list[int], step: int, round_: int) -> list[Group]:
        """Under torchrun, rank r samples prompts r, r + world, …; every rank then holds every group, in prompt
        order, so filtering and advantages are the same everywhere (and equal one process's)."""
        from trainers.core.distributed import gather_objects

        world, rank = self.d.world, self.d.rank
        before = self.tokens
        from trainers.core.fsdp import full_weights

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
        if self.worker is not None:  # sampled by the rollout process, from weights at most K updates old
            batch = self.worker.take(step)
            groups, counts = batch["groups"], batch["counts"]
            self.timing.update(batch["timing"])
            self.tokens = batch["tokens"]
        else:
            self.engine.before_generation()
            groups, counts = self._collect(step)  # sample and score (with dynamic sampling, until the step is full)
            self.engine.after_generation()  # vLLM with sleep mode frees the GPU for the update
        seen = counts.pop("_seen")
        record: dict[str, Any] = {"split": "train", "step": step + 1, **counts}

        seqs = self._sequences(groups)  # advantages; the engine's prompt + completion ids, as sampled
        t0 = time.time()
        stats = self._optimize(seqs)  # the loss, through the Learner
        self.learner.schedule()
        self.timing["training"] = time.time() - t0
        # always, even without an update (a level-2 sleep dropped vLLM's weights); the hf engine is the live model
        if self.worker is not None:
            self.timing["sync"] = self.worker.push(self.model, step + 1)
            record.update(staleness_metrics(step, groups, seen, self.worker.waited, batch["waited_for_weights"]))
            self.worker.waited = 0.0
        else:
            synced = self.engine.load_weights(export_weights(self.model))
            if synced is not None:
                self.timing["sync"] = synced

        rows = [r for g in seen for r in g.rows]
        record.update(self._reward_metrics(rows))
        record.update({k: round(v, 6) for k, v in stats.items()})
        step_seconds = time.time() - t_step
        record.update({"groups_trained": len(groups), "sequences": len(seqs), "lr": self.scheduler.get_last_lr()[0],
                       **{f"seconds_{k}": round(v, 2) for k, v in self.timing.items()},
                       "tokens_per_s": round(self.tokens / self.timing["generation"], 1) if self.timing["generation"] else 0.0,
                       # the loop's own rate: what was trained per second of the step, generation overlapped or not
                       "samples_per_s": round(len(seqs) / step_seconds, 3),
                       "trained_tokens_per_s": round(sum(sum(q["loss_mask"]) for q in seqs) / step_seconds, 1),
                       "step_seconds": round(step_seconds, 2),
                       "minutes": round(self.train_minutes(), 3)})
        if self.d.main:  # ReMax's greedy rows too (remax_baseline: true, advantage null)
            self._write_rollouts(step + 1, rows + [g.baseline for g in seen if g.baseline is not None])
        self.state.step += 1
        # the prompt order's position after this step's groups (the rollout process's, which may be ahead)
        self.state.epoch, self.state.batch_in_epoch = batch["sampler"] if self.worker is not None else (
            self.sampler.epoch, self.sampler.index)
        self.state.examples_seen += counts["groups_sampled"]
        self.state.groups_kept += len(groups)
        if self.d.main:
            self.metrics.write(record)
            from pipelines.core.tracking import table_rows

            # the step's first completions, for --report-to trackers (all of them are in OUTPUT/rollouts/)
            self.metrics.trackers.log_table("train/samples", table_rows(
                rows, ("prompt", "completion", "reward", "advantage")), step + 1)
        return record

    def _row_advantages(self, rewards: torch.Tensor, baseline: torch.Tensor | None = None) -> torch.Tensor | None:
        """One advantage per completion from the step's rewards (prompts × G, NaN for null rows); `baseline`
        (prompts,): ReMax's greedy rewards, given only under `--advantage remax`."""
        cfg = self.cfg
        kwargs = {"grpo": {"scale": cfg.scale_rewards}, "remax": {"baseline": baseline}}.get(cfg.advantage, {})
        return ADVANTAGES[cfg.advantage](rewards, cfg.num_generations, **kwargs)

    def _sequences(self, groups: list[Group]) -> list[dict]:
        """The step's trainable sequences: the engine's prompt + completion ids, the loss mask, the sampler's
        log-probs, the completion's advantage and reward, and the rank that trains it (whole groups per rank)."""
        cfg = self.cfg
        # advantages over the whole step: a null row keeps its place as NaN (left out of every baseline, advantage
        # 0) so groups stay G wide, then is left out of the loss
        flat = [row for g in groups for row in g.rows]
        rewards = torch.tensor([float("nan") if self._null(r) else float(r["reward"]) for r in flat])
        # ReMax: each group's greedy reward (`_collect` kept only groups whose greedy row was scored)
        extra = {"baseline": torch.tensor([float(g.baseline["reward"]) for g in groups])} \
            if cfg.advantage == "remax" else {}
        adv_all = self._row_advantages(rewards, **extra) if flat else None
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
                train = not (cfg.mask_truncated and row["finish_reason"] in TRUNCATED)
                # the policy's tokens only: a trajectory's environment tokens (mask 0) are context, never trained
                policy = row.get("completion_mask") or [1] * len(ids)
                seq = {"input_ids": g.prompt_ids + ids,
                       "loss_mask": [0] * len(g.prompt_ids) + [int(train and m) for m in policy],
                       "sampler_logps": [0.0] * len(g.prompt_ids) + list(row["logprobs"] or [0.0] * len(ids)),
                       "advantage": value, "reward": float(row["reward"]), "owner": k % self.d.world}
                if self.worker is not None:  # the behaviour policy's own log-probs and how stale it was
                    seq["behaviour_logps"] = [0.0] * len(g.prompt_ids) + list(row["policy_logprobs"])
                    seq["staleness"] = self.state.step - g.version
                seqs.append(seq)
        return seqs

    METRICS = ("loss", "clip_low", "clip_high", "kl", "entropy")

    def _micro_batches(self, seqs: list[dict]) -> tuple[list[list[int]], int]:
        """This rank's micro-batches of the step's sequences (at most `--micro-batch-size` sequences and, with
        `--micro-batch-tokens`, at most that many padded tokens each), then the padding ones a sharded step needs;
        and how many are its own."""
        cfg = self.cfg
        local = [i for i in range(len(seqs)) if seqs[i]["owner"] == self.d.rank]
        mbs: list[list[int]] = []
        for i in local:
            width = max([len(seqs[j]["input_ids"]) for j in mbs[-1]] + [len(seqs[i]["input_ids"])]) if mbs else 0
            full = not mbs or len(mbs[-1]) >= cfg.micro_batch_size or (
                cfg.micro_batch_tokens is not None and width * (len(mbs[-1]) + 1) > cfg.micro_batch_tokens)
            if full:
                mbs.append([i])
            else:
                mbs[-1].append(i)
        real = len(mbs)
        return mbs + [[0]] * (self.learner.batch_count(real) - real), real

    def _optimize(self, seqs: list[dict]) -> dict:
        """μ = `--num-iterations` optimizer steps of the policy loss over the step's sequences (this rank's share),
        the old policy's and the reference's log-probs computed once; returns the metrics (means over the μ)."""
        from trainers.core.logprobs import token_logps

        cfg, learner = self.cfg, self.learner
        # the step's totals (every rank holds every group): the loss normalizers are global, so the ranks'
        # summed gradients are one process's
        n_items = float(sum(sum(s["loss_mask"]) for s in seqs))
        n_seqs = len(seqs)
        if not seqs or n_items == 0:
            return {k: 0.0 for k in (*self.METRICS, "grad_norm")}
        mbs, real = self._micro_batches(seqs)
        batches = [learner.to_device(self._pad([seqs[i] for i in mb])) for mb in mbs]
        adv = [learner.tensor([seqs[i]["advantage"] for i in mb]) for mb in mbs]
        self.model.train()
        old = learner.forward(batches, lambda k, b: token_logps(self.model, b)) if cfg.num_iterations > 1 else None
        ref = learner.forward(batches, lambda k, b: self.ref_logps(b)) if self.uses_reference() else None
        loss_cfg = cfg.loss_config()
        aggregation = AGGREGATIONS[cfg.loss]

        def loss_fn(k: int, b: dict):
            if self.worker is not None:  # every thread while the rollout process waits, else the trainer's share
                self.worker.share.adjust()
            logps, entropy = token_logps(self.model, b, with_entropy=True)
            old_k = old[k] if old is not None else logps.detach()
            isw = truncated_is_weights(old_k, b["sampler_logps"], b["loss_mask"], cfg.tis_cap) if cfg.tis_cap else None
            if self.worker is not None:  # decoupled PPO: π_prox (old_k) against the stale sampler, per token
                sw = staleness_weights(old_k, b["behaviour_logps"], b["loss_mask"], b["staleness"],
                                       cfg.staleness_correction, cfg.staleness_cap)
                isw = sw if isw is None else isw * sw
            loss, m = policy_loss(logps, old_k, adv[k], b["loss_mask"], loss_cfg,
                                  ref_logps=ref[k] if ref is not None else None, is_weights=isw, num_items=n_items)
            weight = aggregation.weight(len(mbs[k]), n_seqs)
            stats = policy_stats(loss * weight, len(mbs[k]) / n_seqs, m, entropy, b["loss_mask"])
            if self.worker is not None:  # the correction's mean weight over the tokens sampled by stale weights
                stale = b["loss_mask"].bool() & (b["staleness"] > 0).unsqueeze(-1)
                stats.add("staleness_weight", (sw * stale).sum(), stale.sum())
            return loss * weight, stats

        names = (*self.METRICS, "staleness_weight") if self.worker is not None else self.METRICS
        passes = [learner.update(batches, loss_fn, names, real=real) for _ in range(cfg.num_iterations)]
        self.model.eval()
        return {k: sum(p.get(k, 0.0) for p in passes) / len(passes) for k in (*names, "grad_norm")}

    def _pad(self, feats: list[dict]) -> dict[str, torch.Tensor]:
        from trainers.core.data import collate

        pad = self.engine.pad_id
        batch = collate([{"input_ids": f["input_ids"], "loss_mask": f["loss_mask"]} for f in feats], pad)
        width = batch["input_ids"].shape[1]
        batch["sampler_logps"] = torch.tensor([f["sampler_logps"] + [0.0] * (width - len(f["sampler_logps"]))
                                               for f in feats], dtype=torch.float32)
        if self.worker is not None:
            batch["behaviour_logps"] = torch.tensor([f["behaviour_logps"] + [0.0] * (width - len(f["behaviour_logps"]))
                                                     for f in feats], dtype=torch.float32)
            batch["staleness"] = torch.tensor([f["staleness"] for f in feats], dtype=torch.float32)
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
        if self.env is not None and rows:  # what the trajectories did with their tools, per sample
            n = len(rows)
            out["turns"] = round(sum(r["turns"] for r in rows) / n, 4)
            out["tool_calls"] = round(sum(r["tool_calls"] for r in rows) / n, 4)
            out["tool_errors"] = round(sum(r["tool_errors"] for r in rows) / n, 4)
            for reason in ("fault", "max_turns", "env_error", "context"):
                out[f"finished_{reason}"] = round(sum(r["finish_reason"] == reason for r in rows) / n, 4)
            out["policy_tokens"] = round(sum(sum(r["completion_mask"] or []) for r in rows) / n, 2)
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
        from trainers.core.fsdp import full_weights

        with full_weights(self.model):
            rec: dict[str, Any] = {"split": "eval", "step": self.state.step, **self.evaluator.evaluate(self.eval_sets)}
        self.eval_seconds += time.time() - t0
        rec.update({"minutes": round(self.train_minutes(), 3), "eval_seconds": round(time.time() - t0, 2)})
        if self.d.main:
            self.metrics.write(rec)
        return rec

    def save(self) -> None:
        from trainers.core import checkpoint as ckpt

        self.model.config.use_cache = True
        ckpt.save_checkpoint_all_ranks(self.d, self.out, self.model, self.tokenizer, self.optimizer, self.scheduler,
                                       self.state, json.dumps({"identity": self.cfg.identity()}, default=str),
                                       keep=self.cfg.keep_checkpoints, extra=self.save_extra)

    def close_worker(self) -> None:
        if getattr(self, "worker", None) is not None:
            self.worker.close()
            self.worker = None

    def save_extra(self, folder: Path) -> None:
        """More state for a checkpoint, written inside it before it is marked complete (PPO: the value model)."""

    def finish(self) -> dict:
        from trainers.core.metrics import plot_run

        from trainers.core.distributed import barrier

        from trainers.core import fsdp

        plots = []
        weights = fsdp.full_state(self.model)[0] if fsdp.is_sharded(self.model) else None  # every rank gathers
        if self.d.main:
            if self.cfg.lora_r:  # the adapters as trained, and the merged model every stage can load
                self.model.save_pretrained(self.out / "adapter")
                weights = {name: t.cpu() for name, t in export_weights(self.model)}
                self.model.get_base_model().save_pretrained(self.out / "model", state_dict=weights)
            else:
                self.model.save_pretrained(self.out / "model", state_dict=weights)
            self.tokenizer.save_pretrained(self.out / "model")
            plots = plot_run(self.out)
            self.metrics.close()
        barrier(self.d)
        for f in self.fns:
            f.close()
        self.close_worker()
        self.close_env()
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
    from trainers.core import checkpoint as ckpt

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
    `run_class`: a GRPORun subclass with its own update (trainers/online/ppo.py)."""
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
        if run.worker is not None:
            run.worker.ask_ahead(run.state.step)  # the rollout process starts on the first steps now
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
    except BaseException:
        run.close_worker()
        run.close_env()
        raise
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
        from trainers.core.card import RunInfo, write_model_card
        from trainers.core.metrics import read_metrics

        algorithm = run.NAME if run.NAME != "grpo" or cfg.advantage == "grpo" else cfg.advantage  # rloo, remax...
        write_model_card(run.out / "model", RunInfo(
            algorithm=algorithm, base_model=cfg.model, config=json.loads(json.dumps(asdict(cfg), default=str)),
            datasets=[cfg.prompts], eval_datasets=list(cfg.eval_prompts), records=read_metrics(run.out),
            summary=summary))
    return summary


# ------------------------------------------------------------------------------------------------ CLI
def build_parser(prog: str = "prefsmith train grpo", config: type = None) -> argparse.ArgumentParser:
    """The options of `config` (GRPOConfig; PPO passes PPOConfig): the ones that need more than a field gives are
    written here; every other field becomes a flag with its trailing comment as help (pipelines/core/options.py),
    so a new knob is a field with a comment."""
    from pipelines.cli import Parser
    from pipelines.core.options import add_dataclass_options

    config = config or GRPOConfig
    d = config.__dataclass_fields__
    p = Parser(prog=prog, description="Online RL from the policy's own rollouts (GRPO family, RLOO).")
    add_dataclass_options(p, config, only=("model", "prompts", "output", "rewards", "weights"))  # listed first
    from pipelines.core.threads import add_threads_argument
    from pipelines.core.tracking import add_report_to_argument

    add_threads_argument(p)
    add_report_to_argument(p)
    p.add_argument("--lora-target", default=d["lora_target"].default,
                   help="modules given LoRA adapters: all-linear, or comma-separated names (q_proj,v_proj)")
    p.add_argument("--device", default="auto",
                   help="auto (this process's GPU under torchrun, else GPU 0, else the CPU) | cpu | cuda | cuda:N")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto",
                   help="auto: bf16 on CUDA, fp32 on CPU (bf16 is autocast compute; weights and AdamW stay fp32)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute each layer's activations in backward (less memory, more compute)")
    p.add_argument("--eval-prompts", action="append", default=[],
                   help="held-out prompts for greedy accuracy (repeat for several sets)")
    p.add_argument("--advantage", choices=list(ADVANTAGES), default="grpo",
                   help="grpo: r − group mean (÷ std with --scale-rewards group); rloo: r − mean of the others; "
                        "reinforce_pp: group-centred, whitened over the step; remax: r − the reward of one extra "
                        "greedy completion per prompt (ReMax; 1/G more generation, shown as seconds_greedy)")
    p.add_argument("--dynamic-sampling", action=argparse.BooleanOptionalAction, default=d["dynamic_sampling"].default,
                   help="drop groups whose outcome reward has zero variance and sample more prompts to fill the "
                        "step (on by default; --no-dynamic-sampling trains on every group)")
    p.add_argument("--template", default=None,
                   help="format string for string prompts, e.g. '{prompt} Answer in \\boxed{{}}.' (default auto: "
                        "with a math reward and prompts that name no answer format, appends the boxed instruction "
                        "the reward checks; '{prompt}' keeps prompts as they are)")
    p.add_argument("--fsdp", action="store_true",
                   help="torchrun: shard weights, gradients and optimizer state over the processes (FSDP2)")
    p.add_argument("--max-staleness", type=int, default=d["max_staleness"].default, metavar="K",
                   help="asynchronous rollouts: a separate process samples the next steps while this one trains, "
                        "from weights at most K updates old (0: the synchronous loop; docs/online_rl.md)")
    p.add_argument("--staleness-correction", choices=list(STALENESS_CORRECTIONS),
                   default=d["staleness_correction"].default,
                   help="with K >= 1, always applied: each token weighted by π_prox/π_behaviour truncated at "
                        "--staleness-cap (tis) or dropped above it (mis)")
    p.add_argument("--rollout-process", action=argparse.BooleanOptionalAction, default=None,
                   help="sample in the separate process (default: when --max-staleness >= 1); at K = 0 it waits "
                        "for every update and equals the synchronous loop")
    p.add_argument("--generation-threads", type=int, default=None,
                   help="the rollout process's CPU threads (default: half of --threads, at least 1)")
    p.add_argument("--generation-device", default=None,
                   help="where the rollout process samples: cpu or cuda:N (default: the trainer's device on the CPU; "
                        "with 2+ GPUs the last one, the trainer keeping cuda:0)")
    p.add_argument("--engine", choices=list(POLICY_ENGINES), default="hf",
                   help="hf: sample with the training model itself; vllm: a vLLM engine synced after each step")
    add_dataclass_options(p, config, choices={
        "scale_rewards": ["group", "batch", "none"], "loss": list(AGGREGATIONS), "surrogate": list(SURROGATES),
        "importance_level": ["token", "sequence"], "kl": list(KL_ESTIMATORS), "chat": ["auto", "always", "never"]})
    from pipelines.core import hub

    hub.add_arguments(p, command_line_only=True)  # `prefsmith train` takes them off the command line (trainers/cli.py)
    return p


def main(argv: list[str], algo: str = "grpo") -> int:
    from pipelines.core.options import from_args
    from pipelines.engines.models import resolve_model
    from pipelines.errors import UserError

    args = build_parser(f"prefsmith train {algo}").parse_args(argv)
    try:
        # the config's fields (the hub flags are the parser's too: trainers/cli.py takes them off the command line)
        summary = train_grpo(from_args(GRPOConfig, args, model=resolve_model(args.model),
                                       advantage="rloo" if algo == "rloo" else args.advantage))
    except UserError as e:
        print(f"prefsmith train {algo}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in summary.items() if k != "plots"}))
    return 0
