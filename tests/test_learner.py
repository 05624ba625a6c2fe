"""The shared Learner and what it gives every trainer on the CPU: `--device`/`--dtype` decided once, gradient
checkpointing and micro-batching by tokens that change memory and not the result, LoRA for the online loops
(adapters train, the base stays frozen, the reference is the base with adapters off, a resumed run equals an
uninterrupted one, vLLM-style exports merge the adapters)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipelines.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]


def args(algo, model, prompts, out, *extra):
    return ["train", algo, "--model", str(model), "--prompts", str(prompts), "--output", str(out),
            "--reward", "plugin_rewards:first_char_reward", "--num-generations", "4", "--prompts-per-step", "2",
            "--max-new-tokens", "6", "--lr", "1e-3", "--seed", "3", "--threads", "1", "--no-dynamic-sampling",
            "--save-every", "0", *extra]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_memory_savers_change_memory_not_the_result(tmp_path, tiny_model, prompts):
    """Gradient checkpointing and a token budget per micro-batch give the weights of the plain run (fp32)."""
    base = ("--max-steps", "2", "--beta", "0.05", "--num-iterations", "2", "--micro-batch-size", "4")
    plain, ckpt, tokens = tmp_path / "plain", tmp_path / "ckpt", tmp_path / "tokens"
    assert cli(args("grpo", tiny_model, prompts, plain, *base)) == 0
    assert cli(args("grpo", tiny_model, prompts, ckpt, *base, "--gradient-checkpointing")) == 0
    assert cli(args("grpo", tiny_model, prompts, tokens, *base, "--micro-batch-tokens", "40")) == 0
    p = weights(plain / "model")
    assert max_diff(p, weights(ckpt / "model")) < 1e-6
    # other micro-batches sum the same gradient in another order (and pad to other widths): float-order noise,
    # which AdamW at lr 1e-3 turns into a few 1e-6 on the weights
    assert max_diff(p, weights(tokens / "model")) < 2e-5
    assert max_diff(p, weights(tiny_model)) > 0  # it trained


def test_device_and_dtype_are_decided_once_and_refused_clearly(tmp_path, tiny_model, prompts, capsys):
    from trainers.core.distributed import pick_device
    from trainers.core.learner import resolve_dtype

    assert pick_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == "fp32"
    assert resolve_dtype("auto", torch.device("cuda", 0)) == "bf16"
    if not torch.cuda.is_available():
        assert pick_device("auto") == torch.device("cpu")
        assert cli(args("grpo", tiny_model, prompts, tmp_path / "gpu", "--max-steps", "1", "--device", "cuda")) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("prefsmith train grpo: error: --device cuda: torch sees no CUDA GPU")
    assert cli(args("grpo", tiny_model, prompts, tmp_path / "bad", "--max-steps", "1", "--device", "tpu")) == 2
    assert "choose one of auto | cpu | cuda | cuda:N" in capsys.readouterr().err
    # bf16 autocast runs on the CPU too (the GPU's precision path, exercised here), and is recorded
    out = tmp_path / "bf16"
    assert cli(args("grpo", tiny_model, prompts, out, "--max-steps", "1", "--device", "cpu", "--dtype", "bf16")) == 0
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert rec["loss"] == rec["loss"] and rec["entropy"] > 0  # finite


def test_offline_trainer_takes_the_same_device_options(tmp_path, tiny_model):
    from trainers.offline.config import TrainConfig
    from trainers.offline.loop import train

    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"say {i}", "completion": f" {i} {i}"}) + "\n" for i in range(8)))
    runs = {}
    for name, extra in (("plain", {}), ("ckpt", {"gradient_checkpointing": True})):
        cfg = TrainConfig(algorithm="sft", model=str(tiny_model), data=str(data), output=str(tmp_path / name),
                          max_steps=2, batch_size=4, lr=1e-3, device="cpu", progress=False, plots=False, **extra)
        train(cfg)
        runs[name] = weights(tmp_path / name / "model")
        saved = json.loads((tmp_path / name / "prefsmith_train.json").read_text())
        assert saved["dtype"] == "fp32" and saved["device"] == "cpu"  # auto resolved, and written down
    assert max_diff(runs["plain"], runs["ckpt"]) < 1e-6


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_lora_online_trains_adapters_only_and_resumes_exactly(tmp_path, tiny_model, prompts, algo):
    pytest.importorskip("peft")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    lora = ("--lora-r", "4", "--lora-alpha", "8", "--max-steps", "4", "--lr", "5e-3")
    kl = ("--beta", "0.1") if algo == "grpo" else ("--kl-coef", "0.1", "--prompts-per-step", "4")
    clean, split = tmp_path / "clean", tmp_path / "split"
    assert cli(args(algo, tiny_model, prompts, clean, *lora, *kl)) == 0
    # the same run stopped after 2 steps (with a checkpoint) and resumed to 4
    assert cli([*args(algo, tiny_model, prompts, split, *lora, *kl), "--max-steps", "2", "--save-every", "2"]) == 0
    ckpt = split / "checkpoints" / "step-00000002"
    assert (ckpt / "adapter_config.json").is_file() and not (ckpt / "model.safetensors").exists()  # adapters only
    (split / "train_result.json").unlink()  # as if the run had been stopped there
    assert cli([*args(algo, tiny_model, prompts, split, *lora, *kl), "--save-every", "2", "--resume"]) == 0
    merged_clean, merged_split = weights(clean / "model"), weights(split / "model")
    assert max_diff(merged_clean, merged_split) < 1e-6
    # the merged model is a plain model of the base architecture, changed by the adapters
    base = weights(tiny_model)
    assert merged_clean.keys() == base.keys() and max_diff(merged_clean, base) > 0
    # the base weights under the adapters never moved; the adapters did
    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), clean / "adapter")
    frozen = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
              for k, v in policy.state_dict().items() if "lora_" not in k}
    assert max(float((frozen[k] - base[k]).abs().max()) for k in base) == 0.0
    assert any(float(v.abs().max()) > 0 for k, v in policy.state_dict().items() if "lora_B" in k)
    rec = [json.loads(x) for x in (clean / "metrics.jsonl").read_text().splitlines()][-1]
    assert rec["kl"] > 0  # the reference (the base, adapters off) differs from the trained policy


def test_lora_reference_is_the_base_with_adapters_off(tiny_model):
    """`ref_logps` under LoRA scores with the adapters off: equal to the base model's own log-probs, and different
    from the policy's once the adapters are non-zero; `export_weights` merges them like peft's merge does."""
    pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    from trainers.online.grpo import GRPOConfig, GRPORun, export_weights, load_policy
    from trainers.core.logprobs import token_logps

    cfg = GRPOConfig(model=str(tiny_model), prompts="-", output="-", rewards=["math"], lora_r=4, lora_alpha=8)
    policy = load_policy(cfg, None)
    for name, p in policy.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    run = GRPORun.__new__(GRPORun)
    run.cfg, run.model, run.ref = cfg, policy, None
    ids = torch.tensor([[5, 9, 12, 40, 41, 42, 43]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "loss_mask": torch.tensor([[0, 0, 1, 1, 1, 1, 1]])}
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        assert torch.allclose(run.ref_logps(batch), token_logps(base, batch), atol=1e-6)
        assert not torch.allclose(token_logps(policy, batch), token_logps(base, batch), atol=1e-4)
        exported = {k: v.clone() for k, v in export_weights(policy)}
        merged = policy.merge_and_unload()
        want = dict(merged.named_parameters())
    assert exported.keys() == want.keys()
    assert max(float((exported[k] - want[k]).abs().max()) for k in want) < 1e-6
