"""Per-algorithm glue between rows, the model and the objectives: sft, dpo (and variants), kto, rm.

Each algorithm says how to turn dataset rows into tokenized examples, which sequences need reference
log-probs, how many loss "units" an example contributes (tokens for SFT, one per pair or row otherwise), and
how to turn a micro-batch into a *summed* loss plus metric sums. The loop divides by the units of the whole
optimizer step (all processes, all accumulation micro-batches), so a step's gradient does not depend on how
the batch was split.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from pipelines.errors import UserError
from trainers import objectives
from trainers.config import TrainConfig
from trainers.data import collate, encode_messages, encode_prompt_completion, kto_mismatched_pairs
from trainers.logprobs import reward_model_scores, sequence_logps


class UserDataError(UserError, ValueError):
    """A row the user must fix; the message names the file, row and column."""


@dataclass
class Stats:
    """Metric sums and counts, reduced across processes by summing, then read as sum / count."""

    sums: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, total: float | torch.Tensor, count: float | torch.Tensor) -> None:
        entry = self.sums.setdefault(name, [0.0, 0.0])
        entry[0] += float(total)
        entry[1] += float(count)

    def merge(self, other: "Stats") -> None:
        for name, (total, count) in other.sums.items():
            self.add(name, total, count)

    def means(self) -> dict[str, float]:
        return {k: (s / c if c else float("nan")) for k, (s, c) in self.sums.items()}


@dataclass
class StepContext:
    """What a loss computation needs besides the model and examples."""

    cfg: TrainConfig
    device: torch.device
    pad_id: int
    kto_kl: torch.Tensor | None = None  # this step's KL estimate (KTO), computed over the whole global step


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


class SFT:
    """Supervised fine-tuning: token-mean NLL of assistant / completion tokens."""

    name = "sft"
    ref_keys: tuple[str, ...] = ()
    metric_names = ("loss", "completion_tokens")

    def encode(self, rows: list[dict], tokenizer, cfg: TrainConfig, source: str) -> list[dict]:
        examples = []
        for i, row in enumerate(rows):
            try:
                if row.get("messages") is not None:
                    feat = encode_messages(tokenizer, row["messages"], cfg.max_length)
                elif row.get("prompt") is not None and row.get("completion") is not None:
                    feat = encode_prompt_completion(tokenizer, row["prompt"], row["completion"], cfg.max_length)
                else:
                    raise ValueError("needs a 'messages' column, or 'prompt' and 'completion'")
            except ValueError as e:
                raise _row_error(source, i, e) from None
            examples.append({"seq": feat, "length": len(feat["input_ids"]), "units": _n_loss_tokens(feat)})
        return examples

    def loss(self, model, examples: list[dict], ref: torch.Tensor | None, ctx: StepContext):
        batch = _to(collate([e["seq"] for e in examples], ctx.pad_id), ctx.device)
        logps, n_tokens = sequence_logps(model, batch)
        loss_sum = -logps.sum()
        stats = Stats()
        stats.add("loss", loss_sum.detach(), n_tokens.sum())
        stats.add("completion_tokens", n_tokens.sum(), len(examples))
        return loss_sum, stats


class DPO:
    """DPO and variants (sigmoid, ipo, hinge, robust, dpop; reference-free simpo and orpo)."""

    name = "dpo"
    metric_names = (
        "loss", "logps/chosen", "logps/rejected", "rewards/chosen", "rewards/rejected", "rewards/margins",
        "rewards/accuracies",
    )

    def __init__(self, cfg: TrainConfig) -> None:
        self.ref_keys = ("chosen", "rejected") if cfg.uses_reference else ()
        if cfg.loss == "orpo":
            self.metric_names = self.metric_names + ("log_odds_ratio",)

    def encode(self, rows: list[dict], tokenizer, cfg: TrainConfig, source: str) -> list[dict]:
        examples = []
        for i, row in enumerate(rows):
            try:
                chosen = encode_prompt_completion(tokenizer, row["prompt"], row["chosen"], cfg.max_length)
                rejected = encode_prompt_completion(tokenizer, row["prompt"], row["rejected"], cfg.max_length)
            except (ValueError, KeyError) as e:
                raise _row_error(source, i, e) from None
            length = max(len(chosen["input_ids"]), len(rejected["input_ids"]))
            examples.append({"chosen": chosen, "rejected": rejected, "length": length, "units": 1})
        return examples

    def loss(self, model, examples: list[dict], ref: torch.Tensor | None, ctx: StepContext):
        cfg, n = ctx.cfg, len(examples)
        logps, n_tokens = sequence_logps(model, _pair_batch(examples, ctx))
        chosen, rejected = logps[:n], logps[n:]
        n_chosen, n_rejected = n_tokens[:n], n_tokens[n:]
        beta = cfg.effective_beta
        stats = Stats()
        if cfg.loss in ("simpo", "orpo"):
            chosen_avg, rejected_avg = chosen / n_chosen.clamp(min=1), rejected / n_rejected.clamp(min=1)
            if cfg.loss == "simpo":
                losses, r_chosen, r_rejected = objectives.simpo_loss(chosen_avg, rejected_avg, beta, cfg.simpo_gamma)
            else:
                losses, log_odds = objectives.orpo_loss(chosen_avg, rejected_avg, -chosen_avg, lam=beta)
                r_chosen, r_rejected = beta * chosen_avg.detach(), beta * rejected_avg.detach()
                stats.add("log_odds_ratio", log_odds.sum(), n)
        else:
            ref = ref.to(ctx.device)
            losses, r_chosen, r_rejected = objectives.dpo_loss(
                chosen, rejected, ref[:, 0], ref[:, 1], beta=beta,
                loss_type="sigmoid" if cfg.loss == "dpop" else cfg.loss,
                label_smoothing=cfg.label_smoothing,
                dpop_lambda=cfg.dpop_lambda if cfg.loss == "dpop" else 0.0,
                chosen_n_tokens=n_chosen, rejected_n_tokens=n_rejected,
            )
        loss_sum = losses.sum()
        stats.add("loss", loss_sum.detach(), n)
        stats.add("logps/chosen", chosen.detach().sum(), n)
        stats.add("logps/rejected", rejected.detach().sum(), n)
        stats.add("rewards/chosen", r_chosen.sum(), n)
        stats.add("rewards/rejected", r_rejected.sum(), n)
        stats.add("rewards/margins", (r_chosen - r_rejected).sum(), n)
        stats.add("rewards/accuracies", (r_chosen > r_rejected).sum(), n)
        return loss_sum, stats


class KTO:
    """KTO on unpaired rows (prompt, completion, label). The KL reference point z0 is estimated over the
    whole optimizer step from mismatched (prompt, completion) pairs, fixed per dataset (see encode)."""

    name = "kto"
    ref_keys = ("completion", "kl")
    metric_names = (
        "loss", "kl", "logps/chosen", "logps/rejected", "rewards/chosen", "rewards/rejected", "rewards/margins",
        "rewards/accuracies", "desirable_fraction",
    )

    def encode(self, rows: list[dict], tokenizer, cfg: TrainConfig, source: str) -> list[dict]:
        if len(rows) < 2:
            raise UserDataError(f"{source}: KTO needs at least 2 rows (the KL estimate pairs a prompt with "
                                "another row's completion)")
        # Mismatched pairs are drawn once per dataset, over a seeded shuffle, so their reference log-probs
        # can be cached like the rest: row i's prompt with a completion from another random row.
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
        rotated = kto_mismatched_pairs([{"prompt": rows[i]["prompt"], "completion": rows[i]["completion"]}
                                        for i in order])
        kl_rows = [None] * len(rows)
        for pos, i in enumerate(order):
            kl_rows[i] = rotated[pos]
        examples = []
        for i, row in enumerate(rows):
            label = row.get("label")
            if not isinstance(label, bool):
                raise UserDataError(f"{source}: row {i}: column 'label' must be true or false, got {label!r}")
            try:
                feat = encode_prompt_completion(tokenizer, row["prompt"], row["completion"], cfg.max_length)
                kl = encode_prompt_completion(tokenizer, kl_rows[i]["prompt"], kl_rows[i]["completion"], cfg.max_length)
            except (ValueError, KeyError) as e:
                raise _row_error(source, i, e) from None
            examples.append({"completion": feat, "kl": kl, "label": label, "units": 1,
                             "length": max(len(feat["input_ids"]), len(kl["input_ids"]))})
        return examples

    def kl_stats(self, model, examples: list[dict], ref: torch.Tensor, ctx: StepContext) -> Stats:
        """Sum of policy − reference log-ratios on this process's mismatched pairs (no gradient, as in the
        paper and TRL); the loop sums these over processes before the loss is computed."""
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
        kl = ctx.kto_kl.to(ctx.device).view(1)
        losses, rewards, kl_used = objectives.kto_loss(
            logps, ref[:, 0], labels, kl, torch.zeros_like(kl), beta=cfg.effective_beta,
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


class RewardModel:
    """Bradley–Terry reward model on preference pairs, or on K-way rankings (`completions` + `ranking`),
    where a ranking's C(K, 2) pairs share one example's weight (InstructGPT)."""

    name = "rm"
    ref_keys: tuple[str, ...] = ()
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


def make_algorithm(cfg: TrainConfig) -> Any:
    """The algorithm object for `cfg.algorithm` (plain name → class map for the CLI)."""
    if cfg.algorithm == "dpo":
        return DPO(cfg)
    return {"sft": SFT, "kto": KTO, "rm": RewardModel}[cfg.algorithm]()


REQUIRED_COLUMNS = {"sft": (), "dpo": ("prompt", "chosen", "rejected"), "kto": ("prompt", "completion", "label"),
                    "rm": ("prompt",)}
