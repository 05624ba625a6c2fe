"""Our objectives on our log-probs vs TRL 1.16's trainers on the same rows and weights (fp32, CPU).

For each trainer we take one batch from TRL's own dataloader, call ``trainer.compute_loss`` and backprop,
then compute the same loss with trainers.core.data + trainers.core.logprobs + trainers.offline.objectives on a copy of the
same weights, and compare the loss and the gradient norm. Tokenization is compared too (same ids, same
completion masks). TRL 1.16 configs default to ``bf16=True`` (autocast even on CPU), so every config here
sets ``bf16=False`` to compare in fp32.

Known differences by design (documented in docs/objectives.md, not exercised here):
- sigmoid DPO: TRL 1.16 ignores ``label_smoothing`` for "sigmoid"; ours applies cDPO smoothing when it
  is non-zero. Both agree at the default 0.
- KTO with batch size 1: TRL refuses it; ours uses z0 = 0 (checked in tests/test_objectives.py).
- Reward models with pad == eos: HF's pooling reads the token before the closing eos; ours reads the eos.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch

datasets = pytest.importorskip("datasets")
trl = pytest.importorskip("trl")

from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

from trainers.core.data import collate, encode_prompt_completion, kto_mismatched_pairs  # noqa: E402
from trainers.core.logprobs import reward_model_scores, sequence_logps  # noqa: E402
from trainers.offline.objectives import bradley_terry_loss, dpo_loss, kto_loss  # noqa: E402

TOL = 1e-5


def _user(text):
    return [{"role": "user", "content": text}]


def _assistant(text):
    return [{"role": "assistant", "content": text}]


PAIRS = [
    {"prompt": _user("What is 2 + 3?"), "chosen": _assistant("The answer is 5."),
     "rejected": _assistant("It is 6, step by step")},
    {"prompt": _user("Return x * 2"), "chosen": _assistant("def f(x): return x * 2"),
     "rejected": _assistant("print(1)")},
    {"prompt": _user("Sum 7 and 8"), "chosen": _assistant("15"),
     "rejected": _assistant("The answer is \\boxed{16}.")},
]

UNPAIRED = [
    {"prompt": _user("What is 2 + 3?"), "completion": _assistant("The answer is 5."), "label": True},
    {"prompt": _user("Return x * 2"), "completion": _assistant("print(1)"), "label": False},
    {"prompt": _user("Sum 7 and 8"), "completion": _assistant("15"), "label": True},
    {"prompt": _user("Plain text: 3 + 4 ="), "completion": _assistant("7. The answer is \\boxed{7}."), "label": True},
    {"prompt": _user("Sum 1 and 1"), "completion": _assistant("It is 3"), "label": False},
]


def _grad_norm(model) -> float:
    return math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in model.parameters() if p.grad is not None))


@pytest.fixture(scope="module")
def models(tiny_model):
    """(tokenizer, policy, reference): the policy is the tiny model with a fixed perturbation, so it
    differs from the reference and the losses are not at their trivial values."""
    tok = AutoTokenizer.from_pretrained(tiny_model)
    ref = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    policy = copy.deepcopy(ref)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return tok, policy.eval(), ref.eval()


def _trl_batch_rows(batch, mask_key="completion_mask", prefix=""):
    ids, att, mask = batch[f"{prefix}input_ids"], batch[f"{prefix}attention_mask"], batch[f"{prefix}{mask_key}"]
    return sorted((tuple(i[a == 1].tolist()), tuple(m[a == 1].tolist())) for i, a, m in zip(ids, att, mask))


def _our_rows(feats):
    return sorted((tuple(f["input_ids"]), tuple(f["loss_mask"])) for f in feats)


@pytest.mark.parametrize(
    "loss_type,label_smoothing", [("sigmoid", 0.0), ("ipo", 0.0), ("hinge", 0.0), ("robust", 0.2)]
)
def test_dpo_matches_trl(models, tmp_path, loss_type, label_smoothing):
    from trl import DPOConfig, DPOTrainer

    tok, policy, ref = models
    beta = 0.1 if loss_type != "hinge" else 0.5
    trl_model, our_model = copy.deepcopy(policy), copy.deepcopy(policy)
    args = DPOConfig(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, per_device_train_batch_size=len(PAIRS),
        loss_type=[loss_type], beta=beta, label_smoothing=label_smoothing, max_length=None,
    )
    trainer = DPOTrainer(
        model=trl_model, ref_model=copy.deepcopy(ref), args=args,
        train_dataset=datasets.Dataset.from_list(PAIRS), processing_class=tok,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    trl_loss = trainer.compute_loss(trl_model, batch)
    trl_loss.backward()

    feats = [encode_prompt_completion(tok, r["prompt"], r["chosen"]) for r in PAIRS]
    feats += [encode_prompt_completion(tok, r["prompt"], r["rejected"]) for r in PAIRS]
    assert _our_rows(feats) == _trl_batch_rows(batch)
    ours = collate(feats, tok.pad_token_id)
    logps, n_tokens = sequence_logps(our_model, ours)
    with torch.no_grad():
        ref_logps, _ = sequence_logps(ref, ours)
    pc, pr = logps.chunk(2)
    rc, rr = ref_logps.chunk(2)
    nc, nr = n_tokens.chunk(2)
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type, label_smoothing=label_smoothing,
                            chosen_n_tokens=nc, rejected_n_tokens=nr)
    loss = losses.mean()
    loss.backward()

    assert loss.item() == pytest.approx(trl_loss.item(), abs=TOL)
    assert _grad_norm(our_model) == pytest.approx(_grad_norm(trl_model), abs=TOL)
    assert _grad_norm(our_model) > 1e-3  # a real gradient, not two zeros agreeing


def test_kto_matches_trl_odd_batch(models, tmp_path):
    """KTOTrainer with an odd batch (5 rows, 3 desirable / 2 undesirable, unequal class weights)."""
    from trl import KTOConfig, KTOTrainer

    tok, policy, ref = models
    assert len(UNPAIRED) % 2 == 1
    trl_model, our_model = copy.deepcopy(policy), copy.deepcopy(policy)
    kwargs = dict(beta=0.1, desirable_weight=1.0, undesirable_weight=1.5)
    args = KTOConfig(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, per_device_train_batch_size=len(UNPAIRED),
        max_length=None, **kwargs,
    )
    trainer = KTOTrainer(
        model=trl_model, ref_model=copy.deepcopy(ref), args=args,
        train_dataset=datasets.Dataset.from_list(UNPAIRED), processing_class=tok,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    trl_loss = trainer.compute_loss(trl_model, batch)
    trl_loss.backward()

    def encode(rows):
        return [encode_prompt_completion(tok, r["prompt"], r["completion"]) for r in rows]

    feats, kl_feats = encode(UNPAIRED), encode(kto_mismatched_pairs(UNPAIRED))
    assert _our_rows(feats) == _trl_batch_rows(batch)
    assert _our_rows(kl_feats) == _trl_batch_rows(batch, prefix="KL_")
    main, kl_batch = collate(feats, tok.pad_token_id), collate(kl_feats, tok.pad_token_id)
    logps, _ = sequence_logps(our_model, main)
    with torch.no_grad():
        ref_logps, _ = sequence_logps(ref, main)
        kl_logps, _ = sequence_logps(our_model, kl_batch)
        kl_ref, _ = sequence_logps(ref, kl_batch)
    labels = torch.tensor([r["label"] for r in UNPAIRED])
    losses, _, kl = kto_loss(logps, ref_logps, labels, kl_logps, kl_ref, **kwargs)
    loss = losses.mean()
    loss.backward()

    assert float(kl) >= 0
    assert loss.item() == pytest.approx(trl_loss.item(), abs=TOL)
    assert _grad_norm(our_model) == pytest.approx(_grad_norm(trl_model), abs=TOL)
    assert _grad_norm(our_model) > 1e-3


def test_plain_text_dpo_tokenization_matches_trl(models, tmp_path):
    """Plain-text rows: TRL appends eos to completions and tokenizes prompt + completion; so do we."""
    from trl import DPOConfig, DPOTrainer

    tok, policy, ref = models
    rows = [{"prompt": "3 + 4 =", "chosen": " 7", "rejected": " 8. The answer is \\boxed{8}."},
            {"prompt": "def f(x):", "chosen": " return x * 2", "rejected": " print(1)"}]
    args = DPOConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False,
                     per_device_train_batch_size=2,
                     max_length=None)
    trainer = DPOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(ref), args=args,
                         train_dataset=datasets.Dataset.from_list(rows), processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))
    feats = [encode_prompt_completion(tok, r["prompt"], r[k]) for k in ("chosen", "rejected") for r in rows]
    assert _our_rows(feats) == _trl_batch_rows(batch)
    assert all(f["input_ids"][-1] == tok.eos_token_id and f["loss_mask"][-1] == 1 for f in feats)


def test_reward_model_matches_trl(tiny_model, tmp_path):
    """RewardTrainer (Bradley–Terry with per-pair margins) on a sequence-classification tiny model."""
    from trl import RewardConfig, RewardTrainer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    torch.manual_seed(3)
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1, dtype=torch.float32)
    rm.config.pad_token_id = tok.pad_token_id
    trl_model, our_model = copy.deepcopy(rm), copy.deepcopy(rm)
    rows = [{**r, "margin": m} for r, m in zip(PAIRS, (0.5, 0.0, 1.0))]
    args = RewardConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False,
                        per_device_train_batch_size=len(rows), max_length=None)
    trainer = RewardTrainer(model=trl_model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                            processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))
    trl_loss = trainer.compute_loss(trl_model, dict(batch))
    trl_loss.backward()

    # TRL scores prompt + completion as one conversation; the loss mask is not used for scoring
    feats = [encode_prompt_completion(tok, r["prompt"], r[k]) for k in ("chosen", "rejected") for r in rows]
    ours = collate(feats, tok.pad_token_id)
    assert sorted(tuple(i[a == 1].tolist()) for i, a in zip(batch["input_ids"], batch["attention_mask"])) == sorted(
        tuple(f["input_ids"]) for f in feats
    )
    chosen, rejected = reward_model_scores(our_model, ours).chunk(2)
    margins = torch.tensor([r["margin"] for r in rows])
    loss = bradley_terry_loss(chosen, rejected, margins).mean()
    loss.backward()

    assert loss.item() == pytest.approx(trl_loss.item(), abs=TOL)
    assert _grad_norm(our_model) == pytest.approx(_grad_norm(trl_model), abs=TOL)
    assert _grad_norm(our_model) > 1e-3
