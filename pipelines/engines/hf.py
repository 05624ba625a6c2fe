"""`hf` engine: transformers `generate`, the CPU default.

Prompts are batched (left-padded, `prompt_batch_size` prompts × n samples per `generate` call), yet every
sample depends only on its own seed: each row draws its token with the Gumbel-max trick from its own
`torch.Generator` (seeded from the prompt's seed and the sample index), and `generate` runs greedy on the
result. argmax(log p + Gumbel noise) is an exact draw from p, so this is ordinary sampling from the
temperature/top-p distribution, made independent of which other prompts share the batch (up to float
rounding of padded matmuls, which could only matter at an exact tie).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from pipelines.core.threads import apply_threads

from transformers.cache_utils import CacheLayerMixin

from .base import (
    STOP_STRING,
    with_prompt_ids,
    EngineError,
    Prompt,
    Sample,
    SamplingConfig,
    StopStrings,
    completion_text,
    derive_seed,
    fits,
    load_tokenizer,
    per_prompt_seeds,
    render_prompt_ids,
    resolve_model_path,
    stop_token_ids,
    too_long,
)


MIN_BATCH_ROWS = 64  # a batch of prompts with few samples takes more prompts, up to this many rows


@dataclass
class HFOptions:
    device: str = "auto"  # cpu | cuda | cuda:N | auto (cuda when available)
    dtype: str = "auto"  # auto: float32 on CPU, bfloat16 on GPU
    prompt_batch_size: int = 8  # prompts per generate call (samples stay batch-independent)
    threads: int | None = None  # the torch CPU threads it set (process-wide); None: wrap(), the trainer's setting


def _pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _pick_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.float32 if device == "cpu" else torch.bfloat16
    return getattr(torch, dtype)


class _RowSampler:
    """A logits processor that samples every row from its own generator (Gumbel-max) and records the
    log-prob of the drawn token under the processed (temperature, top-p) distribution. It returns a score
    vector that is 0 at the drawn token and -inf elsewhere, so greedy decoding picks exactly that token."""

    def __init__(self, row_seeds: list[int], sampling: SamplingConfig, device: str) -> None:
        from transformers import TopPLogitsWarper

        self.generators = [torch.Generator(device=device).manual_seed(s) for s in row_seeds]
        self.temperature = sampling.temperature
        self.top_p = TopPLogitsWarper(sampling.top_p) if sampling.top_p < 1.0 else None
        self.picked: list[torch.Tensor] = []

    def draw(self, scores: torch.Tensor, rows: list[int], own: bool = False):
        """A token and its log-prob for each row of `scores`, drawn by the generators of `rows` (the rows' original
        indices); with `own`, also the tokens' log-probs under the model's own distribution (temperature 1, no
        top-p), else None."""
        raw = scores.float()
        scores = raw / self.temperature
        if self.top_p is not None:
            scores = self.top_p(None, scores)
        logp = scores.log_softmax(-1)
        uniform = torch.stack([torch.rand(scores.shape[-1], generator=self.generators[r], device=scores.device)
                               for r in rows])
        gumbel = -torch.log(-torch.log(uniform.clamp(1e-20, 1.0 - 1e-7)))
        token = (logp + gumbel).argmax(-1, keepdim=True)
        model_logp = raw.log_softmax(-1).gather(-1, token)[:, 0] if own else None
        return token[:, 0], logp.gather(-1, token)[:, 0], model_logp

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        token, logp, _ = self.draw(scores, list(range(len(self.generators))))
        self.picked.append(logp)
        return torch.full_like(scores, float("-inf")).scatter_(-1, token[:, None], 0.0)


class _GreedyRecorder:
    """Greedy decoding's log-probs without `output_scores` (which keeps B × vocab floats per step: gigabytes for a
    wide batch): records the log-prob of the argmax under the model's own distribution and leaves the scores as
    they are, so generation picks the same token."""

    def __init__(self) -> None:
        self.picked: list[torch.Tensor] = []

    def draw(self, scores: torch.Tensor, rows: list[int], own: bool = False):
        """The argmax and its log-prob under the model's own distribution (which is also the `own` one)."""
        token = scores.argmax(-1, keepdim=True)
        picked = scores.float().log_softmax(-1).gather(-1, token)[:, 0]
        return token[:, 0], picked, picked if own else None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.picked.append(self.draw(scores, [])[1])
        return scores


class _StopStringCriteria:
    """transformers' `generate` stopping criterion for `SamplingConfig.stop` (`StopStrings` on each row's new
    tokens); `ends[row]` records how many new tokens the row keeps (through the one that completed the string)."""

    def __init__(self, strings: StopStrings, width: int) -> None:
        self.strings, self.width, self.ends = strings, width, {}

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        length = input_ids.shape[1]
        tails = input_ids[:, max(self.width, length - self.strings.window):].tolist()
        for r, tail in enumerate(tails):
            if r not in self.ends and self.strings.hit(tail):
                self.ends[r] = length - self.width
        return torch.tensor([r in self.ends for r in range(len(tails))], device=input_ids.device)


class _SlabLayer(CacheLayerMixin):
    """One layer's KV cache for the engine's own decode loop: keys and values live in a preallocated slab
    [rows, heads, capacity, dim] that grows by doubling, each step writes its position in place (no copy of the
    whole cache, as concatenation does), attention reads only the filled positions (not a static cache's whole
    length), and `keep` drops finished rows."""

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, k, d = key_states.shape
        self.keys = key_states.new_zeros((b, h, max(self.capacity, k), d))
        self.values = value_states.new_zeros((b, h, max(self.capacity, k), value_states.shape[-1]))
        self.is_initialized = True

    def _grow(self, need: int) -> None:
        cap = self.capacity
        while cap < need:
            cap *= 2

        def bigger(t):
            out = t.new_zeros((t.shape[0], t.shape[1], cap, t.shape[3]))
            out[:, :, : self.length] = t[:, :, : self.length]
            return out
        self.keys, self.values = bigger(self.keys), bigger(self.values)
        self.capacity = cap

    def update(self, key_states, value_states, *args, **kwargs):
        k = key_states.shape[-2]
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.length + k > self.keys.shape[2]:
            self._grow(self.length + k)
        self.keys[:, :, self.length : self.length + k] = key_states
        self.values[:, :, self.length : self.length + k] = value_states
        self.length += k
        return self.keys[:, :, : self.length], self.values[:, :, : self.length]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1

    def repeat_rows(self, repeats: int) -> None:
        self.keys = self.keys.repeat_interleave(repeats, dim=0)
        self.values = self.values.repeat_interleave(repeats, dim=0)

    def keep(self, rows: torch.Tensor) -> None:
        self.keys = self.keys[rows]
        self.values = self.values[rows]


def _fast_decodable(lm) -> bool:
    """Whether the engine's own decode loop applies: a decoder whose every layer is plain (full or sliding-window)
    attention with a KV cache. Other architectures (linear-attention hybrids, encoder-decoders) use
    transformers' `generate`."""
    config = getattr(lm, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False) or not getattr(config, "num_hidden_layers", None):
        return False
    types = getattr(config, "layer_types", None) or ["full_attention"]
    return all(t in ("full_attention", "sliding_attention") for t in types)


def _last_logits_only(lm) -> dict:
    """`logits_to_keep=1` where the model's forward takes it (the prefill then projects only the last position onto
    the vocabulary, not every prompt token)."""
    import inspect

    params = inspect.signature(lm.forward).parameters
    takes = "logits_to_keep" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    return {"logits_to_keep": 1} if takes else {}


def _cache_kwargs(lm) -> dict:
    """A static KV cache where the architecture supports one: preallocated, so a step writes its keys in place
    instead of concatenating every layer's whole cache. Measured on this 2-core CPU, the 135M default, 32 rows x
    64 new tokens, one thread: 51.4 tokens/s static vs 35.5 dynamic."""
    return {"cache_implementation": "static"} if getattr(lm, "_can_compile_fullgraph", False) else {}


class HFEngine:
    name = "hf"
    on_decode_step = None  # called every few decode steps (the asynchronous worker's thread share)

    def __init__(
        self,
        model: str,
        device: str = "auto",
        dtype: str = "auto",
        prompt_batch_size: int = 8,
        threads: int | None = None,
        chat_template: str | None = None,
    ) -> None:
        """`chat_template`: a Jinja file that replaces the model's chat template (`--chat-template`)."""
        from transformers import AutoModelForCausalLM

        self.model = resolve_model_path(model)
        self.policy_logprobs = False  # also record Sample.policy_logprobs (the asynchronous trainers' worker)
        self.options = HFOptions(device, dtype, prompt_batch_size, apply_threads(threads))
        self.device = _pick_device(device)
        self.tokenizer = load_tokenizer(self.model, chat_template)
        try:
            self.lm = AutoModelForCausalLM.from_pretrained(self.model, dtype=_pick_dtype(dtype, self.device))
        except Exception as err:
            raise EngineError(f"cannot load model {self.model!r} with transformers ({type(err).__name__}: {err})") from err
        self.lm.to(self.device).eval()
        self.stop_ids = stop_token_ids(self.tokenizer, self.lm.generation_config.eos_token_id)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.stop_ids[0]

    @classmethod
    def wrap(cls, lm, tokenizer, device: str = "cpu", prompt_batch_size: int = 8) -> "HFEngine":
        """An engine around a model already in memory (the online trainers' live policy: no copy, no reload).
        Generation switches the model to eval mode; the caller switches it back to train."""
        self = cls.__new__(cls)
        self.model = getattr(lm, "name_or_path", "") or "in-memory"
        self.policy_logprobs = False
        self.options = HFOptions(device, "auto", prompt_batch_size, None)
        self.device, self.tokenizer, self.lm = device, tokenizer, lm
        self.stop_ids = stop_token_ids(tokenizer, lm.generation_config.eos_token_id)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.stop_ids[0]
        return self

    # The online trainers' engine lifecycle (trainers/online/grpo.py POLICY_ENGINES): a wrapped engine *is* the live
    # policy, so there is nothing to wake, put to sleep or load.
    def before_generation(self) -> None:
        pass

    def after_generation(self) -> None:
        pass

    def load_weights(self, named_tensors) -> None:
        """Nothing to load: generation runs on the trained model itself (the iterable is not consumed)."""
        return None

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        """The token ids generation continues from (the trainers' data path gives the same ids)."""
        return render_prompt_ids(self.tokenizer, prompt)

    @property
    def context(self) -> int | None:
        """Positions the model was trained for (`max_position_embeddings`; GPT-2-style configs: `n_positions`)."""
        config = self.lm.config
        return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)

    def generate(
        self, prompts: Sequence[Prompt], sampling: SamplingConfig, seeds: Sequence[int] | None = None,
        on_prompt_done: Callable[[int], None] | None = None,
    ) -> list[list[Sample]]:
        seeds = per_prompt_seeds(len(prompts), sampling, seeds)
        ids = [self.prompt_ids(p) for p in prompts]
        # a prompt with no room left in the context is not generated at all (it would only extrapolate)
        keep = [i for i, x in enumerate(ids) if fits(len(x), self.context)]
        if on_prompt_done is not None:
            for i in sorted(set(range(len(ids))) - set(keep)):
                on_prompt_done(i)
        # packed by length: a batch's prompts are padded to its longest (a prompt's samples do not depend on
        # which prompts share its batch, so the order changes no sample)
        keep.sort(key=lambda i: len(ids[i]))
        # a batch decodes `prompt_batch_size` prompts x n samples, or more prompts up to MIN_BATCH_ROWS rows when n
        # is small (each turn of a multi-turn trajectory is a prompt with one sample): a decode step of 8 rows
        # costs about what one of 64 does, on a CPU or a GPU
        size = max(1, self.options.prompt_batch_size, MIN_BATCH_ROWS // max(1, sampling.n))
        done: list[list[Sample]] = []
        for start in range(0, len(keep), size):
            part = keep[start : start + size]
            report = None if on_prompt_done is None else (lambda j, part=part: on_prompt_done(part[j]))
            done.extend(self._generate_batch([ids[i] for i in part], sampling, [seeds[i] for i in part], report))
        out = [too_long(sampling.n) for _ in ids]
        for i, samples in zip(keep, done):
            out[i] = samples
        return with_prompt_ids(out, ids)

    def _generate_batch(self, batch: list[list[int]], sampling: SamplingConfig, seeds: list[int],
                        on_prompt_done: Callable[[int], None] | None = None) -> list[list[Sample]]:
        if _fast_decodable(self.lm):
            return self._decode(batch, sampling, seeds, on_prompt_done)
        out = self._generate_batch_hf(batch, sampling, seeds)
        for j in range(len(batch) if on_prompt_done is not None else 0):  # transformers' generate: all at the end
            on_prompt_done(j)
        return out

    @torch.inference_mode()
    def _decode(self, batch: list[list[int]], sampling: SamplingConfig, seeds: list[int],
                on_prompt_done: Callable[[int], None] | None = None) -> list[list[Sample]]:
        """The engine's own decode loop. Each prompt is prefilled once and its KV cache repeated for its n
        samples; every step runs only the rows still generating (finished rows leave the batch); the cache is
        written in place (`_SlabLayer`). Tokens are drawn exactly as with `generate` (`_RowSampler`), so the same
        seeds give the same samples."""
        from transformers.cache_utils import Cache

        n, dev = sampling.n, self.device
        width = max(len(x) for x in batch)
        ids = torch.tensor([[self.pad_id] * (width - len(x)) + x for x in batch], device=dev)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in batch], device=dev)
        layers = self.lm.config.num_hidden_layers
        cache = Cache(layers=[_SlabLayer(width + min(sampling.max_new_tokens, 64)) for _ in range(layers)])
        self.lm.eval()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.lm(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                         use_cache=True, **_last_logits_only(self.lm)).logits[:, -1]
        # the n samples of a prompt share its prefill
        for layer in cache.layers:
            layer.repeat_rows(n)
        logits = logits.repeat_interleave(n, dim=0)
        mask = mask.repeat_interleave(n, dim=0)
        rows = len(batch) * n
        greedy = sampling.temperature == 0
        sampler = _GreedyRecorder() if greedy else _RowSampler(
            [derive_seed(seed, k) for seed in seeds for k in range(n)], sampling, dev)
        stops = torch.tensor(self.stop_ids, device=dev)
        live = torch.arange(rows, device=dev)  # the original row of each batch row
        tokens: list[list[int]] = [[] for _ in range(rows)]
        logps: list[list[float]] = [[] for _ in range(rows)]
        own: list[list[float]] | None = [[] for _ in range(rows)] if self.policy_logprobs else None
        strings = StopStrings(self.tokenizer, sampling.stop)
        string_end: dict[int, int] = {}  # rows a stop string ended: tokens kept (through the completing one)
        left = [n] * len(batch)  # samples of each prompt still generating (`on_prompt_done` when one reaches 0)

        def finished(ended: list[int]) -> None:
            for r in ended:
                left[r // n] -= 1
                if left[r // n] == 0:
                    on_prompt_done(r // n)

        for step in range(sampling.max_new_tokens):
            if self.on_decode_step is not None and step % 8 == 0:
                self.on_decode_step()
            rows_now = live.tolist()
            token, logp, model_lp = sampler.draw(logits, rows_now, own is not None)
            for r, t, lp in zip(rows_now, token.tolist(), logp.tolist()):
                tokens[r].append(t)
                logps[r].append(lp)
            if own is not None:
                for r, lp in zip(rows_now, model_lp.tolist()):
                    own[r].append(lp)
            going = ~torch.isin(token, stops)
            if strings:  # only rows still going: a stop token ends a row first
                hits = [g and strings.hit(tokens[r]) for r, g in zip(rows_now, going.tolist())]
                if any(hits):
                    string_end.update((r, len(tokens[r])) for r, h in zip(rows_now, hits) if h)
                    going &= ~torch.tensor(hits, device=dev)
            if on_prompt_done is not None:
                finished([r for r, g in zip(rows_now, going.tolist()) if not g])
            if step + 1 == sampling.max_new_tokens or not bool(going.any()):
                break
            # Finished rows leave the batch at once. A drop copies the live rows' cache (tens of ms for 64 rows of
            # the 135M model), about ten row-steps of compute, while a finished row kept in the batch costs a row-step
            # at every remaining step. Measured on the loop's workload (8 prompts x 8 samples, 256 new tokens, one
            # thread, other jobs running): 60.0 s dropping at once vs 65.1 s dropping in quarters.
            if not bool(going.all()):
                keep = going.nonzero()[:, 0]
                for layer in cache.layers:
                    layer.keep(keep)
                live, mask, token = live[keep], mask[keep], token[keep]
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
            logits = self.lm(input_ids=token[:, None], attention_mask=mask,
                             position_ids=(mask.sum(-1, keepdim=True) - 1), past_key_values=cache,
                             use_cache=True).logits[:, -1]
        if on_prompt_done is not None:  # the rows still going stopped at max_new_tokens
            finished([r for r in live.tolist()
                      if r not in string_end and (not tokens[r] or tokens[r][-1] not in self.stop_ids)])
        samples = [self._sample(tokens[r], logps[r], string_end.get(r)) for r in range(rows)]
        if own is not None:
            for r, s in enumerate(samples):
                s.policy_logprobs = own[r][: len(s.token_ids)]
        return [samples[i * n : (i + 1) * n] for i in range(len(batch))]

    @torch.inference_mode()
    def _generate_batch_hf(self, batch: list[list[int]], sampling: SamplingConfig, seeds: list[int]) -> list[list[Sample]]:
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        width = max(len(x) for x in batch)
        # each prompt row repeated n times (what num_return_sequences does, but valid for greedy too)
        rows = [x for x in batch for _ in range(sampling.n)]
        input_ids = torch.tensor([[self.pad_id] * (width - len(x)) + x for x in rows], device=self.device)
        attention = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in rows], device=self.device)
        greedy = sampling.temperature == 0
        # A fresh config: the checkpoint's own defaults (top_k=50, repetition penalties…) must not alter sampling.
        config = GenerationConfig(
            do_sample=False,
            max_new_tokens=sampling.max_new_tokens,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
            return_dict_in_generate=True,
            **_cache_kwargs(self.lm),
        )
        sampler = _GreedyRecorder() if greedy else _RowSampler(
            [derive_seed(seed, k) for seed in seeds for k in range(sampling.n)], sampling, self.device)
        processors = LogitsProcessorList([sampler])
        strings = _StopStringCriteria(StopStrings(self.tokenizer, sampling.stop), width)
        self.lm.eval()
        result = self.lm.generate(input_ids=input_ids, attention_mask=attention, generation_config=config,
                                  logits_processor=processors,
                                  stopping_criteria=StoppingCriteriaList([strings] if strings.strings else []))
        new_tokens = result.sequences[:, width:]
        # sampled: log-probs under the processed distribution; greedy: under the model's own (temperature 1)
        picked = torch.stack(sampler.picked, dim=1)
        samples = [self._sample(new_tokens[r].tolist(), picked[r].tolist(), strings.ends.get(r))
                   for r in range(new_tokens.shape[0])]
        return [samples[i * sampling.n : (i + 1) * sampling.n] for i in range(len(batch))]

    def _sample(self, tokens: list[int], logprobs: list[float], string_end: int | None = None) -> Sample:
        """The sample of a row's drawn tokens: cut after its first stop token, or after the token that completed a
        stop string (`string_end` tokens, when the row ended so)."""
        stops = set(self.stop_ids)
        end = next((k + 1 for k, t in enumerate(tokens) if t in stops), None)
        if string_end is not None and (end is None or string_end < end):
            finish, end = STOP_STRING, string_end
        else:
            finish = "length" if end is None else "stop"
            end = len(tokens) if end is None else end
        text = completion_text(self.tokenizer, tokens[:end], finish)
        return Sample(text=text, token_ids=tokens[:end], logprobs=logprobs[:end], finish_reason=finish)

    def close(self) -> None:
        self.lm = None
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
