"""`openai` engine: any OpenAI-compatible server (`vllm serve`, `transformers serve`, a hosted API).

Chat prompts go to `/chat/completions` (the server applies the chat template), strings and token ids to
`/completions`. The transport is `openai_client.OpenAIClient` (the one shared with the judges, on the `openai`
SDK): requests run on a thread pool, at most `max_concurrency` in flight, and the SDK retries them with our
exponential backoff and jitter on connection errors, timeouts, 408/409/429 and 5xx, waiting out a `Retry-After`.
Every finished sample is cached on disk, keyed by everything that determines it, so rerunning a stage pays only
for what is missing.

Servers differ, and the engine adapts:
- one that honours `n` answers one request per prompt; one that ignores it (`transformers serve`) gets one
  request per missing sample, each with its own seed (`derive_seed(seed, j)`);
- token ids come from the server when it returns them (vLLM: `return_token_ids`, sent in `extra_body`; the
  prompt's ids too, as `Sample.prompt_ids`); otherwise from a local tokenizer re-tokenizing the text (plus the
  stop token when the sample stopped), when one is loadable; otherwise None;
- log-probs are whatever the server reports for the sampled tokens (vLLM: according to its
  `--logprobs-mode`), or None when it reports none;
- stop strings (`SamplingConfig.stop`) go as `stop`, with vLLM's `include_stop_str_in_output`; a sample a stop
  string ended (vLLM names it in `stop_reason`) has finish_reason `stop_string` and its text keeps the string
  (appended back where the server cut it). A server that does not say which string matched (OpenAI's own API)
  reports a plain `stop`;
- a server that returns n identical samples for most prompts at a temperature above 0 ignores the seed or the
  temperature (`transformers serve` decodes greedily unless the model's generation config samples): the engine
  says so once, on stderr (`_checked`).
"""
from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

from pipelines.core.files import fingerprint_json
from rewards.chat import is_messages

from .base import (STOP_STRING, EngineError, Prompt, Sample, SamplingConfig, derive_seed, end_of_turn_id,
                   per_prompt_seeds, render_prompt_ids)
from .openai_client import APIError, DiskCache, OpenAIClient

DEFAULT_BASE_URL = "http://localhost:8000/v1"
DEFAULT_CACHE_DIR = Path("~/.cache/prefsmith/openai").expanduser()
_OPTIONAL_FIELDS = {"logprobs", "return_token_ids"}  # dropped, once, if a server rejects them (400/422)
_STOP_REASONS = {"stop", "eos", "end_turn", "tool_calls", "stop_sequence"}


class OpenAIEngine:
    name = "openai"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        max_concurrency: int = 8,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        timeout_s: float = 600.0,
        cache_dir: str | os.PathLike | None = DEFAULT_CACHE_DIR,
        tokenizer: str | None = None,
        on_error: str = "raise",
        api_key_env: str | None = None,
    ) -> None:
        """`model` is the name the server serves. `base_url` defaults to $OPENAI_BASE_URL, else
        http://localhost:8000/v1; `api_key` to the variable `api_key_env` names (default $OPENAI_API_KEY), else
        "EMPTY". `cache_dir=None` turns the cache off. `tokenizer`: a local tokenizer folder used to recover
        token ids when the server sends none (default: `model` itself when it is a local folder). `on_error`:
        "raise" (default; finished samples stay cached, so a rerun resumes) or "sample" (a failed sample
        becomes text "" with finish_reason "error:<why>")."""
        if on_error not in ("raise", "sample"):
            raise ValueError(f"on_error must be 'raise' or 'sample', got {on_error!r}")
        if max_concurrency < 1:
            raise EngineError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.client = OpenAIClient(self.base_url, api_key, api_key_env=api_key_env, timeout_s=timeout_s,
                                   max_retries=max_retries, backoff_s=backoff_s)
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.cache = DiskCache(cache_dir) if cache_dir else None
        self.cache_dir = self.cache.root if self.cache else None
        self.on_error = on_error
        self.tokenizer = _local_tokenizer(tokenizer or model)
        self.honours_n: bool | None = None  # learnt from the first request that asks for n > 1
        self.optional_fields = set(_OPTIONAL_FIELDS)
        self._lock = threading.Lock()
        self._gate = threading.BoundedSemaphore(max_concurrency)  # requests in flight, over both pools
        self.warned_identical = False  # the identical-samples warning is said once per engine
        self.check()

    def check(self) -> None:
        """Fail now, with the URL and what to do, if the server is unreachable, refuses the key or does not
        list the model (`OpenAIClient.check`)."""
        self.client.check(self.model)

    # ---- public API -------------------------------------------------------------------------------------------

    def generate(
        self, prompts: Sequence[Prompt], sampling: SamplingConfig, seeds: Sequence[int] | None = None,
        on_prompt_done: Callable[[int], None] | None = None,
    ) -> list[list[Sample]]:
        seeds = per_prompt_seeds(len(prompts), sampling, seeds)
        prompts = list(prompts)
        # Prompts run on `outer`; the samples a server left out (it ignored n) go to `inner`, one request
        # each. Two pools, so a prompt waiting for its samples never holds the worker they need; `_gate` bounds
        # the requests in flight over both to max_concurrency.
        with ThreadPoolExecutor(max(1, min(self.max_concurrency, len(prompts)))) as outer, \
                ThreadPoolExecutor(self.max_concurrency) as inner:
            futures = [outer.submit(self._one_prompt, inner, p, sampling, s) for p, s in zip(prompts, seeds)]
            if on_prompt_done is None:
                return self._checked([f.result() for f in futures], sampling)
            order = {f: i for i, f in enumerate(futures)}
            for f in as_completed(futures):  # reported here, in the caller's thread, as each prompt's replies land
                f.result()
                on_prompt_done(order[f])
            return self._checked([f.result() for f in futures], sampling)

    def prompt_ids(self, prompt: Prompt) -> list[int] | None:
        """The ids the server continues from, as the local tokenizer renders them (the served model's own
        tokenizer and template when `tokenizer`/`model` is its folder); None without a local tokenizer, or for a
        chat when it has no chat template or its template refuses the prompt: the server's rendering is then
        unknown here, and an unknown context is better than a guessed one."""
        if self.tokenizer is None or (is_messages(prompt) and not getattr(self.tokenizer, "chat_template", None)):
            return None
        try:
            return render_prompt_ids(self.tokenizer, prompt)
        except Exception:  # a local template error says nothing about the server's; the server reports its own
            return None

    def close(self) -> None:
        self.client.close()

    def _checked(self, result: list[list[Sample]], sampling: SamplingConfig) -> list[list[Sample]]:
        """`result`, after saying once (one line on stderr) when the server returned n > 1 identical samples
        (text and ids) for more than half of a call's prompts at a temperature above 0: it ignores the seed or the
        temperature, and groups of copies teach nothing (GRPO's advantages are all 0). Prompts with a failed
        sample are left out; a few identical groups are what a confident model does, hence the majority."""
        if self.warned_identical or sampling.n < 2 or sampling.temperature <= 0:
            return result
        groups = [s for s in result if not any(x.finish_reason.startswith("error:") for x in s)]
        same = sum(len({(x.text, tuple(x.token_ids or ())) for x in s}) == 1 for s in groups)
        if 2 * same > len(groups):
            self.warned_identical = True
            print(f"[openai] warning: the server at {self.base_url} returned {sampling.n} identical samples for "
                  f"{same} of {len(groups)} prompts at temperature {sampling.temperature:g}: it ignores the seed or "
                  "the temperature (transformers serve samples only when the model's generation_config.json has "
                  "do_sample: true)", file=sys.stderr, flush=True)
        return result

    # ---- one prompt ---------------------------------------------------------------------------------------------

    def _one_prompt(self, pool: ThreadPoolExecutor, prompt: Prompt, sampling: SamplingConfig, seed: int) -> list[Sample]:
        keys = [self._cache_key(prompt, sampling, seed, j) for j in range(sampling.n)]
        samples: list[Sample | None] = [self._cache_get(k) for k in keys]
        if all(s is None for s in samples) and sampling.n > 1 and self.honours_n is not False:
            got = self._request(prompt, sampling, seed, sampling.n)
            with self._lock:
                if self.honours_n is None and not got[0].finish_reason.startswith("error:"):
                    self.honours_n = len(got) >= sampling.n
            for j, sample in enumerate(got[: sampling.n]):
                samples[j] = self._cache_put(keys[j], sample)

        def one(j: int) -> Sample:  # each sample is cached as soon as it arrives: a failure costs only itself
            [sample, *_] = self._request(prompt, sampling, derive_seed(seed, j), 1)
            return self._cache_put(keys[j], sample)

        missing = {j: pool.submit(one, j) for j, s in enumerate(samples) if s is None}
        for j, future in missing.items():
            samples[j] = future.result()
        return samples  # type: ignore[return-value]

    def _request(self, prompt: Prompt, sampling: SamplingConfig, seed: int, n: int) -> list[Sample]:
        while True:
            optional = set(self.optional_fields)
            try:
                body, extra_body = self._body(prompt, sampling, seed, n, optional)
                with self._gate:
                    response = self.client.complete(body, extra_body)
                choices = response.get("choices") if isinstance(response, dict) else None
                return [self._to_sample(prompt, c, response, sampling.stop) for c in choices or []] or \
                    [Sample(text="", token_ids=None, logprobs=None, finish_reason="error:no choices")]
            except APIError as err:
                if err.kind == "BadRequestError":
                    if optional:  # a strict server rejecting logprobs / return_token_ids: ask without them
                        with self._lock:
                            self.optional_fields = set()
                        continue
                    raise EngineError(f"the server at {self.base_url} rejected the request for model "
                                      f"{self.model!r}: {err}") from None
                if err.kind == "NotFoundError":
                    raise EngineError(f"the server at {self.base_url} does not serve model {self.model!r} ({err}): "
                                      f"check --model against GET {self.base_url}/models") from None
                if err.kind == "AuthenticationError":
                    raise EngineError(f"the server at {self.base_url} refused the API key ({err}): set "
                                      f"${self.client.api_key_env}") from None
                if self.on_error == "sample" and err.retryable:
                    why = f"error:{err.kind}: {str(err)[:200]}"
                    return [Sample(text="", token_ids=None, logprobs=None, finish_reason=why) for _ in range(n)]
                raise EngineError(
                    f"request to {self.base_url} for model {self.model!r} failed after {err.attempts} attempts: "
                    f"{err.kind}: {err}. Finished samples are cached; rerun to continue") from None

    def _body(self, prompt: Prompt, sampling: SamplingConfig, seed: int, n: int,
              optional: set[str]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The SDK's arguments, and the `extra_body` of fields the OpenAI API does not have (vLLM's)."""
        body: dict[str, Any] = dict(
            model=self.model, temperature=sampling.temperature, top_p=sampling.top_p,
            max_tokens=sampling.max_new_tokens, n=n, seed=seed,
        )
        if is_messages(prompt):
            body["messages"] = list(prompt)
        else:
            body["prompt"] = prompt
        if "logprobs" in optional:
            body["logprobs"] = True if is_messages(prompt) else 1
        extra_body = {"return_token_ids": True} if "return_token_ids" in optional else {}
        if sampling.stop:
            body["stop"] = list(sampling.stop)
            if extra_body:  # vLLM's fields are welcome: keep the stop string in the text it returns
                extra_body["include_stop_str_in_output"] = True
        return body, extra_body

    def _to_sample(self, prompt: Prompt, choice: dict[str, Any], response: dict[str, Any],
                   stop: tuple[str, ...] = ()) -> Sample:
        text = (choice.get("message") or {}).get("content") if is_messages(prompt) else choice.get("text")
        text = text or ""
        reason = choice.get("finish_reason") or "stop"
        finish = "length" if reason == "length" else "stop" if reason in _STOP_REASONS else f"error:{reason}"
        matched = choice.get("stop_reason")  # vLLM: the stop string that ended the sample (a stop token: its id)
        if finish == "stop" and isinstance(matched, str) and matched in stop:
            finish = STOP_STRING
            if not text.endswith(matched):  # a server that leaves the string out: the text stays whole
                text += matched
        info = choice.get("logprobs") or {}
        if is_messages(prompt):
            logprobs = [float(t["logprob"]) for t in info.get("content") or []] or None
        else:
            logprobs = [float(x) for x in info.get("token_logprobs") or [] if x is not None] or None
        token_ids = choice.get("token_ids")
        if token_ids is None and self.tokenizer is not None:
            token_ids = self._retokenize(prompt, text, finish, logprobs)
        elif finish == STOP_STRING and self.tokenizer is not None:
            # the ids run through the token that completed the string, which may hold characters past it that the
            # server cut from its text: the text of the ids, as every engine decodes them
            text = self.tokenizer.decode(list(token_ids), skip_special_tokens=True)
        # the ids the server continued from (vLLM with return_token_ids: per choice for /completions, once per
        # answer for /chat/completions): its own rendering, the context the sample was drawn in
        prompt_ids = choice.get("prompt_token_ids") or response.get("prompt_token_ids")
        return Sample(text=text, token_ids=list(token_ids) if token_ids is not None else None, logprobs=logprobs,
                      finish_reason=finish, prompt_ids=[int(i) for i in prompt_ids] if prompt_ids else None)

    def _retokenize(self, prompt: Prompt, text: str, finish: str, logprobs: list[float] | None) -> list[int] | None:
        """Token ids for `text` from the local tokenizer, plus the stop token when the sample stopped; None when
        they cannot be the sampled ones (text with U+FFFD from split bytes, or a count that disagrees with the
        server's log-probs): better none than wrong ones."""
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if "\ufffd" in text or self.tokenizer.decode(ids, skip_special_tokens=True) != text:
            return None
        stop = (end_of_turn_id(self.tokenizer) if is_messages(prompt) else None) or self.tokenizer.eos_token_id
        if finish == "stop" and stop is not None:
            ids.append(int(stop))
        if logprobs is not None and len(logprobs) != len(ids):
            return None
        return ids

    # ---- cache ----------------------------------------------------------------------------------------------------

    def _cache_key(self, prompt: Prompt, sampling: SamplingConfig, seed: int, sample_idx: int) -> str:
        return fingerprint_json({
            "base_url": self.base_url, "model": self.model, "prompt": prompt,
            "temperature": sampling.temperature, "top_p": sampling.top_p,
            "max_new_tokens": sampling.max_new_tokens, "seed": seed, "sample_idx": sample_idx,
            **({"stop": list(sampling.stop)} if sampling.stop else {}),
        }, length=None)

    def _cache_get(self, key: str) -> Sample | None:
        hit = self.cache.get(key) if self.cache else None
        try:
            return Sample(**hit) if isinstance(hit, dict) else None
        except TypeError:  # a foreign file: fetch again
            return None

    def _cache_put(self, key: str, sample: Sample) -> Sample:
        """Store a finished sample (never an error one) and return it."""
        if self.cache is not None and not sample.finish_reason.startswith("error:"):
            self.cache.put(key, asdict(sample))
        return sample


def _local_tokenizer(name: str) -> Any:
    """A tokenizer from a local folder, or None. Never reaches for the hub: `model` may be a hosted API's name."""
    path = Path(name).expanduser()
    if not (path / "tokenizer_config.json").exists() and not (path / "tokenizer.json").exists():
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception:  # an unreadable tokenizer only costs the token ids, never the run
        return None
