"""Per-algorithm glue between rows, the model and the objectives: sft, dpo (and its loss types), kto, rm, prm.

An algorithm is an `Algorithm` subclass under `@register_algorithm`, and that is the one place a new one is
added: config validation, the CLI's choices and the loop all read `ALGORITHMS`. The class declares its name,
the columns it reads, its default learning rate and which sequences need reference log-probs; `encode` turns
rows into tokenized examples (each with a `length` and the loss "units" it contributes: tokens for SFT, one
per pair or row otherwise) and `loss` turns a micro-batch into a *summed* loss plus metric sums. The loop
divides by the units of the whole optimizer step (all processes, all accumulation micro-batches), so a step's
gradient does not depend on how the batch was split. The hooks are no-ops unless an algorithm needs them (KTO:
class weights from the manifest, and the step's KL estimate before its losses).

A DPO loss type (`--loss`) is one function under `@register_dpo_loss`; see docs/training.md.
"""
from __future__ import annotations

import functools

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from pipelines.errors import UserError
from trainers.offline import objectives
from trainers.offline.config import TrainConfig
from trainers.core.data import (collate, encode_completion, encode_messages, encode_prompt_completion,
                                kto_mismatched_pairs)
from trainers.core.distributed import Dist, reduce_stats
from trainers.core.logprobs import reward_model_scores, sequence_logps
from trainers.core.metrics import Stats


class UserDataError(UserError, ValueError):
    """A row the user must fix; the message names the file, row and column."""


@dataclass
class StepContext:
    """What a loss computation needs besides the model and examples."""

    cfg: TrainConfig
    device: torch.device
    pad_id: int


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def _pair_batch(examples: list[dict], ctx: StepContext) -> dict[str, torch.Tensor]:
    """Chosen and rejected sequences in one padded batch (one forward pass for both halves)."""
    feats = [e["chosen"] for e in examples] + [e["rejected"] for e in examples]
    return _to(collate(feats, ctx.pad_id), ctx.device)


def _row_error(source: str, index: int, err: Exception) -> UserDataError:
    return UserDataError(f"{source}: row {index}: {err}")


def _n_loss_tokens(feat: dict) -> int:
    return int(sum(feat["loss_mask"][1:]))


def _context_differs(row: dict, *feats: dict) -> bool:
    """Whether a row built from rollouts tokenizes its prompt to other ids than the ones the engine continued
    from (`prompt_token_ids`, docs/builders.md): a tokenizer or chat template other than the sampler's. The loop
    counts these and warns; rows without the column, and truncated prompts, are not compared."""
    want = row.get("prompt_token_ids")
    if want is None:
        return False
    for f in feats:
        mask = f["loss_mask"]
        if not f["truncated"] and f["input_ids"][:mask.index(1) if 1 in mask else len(mask)] != list(want):
            return True
    return False


# ------------------------------------------------------------------------------------------------ the seam
class Algorithm:
    """What the loop asks of an algorithm. Subclasses set the class attributes and write `encode` and `loss`;
    the hooks default to doing nothing."""

    name: str  # `prefsmith train NAME`; also part of the reference log-prob cache key
    default_lr: float  # the CLI's --lr default
    metric_names: tuple[str, ...]  # every metric `loss` reports, in the order metrics.jsonl lists them
    required_columns: tuple[str, ...] = ()  # checked when the data is read
    ref_keys: tuple[str, ...] = ()  # example keys whose reference log-probs `loss` receives, in this order
    reward_head: bool = False  # train a scalar score head (sequence classification) instead of the LM head
    token_head: bool = False  # train a 2-label token-classification head (a process reward model)

    def __init__(self, cfg: TrainConfig) -> None:
        """Called once per run, with a config that passed `check_config`."""

    @classmethod
    def check_config(cls, cfg: TrainConfig) -> None:
        """Raise ValueError for a setting this algorithm cannot use (the module's `check_config` calls it)."""

    def prepare(self, cfg: TrainConfig, rows: list[dict], log: Callable[[str], None]) -> None:
        """Fill data-dependent defaults into `cfg` from the training rows, before they are encoded."""

    def encode(self, rows: list[dict], tokenizer, cfg: TrainConfig, source: str) -> list[dict]:
        raise NotImplementedError

    def loss(self, model, examples: list[dict], ref: torch.Tensor | None,
             ctx: StepContext) -> tuple[torch.Tensor, Stats]:
        """(summed loss, metric sums) of one micro-batch; `ref` is (len(examples), len(ref_keys)) or None."""
        raise NotImplementedError

    def before_step(self, model, examples: list[dict], indices: list[int], ref: torch.Tensor | None,
                    ctx: StepContext, d: Dist) -> None:
        """On every process, before an optimizer step's losses: `indices` are this process's share of the step
        (into `examples`, rows of `ref`). Runs under the loss's autocast; reduce over processes with `d`."""

    def before_eval(self, model, examples: list[dict], indices: list[int], ref: torch.Tensor | None,
                    ctx: StepContext, d: Dist) -> None:
        """As `before_step`, before the held-out losses (under no_grad); `indices` are this process's share."""


ALGORITHMS: dict[str, type[Algorithm]] = {}


def register_algorithm(cls: type[Algorithm]) -> type[Algorithm]:
    """Class decorator: `cls` trains as `prefsmith train <cls.name>` (also under `train(TrainConfig(...))`)."""
    if cls.name in ALGORITHMS:
        raise ValueError(f"algorithm {cls.name!r} is already registered ({ALGORITHMS[cls.name].__qualname__})")
    ALGORITHMS[cls.name] = cls
    return cls


def check_config(cfg: TrainConfig) -> None:
    """Raise ValueError when `cfg` names no registered algorithm, or a setting its algorithm (its DPO loss type)
    cannot use. TrainConfig checks only what needs no registry; `make_algorithm` and the CLI call this before
    any work."""
    if cfg.algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {cfg.algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
    ALGORITHMS[cfg.algorithm].check_config(cfg)


def make_algorithm(cfg: TrainConfig) -> Algorithm:
    """The algorithm object for `cfg.algorithm`, after `check_config(cfg)`."""
    check_config(cfg)
    return ALGORITHMS[cfg.algorithm](cfg)


# ------------------------------------------------------------------------------------------------ DPO loss types
@dataclass(frozen=True)
class Pairs:
    """A micro-batch of (chosen, rejected) pairs as a DPO loss type sees it: summed policy log-probs and
    completion token counts, and the reference's summed log-probs (None for a reference-free type). All (B,)."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor
    ref_chosen: torch.Tensor | None = None
    ref_rejected: torch.Tensor | None = None

    @property
    def chosen_avg(self) -> torch.Tensor:
        return self.chosen / self.chosen_tokens.clamp(min=1)

    @property
    def rejected_avg(self) -> torch.Tensor:
        return self.rejected / self.rejected_tokens.clamp(min=1)


PairLossFn = Callable[[Pairs, float, TrainConfig], tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]]


@dataclass(frozen=True)
class DPOLossType:
    fn: PairLossFn  # (pairs, beta, cfg) -> (losses, chosen rewards, rejected rewards, {metric: per-pair values})
    reference: bool = True  # needs reference log-probs (False: `--no-reference` allowed, no reference pass)
    default_beta: float = 0.1  # β when --beta is not given
    metrics: tuple[str, ...] = ()  # the extra per-pair metrics `fn` returns, logged after the common ones


DPO_LOSSES: dict[str, DPOLossType] = {}


def register_dpo_loss(name: str, *, reference: bool = True, default_beta: float = 0.1,
                      metrics: tuple[str, ...] = ()) -> Callable[[PairLossFn], PairLossFn]:
    """Decorator: `fn` becomes `prefsmith train dpo --loss NAME` (the one place a loss type is added)."""

    def add(fn: PairLossFn) -> PairLossFn:
        if name in DPO_LOSSES:
            raise ValueError(f"DPO loss type {name!r} is already registered")
        DPO_LOSSES[name] = DPOLossType(fn, reference, default_beta, tuple(metrics))
        return fn

    return add


def _dpo_loss(p: Pairs, beta: float, cfg: TrainConfig, loss_type: str, dpop_lambda: float = 0.0):
    losses, r_chosen, r_rejected = objectives.dpo_loss(
        p.chosen, p.rejected, p.ref_chosen, p.ref_rejected, beta=beta, loss_type=loss_type,
        label_smoothing=cfg.label_smoothing, dpop_lambda=dpop_lambda,
        chosen_n_tokens=p.chosen_tokens, rejected_n_tokens=p.rejected_tokens,
    )
    return losses, r_chosen, r_rejected, {}


# the four variants objectives.dpo_loss computes itself, one registration each
for _kind in ("sigmoid", "ipo", "hinge", "robust"):
    register_dpo_loss(_kind)(functools.partial(_dpo_loss, loss_type=_kind))


@register_dpo_loss("simpo", reference=False, default_beta=2.0)
def _simpo(p: Pairs, beta: float, cfg: TrainConfig):
    losses, r_chosen, r_rejected = objectives.simpo_loss(p.chosen_avg, p.rejected_avg, beta, cfg.simpo_gamma)
    return losses, r_chosen, r_rejected, {}


@register_dpo_loss("orpo", reference=False, metrics=("log_odds_ratio",))
def _orpo(p: Pairs, beta: float, cfg: TrainConfig):
    chosen_avg, rejected_avg = p.chosen_avg, p.rejected_avg
    losses, log_odds = objectives.orpo_loss(chosen_avg, rejected_avg, -chosen_avg, lam=beta)
    return losses, beta * chosen_avg.detach(), beta * rejected_avg.detach(), {"log_odds_ratio": log_odds}


@register_dpo_loss("dpop")
def _dpop(p: Pairs, beta: float, cfg: TrainConfig):
    return _dpo_loss(p, beta, cfg, "sigmoid", dpop_lambda=cfg.dpop_lambda)


# ------------------------------------------------------------------------------------------------ algorithms
@register_algorithm
class SFT(Algorithm):
    """Supervised fine-tuning: token-mean NLL of assistant / completion tokens."""

    name = "sft"
    default_lr = 2e-5  # TRL's
    metric_names = ("loss", "completion_tokens")

    def encode(self, rows: list[dict], tokenizer, cfg: TrainConfig, source: str) -> list[dict]:
        examples = []
        for i, row in enumerate(rows):
            try:
                if row.get("prompt") is not None and row.get("completion_ids") is not None \
                        and row.get("completion_mask") is not None:  # a trajectory: its policy tokens only
                    feat = encode_completion(tokenizer, row, "completion", cfg.max_length)
                elif row.get("messages") is not None:
                    feat = encode_messages(tokenizer, row["messages"], cfg.max_length)
                elif row.get("prompt") is not None and row.get("completion") is not None:
                    feat = encode_prompt_completion(tokenizer, row["prompt"], row["completion"], cfg.max_length)
                else:
                    raise ValueError("needs a 'messages' column, or 'prompt' and 'completion'")
            except ValueError as e:
                raise _row_error(source, i, e) from None
            examples.append({"seq": feat, "length": len(feat["input_ids"]), "units": _n_loss_tokens(feat),
                             "context_differs": _context_differs(row, feat)})
        return examples

    def loss(self, model, examples: list[dict], ref: torch.Tensor | None, ctx: StepContext):
        batch = _to(collate([e["seq"] for e in examples], ctx.pad_id), ctx.device)
        logps, n_tokens = sequence_logps(model, batch)
        loss_sum = -logps.sum()
        stats = Stats()
        stats.add("loss", loss_sum.detach(), n_tokens.sum())
        stats.add("completion_tokens", n_tokens.sum(), len(examples))
        return loss_sum, stats


@register_algorithm
class DPO(Algorithm):
    """DPO and its loss types (`--loss`, registered in DPO_LOSSES): sigmoid, ipo, hinge, robust, dpop, and the
    reference-free simpo and orpo."""

    name = "dpo"
    default_lr = 1e-6  # TRL's
    required_columns = ("prompt", "chosen", "rejected")
    metric_names = (
        "loss", "logps/chosen", "logps/rejected", "rewards/chosen", "rewards/rejected", "rewards/margins",
        "rewards/accuracies",
    )

    @classmethod
    def check_config(cls, cfg: TrainConfig) -> None:
        if cfg.loss not in DPO_LOSSES:
            raise ValueError(f"--loss {cfg.loss!r} is not a DPO loss; choose one of {', '.join(DPO_LOSSES)}")
        if cfg.no_reference and DPO_LOSSES[cfg.loss].reference:
            free = ", ".join(n for n, t in DPO_LOSSES.items() if not t.reference)
            raise ValueError(f"--no-reference only works with reference-free losses ({free}); "
                             f"--loss {cfg.loss} needs a reference model")

    def __init__(self, cfg: TrainConfig) -> None:
        self.loss_type = DPO_LOSSES[cfg.loss]
        self.beta = cfg.beta if cfg.beta is not None else self.loss_type.default_beta
        self.ref_keys = ("chosen", "rejected") if self.loss_type.reference else ()
        self.metric_names = DPO.metric_names + self.loss_type.metrics

    def encode(self, rows: list[dict], tokenizer, cfg: TrainConfig, source: str) -> list[dict]:
        examples = []
        for i, row in enumerate(rows):
            try:
                chosen = encode_completion(tokenizer, row, "chosen", cfg.max_length)
                rejected = encode_completion(tokenizer, row, "rejected", cfg.max_length)
            except (ValueError, KeyError) as e:
                raise _row_error(source, i, e) from None
            length = max(len(chosen["input_ids"]), len(rejected["input_ids"]))
            examples.append({"chosen": chosen, "rejected": rejected, "length": length, "units": 1,
                             "context_differs": _context_differs(row, chosen, rejected)})
        return examples

    def loss(self, model, examples: list[dict], ref: torch.Tensor | None, ctx: StepContext):
        n = len(examples)
        logps, n_tokens = sequence_logps(model, _pair_batch(examples, ctx))
        chosen, rejected = logps[:n], logps[n:]
        ref_chosen = ref_rejected = None
        if ref is not None:
            ref = ref.to(ctx.device)
            ref_chosen, ref_rejected = ref[:, 0], ref[:, 1]
        pairs = Pairs(chosen, rejected, n_tokens[:n], n_tokens[n:], ref_chosen, ref_rejected)
        losses, r_chosen, r_rejected, extra = self.loss_type.fn(pairs, self.beta, ctx.cfg)
        stats = Stats()
        for name, values in extra.items():
            stats.add(name, values.sum(), n)
        loss_sum = losses.sum()
        stats.add("loss", loss_sum.detach(), n)
        stats.add("logps/chosen", chosen.detach().sum(), n)
        stats.add("logps/rejected", rejected.detach().sum(), n)
        stats.add("rewards/chosen", r_chosen.sum(), n)
        stats.add("rewards/rejected", r_rejected.sum(), n)
        stats.add("rewards/margins", (r_chosen - r_rejected).sum(), n)
        stats.add("rewards/accuracies", (r_chosen > r_rejected).sum(), n)
        return loss_sum, stats


@register_algorithm
class KTO(Algorithm):
    """KTO on unpaired rows (prompt, completion, label). The KL reference point z0 is estimated over the
    whole optimizer step from mismatched (prompt, completion) pairs, fixed per dataset (see encode)."""

    name = "kto"
    default_lr = 1e-6  # TRL's
    required_columns = ("prompt", "completion", "label")
    ref_keys = ("completion", "kl")
    metric_names = (
        "loss", "kl", "logps/chosen", "logps/rejected", "rewards/chosen", "rewards/rejected", "rewards/margins",
        "rewards/accuracies", "desirable_fraction",
    )

    @classmethod
    def check_config(cls, cfg: TrainConfig) -> None:
        if cfg.no_reference:
            raise ValueError("KTO needs a reference model; drop --no-reference")

    def __init__(self, cfg: TrainConfig) -> None:
        self.beta = cfg.beta if cfg.beta is not None else 0.1
        self.step_kl = torch.zeros(())  # the KL estimate of the current step (or evaluation), from before_step

    def prepare(self, cfg: TrainConfig, rows: list[dict], log: Callable[[str], None]) -> None:
        """Class weights: the dataset manifest's recommendation unless given; warn outside the paper's
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
                log(f"warning: KTO class balance λ_D·n_D/(λ_U·n_U) = {ratio:.2f} is outside [1, 4/3] "
                    f"({n_d} desirable, {n_u} undesirable); consider --desirable-weight/--undesirable-weight")

    def encode(self, rows: list[dict], tokenizer, cfg: TrainConfig, source: str) -> list[dict]:
        if len(rows) < 2:
            raise UserDataError(f"{source}: KTO needs at least 2 rows (the KL estimate pairs a prompt with "
                                "another row's completion)")
        # Mismatched pairs are drawn once per dataset, over a seeded shuffle, so their reference log-probs
        # can be cached like the rest: row i's prompt with a completion from another random row.
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
        side = ("completion", "completion_ids", "completion_mask")  # a trajectory's ids move with its text
        rotated = kto_mismatched_pairs([{"prompt": rows[i].get("prompt"), "prompt_token_ids": rows[i].get(
            "prompt_token_ids"), "completion": tuple(rows[i].get(k) for k in side)} for i in order])
        rotated = [{**r, **dict(zip(side, r["completion"]))} for r in rotated]
        kl_rows = [None] * len(rows)
        for pos, i in enumerate(order):
            kl_rows[i] = rotated[pos]
        examples = []
        for i, row in enumerate(rows):
            label = row.get("label")
            if not isinstance(label, bool):
                raise UserDataError(f"{source}: row {i}: column 'label' must be true or false, got {label!r}")
            try:
                feat = encode_completion(tokenizer, row, "completion", cfg.max_length)
                kl = encode_completion(tokenizer, kl_rows[i], "completion", cfg.max_length)
            except (ValueError, KeyError) as e:
                raise _row_error(source, i, e) from None
            examples.append({"completion": feat, "kl": kl, "label": label, "units": 1,
                             "context_differs": _context_differs(row, feat),
                             "length": max(len(feat["input_ids"]), len(kl["input_ids"]))})
        return examples

    def before_step(self, model, examples: list[dict], indices: list[int], ref: torch.Tensor | None,
                    ctx: StepContext, d: Dist) -> None:
        """z0's estimate for this step: the mean log-ratio on the mismatched pairs of the whole step (every
        process's share, summed over processes), so it does not depend on the batch split."""
        stats = self.kl_stats(model, [examples[i] for i in indices], ref[indices] if indices else ref[:0], ctx)
        total = reduce_stats(stats, ("kl",), d).sums.get("kl", [0.0, 0.0])
        self.step_kl = torch.tensor(total[0] / total[1] if total[1] else 0.0)

    before_eval = before_step  # held-out metrics use the held-out set's own estimate

    def kl_stats(self, model, examples: list[dict], ref: torch.Tensor, ctx: StepContext) -> Stats:
        """Sum of policy − reference log-ratios on this process's mismatched pairs (no gradient, as in the
        paper and TRL); `before_step` sums these over processes before the loss is computed."""
        stats = Stats()
        if examples:
            with torch.no_grad():
                batch = _to(collate([e["kl"] for e in examples], ctx.pad_id), ctx.device)
                logps, _ = sequence_logps(model, batch)
            stats.add("kl", (logps.float() - ref[:, 1].to(ctx.device)).sum(), len(examples))
        return stats

    def loss(self, model, examples: list[dict], ref: torch.Tensor | None, ctx: StepContext):
        cfg, n = ctx.cfg, len(examples)
        batch = _to(collate([e["completion"] for e in examples], ctx.pad_id), ctx.device)
        logps, _ = sequence_logps(model, batch)
        labels = torch.tensor([e["label"] for e in examples], device=ctx.device)
        ref = ref.to(ctx.device)
        kl = self.step_kl.to(ctx.device).view(1)
        losses, rewards, kl_used = objectives.kto_loss(
            logps, ref[:, 0], labels, kl, torch.zeros_like(kl), beta=self.beta,
            desirable_weight=cfg.desirable_weight or 1.0, undesirable_weight=cfg.undesirable_weight or 1.0,
        )
        loss_sum = losses.sum()
        des, und = labels, ~labels
        stats = Stats()
        stats.add("loss", loss_sum.detach(), n)
        stats.add("kl", float(kl_used) * n, n)
        stats.add("logps/chosen", logps.detach()[des].sum(), des.sum())
        stats.add("logps/rejected", logps.detach()[und].sum(), und.sum())
        stats.add("rewards/chosen", rewards[des].sum(), des.sum())
        stats.add("rewards/rejected", rewards[und].sum(), und.sum())
        # accuracy for unpaired data: desirable rewards above z0·β, undesirable below
        stats.add("rewards/accuracies", torch.where(labels, rewards > 0, rewards < 0).sum(), n)
        stats.add("desirable_fraction", des.sum(), n)
        return loss_sum, stats


@register_algorithm
class RewardModel(Algorithm):
    """Bradley–Terry reward model on preference pairs, or on K-way rankings (`completions` + `ranking`),
    where a ranking's C(K, 2) pairs share one example's weight (InstructGPT)."""

    name = "rm"
    default_lr = 1e-5  # TRL's
    required_columns = ("prompt",)
    reward_head = True
    metric_names = ("loss", "accuracy", "scores/chosen", "scores/rejected", "scores/margin")

    def encode(self, rows: list[dict], tokenizer, cfg: TrainConfig, source: str) -> list[dict]:
        examples = []
        for i, row in enumerate(rows):
            try:
                if row.get("completions") is not None and row.get("ranking") is not None:
                    ranked = [row["completions"][j] for j in row["ranking"]]
                    pairs = [(ranked[a], ranked[b]) for a, b in objectives.ranking_to_pairs(len(ranked))]
                    margin = None
                elif row.get("chosen") is not None and row.get("rejected") is not None:
                    pairs = [(row["chosen"], row["rejected"])]
                    margin = row.get("margin")
                else:
                    raise ValueError("needs 'chosen' and 'rejected' columns, or 'completions' and 'ranking'")
                weight = 1.0 / len(pairs)
                for good, bad in pairs:
                    chosen = encode_prompt_completion(tokenizer, row["prompt"], good, cfg.max_length)
                    rejected = encode_prompt_completion(tokenizer, row["prompt"], bad, cfg.max_length)
                    length = max(len(chosen["input_ids"]), len(rejected["input_ids"]))
                    examples.append({"chosen": chosen, "rejected": rejected, "length": length, "units": weight,
                                     "margin": float(margin) if margin is not None else 0.0})
            except (ValueError, KeyError, IndexError, TypeError) as e:
                raise _row_error(source, i, e) from None
        return examples

    def loss(self, model, examples: list[dict], ref: torch.Tensor | None, ctx: StepContext):
        n = len(examples)
        scores = reward_model_scores(model, _pair_batch(examples, ctx))
        chosen, rejected = scores[:n], scores[n:]
        margin = torch.tensor([e["margin"] for e in examples], device=ctx.device)
        weight = torch.tensor([e["units"] for e in examples], device=ctx.device)
        losses = objectives.bradley_terry_loss(chosen, rejected, margin)
        if ctx.cfg.rm_center_coef:
            losses = losses + ctx.cfg.rm_center_coef * (chosen + rejected) ** 2  # keeps scores near 0
        loss_sum = (weight * losses).sum()
        stats = Stats()
        stats.add("loss", loss_sum.detach(), weight.sum())
        stats.add("accuracy", (chosen > rejected).sum(), n)
        stats.add("scores/chosen", chosen.detach().sum(), n)
        stats.add("scores/rejected", rejected.detach().sum(), n)
        stats.add("scores/margin", (chosen - rejected).detach().sum(), n)
        return loss_sum, stats



# ------------------------------------------------------------------------------------------------ process rewards
def prm_step_loss(logits: torch.Tensor, targets: torch.Tensor, soft: bool) -> torch.Tensor:
    """Summed loss of a PRM's two-label logits (N, 2) at N step tokens against targets (N,) in [0, 1].

    Hard (Uesato et al. 2022; TRL's PRMTrainer): cross-entropy, -log softmax(logits)[y], y in {0, 1}.
    Soft (`--soft`, Math-Shepherd's soft labels): binary cross-entropy on the MC value s, with the good-step
    probability sigmoid(l_1 - l_0) = softmax(logits)[1]: -[s log p + (1 - s) log(1 - p)].
    """
    if soft:
        return torch.nn.functional.binary_cross_entropy_with_logits(
            (logits[:, 1] - logits[:, 0]).float(), targets.float(), reduction="sum")
    return torch.nn.functional.cross_entropy(logits.float(), targets.long(), reduction="sum")


PRM_POSITIONS = 5  # per-position metrics for steps 1..5, then one bucket for every later step


@register_algorithm
class PRM(Algorithm):
    """A process reward model on stepwise rows (prompt, completions = steps, labels; soft_labels with --soft):
    a token-classification head read at the last token of each step's separator, in TRL's layout
    (rewards/prm.py). The loss is a mean over every labeled step of the optimizer step, as TRL's."""

    name = "prm"
    default_lr = 1e-5  # TRL's PRMConfig
    required_columns = ("prompt", "completions", "labels")
    token_head = True
    _positions = tuple(f"step_{k}" for k in range(1, PRM_POSITIONS + 1)) + (f"step_{PRM_POSITIONS + 1}+",)
    metric_names = ("loss", "accuracy", "labels/good", "predicted/good", "first_error/exact",
                    *(f"accuracy/{p}" for p in _positions))

    @classmethod
    def check_config(cls, cfg: TrainConfig) -> None:
        if cfg.no_reference:
            raise ValueError("--no-reference: train prm uses no reference model anyway; drop the flag")

    def __init__(self, cfg: TrainConfig) -> None:
        self.soft = cfg.prm_soft
        if self.soft:
            self.required_columns = PRM.required_columns + ("soft_labels",)
            self.metric_names = PRM.metric_names + ("soft/mae",)

    def prepare(self, cfg: TrainConfig, rows: list[dict], log: Callable[[str], None]) -> None:
        """The step separator: a prm-label dataset's own unless given (it is saved with the model, so
        `--reward prm:DIR` splits completions the same way), else TRL's default."""
        from pipelines.core.dataset import read_manifest
        from rewards.prm import DEFAULT_SEPARATOR

        if cfg.step_separator is None:
            manifest = (read_manifest(cfg.data) if Path(cfg.data).is_dir() else None) or {}
            config = manifest.get("config", {}) if manifest.get("stage") == "prm-label" else {}
            cfg.step_separator = (config.get("step_sep") if not config.get("step_regex") else None) or DEFAULT_SEPARATOR
            log(f"prm: step separator {cfg.step_separator!r}")

    def encode(self, rows: list[dict], tokenizer, cfg: TrainConfig, source: str) -> list[dict]:
        from rewards.prm import step_inputs

        examples = []
        for i, row in enumerate(rows):
            steps, labels = row.get("completions"), row.get("labels")
            targets = row.get("soft_labels") if self.soft else labels
            try:
                if not isinstance(steps, list) or not isinstance(labels, list) or len(steps) != len(labels):
                    raise ValueError("'completions' and 'labels' must be lists of the same length (one per step)")
                if any(not isinstance(x, bool) for x in labels):
                    raise ValueError("'labels' must hold true/false for every step (prm-label leaves unlabelable "
                                     "rows in unlabeled/)")
                if self.soft and (not isinstance(targets, list) or len(targets) != len(steps)
                                  or any(t is None or not 0.0 <= t <= 1.0 for t in targets)):
                    raise ValueError("--soft needs 'soft_labels' in [0, 1] for every step; binary-search rows "
                                     "leave steps it did not evaluate null: label those with --method mc")
                ids, positions = step_inputs(tokenizer, row["prompt"], steps, cfg.step_separator)
            except ValueError as e:
                raise _row_error(source, i, e) from None
            limit = cfg.max_length or len(ids)
            kept = [j for j, pos in enumerate(positions) if pos < limit]  # TRL truncates the same way
            seq = {"input_ids": ids[:limit], "positions": [positions[j] for j in kept],
                   "targets": [float(targets[j]) for j in kept], "labels": [bool(labels[j]) for j in kept],
                   "step_index": kept, "truncated": len(ids) > limit}
            examples.append({"seq": seq, "length": len(seq["input_ids"]), "units": len(kept)})
        return examples

    def loss(self, model, examples: list[dict], ref: torch.Tensor | None, ctx: StepContext):
        seqs = [e["seq"] for e in examples]
        width = max(len(s["input_ids"]) for s in seqs)
        ids = torch.tensor([s["input_ids"] + [ctx.pad_id] * (width - len(s["input_ids"])) for s in seqs])
        mask = torch.tensor([[1] * len(s["input_ids"]) + [0] * (width - len(s["input_ids"])) for s in seqs])
        logits = model(input_ids=ids.to(ctx.device), attention_mask=mask.to(ctx.device)).logits
        rows = torch.tensor([r for r, s in enumerate(seqs) for _ in s["positions"]], device=ctx.device)
        cols = torch.tensor([p for s in seqs for p in s["positions"]], device=ctx.device)
        picked = logits[rows, cols]  # (N steps, 2)
        targets = torch.tensor([t for s in seqs for t in s["targets"]], device=ctx.device)
        loss_sum = prm_step_loss(picked, targets, self.soft)
        labels = torch.tensor([y for s in seqs for y in s["labels"]], device=ctx.device)
        good = picked.detach().float().softmax(-1)[:, 1]
        hit = (good > 0.5) == labels
        n = len(labels)
        stats = Stats()
        stats.add("loss", loss_sum.detach(), n)
        stats.add("accuracy", hit.sum(), n)
        stats.add("labels/good", labels.sum(), n)
        stats.add("predicted/good", (good > 0.5).sum(), n)
        if self.soft:
            stats.add("soft/mae", (good - targets).abs().sum(), n)
        steps = [j for s in seqs for j in s["step_index"]]
        for k, name in enumerate(self._positions):
            at = torch.tensor([j == k if k < PRM_POSITIONS else j >= k for j in steps], device=ctx.device)
            stats.add(f"accuracy/{name}", hit[at].sum(), at.sum())
        # first error: the first step predicted bad equals the first step labeled bad (or neither has one)
        start, exact = 0, 0
        for s in seqs:
            m = len(s["labels"])
            want = next((j for j in range(m) if not s["labels"][j]), None)
            got = next((j for j in range(m) if not bool(good[start + j] > 0.5)), None)
            exact += want == got
            start += m
        stats.add("first_error/exact", exact, len(seqs))
        return loss_sum, stats
