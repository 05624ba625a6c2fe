"""The algorithm seam: a new offline algorithm and a new DPO loss type are each one registration, here in this
test module, and `train()`, the config check (`check_config`) and the CLI pick them up with no other edit."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pipelines.core.dataset import write_dataset
from pipelines.errors import UserError
from trainers.offline.algorithms import Algorithm, Stats, check_config, register_algorithm, register_dpo_loss
from trainers.cli import build_parser, config_from_args
from trainers.offline.config import TrainConfig
from trainers.core.data import collate, encode_prompt_completion
from trainers.core.logprobs import sequence_logps
from trainers.offline.loop import train
from trainers.core.metrics import read_metrics


# ------------------------------------------------------------------------------------------------ the one place each
@register_algorithm
class SequenceNLL(Algorithm):
    """Toy: a completion's summed NLL, averaged over rows (one loss unit per row, not per token). Its
    `before_step` hook records how many rows of the step this process got, which `loss` reports."""

    name = "toy_seq_nll"
    default_lr = 3e-4
    required_columns = ("prompt", "completion")
    metric_names = ("loss", "hook_rows")

    def encode(self, rows, tokenizer, cfg, source):
        feats = [encode_prompt_completion(tokenizer, r["prompt"], r["completion"], cfg.max_length) for r in rows]
        return [{"seq": f, "length": len(f["input_ids"]), "units": 1} for f in feats]

    def before_step(self, model, examples, indices, ref, ctx, d):
        self.hook_rows = len(indices)

    before_eval = before_step

    def loss(self, model, examples, ref, ctx):
        batch = {k: v.to(ctx.device) for k, v in collate([e["seq"] for e in examples], ctx.pad_id).items()}
        logps, _ = sequence_logps(model, batch)
        loss_sum = -logps.sum()
        stats = Stats()
        stats.add("loss", loss_sum.detach(), len(examples))
        stats.add("hook_rows", self.hook_rows * len(examples), len(examples))
        return loss_sum, stats


@register_dpo_loss("toy_sigmoid", default_beta=0.5, metrics=("toy/margin",))
def toy_sigmoid(p, beta, cfg):
    """DPO's sigmoid loss written out again, with its own default β and one extra metric (the log-ratio margin)."""
    chosen, rejected = p.chosen - p.ref_chosen, p.rejected - p.ref_rejected
    losses = -F.logsigmoid(beta * (chosen - rejected))
    return losses, beta * chosen.detach(), beta * rejected.detach(), {"toy/margin": (chosen - rejected).detach()}


# ------------------------------------------------------------------------------------------------ tests
def _rows(n: int, offset: int = 0) -> list[dict]:
    out = []
    for i in range(offset, offset + n):
        a, b = 3 * i + 1, 7 * i + 2
        out.append({"prompt": f"What is {a} + {b}?", "completion": f"{a} + {b} = {a + b}." + " ok" * (i % 3),
                    "chosen": f"It is {a + b}.", "rejected": f"It is {a * b}."})
    return out


def _cfg(model, data, out, algorithm, **kw) -> TrainConfig:
    base = dict(lr=1e-3, max_steps=1, batch_size=6, warmup_ratio=0.0, progress=False, plots=False,
                ref_cache_dir=str(out.parent / "refcache"))
    base.update(kw)
    return TrainConfig(algorithm=algorithm, model=str(model), data=str(data), output=str(out), **base)


def test_a_registered_algorithm_trains_through_train_with_its_hooks(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = [{"prompt": r["prompt"], "completion": r["completion"]} for r in _rows(6)]  # no other columns needed
    data = write_dataset(rows, tmp_path / "train")
    held = write_dataset([{"prompt": r["prompt"], "completion": r["completion"]} for r in _rows(2, 6)],
                         tmp_path / "held")
    result = train(_cfg(tiny_model, data, tmp_path / "run", "toy_seq_nll", grad_accum=2, eval_data=str(held)))

    # the step-1 loss is the starting model's mean per-row NLL, computed here independently
    tok = AutoTokenizer.from_pretrained(tiny_model)
    start = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    feats = [encode_prompt_completion(tok, r["prompt"], r["completion"], 1024) for r in rows]
    with torch.no_grad():
        expected = -sequence_logps(start, collate(feats, tok.pad_token_id))[0].mean().item()
    recs = read_metrics(result.output)
    train_recs = [r for r in recs if r["split"] == "train"]
    assert [r["step"] for r in train_recs] == [1] and train_recs[0]["examples"] == 6
    assert train_recs[0]["loss"] == pytest.approx(expected, abs=1e-4)
    assert train_recs[0]["hook_rows"] == 6  # before_step saw the whole step, not one of the two micro-batches
    assert [(r["step"], r["eval/hook_rows"]) for r in recs if r["split"] == "eval"] == [(0, 2), (1, 2)]
    trained = AutoModelForCausalLM.from_pretrained(result.output / "model")
    assert not torch.equal(trained.model.norm.weight, start.model.norm.weight)

    # its columns are the ones checked, and the CLI offers it with its own default learning rate
    with pytest.raises(UserError, match="'completion'"):
        train(_cfg(tiny_model, write_dataset([{"prompt": "x"}], tmp_path / "bad"), tmp_path / "bad_run",
                   "toy_seq_nll"))
    args = build_parser().parse_args(["toy_seq_nll", "--model", "m", "--data", "d", "--output", "o"])
    assert config_from_args(args).lr == 3e-4
    with pytest.raises(ValueError, match="toy_seq_nll"):
        check_config(TrainConfig(algorithm="nope", model="m", data="d", output="o"))


def test_a_registered_dpo_loss_type_trains_like_the_builtin_it_restates(tiny_model, tmp_path):
    data = write_dataset([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in _rows(12)], tmp_path / "pref")
    toy = train(_cfg(tiny_model, data, tmp_path / "toy", "dpo", loss="toy_sigmoid", max_steps=2))
    builtin = train(_cfg(tiny_model, data, tmp_path / "sigmoid", "dpo", loss="sigmoid", beta=0.5, max_steps=2))
    a, b = read_metrics(toy.output), read_metrics(builtin.output)
    assert a[0]["loss"] == pytest.approx(math.log(2), abs=1e-5) and a[0]["toy/margin"] == pytest.approx(0, abs=1e-5)
    for ra, rb in zip(a, b):  # same loss with the loss type's default β (0.5): same curve
        for key in ("loss", "grad_norm", "rewards/margins", "rewards/accuracies"):
            assert ra[key] == pytest.approx(rb[key], abs=1e-6), key
        assert ra["toy/margin"] * 0.5 == pytest.approx(rb["rewards/margins"], abs=1e-6)
    assert builtin.ref_cache_hits == {"train": True}  # it needs a reference, the same one: scored once
    refused = TrainConfig(algorithm="dpo", model="m", data="d", output="o", loss="toy_sigmoid", no_reference=True)
    assert "--loss toy_sigmoid" in str(pytest.raises(ValueError, check_config, refused).value)
    args = build_parser().parse_args(["dpo", "--loss", "toy_sigmoid", "--model", "m", "--data", "d", "--output", "o"])
    assert config_from_args(args).loss == "toy_sigmoid"
