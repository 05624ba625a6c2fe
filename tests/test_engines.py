"""The `hf` engine and the shared engine helpers, on real tiny models."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from pipelines.engines import EngineError, SamplingConfig, load_engine
from pipelines.engines.base import derive_seed, end_of_turn_id, render_prompt_ids, stop_token_ids

CHAT = [{"role": "user", "content": "What is 2 + 3?"}]
PROMPTS = ["The answer is", CHAT, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]]


def make_stopping_model(src: Path, dst: Path, strength: float = 6.0) -> Path:
    """Copy the tiny model and untie its output head so that the eos token gets a large logit about half the
    time: completions then end by "stop" at varied lengths, or by "length", like a real model's."""
    from transformers import AutoModelForCausalLM

    if (dst / "config.json").exists():
        return dst
    shutil.copytree(src, dst)
    model = AutoModelForCausalLM.from_pretrained(dst, dtype=torch.float32)
    model.config.tie_word_embeddings = False
    head = model.model.embed_tokens.weight.detach().clone()
    eos, partner = model.generation_config.eos_token_id, 100
    head[eos] = 0.0
    head[partner] = 0.0
    head[eos, 0], head[partner, 0] = strength, -strength  # one of the two wins big, depending on a hidden sign
    model.lm_head.weight = torch.nn.Parameter(head)
    model.save_pretrained(dst)
    return dst


def check_samples(result, n_prompts: int, sampling: SamplingConfig, stop_ids: list[int]) -> None:
    """Shape and consistency checks every engine must pass."""
    assert len(result) == n_prompts
    for samples in result:
        assert len(samples) == sampling.n
        for s in samples:
            assert s.finish_reason in ("stop", "length")
            assert len(s.token_ids) == len(s.logprobs) <= sampling.max_new_tokens
            assert all(lp <= 1e-6 for lp in s.logprobs)
            if s.finish_reason == "length":
                assert len(s.token_ids) == sampling.max_new_tokens
                assert not set(s.token_ids) & set(stop_ids)
            else:  # ends with exactly one stop token, which the text leaves out
                assert s.token_ids[-1] in stop_ids and not set(s.token_ids[:-1]) & set(stop_ids)


def rescore(
    model_path: Path, prompt_ids: list[int], completion_ids: list[int], temperature: float = 1.0, top_p: float = 1.0
) -> list[float]:
    """Log-prob of each completion token under the model, with temperature and top-p applied the way samplers
    do (keep the smallest most-likely set whose mass reaches top_p, renormalise)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + completion_ids])).logits[0].float()
    out = []
    for pos, tid in enumerate(completion_ids):
        step = logits[len(prompt_ids) - 1 + pos] / temperature
        probs = step.softmax(-1)
        sorted_p, order = probs.sort(descending=True)
        keep = order[: max(1, int((sorted_p.cumsum(0) - sorted_p < top_p).sum()))]
        masked = torch.full_like(step, float("-inf"))
        masked[keep] = step[keep]
        out.append(masked.log_softmax(-1)[tid].item())
    return out


@pytest.fixture(scope="module")
def stopper(tiny_model, tmp_path_factory) -> Path:
    return make_stopping_model(tiny_model, tmp_path_factory.mktemp("stopper") / "m")


@pytest.fixture(scope="module")
def hf(stopper):
    engine = load_engine("hf", str(stopper), device="cpu")
    yield engine
    engine.close()


def test_hf_returns_n_consistent_samples(hf):
    sampling = SamplingConfig(n=4, temperature=1.0, max_new_tokens=12)
    result = hf.generate(PROMPTS, sampling, seeds=[1, 2, 3])
    check_samples(result, 3, sampling, hf.stop_ids)
    reasons = [s.finish_reason for samples in result for s in samples]
    assert "stop" in reasons and "length" in reasons  # the stopping model ends both ways at this length
    for samples in result:
        for s in samples:
            body = s.token_ids[:-1] if s.finish_reason == "stop" else s.token_ids
            assert s.text == hf.tokenizer.decode(body, skip_special_tokens=True)


def test_hf_max_new_tokens_gives_length(hf):
    result = hf.generate(["hello"], SamplingConfig(n=3, max_new_tokens=1), seeds=[0])
    for s in result[0]:
        assert len(s.token_ids) == 1
        assert s.finish_reason == ("stop" if s.token_ids[0] in hf.stop_ids else "length")
    result = hf.generate(["hello"], SamplingConfig(n=2, max_new_tokens=3), seeds=[5])
    assert all(len(s.token_ids) <= 3 for s in result[0])


def test_hf_seed_determinism_and_batch_independence(hf):
    sampling = SamplingConfig(n=3, temperature=0.9, top_p=0.95, max_new_tokens=10)
    alone = hf.generate([CHAT], sampling, seeds=[7])[0]
    again = hf.generate([CHAT], sampling, seeds=[7])[0]
    among = hf.generate(["other prompt", CHAT, "third"], sampling, seeds=[1, 7, 2])[1]
    other_seed = hf.generate([CHAT], sampling, seeds=[8])[0]
    ids = lambda samples: [s.token_ids for s in samples]  # noqa: E731
    assert ids(alone) == ids(again) == ids(among)
    # batched with other prompts (left padding): same tokens, log-probs equal up to float rounding. A padded
    # batch sums attention in another order; on some CPUs' kernels that moves a log-prob by ~2e-4 after 8 tokens
    for a, b in zip(alone, among):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-3)
    assert ids(other_seed) != ids(alone)
    assert len({tuple(x) for x in ids(alone)}) > 1  # the n samples differ from each other


def test_hf_logprobs_match_rescoring(hf, stopper):
    sampling = SamplingConfig(n=2, temperature=1.0, top_p=1.0, max_new_tokens=8)
    for prompt, seed in ((CHAT, 3), ("The answer is", 4)):
        prompt_ids = render_prompt_ids(hf.tokenizer, prompt)
        for s in hf.generate([prompt], sampling, seeds=[seed])[0]:
            assert s.logprobs == pytest.approx(rescore(stopper, prompt_ids, s.token_ids), abs=1e-4)


def test_hf_logprobs_follow_temperature_and_top_p(hf, stopper):
    """Sampling log-probs are those of the distribution sampled from: temperature-scaled, top-p renormalised."""
    prompt_ids = render_prompt_ids(hf.tokenizer, CHAT)
    for s in hf.generate([CHAT], SamplingConfig(n=3, temperature=0.5, top_p=0.3, max_new_tokens=6), seeds=[0])[0]:
        assert s.logprobs == pytest.approx(rescore(stopper, prompt_ids, s.token_ids, 0.5, 0.3), abs=1e-4)
        assert s.logprobs != pytest.approx(rescore(stopper, prompt_ids, s.token_ids), abs=1e-3)


def test_hf_prompt_batching_left_pads_correctly(hf, stopper):
    sampling = SamplingConfig(n=2, temperature=1.0, max_new_tokens=6)
    batched = load_engine("hf", str(stopper), device="cpu", prompt_batch_size=3)
    result = batched.generate(PROMPTS, sampling, seeds=[1, 2, 3])
    check_samples(result, 3, sampling, hf.stop_ids)
    for prompt, samples in zip(PROMPTS, result):  # padding must not leak into what the model conditions on
        prompt_ids = render_prompt_ids(hf.tokenizer, prompt)
        for s in samples:
            assert s.logprobs == pytest.approx(rescore(stopper, prompt_ids, s.token_ids), abs=1e-4)


def test_hf_per_row_sampling_draws_from_the_model_distribution(hf, stopper):
    """The Gumbel-max draw is real sampling: token frequencies over many samples match the model's
    temperature-scaled probabilities (total variation distance well under what a biased sampler gives)."""
    from transformers import AutoModelForCausalLM

    n, temperature = 4000, 0.4
    samples = hf.generate(["The answer is"], SamplingConfig(n=n, temperature=temperature, max_new_tokens=1), seeds=[3])[0]
    counts = torch.bincount(torch.tensor([s.token_ids[0] for s in samples]), minlength=len(hf.tokenizer)).float()
    model = AutoModelForCausalLM.from_pretrained(stopper, dtype=torch.float32).eval()
    prompt_ids = render_prompt_ids(hf.tokenizer, "The answer is")
    with torch.no_grad():
        probs = (model(torch.tensor([prompt_ids])).logits[0, -1].float() / temperature).softmax(-1)
    tv = 0.5 * (counts / n - probs[: counts.shape[0]]).abs().sum().item()
    assert tv < 0.05, tv
    top = int(probs.argmax())
    assert abs(counts[top].item() / n - probs[top].item()) < 4 * (probs[top].item() / n) ** 0.5 + 1e-3


def test_greedy_is_deterministic_across_seeds(hf):
    sampling = SamplingConfig(n=2, temperature=0.0, max_new_tokens=6)
    a, b = hf.generate([CHAT], sampling, seeds=[1])[0], hf.generate([CHAT], sampling, seeds=[2])[0]
    assert a[0].token_ids == a[1].token_ids == b[0].token_ids


@pytest.fixture(scope="module")
def bos_tokenizer(tiny_model, tmp_path_factory):
    """The tiny tokenizer changed to add a BOS by itself and to write `{{ bos_token }}` in its template: the
    setup (Llama-style) where tokenizing a rendered template naively doubles the BOS."""
    from tokenizers import processors
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.bos_token = "<|endoftext|>"
    bos = tok.convert_tokens_to_ids("<|endoftext|>")
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", bos)]
    )
    tok.chat_template = "{{ bos_token }}" + tok.chat_template
    path = tmp_path_factory.mktemp("bos_tok")
    tok.save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def test_chat_template_applied_once_without_double_bos(bos_tokenizer, tiny_model):
    bos = bos_tokenizer.bos_token_id
    assert bos_tokenizer("x")["input_ids"][0] == bos  # the tokenizer does add a BOS to plain text
    ids = render_prompt_ids(bos_tokenizer, CHAT)
    rendered = bos_tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert rendered.startswith("<|endoftext|><|im_start|>user\nWhat is 2 + 3?<|im_end|>")
    assert ids[0] == bos and ids.count(bos) == 1
    assert bos_tokenizer.decode(ids) == rendered
    assert render_prompt_ids(bos_tokenizer, "plain text")[:1] == [bos]  # plain strings: the tokenizer's usual BOS
    # the plain ChatML tiny tokenizer: the ids start with the template's own first token
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    ids = render_prompt_ids(tok, CHAT)
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert tok.decode(ids).endswith("<|im_start|>assistant\n")
    cont = render_prompt_ids(tok, CHAT + [{"role": "assistant", "content": "The answer"}])
    assert tok.decode(cont).endswith("<|im_start|>assistant\nThe answer")  # a final assistant turn is continued


def test_stop_tokens_include_template_end_of_turn(tiny_model_pad_eos):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_pad_eos)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn_id(tok) == im_end
    assert stop_token_ids(tok, [im_end, 5]) == [im_end, 5]


def test_hf_with_pad_equal_to_eos(tiny_model_pad_eos):
    engine = load_engine("hf", str(tiny_model_pad_eos), device="cpu", prompt_batch_size=2)
    sampling = SamplingConfig(n=2, max_new_tokens=5)
    check_samples(engine.generate(PROMPTS[:2], sampling, seeds=[0, 1]), 2, sampling, engine.stop_ids)


def test_derive_seed_is_stable_and_distinct():
    assert derive_seed(11, 0) == 11
    seeds = [derive_seed(11, j) for j in range(1, 50)]
    assert len(set(seeds)) == 49 and seeds == [derive_seed(11, j) for j in range(1, 50)]
    assert all(0 <= s < 2**31 for s in seeds)


def test_bad_model_path_and_engine_name_raise_clear_errors(tmp_path, hf):
    with pytest.raises(EngineError, match="does not exist"):
        load_engine("hf", str(tmp_path / "missing_model"))
    with pytest.raises(EngineError, match="no config.json"):
        load_engine("hf", str(tmp_path))
    with pytest.raises(EngineError, match="unknown engine"):
        load_engine("tgi", str(tmp_path))
    with pytest.raises(EngineError, match="empty prompt"):
        hf.generate(["ok", ""], SamplingConfig(max_new_tokens=2), seeds=[0, 1])
    with pytest.raises(EngineError, match="cannot load"):
        load_engine("hf", "nobody-org/no-such-model-xyz")  # offline hub name


@pytest.mark.parametrize("temperature,top_p,max_new", [(1.0, 1.0, 12), (0.7, 0.9, 90), (0.0, 1.0, 20)])
def test_hf_decode_loop_equals_transformers_generate(hf, temperature, top_p, max_new):
    """The engine's own decode loop (one prefill per prompt, finished rows leave the batch, an in-place cache that
    grows past its first slab at 90 tokens) draws exactly the samples transformers' `generate` draws with the same
    per-row generators: same tokens and stop reasons, log-probs equal up to float rounding."""
    from pipelines.engines.hf import _fast_decodable

    assert _fast_decodable(hf.lm)
    sampling = SamplingConfig(n=3, temperature=temperature, top_p=top_p, max_new_tokens=max_new)
    batch = [render_prompt_ids(hf.tokenizer, p) for p in PROMPTS]
    ours = hf._decode(batch, sampling, [4, 5, 6])
    theirs = hf._generate_batch_hf(batch, sampling, [4, 5, 6])
    reasons = set()
    for a_group, b_group in zip(ours, theirs):
        for a, b in zip(a_group, b_group):
            assert (a.token_ids, a.finish_reason) == (b.token_ids, b.finish_reason)
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
            reasons.add(a.finish_reason)
    if temperature:
        assert reasons == {"stop", "length"}  # rows left the batch at different steps while others went on


def test_hf_decode_loop_only_for_plain_attention_decoders(hf):
    """Architectures whose cache is not one KV pair per attention layer (linear-attention hybrids,
    encoder-decoders) fall back to transformers' `generate`."""
    import copy

    from pipelines.engines.hf import _fast_decodable

    lm = copy.copy(hf.lm)
    for layer_types, expected in ((["full_attention", "sliding_attention"], True),
                                  (["full_attention", "linear_attention"], False)):
        lm.config = copy.deepcopy(hf.lm.config)
        lm.config.layer_types = layer_types
        assert _fast_decodable(lm) is expected
    lm.config.layer_types, lm.config.is_encoder_decoder = None, True
    assert _fast_decodable(lm) is False
