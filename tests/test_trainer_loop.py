"""The shared training loop end to end on the tiny model: sft, dpo (+ reference-free), kto, rm; metrics,
plots, the reference log-prob cache, gradient accumulation, the CLI and its errors."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from pipelines.core.dataset import write_dataset
from trainers.offline.config import TrainConfig
from trainers.offline.loop import train
from trainers.core.metrics import read_metrics


def _sums(n: int, seed: int = 0):
    rng = random.Random(seed)
    for i in range(n):
        a, b = rng.randint(0, 50), rng.randint(0, 50)
        good = f"{a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}." + " step" * (i % 4)
        bad = f"The answer is {a + b + rng.randint(1, 9)}."
        yield i, f"What is {a} + {b}?", good, bad


def pref_data(path: Path, n: int = 24) -> Path:
    return write_dataset([{"prompt": p, "chosen": g, "rejected": b} for _, p, g, b in _sums(n)], path)


def kto_data(path: Path, n: int = 24, manifest: dict | None = None) -> Path:
    rows = [{"prompt": p, "completion": g if i % 3 else b, "label": bool(i % 3)} for i, p, g, b in _sums(n)]
    return write_dataset(rows, path, manifest=manifest)


def cfg_for(algorithm: str, model: Path, data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(lr=1e-3, max_steps=4, batch_size=8, warmup_ratio=0.0, progress=False, plots=False,
                ref_cache_dir=str(out.parent / "refcache"))
    base.update(kw)
    return TrainConfig(algorithm=algorithm, model=str(model), data=str(data), output=str(out), **base)


def test_dpo_metrics_plots_final_model_and_ref_cache_reuse(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = pref_data(tmp_path / "pref")
    cfg = cfg_for("dpo", tiny_model, data, tmp_path / "run1", eval_split=0.25, eval_every=2, plots=True)
    result = train(cfg)
    run = tmp_path / "run1"
    train_recs = [r for r in read_metrics(run) if r["split"] == "train"]
    eval_recs = [r for r in read_metrics(run) if r["split"] == "eval"]
    assert [r["step"] for r in train_recs] == [1, 2, 3, 4]
    for key in ("loss", "logps/chosen", "logps/rejected", "rewards/chosen", "rewards/rejected", "rewards/margins",
                "rewards/accuracies", "grad_norm", "lr", "tokens_per_s", "epoch"):
        assert all(isinstance(r[key], float) for r in train_recs), key
    # step 1: policy == reference, so DPO's loss is exactly log 2 and all implicit rewards are 0
    assert train_recs[0]["loss"] == pytest.approx(0.6931472, abs=1e-5)
    assert train_recs[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert train_recs[-1]["loss"] < 0.6  # lr 1e-3 separates these pairs quickly
    assert [r["step"] for r in eval_recs] == [0, 2, 4]  # step 0: the held-out point before training
    assert eval_recs[0]["eval/loss"] == pytest.approx(0.6931472, abs=1e-5)
    assert 0.0 <= eval_recs[-1]["eval/rewards/accuracies"] <= 1.0
    assert result.eval_metrics["rewards/accuracies"] == eval_recs[-1]["eval/rewards/accuracies"]
    assert {"loss.png", "rewards_accuracies.png", "rewards_margins.png"} <= {p.name for p in (run / "plots").iterdir()}
    # the final model (with its tokenizer) loads from OUTPUT/model and has moved off the start
    trained = AutoModelForCausalLM.from_pretrained(run / "model")
    start = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert AutoTokenizer.from_pretrained(run / "model").chat_template
    assert not torch.equal(trained.model.norm.weight, start.model.norm.weight)
    info = json.loads((run / "run_info.json").read_text())["ref_cache"]
    assert info["train"]["hit"] is False and info["train"]["forward_passes"] > 0

    # a second run on the same data and reference reads the cache: no reference forward pass
    again = train(cfg_for("dpo", tiny_model, data, tmp_path / "run2", eval_split=0.25, eval_every=2))
    info2 = json.loads((tmp_path / "run2" / "run_info.json").read_text())["ref_cache"]
    assert again.ref_cache_hits == {"train": True, "eval": True}
    assert info2["train"] == {"key": info["train"]["key"], "hit": True, "forward_passes": 0}
    run2_train = [r for r in read_metrics(tmp_path / "run2") if r["split"] == "train"]
    assert run2_train[0]["loss"] == pytest.approx(train_recs[0]["loss"], abs=1e-7)
    # a different max_length changes the tokens scored, hence the key
    train(cfg_for("dpo", tiny_model, data, tmp_path / "run3", max_steps=1, max_length=12))
    info3 = json.loads((tmp_path / "run3" / "run_info.json").read_text())["ref_cache"]
    assert info3["train"]["hit"] is False and info3["train"]["key"] != info["train"]["key"]


def test_grad_accum_and_batch_split_give_the_same_curve(tiny_model, tmp_path):
    data = pref_data(tmp_path / "pref")
    one = train(cfg_for("dpo", tiny_model, data, tmp_path / "a", loss="ipo", max_steps=3))
    four = train(cfg_for("dpo", tiny_model, data, tmp_path / "b", loss="ipo", max_steps=3, grad_accum=4))
    a, b = read_metrics(one.output), read_metrics(four.output)
    assert len(a) == len(b) == 3
    for ra, rb in zip(a, b):
        assert rb["loss"] == pytest.approx(ra["loss"], abs=1e-5)
        assert rb["grad_norm"] == pytest.approx(ra["grad_norm"], rel=1e-4)


def test_sft_messages_learns_and_masks_prompt(tiny_model, tmp_path):
    rows = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": g}]}
            for _, p, g, _ in _sums(16)]
    data = write_dataset(rows, tmp_path / "sft")
    result = train(cfg_for("sft", tiny_model, data, tmp_path / "run", max_steps=None, epochs=4, batch_size=4,
                           scheduler="linear"))
    recs = read_metrics(result.output)
    assert result.steps == 16 and len(recs) == 16
    assert recs[-1]["epoch"] == pytest.approx(4.0)
    assert recs[-1]["lr"] < recs[0]["lr"]  # linear decay
    first, last = sum(r["loss"] for r in recs[:4]) / 4, sum(r["loss"] for r in recs[-4:]) / 4
    assert last < first - 0.5
    # trained tokens = assistant turn only (content + <|im_end|> + newline), never the user turn
    assert all(0 < r["completion_tokens"] < 40 and r["tokens"] > 4 * r["completion_tokens"] for r in recs)


def test_kto_reads_manifest_weights_and_logs_kl(tiny_model, tmp_path):
    data = kto_data(tmp_path / "kto", manifest={"kto": {"desirable_weight": 1.0, "undesirable_weight": 1.7}})
    result = train(cfg_for("kto", tiny_model, data, tmp_path / "run", eval_split=0.25, group_by_length=False))
    saved = json.loads((tmp_path / "run" / "prefsmith_train.json").read_text())
    assert (saved["desirable_weight"], saved["undesirable_weight"]) == (1.0, 1.7)
    recs = [r for r in read_metrics(result.output) if r["split"] == "train"]
    assert len(recs) == 4
    assert recs[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # policy == reference at step 1, z0 = 0
    assert recs[0]["loss"] == pytest.approx(0.5 * recs[0]["desirable_fraction"] + 0.85 * (1 - recs[0]["desirable_fraction"]), abs=1e-4)
    assert all(r["kl"] >= 0 for r in recs)
    assert "kl" in result.eval_metrics and result.eval_metrics["rewards/accuracies"] >= 0


def test_reward_model_on_rankings_and_reference_free_simpo(tiny_model, tmp_path):
    from transformers import AutoModelForSequenceClassification

    rows = [{"prompt": p, "completions": [b, g, b + " maybe"], "ranking": [1, 2, 0]} for _, p, g, b in _sums(12)]
    data = write_dataset(rows, tmp_path / "ranked")
    result = train(cfg_for("rm", tiny_model, data, tmp_path / "rm", max_steps=6, batch_size=12))
    recs = read_metrics(result.output)
    assert recs[0]["examples"] == 12  # 12 ranked rows expand to 36 pairs; a step takes 12 pairs
    assert recs[-1]["accuracy"] > 0.8
    rm = AutoModelForSequenceClassification.from_pretrained(result.output / "model")
    assert rm.config.num_labels == 1 and rm.score.weight.shape[0] == 1

    pref = pref_data(tmp_path / "pref")
    simpo = train(cfg_for("dpo", tiny_model, pref, tmp_path / "simpo", loss="simpo", no_reference=True, max_steps=2))
    assert simpo.ref_cache_hits == {}
    assert json.loads((tmp_path / "simpo" / "run_info.json").read_text())["ref_cache"] == {}
    # SimPO's loss is -log σ(margin - γ) per pair, so it is at least -log σ(mean margin - γ) (Jensen)
    first = read_metrics(simpo.output)[0]
    bound = -torch.nn.functional.logsigmoid(torch.tensor(first["rewards/margins"] - 1.0)).item()
    assert first["loss"] >= bound - 1e-5 and first["rewards/chosen"] < 0  # reward = β · average log-prob
    orpo = train(cfg_for("dpo", tiny_model, pref, tmp_path / "orpo", loss="orpo", max_steps=2, dtype="bf16"))
    assert orpo.ref_cache_hits == {} and "log_odds_ratio" in orpo.train_metrics


def test_cli_errors_and_plot(tiny_model, tmp_path, capsys):
    from pipelines.cli import main as prefsmith

    bad = write_dataset([{"prompt": "x", "chosen": "y"}], tmp_path / "bad")
    code = prefsmith(["train", "dpo", "--model", str(tiny_model), "--data", str(bad), "--output", str(tmp_path / "o")])
    assert code == 2 and "'rejected'" in capsys.readouterr().err
    code = prefsmith(["train", "dpo", "--model", str(tiny_model), "--data", str(bad), "--output", str(tmp_path / "o"),
                      "--no-reference"])
    assert code == 2 and "reference-free" in capsys.readouterr().err
    data = kto_data(tmp_path / "kto")
    args = ["train", "kto", "--model", str(tiny_model), "--data", str(data), "--output", str(tmp_path / "k"),
            "--max-steps", "2", "--batch-size", "6", "--no-progress", "--ref-cache-dir", str(tmp_path / "c")]
    assert prefsmith(args) == 0
    assert (tmp_path / "k" / "plots" / "kl.png").exists()
    # plots can be redrawn on demand from metrics.jsonl
    assert prefsmith(["plot", str(tmp_path / "k")]) == 0
    assert "loss.png" in capsys.readouterr().out


def test_lora_trains_adapters_and_saves_a_merged_model(tiny_model, tmp_path):
    from safetensors.torch import load_file

    result = train(cfg_for("dpo", tiny_model, pref_data(tmp_path / "pref"), tmp_path / "lora", lora_r=4, max_steps=3,
                           save_every=2))
    ckpt_dir = tmp_path / "lora" / "checkpoints" / "step-00000002"
    assert (ckpt_dir / "adapter_model.safetensors").exists() and (ckpt_dir / "optimizer.pt").exists()
    merged = load_file(result.output / "model" / "model.safetensors")
    start = load_file(tiny_model / "model.safetensors")
    assert merged.keys() == start.keys()  # a plain model: no lora_A / lora_B / base_layer names
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"], start["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(merged["model.norm.weight"], start["model.norm.weight"])  # only adapted layers move
    assert read_metrics(result.output)[-1]["loss"] < 0.6931
