"""Tokenization with assistant-only loss masks, padding, length-bucketed batching, KTO mismatched pairs.

Rows that carry their sampled ids with a mask (trajectories: `completion_ids` + `completion_mask`) train on those
ids as they are, the mask saying which tokens are the policy's (`encode_sampled`); every other row is tokenized
from its text as below.

Masks are built from the structure of the row (which message is an assistant turn, where the prompt
ends), never by comparing token ids with the pad or eos id, so they stay right when pad == eos: the eos
that closes an assistant turn is trained, padding is not (collate() marks padding by position).

Chat rows go through the tokenizer's chat template once (`rewards.chat.chat_ids`: the template adds any BOS
itself, so the rendered text is tokenized with add_special_tokens=False). An assistant turn's tokens are those
between the end of ``template(messages[:i], add_generation_prompt=True)`` and the end of
``template(messages[:i+1])``: the turn's content, its end-of-turn token and whatever the template puts
after it (ChatML's newline), which is also what TRL trains for a single-turn completion. A prompt's tokens
are `rewards.chat.prompt_ids`, the ids the generation engines continue from.
"""
from __future__ import annotations

import random
from typing import Any

import torch

from rewards.chat import Messages, as_messages, chat_ids, is_messages, prompt_ids, render_chat


def _encode_chat(tokenizer, messages: Messages, train_from: int) -> tuple[list[int], list[int]]:
    """Token ids of a conversation and a mask that is 1 on assistant turns with index >= train_from.

    A trained turn's context is the conversation before it with an open assistant turn, as an engine continued
    it (`chat_ids(..., add_generation_prompt=True)`, which is `rewards.chat.prompt_ids`). The conversation is
    tokenized whole, as TRL does, when every trained turn sits right after exactly those context ids; where a
    token merges across that boundary, it is tokenized turn by turn instead (`_encode_turns`), so the context
    keeps the ids the engine saw."""
    ids = chat_ids(tokenizer, messages)
    turns = [i for i, m in enumerate(messages) if i >= train_from and m.get("role") == "assistant"]
    mask = [0] * len(ids)
    for i in turns:
        head = chat_ids(tokenizer, messages[:i], add_generation_prompt=True)
        turn = chat_ids(tokenizer, messages[: i + 1])
        if ids[: len(head)] != head or ids[: len(turn)] != turn or len(turn) < len(head):
            return _encode_turns(tokenizer, messages, turns)
        mask[len(head) : len(turn)] = [1] * (len(turn) - len(head))
    return ids, mask


def _encode_turns(tokenizer, messages: Messages, turns: list[int]) -> tuple[list[int], list[int]]:
    """`_encode_chat` when tokens merge across a turn boundary: the rendered conversation cut where each trained
    turn starts (after its context with the open assistant turn) and ends (its end-of-turn and whatever the
    template writes after it), each piece tokenized on its own; the pieces that are turns are trained."""
    text = render_chat(tokenizer, messages)
    cuts = [0]
    for i in turns:
        head = render_chat(tokenizer, messages[:i], add_generation_prompt=True)
        turn = render_chat(tokenizer, messages[: i + 1])
        if not (text.startswith(head) and text.startswith(turn) and cuts[-1] <= len(head) <= len(turn)):
            raise ValueError(
                "the chat template renders earlier turns differently once later turns follow (message "
                f"{i} of {len(messages)}), so assistant tokens cannot be located; use a template whose "
                "rendering of a conversation prefix is a prefix of the full rendering"
            )
        cuts += [len(head), len(turn)]
    cuts.append(len(text))
    ids: list[int] = []
    mask: list[int] = []
    for k in range(len(cuts) - 1):  # pieces alternate: context, turn, context, turn, ..., the rest
        piece = text[cuts[k] : cuts[k + 1]]
        piece_ids = list(tokenizer(piece, add_special_tokens=False)["input_ids"]) if piece else []
        ids += piece_ids
        mask += [k % 2] * len(piece_ids)
    return ids, mask


def _check_messages(messages: Any, what: str) -> Messages:
    if not is_messages(messages):
        raise ValueError(
            f"{what} must be a string or a list of {{role, content}} messages, got {type(messages).__name__}"
        )
    return messages


def encode_prompt_completion(
    tokenizer, prompt: str | Messages, completion: str | Messages, max_length: int | None = None, add_eos: bool = True
) -> dict:
    """Tokenize one prompt + completion; ``loss_mask`` is 1 on completion tokens only.

    The prompt's tokens are always the ids a generation engine continues from (`rewards.chat.prompt_ids`), so a
    set built from rollouts trains in the exact context the policy was sampled in (docs/training.md).

    - Chat prompt (list of messages): a string completion becomes one assistant message; a list of
      messages is appended as is, and every assistant turn in it is trained (none in the prompt).
    - Plain-text prompt and completion: tokenized as ``prompt + completion`` with the tokenizer's special
      tokens (BOS if it adds one), as TRL does; the eos token is appended to the completion if missing
      (``add_eos``), so the model learns to stop. Where a token merges across the boundary (the prompt's ids
      are not a prefix of the whole), the completion is tokenized on its own after the prompt's ids.
    - Truncation to ``max_length``: tokens are dropped from the left of the prompt (its end, nearest the
      completion, stays). If the completion alone is longer than ``max_length``, the prompt keeps its last
      ``max_length // 2`` tokens (or all if shorter) and the completion is cut at the right.
      ``truncated`` says whether anything was dropped.
    """
    if isinstance(prompt, str):
        if not isinstance(completion, str):
            raise ValueError("a plain-text prompt needs a plain-text completion (got messages)")
        if add_eos and tokenizer.eos_token and not completion.endswith(tokenizer.eos_token):
            completion = completion + tokenizer.eos_token
        context = prompt_ids(tokenizer, prompt)
        ids = list(tokenizer(prompt + completion)["input_ids"])
        if ids[: len(context)] != context:
            ids = context + list(tokenizer(completion, add_special_tokens=False)["input_ids"])
        n_prompt = len(context)
        mask = [0] * n_prompt + [1] * (len(ids) - n_prompt)
    else:
        prompt = _check_messages(prompt, "prompt")
        if isinstance(completion, str):
            completion = as_messages(completion, "assistant")
        completion = _check_messages(completion, "completion")
        ids, mask = _encode_chat(tokenizer, prompt + completion, train_from=len(prompt))
        n_prompt = mask.index(1) if 1 in mask else len(ids)
    return _truncate_left(ids, mask, n_prompt, max_length)


def encode_sampled(tokenizer, prompt: str | Messages, completion_ids: list[int], completion_mask: list[int],
                   max_length: int | None = None, prompt_token_ids: list[int] | None = None) -> dict:
    """A sampled completion trained on its ids as the engine returned them (pipelines/envs/base.py): the ids the
    engine continued from (`prompt_token_ids`, the sampled context; it holds what the prompt's messages alone do
    not say, such as an environment's tools rendered by the template; else the prompt rendered by
    `rewards.chat.prompt_ids`), then `completion_ids` with `completion_mask` as the loss mask, so a trajectory
    trains its policy turns only and never its tool outputs (mask 0), and no turn is re-tokenized. Truncation as
    `encode_prompt_completion`. The completion ids are the sampler's tokenizer's: train with the same tokenizer.

    >>> encode_sampled(tok, "2+3?", [7, 8, 9], [1, 0, 1])["loss_mask"][-3:]  # doctest: +SKIP
    [1, 0, 1]
    """
    if len(completion_ids) != len(completion_mask):
        raise ValueError(f"completion_mask has {len(completion_mask)} entries for {len(completion_ids)} "
                         "completion_ids; they must align")
    if not any(completion_mask):
        raise ValueError("completion_mask is 0 everywhere: the row has no policy token to train")
    context = list(prompt_token_ids) if prompt_token_ids is not None else prompt_ids(tokenizer, prompt)
    if max(completion_ids, default=0) >= len(tokenizer):
        raise ValueError(f"completion_ids hold token {max(completion_ids)}, beyond this tokenizer's {len(tokenizer)} "
                         "tokens: the rows were sampled with another tokenizer")
    ids = context + [int(t) for t in completion_ids]
    mask = [0] * len(context) + [int(bool(m)) for m in completion_mask]
    return _truncate_left(ids, mask, len(context), max_length)


def encode_completion(tokenizer, row: dict, side: str, max_length: int | None = None) -> dict:
    """One side of a training row (`completion`, `chosen`, `rejected`) in its prompt's context: from its sampled
    ids when the row carries them (`completion_ids` + `completion_mask`, `chosen_ids` + `chosen_mask`...:
    trajectories, whose tool outputs are masked), else from its text (`encode_prompt_completion`)."""
    ids_key = "completion_ids" if side == "completion" else f"{side}_ids"
    mask_key = "completion_mask" if side == "completion" else f"{side}_mask"
    if row.get(ids_key) is not None and row.get(mask_key) is not None:
        return encode_sampled(tokenizer, row["prompt"], row[ids_key], row[mask_key], max_length,
                              row.get("prompt_token_ids"))
    return encode_prompt_completion(tokenizer, row["prompt"], row[side], max_length)


def _truncate_left(ids: list[int], mask: list[int], n_prompt: int, max_length: int | None) -> dict:
    if max_length is None or len(ids) <= max_length:
        return {"input_ids": ids, "loss_mask": mask, "truncated": False}
    n_completion = len(ids) - n_prompt
    keep_prompt = max_length - n_completion if n_completion < max_length else min(n_prompt, max_length // 2)
    start = n_prompt - keep_prompt
    end = start + max_length
    return {"input_ids": ids[start:end], "loss_mask": mask[start:end], "truncated": True}


def encode_messages(tokenizer, messages: Messages, max_length: int | None = None) -> dict:
    """Tokenize an SFT conversation; every assistant turn is in the loss, all other turns are not.

    Truncation keeps the start of the conversation (cuts at the right), like TRL's SFT default, so the
    system prompt and first turns survive.
    """
    ids, mask = _encode_chat(tokenizer, _check_messages(messages, "messages"), train_from=0)
    truncated = max_length is not None and len(ids) > max_length
    if truncated:
        ids, mask = ids[:max_length], mask[:max_length]
    return {"input_ids": ids, "loss_mask": mask, "truncated": truncated}


def collate(features: list[dict], pad_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad ``input_ids``/``loss_mask`` into tensors and add ``attention_mask`` (0 on padding).

    Scalar fields present in every feature (labels, cached reference log-probs) become 1-d tensors.
    """
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    width = max(len(f["input_ids"]) for f in features)
    out: dict[str, list] = {"input_ids": [], "attention_mask": [], "loss_mask": []}
    for f in features:
        n = len(f["input_ids"])
        pad = width - n
        rows = (list(f["input_ids"]), [1] * n, list(f["loss_mask"]))
        fills = (pad_id, 0, 0)
        for key, row, fill in zip(out, rows, fills):
            out[key].append(row + [fill] * pad if padding_side == "right" else [fill] * pad + row)
    batch = {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}
    for key, value in features[0].items():
        if key not in batch and isinstance(value, (bool, int, float)):
            batch[key] = torch.tensor([f[key] for f in features])
    return batch


def length_batches(lengths: list[int], batch_size: int, seed: int, shuffle: bool = True) -> list[list[int]]:
    """Group indices into batches of similar length (less padding), deterministically for a seed.

    With ``shuffle``: indices are shuffled, cut into mega-chunks of 50 batches, sorted by length inside each
    chunk, cut into batches, and the batch order is shuffled. Without: sorted by length (stable), in order.
    The last batch may be smaller.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = list(range(len(lengths)))
    if not shuffle:
        order.sort(key=lambda i: lengths[i])
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng = random.Random(seed)
    rng.shuffle(order)
    chunk = batch_size * 50
    batches = []
    for c in range(0, len(order), chunk):
        part = sorted(order[c : c + chunk], key=lambda i: lengths[i])
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def kto_mismatched_pairs(batch_rows: list[dict], completion_key: str = "completion") -> list[dict]:
    """Rows for KTO's KL estimate: completions rotated by one within the batch, as TRL does.

    Row i keeps its prompt and gets row i-1's completion: (x_1, y_n), (x_2, y_1), ..., (x_n, y_{n-1}),
    so the mismatched completions are the batch's own completions. Works for odd sizes. A batch of one
    row has no mismatched pair: the result is empty and kto_loss then uses z0 = 0.
    """
    if len(batch_rows) < 2:
        return []
    completions = [row[completion_key] for row in batch_rows]
    rotated = completions[-1:] + completions[:-1]
    return [{**row, completion_key: c} for row, c in zip(batch_rows, rotated)]
