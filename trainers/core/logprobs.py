"""Log-probabilities of the loss-masked tokens of a padded batch, and reward-model scores.

A batch is what ``data.collate`` returns: ``input_ids``, ``attention_mask`` (0 on padding) and
``loss_mask`` (1 on trained tokens), all (B, T). Position ids are computed from the attention mask, so
left- and right-padded copies of the same rows give the same log-probs.

The vocabulary projection runs only at the scored positions, ``CHUNK_TOKENS`` of them at a time, forward and
backward: the (scored tokens × vocabulary) fp32 logits, the largest tensors of an RL step, are never held whole
(bench/logprobs_memory.py measures it).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# Scored positions projected onto the vocabulary at once: one (512, V) fp32 block is 96 MiB for V = 49152.
# Measured (bench/logprobs_memory.py): 256 saves no more memory and runs slower, 1024 and 2048 keep more.
CHUNK_TOKENS = 512


def _position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


# Config fields of models whose forward does more to the logits than the output projection.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def _sharded(model) -> bool:
    """A model sharded by FSDP (trainers/core/fsdp.py): its root forward is what gathers the embeddings and heads, so it
    is called whole, never through its submodules."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _decoder_and_head(model):
    """(decoder, lm_head) when logits are exactly `lm_head(decoder(...).last_hidden_state)`, else None.

    The head is a plain ``nn.Linear`` (projected by ``_LinearLogps``) or a module wrapping one, such as a peft
    LoRA layer on the lm_head (called chunk by chunk under checkpointing)."""
    cfg = getattr(model, "config", None)
    if cfg is None or any(getattr(cfg, name, None) not in (None, 1, 1.0) for name in _LOGIT_TRANSFORMS):
        return None
    try:
        decoder, head = model.get_decoder(), model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if decoder is None or not isinstance(head, torch.nn.Module):
        return None
    return decoder, head


def _upcast(logits: torch.Tensor) -> torch.Tensor:
    """Logits in fp32 (bf16/fp16/fp32 models) or fp64 (a float64 model, as tests use): softmax never runs narrower."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def _score(logits: torch.Tensor, targets: torch.Tensor, with_entropy: bool):
    """(log p(target), logsumexp, entropy or None), each (n,), from upcast logits (n, V).

    The log-softmax is gathered at the target, never materialized; the entropy H = -sum p log p is a metric
    (no gradient)."""
    lse = torch.logsumexp(logits, dim=-1)
    picked = torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1) - lse
    if not with_entropy:
        return picked, lse, None
    with torch.no_grad():
        logp = logits.detach() - lse.detach().unsqueeze(-1)
        return picked, lse, -logp.exp().mul_(logp).sum(-1)


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype ``F.linear`` runs in here: autocast's when it is on, else the weight's."""
    device = hidden.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype


class _LinearLogps(torch.autograd.Function):
    """log p(target) (and the detached entropy) of ``_upcast(F.linear(hidden, weight, bias))``, chunk by chunk.

    Forward keeps hidden, weight, bias, targets and the logsumexp per row (n floats); backward recomputes each
    chunk's softmax p and applies d log p(t)/d logits = onehot(t) - p, so at most one (chunk, V) block of logits
    is alive at any time. Matmuls run in the compute dtype (autocast's or the weight's), as ``head(hidden)``
    would; softmax and gradients of the logits in fp32 (fp64 for a float64 model), and the weight's gradient is
    summed over chunks in that precision too.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk: int, with_entropy: bool):
        dtype = _compute_dtype(hidden, weight)
        w, b = weight.to(dtype), bias.to(dtype) if bias is not None else None
        parts = [_score(_upcast(F.linear(h.to(dtype), w, b)), t, with_entropy)
                 for h, t in zip(hidden.split(chunk), targets.split(chunk))]
        picked, lse, ent = zip(*parts)
        picked, lse, ent = torch.cat(picked), torch.cat(lse), torch.cat(ent) if with_entropy else None
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.chunk, ctx.dtype = chunk, dtype
        if ent is not None:
            ctx.mark_non_differentiable(ent)
        return picked, ent

    @staticmethod
    def backward(ctx, grad_picked, _grad_entropy):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        dtype, chunk = ctx.dtype, ctx.chunk
        w, b = weight.to(dtype), bias.to(dtype) if bias is not None else None
        grad_h = torch.empty_like(hidden) if need_h else None
        wide = torch.promote_types(dtype, torch.float32)
        grad_w = torch.zeros(weight.shape, dtype=wide, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=wide, device=weight.device) if need_b else None
        start = 0
        for h, t, s, g in zip(hidden.split(chunk), targets.split(chunk), lse.split(chunk), grad_picked.split(chunk)):
            h = h.to(dtype)
            # d logits = g * (onehot(t) - p), built in place over the recomputed logits
            d = _upcast(F.linear(h, w, b)).sub_(s.unsqueeze(-1)).exp_().mul_(-g.unsqueeze(-1))
            d[torch.arange(len(t), device=d.device), t] += g
            if need_b:
                grad_b += d.sum(0)
            d = d.to(dtype)
            if need_h:
                grad_h[start:start + len(t)] = d @ w
            if need_w and dtype == wide:
                grad_w.addmm_(d.t(), h)
            elif need_w:  # a bf16/fp16 product, summed in fp32
                grad_w += d.t() @ h
            start += len(t)
        return (grad_h, grad_w.to(weight.dtype) if need_w else None, grad_b.to(bias.dtype) if need_b else None,
                None, None, None)


def _module_logps(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk: int,
                  with_entropy: bool):
    """What ``_LinearLogps`` computes, for a head that is not a plain Linear (e.g. a peft LoRA lm_head): the head
    is called per chunk under non-reentrant checkpointing, so backward recomputes one chunk's logits at a time."""
    from torch.utils.checkpoint import checkpoint

    def one(h, t):
        picked, _lse, ent = _score(_upcast(head(h)), t, with_entropy)
        return picked, ent

    parts = [checkpoint(one, h, t, use_reentrant=False) if torch.is_grad_enabled() else one(h, t)
             for h, t in zip(hidden.split(chunk), targets.split(chunk))]
    picked = torch.cat([p for p, _ in parts])
    return picked, torch.cat([e for _, e in parts]) if with_entropy else None


def token_logps(model, batch: dict[str, torch.Tensor], with_entropy: bool = False, chunk_tokens: int | None = None):
    """Per-token log-probs aligned with ``input_ids``: out[b, t] = log p(input_ids[b, t] | tokens < t).

    Shape (B, T), float32 (float64 for a float64 model); zero where ``loss_mask`` is 0 (including position 0,
    which has no context).
    With ``with_entropy`` also returns the policy's entropy at each scored position (detached), same shape.
    The vocabulary projection runs only at the positions that are scored (completion tokens): the (B, T, V)
    logits of prompts and padding, the largest tensor of a step for a real vocabulary, are never made, and the
    scored positions are projected ``chunk_tokens`` at a time (default ``CHUNK_TOKENS``; 0: all at once).
    A model called whole (FSDP-sharded, or one whose forward transforms its logits) gets no chunking.
    """
    chunk = CHUNK_TOKENS if chunk_tokens is None else chunk_tokens
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    mask = batch["loss_mask"][:, 1:].bool()
    targets = input_ids[:, 1:][mask]
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=_position_ids(attention_mask),
                  use_cache=False)
    parts = None if _sharded(model) else _decoder_and_head(model)
    if parts is None and _sharded(model):  # the projection only at the positions some row scores
        cols = mask.any(0).nonzero().squeeze(-1)
        logits = model(**kwargs, logits_to_keep=cols).logits[mask[:, cols]]
        picked, _lse, h = _score(_upcast(logits), targets, with_entropy)
    elif parts is None:
        picked, _lse, h = _score(_upcast(model(**kwargs).logits[:, :-1][mask]), targets, with_entropy)
    else:
        decoder, head = parts
        hidden = decoder(**kwargs).last_hidden_state[:, :-1][mask]
        if chunk <= 0:
            picked, _lse, h = _score(_upcast(head(hidden)), targets, with_entropy)
        elif type(head) is torch.nn.Linear:  # not a subclass: quantized Linears (bitsandbytes) hold other weights
            picked, h = _LinearLogps.apply(hidden, head.weight, head.bias, targets, chunk, with_entropy)
        else:
            picked, h = _module_logps(head, hidden, targets, chunk, with_entropy)
    out = torch.nn.functional.pad(torch.zeros(mask.shape, dtype=picked.dtype, device=picked.device)
                                  .masked_scatter(mask, picked), (1, 0))
    if not with_entropy:
        return out
    ent = torch.zeros(mask.shape, dtype=h.dtype, device=h.device).masked_scatter(mask, h)
    return out, torch.nn.functional.pad(ent, (1, 0))


def sequence_logps(model, batch: dict[str, torch.Tensor], average: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence sum (or, with ``average``, token mean) of the loss-masked log-probs, and token counts.

    Returns (logps, n_tokens), both shape (B,). A row with no loss tokens gets 0 and n_tokens 0.
    """
    per_token = token_logps(model, batch)
    n_tokens = batch["loss_mask"][:, 1:].sum(-1)
    logps = per_token.sum(-1)
    if average:
        logps = logps / n_tokens.clamp(min=1)
    return logps, n_tokens


def reward_model_scores(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Scalar scores (B,) of a sequence-classification model (num_labels=1) at each row's last real token.

    The last real token is found from ``attention_mask``, not from the pad id, so the score is read at the
    closing eos even when pad == eos (HF's own pooling would read the token before it), and left padding
    works too. Needs a model with a ``score`` head on top of ``base_model`` (Llama, Qwen, Mistral, ...).
    """
    head = getattr(model, "score", None)
    if head is None:
        raise ValueError(
            f"{type(model).__name__} has no `score` head; load the reward model with "
            "AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)"
        )
    attention_mask = batch["attention_mask"]
    kwargs = dict(input_ids=batch["input_ids"], attention_mask=attention_mask,
                  position_ids=_position_ids(attention_mask), use_cache=False)
    width = attention_mask.size(1)
    last = width - 1 - attention_mask.flip(-1).long().argmax(-1)
    rows = torch.arange(attention_mask.size(0), device=attention_mask.device)
    if _sharded(model):  # called whole; the head's per-position scores are caught on their way to HF's pooling
        caught = []
        hook = head.register_forward_hook(lambda _module, _inputs, out: caught.append(out))
        try:
            model(**kwargs)
        finally:
            hook.remove()
        return caught[0][rows, last].squeeze(-1).float()
    hidden = model.base_model(**kwargs).last_hidden_state
    pooled = hidden[rows, last]
    return head(pooled).squeeze(-1).float()
