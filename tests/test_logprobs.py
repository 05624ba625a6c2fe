"""Log-probs of the scored tokens: the masked-projection path equals the full forward, values and gradients."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from trainers.core import logprobs


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


def _scored_batch(vocab: int) -> dict[str, torch.Tensor]:
    """_batch plus a row with no scored tokens: 14 scored positions in all, left and right padding."""
    batch = _batch(vocab)
    ids = torch.randint(3, vocab, (1, 12), generator=torch.Generator().manual_seed(1))
    return {"input_ids": torch.cat([batch["input_ids"], ids]),
            "attention_mask": torch.cat([batch["attention_mask"], torch.ones_like(ids)]),
            "loss_mask": torch.cat([batch["loss_mask"], torch.zeros_like(ids)])}


def _model(tiny_model, head: str, dtype: torch.dtype = torch.float32):
    """The tiny Llama with its lm_head: tied to the embeddings, an untied Linear with a bias, or a peft LoRA layer."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    if head == "bias":
        torch.manual_seed(0)
        model.lm_head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    if head == "lora":
        from peft import LoraConfig, get_peft_model

        # random A and B (not peft's B = 0), so every LoRA weight has a gradient to compare
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "lm_head"], init_lora_weights=False,
                                                 task_type="CAUSAL_LM"))
    return model.to(dtype)


def _logps_and_grads(model, batch, chunk_tokens):
    model.zero_grad()
    logps, entropy = logprobs.token_logps(model, batch, with_entropy=True, chunk_tokens=chunk_tokens)
    # a weight per position, so each token's gradient counts differently
    (logps * torch.linspace(-1.0, 2.0, logps.size(1), dtype=logps.dtype)).sum().backward()
    return logps.detach(), entropy, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`")  # peft, on a LoRA lm_head
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("head", ["tied", "bias", "lora"])
def test_chunked_projection_equals_one_projection(tiny_model, head, dtype):
    """Chunks of 3 of the 14 scored positions (5 chunks) give the values and gradients of one projection of all.

    In float64 they agree to 1e-10: the same math. In float32 the gradients agree to 1e-5, not 1e-6: a
    gradient ~6 summed in another order moves by a few 1e-6, and the unchunked float32 gradient is itself 2.5e-6
    away from the float64 one."""
    model = _model(tiny_model, head, dtype)
    batch = _scored_batch(model.config.vocab_size)
    whole = _logps_and_grads(model, batch, chunk_tokens=0)
    chunked = _logps_and_grads(model, batch, chunk_tokens=3)
    assert head != "lora" or type(model.get_output_embeddings()) is not torch.nn.Linear  # the checkpointed path
    exact = dtype == torch.float64
    assert chunked[0].dtype == torch.float32 or exact
    assert torch.allclose(chunked[0], whole[0], atol=1e-10 if exact else 1e-6, rtol=0)
    assert torch.allclose(chunked[1], whole[1], atol=1e-10 if exact else 1e-5, rtol=0)
    assert torch.allclose(whole[0], _reference(model, batch).detach().to(whole[0].dtype), atol=1e-5)
    assert (chunked[0][batch["loss_mask"] == 0] == 0).all() and (chunked[1][batch["loss_mask"] == 0] == 0).all()
    assert (chunked[0][3] == 0).all() and chunked[1][3].abs().sum() == 0  # the row with nothing scored
    assert chunked[1][batch["loss_mask"] == 1].min() > 0
    assert whole[2].keys() == chunked[2].keys() and len(whole[2]) > 0
    for name, grad in whole[2].items():
        assert grad.abs().sum() > 0, name
        assert torch.allclose(chunked[2][name], grad, atol=1e-10 if exact else 1e-5, rtol=0), name


@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`")
@pytest.mark.parametrize("head", ["tied", "lora"])
def test_chunked_projection_under_bf16_autocast(tiny_model, head):
    """Under autocast the projection runs in bf16 and the softmax in fp32, chunked or not."""
    model = _model(tiny_model, head)
    batch = _scored_batch(model.config.vocab_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        whole = _logps_and_grads(model, batch, chunk_tokens=0)
        chunked = _logps_and_grads(model, batch, chunk_tokens=3)
    assert chunked[0].dtype == torch.float32
    assert torch.allclose(chunked[0], whole[0], atol=1e-5, rtol=0)
    assert torch.allclose(chunked[1], whole[1], atol=1e-4, rtol=0)
    # the chunks' weight gradients are summed in fp32, one bf16 product is rounded once: bf16's precision apart
    for name, grad in whole[2].items():
        assert (chunked[2][name] - grad).norm() <= 1e-2 * grad.norm(), name


def test_backward_keeps_one_chunk_of_logits(tiny_model):
    """What autograd saves for backward: the (scored, V) logits unchunked, nothing as wide as the vocabulary with
    chunks (the Function keeps hidden states and one logsumexp per row)."""
    model = _model(tiny_model, "tied")
    batch = _scored_batch(model.config.vocab_size)
    vocab = model.config.vocab_size
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def widest_saved(chunk_tokens):
        sizes = [0]

        def pack(t):
            if t.dim() and t.shape[-1] == vocab and t.untyped_storage().data_ptr() not in weights:
                sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logprobs.token_logps(model, batch, chunk_tokens=chunk_tokens)
        return max(sizes)

    assert widest_saved(0) == 14 * vocab
    assert widest_saved(3) == 0


def test_nothing_scored_gives_zero_gradients(tiny_model):
    model = _model(tiny_model, "tied")
    batch = _scored_batch(model.config.vocab_size)
    batch["loss_mask"] = torch.zeros_like(batch["loss_mask"])
    logps = logprobs.token_logps(model, batch, chunk_tokens=3)
    logps.sum().backward()
    assert (logps == 0).all()
    assert all(p.grad is None or (p.grad == 0).all() for p in model.parameters())
