"""Bounded-staleness asynchronous rollouts for `train grpo|rloo --max-staleness K` (docs/online_rl.md, Asynchronous).

With K >= 1 a generation process samples and scores the next steps' groups while the trainer updates on the
current one. It holds its own copy of the policy and its own CPU threads; after each update the trainer copies
its weights into a shared-memory mailbox and bumps the version (the number of updates applied), and the worker
takes the newest weights before each batch of prompts it samples (each dynamic-sampling round).

The bound: the groups of step s are sampled from weights of version >= s - K. The worker waits for that version
before it samples a round of step s; every group records the version it was sampled with; the trainer checks
s - version <= K for every group it receives, and a step that would exceed it is sampled again (never trained).
Requests run ahead of the trainer by at most K steps.

The correction (trainers/online/rl_objectives.py `staleness_weights`): decoupled PPO (Hilton et al. 2021,
"Batch size-invariance for policy optimization"; AReaL): the clipped surrogate is taken around the *proximal*
policy, the trainer's weights before this update (the same old log-probs as the synchronous loop), and each token
is weighted by π_prox / π_behaviour, the current weights against the stale ones that sampled it (the worker
records the model's own log-probs, temperature 1, of every sampled token), detached and truncated at
`--staleness-cap` (tis) or the token dropped above it (mis). Tokens sampled at staleness 0 get weight exactly 1:
there the two policies are the same weights and their log-probs differ only by float rounding.

The worker runs `GRPORun`'s own `_collect` (rollouts, labels, dynamic sampling, ReMax's greedy baselines), so a
step's groups are the synchronous loop's when the weights are the same: with `--rollout-process` at K = 0 the
worker waits for each update, and the run equals the synchronous one (tests/test_async_rollouts.py).
"""
from __future__ import annotations

import dataclasses
import queue
import time
import traceback

import torch


class ThreadShare:
    """Two processes on one CPU-thread budget: each computes on its own share, and on the whole budget while the
    other one waits (the trainer for its next batch, the worker for a request or for recent enough weights).
    `flags[side]` is 1 while that side waits; each side calls `adjust()` between units of work (the worker every
    few decode steps, the trainer before each micro-batch), so a budget handed over comes back within one unit."""

    def __init__(self, flags, side: int, own: int, total: int) -> None:
        self.flags, self.side, self.own, self.total = flags, side, own, total
        self.now = torch.get_num_threads()

    def adjust(self) -> None:
        want = self.total if self.flags[1 - self.side] else self.own
        if want != self.now:
            torch.set_num_threads(want)
            self.now = want

    def __enter__(self) -> "ThreadShare":
        self.flags[self.side] = 1
        return self

    def __exit__(self, *exc) -> None:
        self.flags[self.side] = 0
        self.adjust()


TRAINER, WORKER = 0, 1


def _mailbox(named) -> dict[str, torch.Tensor]:
    return {name: t.detach().to("cpu", dtype=torch.float32, copy=True).share_memory_() for name, t in named}


class RolloutWorker:
    """The trainer's handle on the generation process."""

    def __init__(self, run, threads: int, export_weights, total_threads: int | None = None,
                 device: str = "cpu") -> None:
        """`run`: the trainer's GRPORun (its class, config, prompt position and policy are what the worker starts
        from); `threads`: the worker's share of `total_threads` (the trainer holds the rest, and each side takes
        the whole budget while the other waits); `export_weights(model)`: the policy's weights as (name, tensor)
        pairs (LoRA merged); `device`: where the worker samples (cpu, or cuda:N: the worker sees only that GPU)."""
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.export_weights = export_weights
        cfg = run.cfg
        self.k = cfg.max_staleness
        self.start_version = run.state.step
        self.mailbox = _mailbox(export_weights(run.model))
        self.version = ctx.Value("q", run.state.step, lock=False)
        total = max(total_threads or threads, threads)
        flags = ctx.Array("b", 2, lock=False)  # 1 while the trainer / the worker waits
        self.share = ThreadShare(flags, TRAINER, torch.get_num_threads(), total)
        self.lock = ctx.Lock()
        self.requests, self.results = ctx.Queue(), ctx.Queue()
        self.next_request = run.state.step
        self.max_steps = cfg.max_steps
        sampler = (run.sampler.epoch, run.sampler.index, run.groups_sampled, run.groups_kept)
        self.proc = ctx.Process(target=_worker_main, name="prefsmith-rollouts", daemon=True,
                                args=(type(run), type(run.sampler), cfg, self.mailbox, self.version, self.lock,
                                      self.requests, self.results, threads, sampler, flags, total, device))
        self.proc.start()
        self.waited = 0.0
        self.ready: dict[int, dict] = {}  # results that came before their step's turn

    def min_version(self, step: int) -> int:
        return max(self.start_version, step - self.k)

    def ask_ahead(self, step: int) -> None:
        """Requests for steps up to `step + K` (at most `max_steps`): the worker samples them as their weights
        become available."""
        while self.next_request <= min(step + self.k, self.max_steps - 1):
            self.requests.put(("collect", self.next_request, self.min_version(self.next_request)))
            self.next_request += 1

    def take(self, step: int) -> dict:
        """The sampled groups of `step`, sampled again while any exceeds the staleness bound. (The worker waits for
        weights inside the bound before it samples, so this is a guard; results of later steps that arrive first
        are kept for their turn.)"""
        self.ask_ahead(step)
        t0 = time.time()
        try:
            while True:
                result = self.ready.pop(step, None)
                if result is None:
                    with self.share:  # the worker computes on every thread while the trainer waits for it
                        result = self._get()
                if result["step"] != step:
                    self.ready[result["step"]] = result
                    continue
                if all(step - g.version <= self.k for g in result["groups"]):
                    return result
                # never trained: the same step again, from weights inside the bound (the worker's prompt order
                # moves on, so other prompts are drawn)
                self.requests.put(("collect", step, self.min_version(step)))
        finally:
            self.waited += time.time() - t0

    def _get(self) -> dict:
        while True:
            try:
                kind, payload = self.results.get(timeout=5.0)
            except queue.Empty:
                if not self.proc.is_alive():
                    raise RuntimeError(f"the rollout worker exited (code {self.proc.exitcode}) without a result") from None
                continue
            if kind == "error":
                raise RuntimeError(f"the rollout worker failed:\n{payload}")
            return payload

    def push(self, model, version: int) -> float:
        """Copy the trained weights into the mailbox as `version`; returns the seconds it took."""
        t0 = time.time()
        with self.lock:
            for name, t in self.export_weights(model):
                self.mailbox[name].copy_(t.detach())
            self.version.value = version
        return time.time() - t0

    def close(self) -> None:
        """Stop the worker: at once, even mid-sample (what it sampled ahead is never trained, and a resumed run
        samples those steps again)."""
        if self.proc.is_alive():
            self.requests.put(("stop", None, None))
            self.proc.join(timeout=2)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


def _worker_main(run_class, sampler_class, cfg, mailbox, version, lock, requests, results, threads, sampler,
                 flags, total, device="cpu") -> None:
    try:
        import os

        from pipelines.core.threads import apply_threads

        if device.startswith("cuda"):  # before CUDA starts in this process: the worker sees its GPU as cuda:0
            index = device.partition(":")[2] or "0"
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            os.environ["CUDA_VISIBLE_DEVICES"] = visible.split(",")[int(index)] if visible else index
            device = "cuda:0"
        apply_threads(threads)
        share = ThreadShare(flags, WORKER, threads, total) if device == "cpu" else None
        side = GenerationSide(run_class, sampler_class, cfg, mailbox, version, lock, sampler, share, device)
        while True:
            t0 = time.time()
            with share:  # idle: K steps ahead already, the trainer has to catch up (and trains on every thread)
                kind, step, min_version = requests.get()
            if kind == "stop":
                break
            results.put(("ok", side.collect(step, min_version, idle=time.time() - t0)))
    except BaseException:  # noqa: BLE001 - the trainer re-raises it with this traceback
        results.put(("error", traceback.format_exc()))


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


class GenerationSide:
    """The worker's end: a GRPORun with only its sampling half (prompts, rewards, engine, prompt order), whose
    policy is a private copy refreshed from the mailbox."""

    def __init__(self, run_class, sampler_class, cfg, mailbox, version, lock, sampler, share=None,
                 device: str = "cpu") -> None:
        class _Run(run_class):
            def policy_version(inner) -> int:
                return self.loaded

            def _rollouts(inner, indices, step, round_):
                self.refresh(self.min_version)
                return run_class._rollouts(inner, indices, step, round_)

        self.mailbox, self.version, self.lock = mailbox, version, lock
        self.run = run = _Run(dataclasses.replace(cfg, max_staleness=0, generation_device=None), log=lambda msg: None)
        if cfg.engine == "vllm":  # vLLM alone in this process, on its own device; weights come from the mailbox
            from pipelines.engines.vllm import VLLMPolicyEngine

            run.setup_sampling(VLLMPolicyEngine(cfg.model, prompt_batch_size=cfg.prompts_per_step, sleep_mode=False,
                                                behaviour_logprobs=True))
        else:
            from pipelines.engines.hf import HFEngine

            model = self._load(cfg).to(device)
            engine = HFEngine.wrap(model, self._tokenizer(cfg), device=device, prompt_batch_size=cfg.prompts_per_step)
            engine.policy_logprobs = True  # the behaviour policy's own log-probs: the correction's denominator
            run.setup_sampling(engine, model)
        epoch, index, run.groups_sampled, run.groups_kept = sampler
        run.sampler = sampler_class(len(run.prompts), cfg.seed, epoch, index)
        self.share = share
        if share is not None and hasattr(run.engine, "on_decode_step"):
            run.engine.on_decode_step = share.adjust
        self.loaded = -1
        self.min_version = 0
        self.waited = 0.0

    @staticmethod
    def _tokenizer(cfg):
        from pipelines.engines.base import load_tokenizer

        return load_tokenizer(cfg.model, cfg.chat_template)

    @staticmethod
    def _load(cfg):
        """A plain copy of the architecture; its weights come from the mailbox before the first sample (the
        trainer's, resumed or not; under LoRA merged, so the worker samples a plain model)."""
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32).eval()

    def refresh(self, min_version: int) -> None:
        """Take the newest weights in the mailbox, waiting until they are at least `min_version`."""
        t0 = time.time()
        if self.version.value < min_version:
            with self.share or _nothing():
                while self.version.value < min_version:
                    time.sleep(0.01)
        if self.version.value != self.loaded:
            with self.lock, torch.no_grad():
                if self.run.model is None:  # vLLM: its own weight loader, from the mailbox's tensors
                    self.run.engine.load_weights(self.mailbox.items())
                else:
                    params = dict(self.run.model.named_parameters())
                    buffers = dict(self.run.model.named_buffers())
                    for name, t in self.mailbox.items():
                        (params.get(name) if name in params else buffers[name]).copy_(t)
                self.loaded = self.version.value
        self.waited += time.time() - t0

    def collect(self, step: int, min_version: int, idle: float = 0.0) -> dict:
        """`step`'s groups; `idle`: the seconds the worker waited for this request (counted as waiting for the
        trainer, with any wait for recent enough weights)."""
        run = self.run
        self.min_version, self.waited = min_version, idle
        run.timing = {"generation": 0.0, "scoring": 0.0}
        run.tokens = 0
        t0 = time.time()
        groups, counts = run._collect(step)
        return {"step": step, "groups": groups, "counts": counts, "timing": dict(run.timing), "tokens": run.tokens,
                "sampler": (run.sampler.epoch, run.sampler.index), "seconds": time.time() - t0,
                "waited_for_weights": self.waited}
