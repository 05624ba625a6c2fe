"""Log-probabilities of the loss-masked tokens of a padded batch, and reward-model scores.

A batch is what ``data.collate`` returns: ``input_ids``, ``attention_mask`` (0 on padding) and
``loss_mask`` (1 on trained tokens), all (B, T). Position ids are computed from the attention mask, so
left- and right-padded copies of the same rows give the same log-probs.
"""
from __future__ import annotations

import torch


def _position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


# Config fields of models whose forward does more to the logits than the output projection.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def _sharded(model) -> bool:
    """A model sharded by FSDP (trainers/fsdp.py): its root forward is what gathers the embeddings and heads, so it
    is called whole, never through its submodules."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _decoder_and_head(model):
    """(decoder, lm_head) when logits are exactly `lm_head(decoder(...).last_hidden_state)`, else None."""
    cfg = getattr(model, "config", None)
    if cfg is None or any(getattr(cfg, name, None) not in (None, 1, 1.0) for name in _LOGIT_TRANSFORMS):
        return None
    try:
        decoder, head = model.get_decoder(), model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if decoder is None or not isinstance(head, torch.nn.Linear):
        return None
    return decoder, head


def token_logps(model, batch: dict[str, torch.Tensor], with_entropy: bool = False):
    """Per-token log-probs aligned with ``input_ids``: out[b, t] = log p(input_ids[b, t] | tokens < t).

    Shape (B, T), float32; zero where ``loss_mask`` is 0 (including position 0, which has no context).
    With ``with_entropy`` also returns the policy's entropy at each scored position (detached), same shape.
    The vocabulary projection runs only at the positions that are scored (completion tokens): the (B, T, V)
    logits of prompts and padding, the largest tensor of a step for a real vocabulary, are never made.
    """
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    mask = batch["loss_mask"][:, 1:].bool()
    targets = input_ids[:, 1:]
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=_position_ids(attention_mask),
                  use_cache=False)
    parts = None if _sharded(model) else _decoder_and_head(model)
    if parts is None and _sharded(model):  # the projection only at the positions some row scores
        cols = mask.any(0).nonzero().squeeze(-1)
        logits = model(**kwargs, logits_to_keep=cols).logits[mask[:, cols]].float()
    elif parts is None:
        logits = model(**kwargs).logits[:, :-1][mask].float()
    else:
        decoder, head = parts
        logits = head(decoder(**kwargs).last_hidden_state[:, :-1][mask]).float()
    # log_softmax gathered at the target, without materializing the full log-softmax twice
    lse = torch.logsumexp(logits, dim=-1)
    picked = torch.gather(logits, -1, targets[mask].unsqueeze(-1)).squeeze(-1) - lse
    out = torch.zeros(mask.shape, dtype=picked.dtype, device=picked.device).masked_scatter(mask, picked)
    out = torch.nn.functional.pad(out, (1, 0))
    if not with_entropy:
        return out
    with torch.no_grad():  # H = -sum p log p at each scored position (a metric: no gradient)
        logp = logits.detach() - lse.detach().unsqueeze(-1)
        h = -(logp.exp() * logp).sum(-1)
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
