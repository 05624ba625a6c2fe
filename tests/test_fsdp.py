"""`--fsdp` under `torchrun --nproc-per-node 2` (gloo, CPU): sharded training gives one process's weights.

Offline DPO (with an eval split and gradient accumulation), online GRPO and PPO (policy, value model and
reference all sharded) each equal their unsharded run within 1e-4 on the final weights; the saved folders load
with `from_pretrained`; a run stopped after a checkpoint and continued with `--resume` ends with the
uninterrupted sharded run's weights.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipelines.core.dataset import write_dataset
from trainers.offline.config import TrainConfig
from trainers.offline.loop import train
from trainers.core.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]


def _torchrun(module_args: list[str], port: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(port + os.getpid() % 1000), "-m", "trainers.cli", *module_args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _assert_same_weights(a_dir: Path, b_dir: Path, atol: float) -> None:
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(a_dir)
    b = AutoModelForCausalLM.from_pretrained(b_dir)
    with torch.no_grad():
        for (name, p), q in zip(a.named_parameters(), b.parameters()):
            assert torch.allclose(p, q, atol=atol), (name, float((p - q).abs().max()))


def _rows(n: int) -> list[dict]:
    import random

    rng = random.Random(1)
    rows = []
    for i in range(n):
        a, b = rng.randint(0, 50), rng.randint(0, 50)
        good = f"{a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}." + " step" * (i % 5)
        rows.append({"prompt": f"What is {a} + {b}?", "chosen": good, "rejected": f"It is {a - b}."})
    return rows


DPO = dict(lr=1e-3, batch_size=6, grad_accum=2, warmup_ratio=0.0, scheduler="constant", eval_split=0.2,
           progress=False, plots=False)


def _dpo_flags(model, data, out, cache, steps: int, *extra: str) -> list[str]:
    return ["dpo", "--model", str(model), "--data", str(data), "--output", str(out), "--lr", "1e-3",
            "--batch-size", "6", "--grad-accum", "2", "--warmup-ratio", "0", "--scheduler", "constant",
            "--eval-split", "0.2", "--max-steps", str(steps), "--no-progress", "--no-plots",
            "--ref-cache-dir", str(cache), "--fsdp", *extra]


@pytest.fixture(scope="module")
def dpo_runs(tiny_model, tmp_path_factory):
    """One unsharded process and two sharded processes, 4 DPO steps each, on the same data."""
    tmp = tmp_path_factory.mktemp("fsdp_dpo")
    data = write_dataset(_rows(30), tmp / "data")
    train(TrainConfig(algorithm="dpo", model=str(tiny_model), data=str(data), output=str(tmp / "one"), max_steps=4,
                      ref_cache_dir=str(tmp / "cache1"), **DPO))
    # its own cache: the sharded reference pass runs too
    _torchrun(_dpo_flags(tiny_model, data, tmp / "fsdp", tmp / "cache2", 4), 29500)
    return tmp, data


def test_dpo_sharded_two_processes_match_one(dpo_runs):
    tmp, _ = dpo_runs
    one, two = read_metrics(tmp / "one"), read_metrics(tmp / "fsdp")
    assert [(r["split"], r["step"]) for r in two] == [(r["split"], r["step"]) for r in one]
    for a, b in zip(one, two):
        if a["split"] == "train":
            assert b["loss"] == pytest.approx(a["loss"], abs=1e-4)
            assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3)  # clipped at 1.0: the global norm
        else:
            assert b["eval/loss"] == pytest.approx(a["eval/loss"], abs=1e-4)
    assert json.loads((tmp / "fsdp" / "run_info.json").read_text())["world_size"] == 2
    config = json.loads((tmp / "fsdp" / "model" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]  # not FSDP's wrapper class
    _assert_same_weights(tmp / "one" / "model", tmp / "fsdp" / "model", atol=1e-4)


def test_dpo_sharded_resume_gives_the_uninterrupted_weights(dpo_runs, tiny_model):
    tmp, data = dpo_runs
    out = tmp / "resumed"
    _torchrun(_dpo_flags(tiny_model, data, out, tmp / "cache2", 3, "--save-every", "2"), 29540)
    ckpt = out / "checkpoints" / "step-00000002"
    optim = torch.load(ckpt / "optimizer.pt", weights_only=False)
    names = set(optim["state"])
    assert "model.embed_tokens.weight" in names  # the full state, keyed by parameter name
    assert optim["state"]["model.embed_tokens.weight"]["exp_avg"].shape[0] == 1024  # not a 512-row shard
    # as if killed after step 3, before it finished (a finished run is not extended by --resume)
    (out / "train_result.json").unlink()
    proc = _torchrun(_dpo_flags(tiny_model, data, out, tmp / "cache2", 4, "--resume"), 29580)
    assert "resuming from" in proc.stderr and "step-00000002" in proc.stderr
    steps = [r["step"] for r in read_metrics(out) if r["split"] == "train"]
    assert steps == [1, 2, 3, 4]
    _assert_same_weights(tmp / "fsdp" / "model", out / "model", atol=1e-5)


def test_grpo_sharded_two_processes_match_one(tmp_path, tiny_model):
    from pipelines.cli import main as cli

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"say something {i}", "answer": str(i)}) + "\n"
                               for i in range(12)))
    # 3 prompts per step over 2 ranks: rank 0 samples 2 groups, rank 1 one (unequal generate calls and
    # micro-batches, which the padding forwards and the gathered weights for sampling must absorb)
    args = ["--model", str(tiny_model), "--prompts", str(prompts), "--reward", "plugin_rewards:first_char_reward",
            "--num-generations", "4", "--prompts-per-step", "3", "--max-new-tokens", "6", "--lr", "1e-3",
            "--seed", "3", "--threads", "1", "--max-steps", "3", "--save-every", "0", "--micro-batch-size", "2",
            "--eval-prompts", str(prompts), "--eval-limit", "5", "--eval-every", "3"]
    assert cli(["train", "grpo", *args, "--output", str(tmp_path / "one")]) == 0
    _torchrun(["grpo", *args, "--output", str(tmp_path / "two"), "--fsdp"], 29620)
    m1 = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["split"], r["step"]) for r in m2] == [(r["split"], r["step"]) for r in m1]
    for a, b in zip(m1, m2):
        for key in ("reward", "accuracy", "loss", "grad_norm", "sequences", "entropy"):
            if key in a:
                assert b[key] == pytest.approx(a[key], abs=1e-4), (a["step"], key)
    assert any(r.get("grad_norm", 0) > 0 for r in m1)
    _assert_same_weights(tmp_path / "one" / "model", tmp_path / "two" / "model", atol=1e-4)


def test_ppo_sharded_two_processes_match_one_and_resume(tmp_path, tiny_model):
    from transformers import AutoModelForSequenceClassification

    from pipelines.cli import main as cli

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"say something {i}"}) + "\n" for i in range(12)))
    # 3 prompts per step, one micro-batch each: rank 0 trains 2 micro-batches, rank 1 one and a padding one
    args = ["--model", str(tiny_model), "--prompts", str(prompts), "--reward", "plugin_rewards:first_char_reward",
            "--prompts-per-step", "3", "--max-new-tokens", "6", "--lr", "1e-3", "--seed", "3", "--threads", "1",
            "--num-iterations", "2", "--micro-batch-size", "1"]
    assert cli(["train", "ppo", *args, "--max-steps", "3", "--save-every", "0", "--output", str(tmp_path / "one")]) == 0
    _torchrun(["ppo", *args, "--max-steps", "3", "--save-every", "0", "--output", str(tmp_path / "two"), "--fsdp"],
              29660)
    m1 = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in m2] == [r["step"] for r in m1] == [1, 2, 3]
    for a, b in zip(m1, m2):
        for key in ("reward", "loss", "value_loss", "kl", "grad_norm", "value_grad_norm", "sequences"):
            assert b[key] == pytest.approx(a[key], abs=1e-4), (a["step"], key)
    assert all(r["value_grad_norm"] > 0 and r["grad_norm"] > 0 for r in m1)
    _assert_same_weights(tmp_path / "one" / "model", tmp_path / "two" / "model", atol=1e-4)
    v1 = AutoModelForSequenceClassification.from_pretrained(tmp_path / "one" / "value_model")
    v2 = AutoModelForSequenceClassification.from_pretrained(tmp_path / "two" / "value_model")
    with torch.no_grad():
        for (name, p), q in zip(v1.named_parameters(), v2.parameters()):
            assert torch.allclose(p, q, atol=1e-4), (name, float((p - q).abs().max()))
    # sharded, stopped after the step-2 checkpoint, then resumed: the uninterrupted sharded run's weights
    out = tmp_path / "resumed"
    _torchrun(["ppo", *args, "--max-steps", "2", "--save-every", "2", "--output", str(out), "--fsdp"], 29700)
    optim = torch.load(out / "checkpoints" / "step-00000002" / "value" / "optimizer.pt", weights_only=False)
    assert any(k.endswith("score.weight") for k in optim["optimizer"]["state"])  # full, keyed by name
    proc = _torchrun(["ppo", *args, "--max-steps", "3", "--save-every", "2", "--output", str(out), "--fsdp",
                      "--resume"], 29740)
    assert "resuming from" in proc.stderr
    _assert_same_weights(tmp_path / "two" / "model", out / "model", atol=1e-5)
    v3 = AutoModelForSequenceClassification.from_pretrained(out / "value_model")
    with torch.no_grad():
        for (name, p), q in zip(v2.named_parameters(), v3.parameters()):
            assert torch.allclose(p, q, atol=1e-5), (name, float((p - q).abs().max()))
