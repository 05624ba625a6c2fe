"""Log-probs of the scored tokens: the masked-projection path equals the full forward, values and gradients."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from trainers import logprobs


def _batch(vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (3, 12), generator=g)
    attention = torch.ones_like(ids)
    attention[1, :4] = 0  # left padding
    attention[2, 9:] = 0  # right padding
    loss = torch.zeros_like(ids)
    loss[0, 5:] = 1
    loss[1, 8:] = 1
    loss[2, 6:9] = 1
    return {"input_ids": ids, "attention_mask": attention, "loss_mask": loss}


def _reference(model, batch):
    """The plain definition: log_softmax over the full (B, T, V) logits, gathered at the next token."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=logprobs._position_ids(batch["attention_mask"]), use_cache=False).logits
    lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return torch.nn.functional.pad(lp * batch["loss_mask"][:, 1:], (1, 0))


@pytest.mark.parametrize("lora", [False, True])
def test_masked_projection_matches_full_logits(tiny_model, lora):
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert logprobs._decoder_and_head(model) is not None  # the fast path is the one under test
    batch = _batch(model.config.vocab_size)
    ours = logprobs.token_logps(model, batch)
    ours.sum().backward()
    ours_grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    ref = _reference(model, batch)
    ref.sum().backward()
    ref_grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert torch.allclose(ours, ref, atol=1e-5)
    assert (ours[batch["loss_mask"] == 0] == 0).all()
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ours_grads, ref_grads))


def test_models_that_transform_logits_take_the_full_forward(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    model.config.final_logit_softcapping = 30.0  # Gemma-2 style: logits are not just lm_head(hidden)
    assert logprobs._decoder_and_head(model) is None
    batch = _batch(model.config.vocab_size)
    assert torch.allclose(logprobs.token_logps(model, batch), _reference(model, batch), atol=1e-5)
