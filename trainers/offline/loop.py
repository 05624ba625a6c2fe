"""The offline training loop shared by every algorithm in trainers/offline/algorithms.py (sft, dpo, kto, rm).

Per optimizer step: take the step's examples (length-bucketed, seeded order), split them into
world_size × grad_accum micro-batches, sum each micro-batch's loss, divide by the units (tokens or pairs) of
the *whole* step and backpropagate; then sum gradients over processes, clip, AdamW, schedule. Because every
process knows the whole step and divides by the same global count, one process and N processes compute the
same gradient, and `--grad-accum` only trades memory for time.

`TrainRun` is one run (`setup`, `step`, `evaluate`, `save`, `finish`, the shape of trainers/online/grpo.py's
GRPORun) and `train(cfg)` drives it. Nothing here asks which algorithm runs: the algorithm object says which
columns it reads, which sequences need reference log-probs, and what to do before a step (its hooks).

Runs on CPU, one GPU, or several processes under `torchrun` (gloo on CPU, nccl on GPU); with `--fsdp` the
weights, gradients and optimizer state are sharded over those processes instead of replicated (trainers/core/fsdp.py),
and every process then runs the same number of forwards: one with no examples of its own runs a padding batch
whose result is dropped.
"""
from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pipelines.core.files import atomic_write_json, ensure_writable_dir
from trainers.core import checkpoint as ckpt
from trainers.core import fsdp
from trainers.offline import ref_cache
from trainers.offline.algorithms import Algorithm, StepContext, UserDataError, make_algorithm
from trainers.offline.config import TrainConfig
from trainers.core.data import collate, length_batches
from trainers.core.distributed import Dist, barrier, broadcast_object, gather_objects, reduce_stats, setup_distributed
from trainers.core.learner import Learner, resolve_dtype
from trainers.core.logprobs import sequence_logps
from trainers.core.card import RunInfo, final_model_dir, write_model_card
from trainers.core.metrics import MetricsLog, Stats, plot_run, read_metrics
from trainers.core.optim import adamw, lr_schedule
from rewards.rm import model_folder


@dataclass
class TrainResult:
    output: Path
    steps: int
    train_metrics: dict
    eval_metrics: dict
    ref_cache_hits: dict


def _log(d: Dist, msg: str) -> None:
    if d.main:
        print(f"prefsmith train: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ data
def _read_rows(path: str, columns: tuple[str, ...]) -> list[dict]:
    from pipelines.core.dataset import load_rows

    return load_rows(path, columns)


def _split_eval(rows: list[dict], cfg: TrainConfig, columns: tuple[str, ...]) -> tuple[list[dict], list[dict]]:
    """Hold out a seeded random `eval_split` fraction of rows (before any K-way ranking is expanded)."""
    if cfg.eval_data:
        return rows, _read_rows(cfg.eval_data, columns)
    if not cfg.eval_split:
        return rows, []
    order = np.random.default_rng(cfg.seed).permutation(len(rows)).tolist()
    n_eval = max(1, round(cfg.eval_split * len(rows)))
    if n_eval >= len(rows):
        raise UserDataError(f"{cfg.data}: --eval-split {cfg.eval_split} leaves no training rows of {len(rows)}")
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in sorted(held)]


# ------------------------------------------------------------------------------------------------ models
def _load_tokenizer(path: str, chat_template: str | None = None):
    from transformers import AutoTokenizer

    from pipelines.engines.base import read_chat_template

    template = read_chat_template(chat_template)  # --chat-template: checked before the model loads
    tok = AutoTokenizer.from_pretrained(path)
    if template is not None:
        tok.chat_template = template  # saved with the trained model
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _load_model(path: str | Path, cfg: TrainConfig, tokenizer, reward_head: bool, token_head: bool = False):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoModelForTokenClassification

    if not Path(path).is_dir():
        raise UserDataError(f"model {path!r} is not a local directory with config.json and weights")
    torch.manual_seed(cfg.seed)  # a fresh reward head is initialised the same way on every process
    if token_head:  # a PRM: 2 labels per token; no classifier dropout (TRL's PRMTrainer disables dropout)
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path, num_labels=2)
        config.classifier_dropout = 0.0
        model = AutoModelForTokenClassification.from_pretrained(path, config=config, dtype=torch.float32)
    elif reward_head:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def _apply_lora(model, cfg: TrainConfig, resume_dir: Path | None, reward_head: bool, token_head: bool = False):
    try:
        from peft import LoraConfig, PeftModel, get_peft_model
    except ImportError:
        raise UserDataError("--lora-r needs peft: pip install 'prefsmith[peft]'") from None
    if resume_dir is not None:
        return PeftModel.from_pretrained(model, resume_dir, is_trainable=True)
    lora = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules="all-linear",
        task_type="TOKEN_CLS" if token_head else "SEQ_CLS" if reward_head else "CAUSAL_LM",
    )
    return get_peft_model(model, lora)


# ------------------------------------------------------------------------------------------------ reference
def _reference_logps(cfg: TrainConfig, algo: Algorithm, examples: list[dict], tokenizer, learner: Learner, what: str,
                     info: dict, initial_policy=None):
    """(N, len(algo.ref_keys)) summed reference log-probs, from the disk cache or one pass of the reference.

    `initial_policy` is the freshly loaded, not yet trained policy: when the reference is the policy's own
    starting point it is scored with that model instead of loading a second copy."""
    if not examples:
        return torch.zeros(0, len(algo.ref_keys))
    d = learner.d
    ref_path = cfg.ref_model or cfg.model
    cache_dir = Path(cfg.ref_cache_dir) if cfg.ref_cache_dir else ref_cache.default_cache_dir()
    feats = [{f"{k}_{key}": e[k][key] for k in algo.ref_keys for key in ("input_ids", "loss_mask")} for e in examples]
    data_hash = ref_cache.features_hash(feats, tuple(feats[0]))
    key = ref_cache.cache_key(ref_cache.model_fingerprint(ref_path), data_hash, cfg.dtype, algo.name)
    values = broadcast_object(ref_cache.load_cached(cache_dir, key) if d.main else None, d)
    if values is not None and tuple(values.shape) == (len(examples), len(algo.ref_keys)):
        _log(d, f"{what}: reference log-probs loaded from cache {cache_dir / key}.pt")
        info[what] = {"key": key, "hit": True, "forward_passes": 0}
        return values
    _log(d, f"{what}: computing reference log-probs for {len(examples)} examples with {ref_path}")
    model = initial_policy if initial_policy is not None else _load_model(ref_path, cfg, tokenizer, reward_head=False)
    if cfg.fsdp and not fsdp.is_sharded(model):
        fsdp.shard_model(model, d)
    model = model.to(d.device).eval()
    mine = list(range(d.rank, len(examples), d.world))
    mine.sort(key=lambda i: examples[i]["length"])
    bs = max(1, cfg.batch_size // (d.world * cfg.grad_accum))
    starts = list(range(0, len(mine), bs))
    local: dict[int, list[float]] = {}
    passes = 0
    from tqdm import tqdm

    bar = tqdm(total=len(mine), desc=f"reference log-probs ({what})", unit="example", dynamic_ncols=True,
               disable=not (d.main and cfg.progress))
    with torch.no_grad(), learner.autocast(), bar:
        for b in range(fsdp.common_count(len(starts), d) if cfg.fsdp else len(starts)):
            padding = b >= len(starts)  # --fsdp: as many forwards as the busiest process
            idx = [0] if padding else mine[starts[b] : starts[b] + bs]
            cols = []
            for k in algo.ref_keys:
                batch = collate([examples[i][k] for i in idx], tokenizer.pad_token_id)
                logps, _ = sequence_logps(model, {n: t.to(d.device) for n, t in batch.items()})
                cols.append(logps.float().cpu())
                passes += not padding
            if padding:
                continue
            bar.update(len(idx))
            for j, i in enumerate(idx):
                local[i] = [float(c[j]) for c in cols]
    del model  # the caller keeps the policy; a separately loaded reference is freed here
    gathered = gather_objects(local, d)
    values = torch.zeros(len(examples), len(algo.ref_keys), dtype=torch.float32)
    for part in gathered:
        for i, row in part.items():
            values[i] = torch.tensor(row)
    if d.main:
        ref_cache.store_cached(cache_dir, key, values, {"reference": str(ref_path), "data": cfg.data if what == "train"
                               else (cfg.eval_data or cfg.data), "examples": len(examples), "dtype": cfg.dtype,
                               "algorithm": algo.name, "columns": list(algo.ref_keys)})
    info[what] = {"key": key, "hit": False, "forward_passes": passes}
    return values


# ------------------------------------------------------------------------------------------------ steps
def epoch_batches(lengths: list[int], cfg: TrainConfig, epoch: int) -> list[list[int]]:
    """The epoch's batches of example indices: a pure function of (lengths, seed, epoch, batch size), so every
    process and every resumed run sees the same order."""
    if cfg.group_by_length or not cfg.shuffle:
        return length_batches(lengths, cfg.batch_size, cfg.seed + epoch, shuffle=cfg.shuffle)
    order = np.random.default_rng(cfg.seed + epoch).permutation(len(lengths)).tolist()
    return [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]


def _micro_batches(indices: list[int], examples: list[dict], d: Dist, grad_accum: int) -> list[list[int]]:
    """This process's micro-batches of one step: the step sorted by length, cut into world×accum chunks."""
    ordered = sorted(indices, key=lambda i: examples[i]["length"])
    k = d.world * grad_accum
    chunks = [ordered[j * len(ordered) // k : (j + 1) * len(ordered) // k] for j in range(k)]
    return [chunks[m * d.world + d.rank] for m in range(grad_accum)]


def _padding_forward(model, example: dict, ctx: StepContext) -> None:
    """One forward whose result is dropped (--fsdp): a process with no examples of its own for an algorithm's hook
    still joins the all-gathers of the others' forward (a hook runs one forward over its examples: KTO's KL)."""
    feature = next(v for v in example.values() if isinstance(v, dict) and "input_ids" in v)
    with torch.no_grad():
        sequence_logps(model, {n: t.to(ctx.device) for n, t in collate([feature], ctx.pad_id).items()})


def _save_final(model, tokenizer, cfg: TrainConfig, weights: dict | None = None) -> None:
    """The final model (LoRA merged) and tokenizer in OUTPUT/model, where every trainer leaves its model; the run's
    config goes with it (a PRM's step separator is read from there) and stays in OUTPUT."""
    out = Path(cfg.output) / "model"
    final = model.merge_and_unload() if cfg.lora_r else model
    final.save_pretrained(out, state_dict=weights)
    tokenizer.save_pretrained(out)
    cfg.save(out / "prefsmith_train.json")
    cfg.save(out.parent / "prefsmith_train.json")


def _prepare_examples(cfg: TrainConfig, algo: Algorithm, tokenizer,
                      log: Callable[[str], None]) -> tuple[list[dict], list[dict]]:
    """Read, split and tokenize the data; returns (train examples, eval examples)."""
    train_rows, eval_rows = _split_eval(_read_rows(cfg.data, algo.required_columns), cfg, algo.required_columns)
    algo.prepare(cfg, train_rows, log)
    examples = algo.encode(train_rows, tokenizer, cfg, cfg.data)
    eval_examples = algo.encode(eval_rows, tokenizer, cfg, cfg.eval_data or cfg.data) if eval_rows else []
    truncated = sum(any(isinstance(v, dict) and v.get("truncated") for v in e.values()) for e in examples)
    if truncated:
        log(f"{truncated} of {len(examples)} training examples were truncated to --max-length {cfg.max_length}")
    differs = sum(bool(e.get("context_differs")) for e in examples)
    if differs:
        log(f"warning: {differs} of {len(examples)} training examples tokenize their prompt to other ids than the "
            "prompt_token_ids they were sampled from (a tokenizer or chat template other than the sampler's): "
            "they train in a context the policy did not sample in")
    dropped = [i for i, e in enumerate(examples) if e["units"] == 0]
    if dropped:
        log(f"skipping {len(dropped)} examples with no trainable tokens (first: row {dropped[0]})")
        examples = [e for e in examples if e["units"] > 0]
    if not examples:
        raise UserDataError(f"{cfg.data}: no trainable examples")
    return examples, [e for e in eval_examples if e["units"] > 0]


# ------------------------------------------------------------------------------------------------ the run
class TrainRun:
    """One offline run directory: `setup()`, then `step(next_batch())` per optimizer step, `evaluate()`,
    `save()` (a checkpoint) and `finish()`. Under torchrun every process makes one and calls the same methods
    in the same order; only rank 0 writes files."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.output)

    def log(self, msg: str) -> None:
        _log(self.d, msg)

    # ---------------------------------------------------------------------------------------- set-up
    def setup(self) -> None:
        """Join the process group; check resume; read and encode the data; load the model; score the reference
        (or load its cached log-probs); build optimizer and schedule; restore a checkpoint's state."""
        cfg, out = self.cfg, self.out
        check_model_dir(cfg.model, "--model")
        if cfg.ref_model:
            check_model_dir(cfg.ref_model, "--ref-model")
        d = self.d = setup_distributed(cfg.device)
        cfg.dtype = resolve_dtype(cfg.dtype, d.device)  # the resolved precision is what the run (and cache key) records
        self.learner = learner = Learner(d, cfg.dtype, cfg.gradient_checkpointing, shard=cfg.fsdp)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our own bar is the one to watch; per-file load bars are noise
        if d.main:
            ensure_writable_dir(out)  # before hours of reference log-probs, not when the first file is written
        resume_dir = ckpt.latest_checkpoint(out) if cfg.resume else None
        if not cfg.resume and ckpt.list_checkpoints(out):
            raise UserDataError(f"{out} already holds checkpoints of a run; pass --resume to continue it or choose "
                                "another --output")
        if cfg.resume and resume_dir is None:
            self.log(f"--resume: no checkpoint in {out / ckpt.CHECKPOINT_DIR}, starting from the beginning")
        if resume_dir is not None:
            _check_resumable(resume_dir, cfg)
        if cfg.fsdp:
            fsdp.check_supported(d, lora=bool(cfg.lora_r))
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)

        self.tokenizer = tokenizer = _load_tokenizer(cfg.model, cfg.chat_template)
        self.algo = algo = make_algorithm(cfg)
        self.examples, self.eval_examples = _prepare_examples(cfg, algo, tokenizer, self.log)
        model = _load_model(resume_dir if resume_dir and not cfg.lora_r else cfg.model, cfg, tokenizer,
                            reward_head=algo.reward_head, token_head=algo.token_head)
        if cfg.fsdp:  # before the reference pass, which then runs on the shards too
            fsdp.shard_model(model, d)
        self.ref_info: dict = {}
        self.ref = self.eval_ref = None
        if algo.ref_keys:
            # Before the first step (and before LoRA wraps it) the policy *is* the default reference.
            same = cfg.ref_model is None and (resume_dir is None or cfg.lora_r)
            self.ref = _reference_logps(cfg, algo, self.examples, tokenizer, learner, "train", self.ref_info,
                                        model if same else None)
            self.eval_ref = _reference_logps(cfg, algo, self.eval_examples, tokenizer, learner, "eval", self.ref_info,
                                             model if same else None)
        if cfg.lora_r:
            model = _apply_lora(model, cfg, resume_dir, algo.reward_head, algo.token_head)
        self.model = model = learner.place(model).train()
        self.optimizer = adamw(model, cfg.lr, cfg.weight_decay, (cfg.adam_beta1, cfg.adam_beta2))

        self.lengths = [e["length"] for e in self.examples]
        self.steps_per_epoch = math.ceil(len(self.examples) / cfg.batch_size)
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * self.steps_per_epoch))
        warmup = cfg.warmup_steps if cfg.warmup_steps is not None else math.ceil(cfg.warmup_ratio * self.total_steps)
        self.scheduler = lr_schedule(self.optimizer, self.total_steps, warmup, cfg.scheduler)
        learner.add(model, self.optimizer, self.scheduler, cfg.max_grad_norm)
        self.state = ckpt.TrainerState()
        if resume_dir is not None:
            self.state = ckpt.load_training_state(resume_dir, self.optimizer, self.scheduler, d.rank, model)
            self.log(f"resuming from {resume_dir} (step {self.state.step} of {self.total_steps})")
        if d.main:
            cfg.save(out / "prefsmith_train.json")
            atomic_write_json(out / "run_info.json", {
                "world_size": d.world, "device": str(d.device), "examples": len(self.examples),
                "eval_examples": len(self.eval_examples), "steps": self.total_steps,
                "steps_per_epoch": self.steps_per_epoch, "ref_cache": self.ref_info,
                "resumed_from": str(resume_dir) if resume_dir else None})
        self.metrics = MetricsLog(out, resume_step=self.state.step if resume_dir else None, report_to=cfg.report_to,
                                  config=json.loads(cfg.to_json())) if d.main else None
        self.ctx = StepContext(cfg=cfg, device=d.device, pad_id=tokenizer.pad_token_id)
        self.last_train: dict = {}
        self.last_eval: dict = {}
        self._epoch: tuple[int, list[list[int]]] | None = None  # (epoch, its batches), computed once per epoch

    # ---------------------------------------------------------------------------------------- steps
    def next_batch(self) -> list[int]:
        """The next step's example indices: the epoch's seeded order at the saved position, moving on to the
        next epoch once this one is used up."""
        state = self.state
        if self._epoch is None or self._epoch[0] != state.epoch:
            self._epoch = (state.epoch, epoch_batches(self.lengths, self.cfg, state.epoch))
        if state.batch_in_epoch >= len(self._epoch[1]):
            state.epoch += 1
            state.batch_in_epoch = 0
            self._epoch = (state.epoch, epoch_batches(self.lengths, self.cfg, state.epoch))
        return self._epoch[1][state.batch_in_epoch]

    def step(self, indices: list[int]) -> dict:
        """One optimizer step on the global batch `indices` (from `next_batch`; each process trains its share);
        returns the train record, also written to metrics.jsonl every `--logging-every` steps."""
        cfg, d, algo, examples, ref, ctx = self.cfg, self.d, self.algo, self.examples, self.ref, self.ctx
        t0 = time.perf_counter()
        denom = float(sum(examples[i]["units"] for i in indices))
        micro = _micro_batches(indices, examples, d, cfg.grad_accum)
        mine = [i for m in micro for i in m]
        learner = self.learner
        sharded = learner.sharded
        own = [m for m in micro if m]
        # under --fsdp every process runs a forward and backward per micro-batch: its empty ones are padding
        batches = own + [indices[:1]] * (len(micro) - len(own) if sharded else 0)

        def before() -> None:
            if sharded and not mine and type(algo).before_step is not Algorithm.before_step:
                _padding_forward(self.model, examples[indices[0]], ctx)
            algo.before_step(self.model, examples, mine, ref, ctx, d)

        def loss_fn(k: int, idx: list[int]):
            loss_sum, s = algo.loss(self.model, [examples[i] for i in idx], ref[idx] if ref is not None else None, ctx)
            return loss_sum * (1.0 / denom), s

        reduced = learner.update(batches, loss_fn, algo.metric_names, real=len(own), before=before)
        learner.schedule()
        state = self.state
        state.step += 1
        state.batch_in_epoch += 1
        state.examples_seen += len(indices)
        elapsed = time.perf_counter() - t0
        tokens = sum(len(e["input_ids"]) for i in indices for e in examples[i].values() if isinstance(e, dict))
        self.last_train = {"split": "train", "step": state.step, "epoch": state.step / self.steps_per_epoch,
                           **reduced, "examples": len(indices), "tokens": tokens,
                           "tokens_per_s": tokens / max(elapsed, 1e-9), "step_time_s": elapsed}
        if self.metrics and state.step % cfg.logging_every == 0:
            self.metrics.write(self.last_train)
        return self.last_train

    def evaluate(self) -> dict[str, float]:
        """Held-out metrics over all eval examples (fixed length-sorted order, split across processes), logged at
        the current step; {} without eval data."""
        examples, ref, cfg, d, ctx = self.eval_examples, self.eval_ref, self.cfg, self.d, self.ctx
        if not examples:
            return {}
        model, algo = self.model, self.algo
        was_training = model.training
        model.eval()
        per_rank = max(1, cfg.batch_size // (d.world * cfg.grad_accum))
        ordered = sorted(range(len(examples)), key=lambda i: examples[i]["length"])
        mine = [i for j, i in enumerate(ordered) if (j // per_rank) % d.world == d.rank]
        stats = Stats()
        sharded = self.learner.sharded
        starts = list(range(0, len(mine), per_rank))
        with torch.no_grad():
            with self.learner.autocast():
                if sharded and not mine and type(algo).before_eval is not Algorithm.before_eval:
                    _padding_forward(model, examples[0], ctx)
                algo.before_eval(model, examples, mine, ref, ctx, d)
            for b in range(fsdp.common_count(len(starts), d) if sharded else len(starts)):
                padding = b >= len(starts)  # --fsdp: as many forwards as the busiest process
                idx = [0] if padding else mine[starts[b] : starts[b] + per_rank]
                with self.learner.autocast():
                    _, s = algo.loss(model, [examples[i] for i in idx], ref[idx] if ref is not None else None, ctx)
                if not padding:
                    stats.merge(s)
        model.train(was_training)
        self.last_eval = reduce_stats(stats, algo.metric_names, d).means()
        if self.metrics and self.last_eval:
            self.metrics.write({"split": "eval", "step": self.state.step,
                                **{f"eval/{k}": v for k, v in self.last_eval.items()}})
        return self.last_eval

    # ---------------------------------------------------------------------------------------- outputs
    def save(self) -> None:
        """A checkpoint of the current step (every process calls it; rank 0 writes)."""
        cfg = self.cfg
        ckpt.save_checkpoint_all_ranks(self.d, cfg.output, self.model, self.tokenizer, self.optimizer,
                                       self.scheduler, self.state, cfg.to_json(), keep=cfg.save_total_limit)

    def finish(self) -> TrainResult:
        """The final model (LoRA merged), tokenizer and config in OUTPUT/model, train_result.json and the plots."""
        cfg, d, out = self.cfg, self.d, self.out
        weights = fsdp.full_state(self.model)[0] if fsdp.is_sharded(self.model) else None  # every rank gathers
        if d.main:
            _save_final(self.model, self.tokenizer, cfg, weights)
            summary = {"steps": self.state.step, "train": self.last_train, "eval": self.last_eval,
                       "ref_cache": self.ref_info}
            atomic_write_json(out / "train_result.json", summary, default=float)
            write_model_card(final_model_dir(out), RunInfo(
                algorithm=cfg.algorithm, base_model=cfg.model, config=json.loads(cfg.to_json()), datasets=[cfg.data],
                eval_datasets=[cfg.eval_data] if cfg.eval_data else [], records=read_metrics(out), summary=summary))
            if cfg.plots:
                plot_run(out)
            self.metrics.close()
            self.log(f"done: {self.state.step} steps; model and tokenizer saved to {out / 'model'}")
        barrier(d)
        return TrainResult(output=out, steps=self.state.step, train_metrics=self.last_train,
                           eval_metrics=self.last_eval, ref_cache_hits={k: v["hit"] for k, v in self.ref_info.items()})


def train(cfg: TrainConfig) -> TrainResult:
    """Run (or resume) one training run; returns final metrics. Call it from every process under torchrun."""
    from tqdm import tqdm

    from pipelines.core.threads import apply_threads

    apply_threads(cfg.threads)  # auto: the cores not busy now (pipelines/core/threads.py)
    # a run directory given as --model / --ref-model stands for the model it holds (OUTPUT/model)
    cfg.model = model_folder(cfg.model)
    cfg.ref_model = cfg.ref_model and model_folder(cfg.ref_model)

    done = finished_run(cfg)
    if done is not None:
        print(f"prefsmith train: {cfg.output} already finished ({done.get('steps')} steps); nothing to do",
              file=sys.stderr)
        return TrainResult(output=Path(cfg.output), steps=int(done.get("steps") or 0), train_metrics=done.get("train")
                           or {}, eval_metrics=done.get("eval") or {}, ref_cache_hits={})
    run = TrainRun(cfg)
    run.setup()
    bar = tqdm(total=run.total_steps, initial=run.state.step, disable=not (run.d.main and cfg.progress),
               desc=f"train {run.algo.name}", file=sys.stderr, dynamic_ncols=True)
    if run.state.step == 0:
        run.evaluate()  # the "before" point of every held-out curve
    while run.state.step < run.total_steps:
        record = run.step(run.next_batch())
        bar.update(1)
        bar.set_postfix(loss=f"{record.get('loss', float('nan')):.4f}")
        done = run.state.step
        if cfg.eval_every and done % cfg.eval_every == 0 and done < run.total_steps:
            run.evaluate()
        if cfg.save_every and done % cfg.save_every == 0 and done < run.total_steps:
            run.save()
    bar.close()
    run.evaluate()
    return run.finish()


# Settings that fix which examples each step sees; changing them makes "continue at batch k" meaningless.
_RESUME_INVARIANTS = ("algorithm", "data", "model", "batch_size", "seed", "max_length", "shuffle",
                      "group_by_length", "eval_split", "eval_data", "lora_r", "fsdp")


def check_model_dir(path: str, flag: str) -> None:
    """A model the trainers load: a local folder written by `save_pretrained` (one line saying so otherwise)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UserDataError(f"{flag} {path}: no such folder. Pass a local model folder (one written by "
                            "save_pretrained, with config.json), or `default` for the embedded model")
    if not (folder / "config.json").is_file():
        raise UserDataError(f"{flag} {path} has no config.json: point it at a folder written by save_pretrained "
                            "(a `prefsmith train` output, or `prefsmith models fetch-default` for the default model)")


def finished_run(cfg: TrainConfig) -> dict | None:
    """With `--resume`, the summary (train_result.json) of a run that already finished in `cfg.output`, so it is
    neither trained again nor given a second final evaluation; None when there is a run to continue. Settings that
    would change the run raise: --resume continues an interrupted run, it does not extend a finished one."""
    out = Path(cfg.output)
    if not cfg.resume or not (out / "train_result.json").is_file():
        return None
    saved = json.loads((out / "prefsmith_train.json").read_text()) if (out / "prefsmith_train.json").is_file() else {}
    changed = [k for k in (*_RESUME_INVARIANTS, "epochs", "max_steps") if k in saved and saved[k] != getattr(cfg, k)]
    if changed:
        diffs = ", ".join(f"--{k.replace('_', '-')} {saved[k]!r} -> {getattr(cfg, k)!r}" for k in changed)
        raise UserDataError(f"{out} holds a finished run and {diffs} changed: --resume only continues an interrupted "
                            f"run. To train further, start a new --output with --model {out}")
    return json.loads((out / "train_result.json").read_text())


def _check_resumable(resume_dir: Path, cfg: TrainConfig) -> None:
    saved = json.loads((resume_dir / "prefsmith_train.json").read_text())
    changed = [k for k in _RESUME_INVARIANTS if k in saved and saved[k] != getattr(cfg, k)]
    if changed:
        diffs = ", ".join(f"--{k.replace('_', '-')} {saved[k]!r} -> {getattr(cfg, k)!r}" for k in changed)
        raise UserDataError(f"cannot --resume {resume_dir}: {diffs} changed since the checkpoint (they decide the "
                            "data order); rerun with the original values or start a new --output")
