"""Tokenization masks, padding, batching and log-probs on the real tiny models."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from trainers.core.data import collate, encode_messages, encode_prompt_completion, length_batches
from trainers.core.logprobs import reward_model_scores, sequence_logps, token_logps

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "The answer is 5."},
    {"role": "user", "content": "And 4 + 4?"},
    {"role": "assistant", "content": "8, step by step"},
]


def _trained_text(tok, enc) -> str:
    return tok.decode([t for t, m in zip(enc["input_ids"], enc["loss_mask"]) if m])


@pytest.fixture(scope="module")
def tok(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def tok_pad_eos(tiny_model_pad_eos):
    return AutoTokenizer.from_pretrained(tiny_model_pad_eos)


def test_multi_turn_masks_exactly_the_assistant_turns(tok):
    enc = encode_messages(tok, CONVERSATION)
    full = tok.apply_chat_template(CONVERSATION, tokenize=False)
    assert tok.decode(enc["input_ids"]) == full
    assert _trained_text(tok, enc) == "The answer is 5.<|im_end|>\n8, step by step<|im_end|>\n"
    # the masked-in tokens form exactly two contiguous runs, one per assistant turn
    runs = sum(1 for i, m in enumerate(enc["loss_mask"]) if m and (i == 0 or not enc["loss_mask"][i - 1]))
    assert runs == 2


def test_prompt_completion_chat_trains_only_completion_turns(tok):
    prompt = CONVERSATION[:4]  # its assistant turn is context, not trained
    enc = encode_prompt_completion(tok, prompt, "8")
    assert _trained_text(tok, enc) == "8<|im_end|>\n"
    # a multi-turn completion: both assistant turns trained, the user turn between them is not
    completion = [{"role": "assistant", "content": "5"}, {"role": "user", "content": "Sure?"},
                  {"role": "assistant", "content": "Yes"}]
    enc = encode_prompt_completion(tok, CONVERSATION[:2], completion)
    assert _trained_text(tok, enc) == "5<|im_end|>\nYes<|im_end|>\n"


def test_pad_equal_eos_keeps_closing_eos_trained_and_padding_out(tok_pad_eos):
    tok = tok_pad_eos
    assert tok.pad_token_id == tok.eos_token_id
    short = encode_prompt_completion(tok, [{"role": "user", "content": "Hi"}], "5")
    long = encode_messages(tok, CONVERSATION)
    batch = collate([short, long], pad_id=tok.pad_token_id)
    n = len(short["input_ids"])
    row = batch["input_ids"][0]
    assert (row[n:] == tok.eos_token_id).all()  # padding is eos ids ...
    assert batch["loss_mask"][0, n:].sum() == 0 and batch["attention_mask"][0, n:].sum() == 0  # ... but masked
    eos_positions = [i for i, t in enumerate(short["input_ids"]) if t == tok.eos_token_id]
    assert short["loss_mask"][eos_positions[-1]] == 1  # the eos closing the assistant turn is trained
    assert short["loss_mask"][eos_positions[0]] == 0  # the eos closing the user turn is not


def test_plain_text_gets_eos_and_single_bos(tiny_model, tmp_path):
    from tokenizers.processors import TemplateProcessing

    tok = AutoTokenizer.from_pretrained(tiny_model)
    # a tokenizer that adds BOS on every call, with a template that also writes BOS: the classic double-BOS trap
    tok.bos_token = "<|endoftext|>"
    bos = tok.bos_token_id
    tok._tokenizer.post_processor = TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", bos)]
    )
    tok.chat_template = "{{ bos_token }}" + tok.chat_template
    enc = encode_prompt_completion(tok, [{"role": "user", "content": "Hi"}], "5")
    assert enc["input_ids"].count(bos) == 1 and enc["input_ids"][0] == bos
    plain = encode_prompt_completion(tok, "3 + 4 =", " 7")
    assert plain["input_ids"].count(bos) == 1
    assert _trained_text(tok, plain) == " 7<|im_end|>"


def test_truncation_drops_prompt_from_the_left(tok):
    prompt = "The answer is 5. " * 10
    full = encode_prompt_completion(tok, prompt, " 8 + 1 = 9")
    n_completion = sum(full["loss_mask"])
    cut = encode_prompt_completion(tok, prompt, " 8 + 1 = 9", max_length=n_completion + 4)
    assert cut["truncated"] and len(cut["input_ids"]) == n_completion + 4
    assert cut["input_ids"] == full["input_ids"][-(n_completion + 4):]  # prompt's end and whole completion kept
    assert sum(cut["loss_mask"]) == n_completion
    # completion longer than max_length: prompt keeps max_length // 2 tokens, completion cut at the right
    tiny = encode_prompt_completion(tok, prompt, " 8 + 1 = 9", max_length=4)
    assert tiny["loss_mask"] == [0, 0, 1, 1]
    assert not encode_prompt_completion(tok, "Hi", " 5", max_length=100)["truncated"]


def test_left_and_right_padding_give_same_logps(tiny_model, tok):
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    feats = [encode_messages(tok, CONVERSATION), encode_prompt_completion(tok, "Hi", " 5"),
             encode_prompt_completion(tok, [{"role": "user", "content": "Sum 7 and 8"}], "15")]
    with torch.no_grad():
        right, n_right = sequence_logps(model, collate(feats, tok.pad_token_id, "right"))
        left, n_left = sequence_logps(model, collate(feats, tok.pad_token_id, "left"))
        alone = torch.stack([sequence_logps(model, collate([f], tok.pad_token_id))[0][0] for f in feats])
        avg, _ = sequence_logps(model, collate(feats, tok.pad_token_id), average=True)
    assert torch.equal(n_right, n_left) and n_right.tolist() == [sum(f["loss_mask"][1:]) for f in feats]
    assert torch.allclose(right, left, atol=1e-4) and torch.allclose(right, alone, atol=1e-4)
    assert (right < 0).all()
    assert torch.allclose(avg, right / n_right)


def test_token_logps_are_aligned_with_input_ids(tiny_model, tok):
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    feat = encode_prompt_completion(tok, "Hi", " 5")
    batch = collate([feat], tok.pad_token_id)
    with torch.no_grad():
        per_token = token_logps(model, batch)[0]
        logits = model(batch["input_ids"]).logits[0]
    t = len(feat["input_ids"]) - 1  # last completion token
    want = torch.log_softmax(logits[t - 1], -1)[feat["input_ids"][t]]
    assert per_token[t].item() == pytest.approx(want.item(), abs=1e-5)
    assert (per_token[torch.tensor(feat["loss_mask"]) == 0] == 0).all()


def test_reward_scores_read_last_real_token_even_when_pad_is_eos(tiny_model_pad_eos, tok_pad_eos):
    tok = tok_pad_eos
    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_model_pad_eos, num_labels=1).eval()
    feats = [encode_prompt_completion(tok, [{"role": "user", "content": "Hi"}], "5"),
             encode_messages(tok, CONVERSATION)]
    with torch.no_grad():
        right = reward_model_scores(rm, collate(feats, tok.pad_token_id, "right"))
        left = reward_model_scores(rm, collate(feats, tok.pad_token_id, "left"))
        alone = torch.cat([reward_model_scores(rm, collate([f], tok.pad_token_id)) for f in feats])
        # the score at the last real position, computed directly from the backbone
        ids = torch.tensor([feats[0]["input_ids"]])
        direct = rm.score(rm.base_model(input_ids=ids).last_hidden_state[0, -1]).item()
    assert right.shape == (2,)
    assert torch.allclose(right, left, atol=1e-4) and torch.allclose(right, alone, atol=1e-4)
    assert right[0].item() == pytest.approx(direct, abs=1e-4)


def test_length_batches_deterministic_and_complete():
    lengths = [5, 100, 7, 98, 6, 99, 50, 51, 3, 97, 52]
    a = length_batches(lengths, batch_size=3, seed=0)
    assert a == length_batches(lengths, batch_size=3, seed=0)
    assert sorted(i for b in a for i in b) == list(range(len(lengths)))
    assert all(len(b) <= 3 for b in a)
    # one mega-chunk here, so every batch is a run of the length-sorted order: little padding
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    assert sorted(a) == sorted(order[i:i + 3] for i in range(0, len(order), 3))
    assert length_batches(lengths, 3, seed=1) != a or len(a) == 1
    assert length_batches(lengths, 4, seed=0, shuffle=False)[0] == order[:4]
    with pytest.raises(ValueError):
        length_batches(lengths, 0, seed=0)


def test_collate_pads_and_carries_scalars():
    feats = [{"input_ids": [1, 2, 3], "loss_mask": [0, 1, 1], "label": True, "ref_logps": -1.5},
             {"input_ids": [4], "loss_mask": [1], "label": False, "ref_logps": -0.5}]
    right = collate(feats, pad_id=9)
    assert right["input_ids"].tolist() == [[1, 2, 3], [4, 9, 9]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert right["loss_mask"].tolist() == [[0, 1, 1], [1, 0, 0]]
    assert right["label"].tolist() == [True, False] and right["ref_logps"].tolist() == [-1.5, -0.5]
    left = collate(feats, pad_id=9, padding_side="left")
    assert left["input_ids"].tolist() == [[1, 2, 3], [9, 9, 4]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_template_that_rewrites_past_turns_is_rejected(tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    # like templates that strip past reasoning: earlier assistant turns render differently later on
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m['role'] == 'assistant' and not loop.last %}(earlier){% else %}{{ m['content'] }}{% endif %}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(ValueError, match="renders earlier turns differently"):
        encode_messages(tok, CONVERSATION)


def test_bad_rows_raise_clear_errors(tok):
    with pytest.raises(ValueError, match="plain-text completion"):
        encode_prompt_completion(tok, "Hi", [{"role": "assistant", "content": "5"}])
    with pytest.raises(ValueError, match="messages"):
        encode_messages(tok, [{"content": "no role"}])
