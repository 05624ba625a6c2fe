"""The one training loop shared by sft, dpo, kto and rm.

Per optimizer step: take the step's examples (length-bucketed, seeded order), split them into
world_size × grad_accum micro-batches, sum each micro-batch's loss, divide by the units (tokens or pairs) of
the *whole* step and backpropagate; then sum gradients over processes, clip, AdamW, schedule. Because every
process knows the whole step and divides by the same global count, one process and N processes compute the
same gradient, and `--grad-accum` only trades memory for time.

Runs on CPU, one GPU, or several processes under `torchrun` (gloo on CPU, nccl on GPU).
"""
from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from pipelines.core.files import atomic_write_json
from trainers import checkpoint as ckpt
from trainers.algorithms import Stats, StepContext, UserDataError, make_algorithm, REQUIRED_COLUMNS
from trainers.config import TrainConfig
from trainers.data import collate, length_batches
from trainers.logprobs import sequence_logps
from trainers.metrics import MetricsLog, plot_run
from trainers import ref_cache


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


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


def setup_distributed() -> Dist:
    """Join the torchrun process group if there is one (nccl on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return Dist(rank=rank, world=world, device=device)


def _reduce_stats(stats: Stats, names: tuple[str, ...], d: Dist) -> Stats:
    """Sum metric sums and counts over processes. `names` is the algorithm's fixed list, identical on every
    process (a process with no data this step sends zeros), so the all-reduce always has the same shape."""
    flat = torch.tensor([v for n in names for v in stats.sums.get(n, [0.0, 0.0])], dtype=torch.float64)
    if d.world > 1:
        flat = flat.to(d.device)
        dist.all_reduce(flat)
        flat = flat.cpu()
    out = Stats()
    for i, n in enumerate(names):
        if flat[2 * i + 1] > 0:
            out.sums[n] = [float(flat[2 * i]), float(flat[2 * i + 1])]
    return out


def _all_reduce_grads(params: list[torch.nn.Parameter], d: Dist, bucket_elems: int = 1 << 25) -> None:
    """Sum gradients over processes, in flat buckets (a process with no data this step contributes zeros)."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    bucket: list[torch.Tensor] = []
    size = 0
    for i, p in enumerate(params):
        bucket.append(p.grad)
        size += p.grad.numel()
        if size >= bucket_elems or i == len(params) - 1:
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat)
            offset = 0
            for g in bucket:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
            bucket, size = [], 0


def _return_freed_memory(d: Dist, first: bool = False) -> None:
    """On CPU, hand the step's freed activations back to the OS (glibc `malloc_trim`). Batches of changing
    lengths otherwise fragment the heap, and resident memory creeps up step after step. `first` (before any work):
    also fix glibc's mmap threshold (512 KiB: on bench/train.py 256 KiB cost step time, 1 MiB left DPO at 1.01x TRL's peak)."""
    if d.device.type != "cpu" or not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        if first:
            # a fixed threshold: glibc otherwise raises it after every freed big block, and activations then come
            # from the heap, where they fragment it; mmapped blocks go back to the OS the moment they are freed
            libc.mallopt(-3, 1 << 19)  # M_MMAP_THRESHOLD
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl...): nothing to trim
        pass


def _autocast(cfg: TrainConfig, device: torch.device):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bf16")


# ------------------------------------------------------------------------------------------------ data
def _read_rows(path: str, algorithm: str) -> list[dict]:
    from pipelines.core.dataset import load_rows

    return load_rows(path, REQUIRED_COLUMNS[algorithm])


def _split_eval(rows: list[dict], cfg: TrainConfig) -> tuple[list[dict], list[dict]]:
    """Hold out a seeded random `eval_split` fraction of rows (before any K-way ranking is expanded)."""
    if cfg.eval_data:
        return rows, _read_rows(cfg.eval_data, cfg.algorithm)
    if not cfg.eval_split:
        return rows, []
    order = np.random.default_rng(cfg.seed).permutation(len(rows)).tolist()
    n_eval = max(1, round(cfg.eval_split * len(rows)))
    if n_eval >= len(rows):
        raise UserDataError(f"{cfg.data}: --eval-split {cfg.eval_split} leaves no training rows of {len(rows)}")
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in sorted(held)]


def _kto_defaults(cfg: TrainConfig, rows: list[dict], d: Dist) -> None:
    """KTO class weights: the dataset manifest's recommendation unless given; warn outside the paper's
    bound 1 <= (λ_D n_D) / (λ_U n_U) <= 4/3 (Ethayarajh et al. 2024, Eq. 8)."""
    from pipelines.core.dataset import read_manifest

    manifest = read_manifest(cfg.data) if Path(cfg.data).is_dir() else None
    recommended = (manifest or {}).get("kto") or {}
    if cfg.desirable_weight is None:
        cfg.desirable_weight = float(recommended.get("desirable_weight", 1.0))
    if cfg.undesirable_weight is None:
        cfg.undesirable_weight = float(recommended.get("undesirable_weight", 1.0))
    n_d = sum(1 for r in rows if r.get("label") is True)
    n_u = len(rows) - n_d
    if n_d and n_u:
        ratio = cfg.desirable_weight * n_d / (cfg.undesirable_weight * n_u)
        if not 1.0 <= ratio <= 4 / 3 + 1e-9:
            _log(d, f"warning: KTO class balance λ_D·n_D/(λ_U·n_U) = {ratio:.2f} is outside [1, 4/3] "
                    f"({n_d} desirable, {n_u} undesirable); consider --desirable-weight/--undesirable-weight")


# ------------------------------------------------------------------------------------------------ models
def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _load_model(path: str | Path, cfg: TrainConfig, tokenizer, for_rm: bool):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if not Path(path).is_dir():
        raise UserDataError(f"model {path!r} is not a local directory with config.json and weights")
    torch.manual_seed(cfg.seed)  # a fresh reward head is initialised the same way on every process
    if for_rm:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def _apply_lora(model, cfg: TrainConfig, resume_dir: Path | None):
    try:
        from peft import LoraConfig, PeftModel, get_peft_model
    except ImportError:
        raise UserDataError("--lora-r needs peft: pip install 'prefsmith[peft]'") from None
    if resume_dir is not None:
        return PeftModel.from_pretrained(model, resume_dir, is_trainable=True)
    lora = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules="all-linear",
        task_type="SEQ_CLS" if cfg.algorithm == "rm" else "CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def _optimizer(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]  # norms and biases are not decayed
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2))


def lr_lambda(step: int, total: int, warmup: int, kind: str) -> float:
    """Linear warmup to 1, then cosine or linear decay to 0 at `total` (or constant)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress


# ------------------------------------------------------------------------------------------------ reference
def _reference_logps(cfg: TrainConfig, algo, examples: list[dict], tokenizer, d: Dist, what: str, info: dict,
                     initial_policy=None):
    """(N, len(algo.ref_keys)) summed reference log-probs, from the disk cache or one pass of the reference.

    `initial_policy` is the freshly loaded, not yet trained policy: when the reference is the policy's own
    starting point it is scored with that model instead of loading a second copy."""
    if not examples:
        return torch.zeros(0, len(algo.ref_keys))
    ref_path = cfg.ref_model or cfg.model
    cache_dir = Path(cfg.ref_cache_dir) if cfg.ref_cache_dir else ref_cache.default_cache_dir()
    feats = [{f"{k}_{key}": e[k][key] for k in algo.ref_keys for key in ("input_ids", "loss_mask")} for e in examples]
    data_hash = ref_cache.features_hash(feats, tuple(feats[0]))
    key = ref_cache.cache_key(ref_cache.model_fingerprint(ref_path), data_hash, cfg.dtype, algo.name)
    found = [ref_cache.load_cached(cache_dir, key) if d.main else None]
    if d.world > 1:
        dist.broadcast_object_list(found, src=0)
    values = found[0]
    if values is not None and tuple(values.shape) == (len(examples), len(algo.ref_keys)):
        _log(d, f"{what}: reference log-probs loaded from cache {cache_dir / key}.pt")
        info[what] = {"key": key, "hit": True, "forward_passes": 0}
        return values
    _log(d, f"{what}: computing reference log-probs for {len(examples)} examples with {ref_path}")
    model = initial_policy if initial_policy is not None else _load_model(ref_path, cfg, tokenizer, for_rm=False)
    model = model.to(d.device).eval()
    mine = list(range(d.rank, len(examples), d.world))
    mine.sort(key=lambda i: examples[i]["length"])
    bs = max(1, cfg.batch_size // (d.world * cfg.grad_accum))
    local: dict[int, list[float]] = {}
    passes = 0
    with torch.no_grad(), _autocast(cfg, d.device):
        for start in range(0, len(mine), bs):
            idx = mine[start : start + bs]
            cols = []
            for k in algo.ref_keys:
                batch = collate([examples[i][k] for i in idx], tokenizer.pad_token_id)
                logps, _ = sequence_logps(model, {n: t.to(d.device) for n, t in batch.items()})
                cols.append(logps.float().cpu())
                passes += 1
            for j, i in enumerate(idx):
                local[i] = [float(c[j]) for c in cols]
    del model  # the caller keeps the policy; a separately loaded reference is freed here
    gathered = [local]
    if d.world > 1:
        gathered = [None] * d.world
        dist.all_gather_object(gathered, local)
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


def _kto_step_kl(model, algo, examples, ref, mine: list[int], ctx: StepContext, d: Dist) -> torch.Tensor:
    with _autocast(ctx.cfg, ctx.device):
        stats = algo.kl_stats(model, [examples[i] for i in mine], ref[mine] if mine else ref[:0], ctx)
    total = _reduce_stats(stats, ("kl",), d).sums.get("kl", [0.0, 0.0])
    return torch.tensor(total[0] / total[1] if total[1] else 0.0)


def evaluate(model, algo, examples: list[dict], ref, ctx: StepContext, d: Dist) -> dict[str, float]:
    """Held-out metrics over all eval examples (fixed length-sorted order, split across processes)."""
    if not examples:
        return {}
    was_training = model.training
    model.eval()
    per_rank = max(1, ctx.cfg.batch_size // (d.world * ctx.cfg.grad_accum))
    ordered = sorted(range(len(examples)), key=lambda i: examples[i]["length"])
    mine = [i for j, i in enumerate(ordered) if (j // per_rank) % d.world == d.rank]
    stats = Stats()
    with torch.no_grad():
        if algo.name == "kto":
            ctx.kto_kl = _kto_step_kl(model, algo, examples, ref, mine, ctx, d)
        for start in range(0, len(mine), per_rank):
            idx = mine[start : start + per_rank]
            with _autocast(ctx.cfg, ctx.device):
                _, s = algo.loss(model, [examples[i] for i in idx], ref[idx] if ref is not None else None, ctx)
            stats.merge(s)
    model.train(was_training)
    return _reduce_stats(stats, algo.metric_names, d).means()


def _save_final(model, tokenizer, cfg: TrainConfig) -> None:
    out = Path(cfg.output)
    final = model.merge_and_unload() if cfg.lora_r else model
    final.save_pretrained(out)
    tokenizer.save_pretrained(out)
    cfg.save(out / "prefsmith_train.json")


def _prepare_examples(cfg: TrainConfig, tokenizer, d: Dist):
    """Read, split and tokenize the data; returns (algorithm, train examples, eval examples)."""
    train_rows, eval_rows = _split_eval(_read_rows(cfg.data, cfg.algorithm), cfg)
    if cfg.algorithm == "kto":
        _kto_defaults(cfg, train_rows, d)
    algo = make_algorithm(cfg)
    examples = algo.encode(train_rows, tokenizer, cfg, cfg.data)
    eval_examples = algo.encode(eval_rows, tokenizer, cfg, cfg.eval_data or cfg.data) if eval_rows else []
    truncated = sum(any(isinstance(v, dict) and v.get("truncated") for v in e.values()) for e in examples)
    if truncated:
        _log(d, f"{truncated} of {len(examples)} training examples were truncated to --max-length {cfg.max_length}")
    dropped = [i for i, e in enumerate(examples) if e["units"] == 0]
    if dropped:
        _log(d, f"skipping {len(dropped)} examples with no trainable tokens (first: row {dropped[0]})")
        examples = [e for e in examples if e["units"] > 0]
    if not examples:
        raise UserDataError(f"{cfg.data}: no trainable examples")
    return algo, examples, [e for e in eval_examples if e["units"] > 0]


# ------------------------------------------------------------------------------------------------ train
def train(cfg: TrainConfig) -> TrainResult:
    """Run (or resume) one training run; returns final metrics. Call it from every process under torchrun."""
    d = setup_distributed()
    _return_freed_memory(d, first=True)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bar is the one to watch; per-file load bars are noise
    out = Path(cfg.output)
    resume_dir = ckpt.latest_checkpoint(out) if cfg.resume else None
    if not cfg.resume and ckpt.list_checkpoints(out):
        raise UserDataError(f"{out} already holds checkpoints of a run; pass --resume to continue it or choose "
                            "another --output")
    if cfg.resume and resume_dir is None:
        _log(d, f"--resume: no checkpoint in {out / ckpt.CHECKPOINT_DIR}, starting from the beginning")
    if resume_dir is not None:
        _check_resumable(resume_dir, cfg)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)

    tokenizer = _load_tokenizer(cfg.model)
    algo, examples, eval_examples = _prepare_examples(cfg, tokenizer, d)
    model = _load_model(resume_dir if resume_dir and not cfg.lora_r else cfg.model, cfg, tokenizer,
                        for_rm=cfg.algorithm == "rm")
    ref_info: dict = {}
    ref = eval_ref = None
    if algo.ref_keys:
        # Before the first step (and before LoRA wraps it) the policy *is* the default reference.
        same = cfg.ref_model is None and (resume_dir is None or cfg.lora_r)
        ref = _reference_logps(cfg, algo, examples, tokenizer, d, "train", ref_info, model if same else None)
        eval_ref = _reference_logps(cfg, algo, eval_examples, tokenizer, d, "eval", ref_info, model if same else None)
    if cfg.lora_r:
        model = _apply_lora(model, cfg, resume_dir)
    model.to(d.device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _optimizer(model, cfg)

    lengths = [e["length"] for e in examples]
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    warmup = math.ceil(cfg.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, total_steps, warmup, cfg.scheduler))
    state = ckpt.TrainerState()
    if resume_dir is not None:
        state = ckpt.load_training_state(resume_dir, optimizer, scheduler, d.rank)
        _log(d, f"resuming from {resume_dir} (step {state.step} of {total_steps})")
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "prefsmith_train.json")
        atomic_write_json(out / "run_info.json", {
            "world_size": d.world, "device": str(d.device), "examples": len(examples),
            "eval_examples": len(eval_examples), "steps": total_steps, "steps_per_epoch": steps_per_epoch,
            "ref_cache": ref_info, "resumed_from": str(resume_dir) if resume_dir else None})
    log = MetricsLog(out, resume_step=state.step if resume_dir else None) if d.main else None
    ctx = StepContext(cfg=cfg, device=d.device, pad_id=tokenizer.pad_token_id)

    from tqdm import tqdm

    bar = tqdm(total=total_steps, initial=state.step, disable=not (d.main and cfg.progress), desc=f"train {algo.name}",
               file=sys.stderr, dynamic_ncols=True)
    last_train: dict = {}
    last_eval: dict = {}
    if state.step == 0 and eval_examples:  # the "before" point of every held-out curve
        before = evaluate(model, algo, eval_examples, eval_ref, ctx, d)
        if log and before:
            log.write({"split": "eval", "step": 0, **{f"eval/{k}": v for k, v in before.items()}})
    while state.step < total_steps:
        batches = epoch_batches(lengths, cfg, state.epoch)
        while state.batch_in_epoch < len(batches) and state.step < total_steps:
            t0 = time.perf_counter()
            indices = batches[state.batch_in_epoch]
            denom = float(sum(examples[i]["units"] for i in indices))
            micro = _micro_batches(indices, examples, d, cfg.grad_accum)
            if algo.name == "kto":
                ctx.kto_kl = _kto_step_kl(model, algo, examples, ref, [i for m in micro for i in m], ctx, d)
            stats = Stats()
            for idx in micro:
                if not idx:
                    continue
                with _autocast(cfg, d.device):
                    loss_sum, s = algo.loss(model, [examples[i] for i in idx], ref[idx] if ref is not None else None,
                                            ctx)
                (loss_sum / denom).backward()
                stats.merge(s)
            if d.world > 1:
                _all_reduce_grads(params, d)
            max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            _return_freed_memory(d)
            state.step += 1
            state.batch_in_epoch += 1
            state.examples_seen += len(indices)
            reduced = _reduce_stats(stats, algo.metric_names, d).means()
            elapsed = time.perf_counter() - t0
            tokens = sum(len(e["input_ids"]) for i in indices for e in examples[i].values() if isinstance(e, dict))
            last_train = {"split": "train", "step": state.step, "epoch": state.step / steps_per_epoch, **reduced,
                          "grad_norm": grad_norm, "lr": lr, "examples": len(indices), "tokens": tokens,
                          "tokens_per_s": tokens / max(elapsed, 1e-9), "step_time_s": elapsed}
            if log and state.step % cfg.logging_every == 0:
                log.write(last_train)
            bar.update(1)
            bar.set_postfix(loss=f"{reduced.get('loss', float('nan')):.4f}")
            if cfg.eval_every and state.step % cfg.eval_every == 0 and state.step < total_steps:
                last_eval = evaluate(model, algo, eval_examples, eval_ref, ctx, d)
                if log and last_eval:
                    log.write({"split": "eval", "step": state.step, **{f"eval/{k}": v for k, v in last_eval.items()}})
            if cfg.save_every and state.step % cfg.save_every == 0 and state.step < total_steps:
                _checkpoint(model, tokenizer, optimizer, scheduler, state, cfg, d)
        if state.batch_in_epoch >= len(batches):
            state.epoch += 1
            state.batch_in_epoch = 0
    bar.close()

    last_eval = evaluate(model, algo, eval_examples, eval_ref, ctx, d)
    if log and last_eval:
        log.write({"split": "eval", "step": state.step, **{f"eval/{k}": v for k, v in last_eval.items()}})
    if d.main:
        _save_final(model, tokenizer, cfg)
        summary = {"steps": state.step, "train": last_train, "eval": last_eval, "ref_cache": ref_info}
        atomic_write_json(out / "train_result.json", summary, default=float)
        if cfg.plots:
            plot_run(out)
        _log(d, f"done: {state.step} steps; model and tokenizer saved to {out}")
    if d.world > 1:
        dist.barrier()
    return TrainResult(output=out, steps=state.step, train_metrics=last_train, eval_metrics=last_eval,
                       ref_cache_hits={k: v["hit"] for k, v in ref_info.items()})


# Settings that fix which examples each step sees; changing them makes "continue at batch k" meaningless.
_RESUME_INVARIANTS = ("algorithm", "data", "model", "batch_size", "seed", "max_length", "shuffle",
                      "group_by_length", "eval_split", "eval_data", "lora_r")


def _check_resumable(resume_dir: Path, cfg: TrainConfig) -> None:
    saved = json.loads((resume_dir / "prefsmith_train.json").read_text())
    changed = [k for k in _RESUME_INVARIANTS if k in saved and saved[k] != getattr(cfg, k)]
    if changed:
        diffs = ", ".join(f"--{k.replace('_', '-')} {saved[k]!r} -> {getattr(cfg, k)!r}" for k in changed)
        raise UserDataError(f"cannot --resume {resume_dir}: {diffs} changed since the checkpoint (they decide the "
                            "data order); rerun with the original values or start a new --output")


def _checkpoint(model, tokenizer, optimizer, scheduler, state, cfg: TrainConfig, d: Dist) -> None:
    states = [ckpt.rng_state()]
    if d.world > 1:
        states = [None] * d.world
        dist.all_gather_object(states, ckpt.rng_state())
    if d.main:
        ckpt.save_checkpoint(cfg.output, model, tokenizer, optimizer, scheduler, state, states, cfg.to_json(),
                             keep=cfg.save_total_limit)
    if d.world > 1:
        dist.barrier()
