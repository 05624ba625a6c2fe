"""The one client for OpenAI-compatible servers (`vllm serve`, `transformers serve`, a hosted API), used by the
`openai` engine and, through `OpenAIChat`, by the judges (as their `judges.protocol.ChatModel`).

The transport is the `openai` SDK (`openai.OpenAI`): its typed requests, `extra_body` for vLLM's fields, its retry
loop and its timeouts. What is ours, each in one place:
- `OpenAIClient.complete`: one completion (`/chat/completions` for `messages`, `/completions` for a `prompt`),
  returned as the server's JSON (vLLM's `token_ids` and `prompt_token_ids` included). The SDK retries connection
  errors, resets, timeouts, 408, 409, 429 and 5xx up to `max_retries` times; the wait between tries is ours,
  `backoff_delay` (the SDK has no setting for it), or the server's `Retry-After` / `retry-after-ms`.
- Accounting: every try the SDK makes goes through the HTTP client `_sdk_client` gives it (the SDK's default one,
  counting requests, status_<code>, connection_errors and timeouts), so `counts["retries"]` and an error's
  `attempts` are what reached the server, with no second retry loop of our own.
- `OpenAIClient.check`: `GET /models` once, unretried, so an unreachable server, a refused key or a model the
  server does not list is one clear line before any work.
- `DiskCache`: one JSON file per key (`DIR/<k[:2]>/<k>.json`, written atomically), so a killed run resumes
  without sending a request that was already answered.
- `OpenAIChat`: `chat(conversations, n=, temperature=, max_new_tokens=, seed=)` over a thread pool of
  `concurrency` workers; each reply is cached as soon as it arrives, keyed by model, messages and sampling.

The API key comes from the environment (`$OPENAI_API_KEY`, or the variable `api_key_env` names); it is sent
in the Authorization header and never stored, logged or written to a manifest.
"""
from __future__ import annotations

import json
import os
import random
import re
import threading
from collections import Counter
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Sequence

from judges.protocol import Reply
from pipelines.core.files import atomic_write_json, fingerprint_json

from .base import EngineError, derive_seed

DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
RETRY_STATUSES = frozenset({408, 409, 429}) | frozenset(range(500, 600))  # what the SDK retries
CONNECT_TIMEOUT_S = 5.0  # the SDK's default: a host that does not answer the handshake fails fast


class APIError(Exception):
    """A request that failed. `kind` names the failure like the `openai` package does (`ConnectionError`,
    `Timeout`, `RateLimitError`, `InternalServerError`, `BadRequestError`, `NotFoundError`,
    `AuthenticationError`, `APIStatusError`, `BadResponse`); `status` is the HTTP status when there was one;
    `attempts` the tries made (1 + the SDK's retries)."""

    def __init__(self, kind: str, message: str, status: int | None = None, attempts: int = 1):
        super().__init__(message)
        self.kind, self.status, self.attempts = kind, status, attempts

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status in RETRY_STATUSES


def default_chat_cache() -> Path:
    """Where `OpenAIChat` replies are cached unless told: $PREFSMITH_CHAT_CACHE, else ~/.cache/prefsmith/chat."""
    return Path(os.environ.get("PREFSMITH_CHAT_CACHE") or "~/.cache/prefsmith/chat").expanduser()


def api_key_from_env(api_key_env: str | None = None) -> str:
    """The key in `$api_key_env` (default `$OPENAI_API_KEY`). A variable the user named that is unset is an
    error; the default one may be unset (local servers take any key: "EMPTY")."""
    name = api_key_env or DEFAULT_API_KEY_ENV
    value = os.environ.get(name)
    if value:
        return value
    if api_key_env and api_key_env != DEFAULT_API_KEY_ENV:
        raise EngineError(f"--api-key-env {api_key_env}: the environment variable {api_key_env} is not set")
    return "EMPTY"


def backoff_delay(attempt: int, backoff_s: float, max_backoff_s: float, retry_after: float | None,
                  rng: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry `attempt` (0-based): the server's Retry-After when it sent one (capped at
    `max_backoff_s`), else `backoff_s * 2**attempt`, jittered by U(0.5, 1.5), capped at `max_backoff_s`.

    >>> backoff_delay(3, 1.0, 60.0, None, rng=lambda: 0.5)
    8.0
    >>> backoff_delay(0, 1.0, 60.0, 2.5)
    2.5
    """
    if retry_after is not None:
        return min(max(0.0, retry_after), max_backoff_s)
    return min(max_backoff_s, backoff_s * 2 ** attempt * (0.5 + rng()))


_STATUS_KINDS = {400: "BadRequestError", 401: "AuthenticationError", 403: "AuthenticationError",
                 404: "NotFoundError", 422: "BadRequestError", 429: "RateLimitError"}


class _Tries(threading.local):
    n = 0  # tries of the current request in this thread (the SDK retries in the thread that asked)


class OpenAIClient:
    """One OpenAI-compatible server through the `openai` SDK; thread-safe (the SDK's client is, and the counts
    are taken under a lock). The SDK client is built on first use, so the object pickles (a stage holding it
    may be shipped to a worker) without its connections or its key."""

    def __init__(self, base_url: str, api_key: str | None = None, *, api_key_env: str | None = None,
                 timeout_s: float = 600.0, max_retries: int = 5, backoff_s: float = 1.0,
                 max_backoff_s: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key or api_key_from_env(api_key_env)  # kept out of repr, manifests and messages
        self.api_key_env = api_key_env or DEFAULT_API_KEY_ENV
        self.timeout_s, self.max_retries = timeout_s, max_retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.counts: Counter = Counter()  # requests, retries, status_<code>, connection_errors, timeouts
        self._lock = threading.Lock()
        self._tries = _Tries()
        self._sdk: Any = None

    def __repr__(self) -> str:
        return f"OpenAIClient({self.base_url!r})"

    def __getstate__(self) -> dict:  # the lock, the key and the SDK client (its connections) stay behind
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_api_key", "_tries", "_sdk")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock, self._tries, self._sdk = threading.Lock(), _Tries(), None
        self._api_key = api_key_from_env(self.api_key_env)

    @property
    def sdk(self) -> Any:
        """The `openai.OpenAI` client (`_sdk_client`), built on first use."""
        with self._lock:
            if self._sdk is None:
                self._sdk = _sdk_client(self)
            return self._sdk

    def _tried(self, outcome: str) -> None:
        """Called by the HTTP client after every try: `status_<code>`, `connection_errors` or `timeouts`."""
        self._tries.n += 1
        with self._lock:
            self.counts["requests"] += 1
            self.counts[outcome] += 1

    def close(self) -> None:
        """Close the SDK's connections; a later request opens new ones."""
        with self._lock:
            sdk, self._sdk = self._sdk, None
        if sdk is not None:
            sdk.close()

    # ---- one request --------------------------------------------------------------------------------------------

    def complete(self, body: dict, extra_body: dict | None = None) -> dict:
        """POST `body` to `/chat/completions` (it has `messages`) or `/completions` (it has `prompt`) through the
        SDK's typed method, with `extra_body` (fields the OpenAI API does not have, e.g. vLLM's
        `return_token_ids`) merged into the JSON. Returns the answer's JSON as the server sent it; raises
        APIError after the SDK's retries (or at once, for what it does not retry)."""
        import openai

        resource = self.sdk.chat.completions if "messages" in body else self.sdk.completions
        self._tries.n = 0
        try:
            raw = resource.with_raw_response.create(**body, extra_body=extra_body)
        except openai.APIError as err:
            raise self._api_error(err, self.timeout_s) from None
        finally:
            with self._lock:
                self.counts["retries"] += max(0, self._tries.n - 1)
        try:
            return json.loads(raw.http_response.content)
        except ValueError:
            raise APIError("BadResponse", f"the answer is not JSON: {raw.http_response.content[:200]!r}",
                           attempts=self._tries.n) from None

    def _api_error(self, err: Exception, timeout_s: float) -> APIError:
        """The SDK's exception as an APIError: the kind, `HTTP <status>: <the server's message>`, the tries."""
        import openai

        attempts = max(1, self._tries.n)
        if isinstance(err, openai.APIStatusError):
            status = err.status_code
            kind = _STATUS_KINDS.get(status, "InternalServerError" if status >= 500 else "APIStatusError")
            return APIError(kind, f"HTTP {status}: {_error_message(err.response.content)}", status, attempts)
        if isinstance(err, openai.APITimeoutError):
            return APIError("Timeout", f"no answer within {timeout_s:g}s", attempts=attempts)
        if isinstance(err, openai.APIConnectionError):
            cause = err.__cause__
            why = f"{type(cause).__name__}: {cause}" if cause is not None else str(err)
            return APIError("ConnectionError", f"connection failed ({' '.join(why.split())})", attempts=attempts)
        return APIError("BadResponse", str(err), attempts=attempts)

    # ---- the server -----------------------------------------------------------------------------------------------

    def models(self) -> list[str] | None:
        """The ids `GET /models` lists, or None when the server has no such endpoint. Asked once, unretried."""
        import openai

        timeout_s = min(self.timeout_s, 10.0)
        self._tries.n = 0
        try:
            raw = self.sdk.with_options(timeout=timeout_s, max_retries=0).models.with_raw_response.list()
            answer = json.loads(raw.http_response.content)
        except openai.APIError as err:
            failed = self._api_error(err, timeout_s)
            if failed.kind in ("ConnectionError", "Timeout"):
                raise EngineError(
                    f"cannot reach an OpenAI-compatible server at {self.base_url} ({failed}). Start one (e.g. "
                    f"`vllm serve MODEL` or `transformers serve MODEL`) or pass the right --base-url") from None
            if failed.kind == "AuthenticationError":
                raise EngineError(f"the server at {self.base_url} refused the API key: set ${self.api_key_env} "
                                  "(or name another variable with --api-key-env)") from None
            return None  # some servers have no /models; the first real request will tell
        except ValueError:
            return None
        data = answer.get("data") if isinstance(answer, dict) else None
        return [str(m.get("id")) for m in data if isinstance(m, dict)] if isinstance(data, list) else None

    def check(self, model: str | None = None) -> None:
        """Fail now, in one line naming the URL and what to do, if the server is unreachable, refuses the key, or
        lists its models and `model` is not among them. (`transformers serve` lists only the hub cache and loads
        any local folder, so a model that is a local folder is never refused here.)"""
        listed = self.models()
        if model is None or not listed or model in listed or Path(model).expanduser().is_dir():
            return
        shown = ", ".join(repr(m) for m in listed[:8]) + (f" and {len(listed) - 8} more" if len(listed) > 8 else "")
        raise EngineError(f"the server at {self.base_url} does not serve model {model!r} (GET /models lists "
                          f"{shown}): pass one of these as --model")


def _is_timeout(err: BaseException) -> bool:
    # the SDK's HTTP library is httpx2 (openai 3.x) or httpx (before): both name their timeouts' base class so
    return any(cls.__name__ == "TimeoutException" for cls in type(err).__mro__)


def _sdk_client(client: OpenAIClient) -> Any:
    """`openai.OpenAI` for `client`: its `max_retries` and timeout, our `backoff_delay` between retries, and an
    HTTP client (the SDK's default one) that reports every try to `client._tried`."""
    import openai

    class CountingHttpClient(openai.DefaultHttpxClient):
        def send(self, request: Any, **kwargs: Any) -> Any:
            try:
                response = super().send(request, **kwargs)
            except Exception as err:  # the SDK retries these as connection errors (or timeouts)
                client._tried("timeouts" if _is_timeout(err) else "connection_errors")
                raise
            client._tried(f"status_{response.status_code}")
            return response

    class SDK(openai.OpenAI):
        def _calculate_retry_timeout(self, remaining_retries: int, options: Any, response_headers: Any = None) -> float:
            # the SDK's hook for the wait before a retry (its own: 0.5 s doubling to 8 s, no setting); ours keeps
            # --backoff-s, and the server's Retry-After as the SDK reads it
            attempt = options.get_max_retries(self.max_retries) - remaining_retries
            return backoff_delay(attempt, client.backoff_s, client.max_backoff_s,
                                 self._parse_retry_after_header(response_headers))

    timeout = openai.Timeout(client.timeout_s, connect=min(client.timeout_s, CONNECT_TIMEOUT_S))
    return SDK(api_key=client._api_key, base_url=client.base_url, max_retries=client.max_retries, timeout=timeout,
               http_client=CountingHttpClient(timeout=timeout))


# how servers say a prompt does not fit: vLLM ("maximum context length is 512 tokens"), OpenAI
# ("context_length_exceeded"), TGI / llama.cpp ("exceeds the available context size", "too long")
_CONTEXT_EXCEEDED = re.compile(r"context.length|context window|context size|maximum context|too long|"
                               r"input_tokens|max_model_len", re.IGNORECASE)


def _error_message(raw: bytes) -> str:
    try:
        body = json.loads(raw)
        error = body.get("error", body) if isinstance(body, dict) else body
        message = error.get("message", error) if isinstance(error, dict) else error
    except ValueError:
        message = raw.decode("utf-8", "replace")
    return " ".join(str(message).split())[:300]


class DiskCache:
    """One JSON file per key under `root` (`root/<k[:2]>/<k>.json`), written atomically. A torn or foreign file
    reads as missing. Nothing is evicted: delete the folder to reclaim space."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> Any | None:
        try:
            return json.loads(self.path(key).read_text())
        except (OSError, ValueError):
            return None

    def put(self, key: str, value: Any) -> None:
        atomic_write_json(self.path(key), value, indent=None)


class OpenAIChat:
    """An OpenAI-compatible server as a `judges.protocol.ChatModel`.

    Sample j of a conversation is one request with seed `derive_seed(seed, j)` (sample 0: `seed`), the same
    whether the server honours `n` or not; its cache key is sha256 of model, messages, temperature,
    max_new_tokens and that seed (not the URL: a restarted server on another port, or a hosted mirror of the
    same model, reuses the answers). `cache_dir=None` turns the cache off; `default_chat_cache()` is the
    usual place."""

    def __init__(self, client: OpenAIClient, model: str, *, cache_dir: str | os.PathLike | None,
                 concurrency: int = 8) -> None:
        if concurrency < 1:
            raise EngineError(f"--concurrency must be >= 1, got {concurrency}")
        self.client, self.model, self.concurrency = client, model, concurrency
        self.cache = DiskCache(cache_dir) if cache_dir else None
        self.name = f"openai:{model}"
        self.counts: Counter = Counter()  # cached, sent (replies, not HTTP requests: see client.counts)

    def chat(self, conversations: Sequence[list[dict[str, Any]]], *, n: int = 1, temperature: float = 0.0,
             max_new_tokens: int = 256, seed: int = 0) -> list[list[Reply]]:
        jobs = [(i, j, list(c), derive_seed(seed, j)) for i, c in enumerate(conversations) for j in range(n)]
        out: list[list[Reply | None]] = [[None] * n for _ in conversations]
        todo = []
        for i, j, messages, s in jobs:
            key = self._key(messages, temperature, max_new_tokens, s)
            hit = self.cache.get(key) if self.cache else None
            if isinstance(hit, dict) and isinstance(hit.get("text"), str):
                out[i][j] = Reply(hit["text"], hit.get("prompt_tokens"), hit.get("completion_tokens"))
                self.counts["cached"] += 1
            else:
                todo.append((i, j, messages, s, key))

        def one(item: tuple) -> None:
            i, j, messages, s, key = item
            out[i][j] = self._ask(messages, temperature, max_new_tokens, s, key)

        if todo:
            pool = ThreadPoolExecutor(min(self.concurrency, len(todo)))
            try:
                futures = [pool.submit(one, item) for item in todo]
                done, _ = wait(futures, return_when=FIRST_EXCEPTION)
                failed = next((f for f in done if f.exception() is not None), None)
                if failed is not None:  # stop queued requests; those in flight finish (and are cached)
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise self._error(failed.exception())
            finally:
                pool.shutdown(wait=True)
        return out  # type: ignore[return-value]

    def _key(self, messages: list[dict], temperature: float, max_new_tokens: int, seed: int) -> str:
        return fingerprint_json({"model": self.model, "messages": messages, "temperature": temperature,
                                 "max_new_tokens": max_new_tokens, "seed": seed}, length=None)

    def _ask(self, messages: list[dict], temperature: float, max_new_tokens: int, seed: int, key: str) -> Reply:
        body = {"model": self.model, "messages": messages, "temperature": temperature,
                "max_tokens": max_new_tokens, "seed": seed, "n": 1}
        try:
            answer = self.client.complete(body)
        except APIError as err:
            if err.status == 400 and _CONTEXT_EXCEEDED.search(str(err)):
                # this conversation alone cannot be answered (the others can): a per-row reason, not a crash;
                # not cached, so a server started with a longer context answers it on a rerun
                self.counts["refused"] += 1
                return Reply("", error=f"too_long: {err}")
            raise
        try:
            text = answer["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise APIError("BadResponse", f"no choices[0].message.content in the answer: {str(answer)[:200]}")
        usage = answer.get("usage") or {}
        reply = Reply(str(text), usage.get("prompt_tokens"), usage.get("completion_tokens"))
        self.counts["sent"] += 1
        if self.cache:
            self.cache.put(key, {"text": str(reply), "prompt_tokens": reply.prompt_tokens,
                                 "completion_tokens": reply.completion_tokens})
        return reply

    def _error(self, err: BaseException) -> BaseException:
        if not isinstance(err, APIError):
            return err
        url = self.client.base_url
        if err.kind == "NotFoundError":
            return EngineError(f"the server at {url} does not serve model {self.model!r} ({err}): check --model "
                               f"against GET {url}/models")
        if err.kind == "AuthenticationError":
            return EngineError(f"the server at {url} refused the API key ({err}): set ${self.client.api_key_env}")
        if err.kind == "BadRequestError":
            return EngineError(f"the server at {url} rejected the request for model {self.model!r} ({err})")
        return EngineError(f"request to {url} for model {self.model!r} failed after {err.attempts} attempts: "
                           f"{err.kind}: {err}. Answered requests are cached; rerun the same command to continue")

    def close(self) -> None:
        self.client.close()
