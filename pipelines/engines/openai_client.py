"""The one client for OpenAI-compatible servers (`vllm serve`, `transformers serve`, a hosted API), used by the
`openai` engine and, through `OpenAIChat`, by the judges (as their `judges.protocol.ChatModel`).

What it does, each in one place:
- `OpenAIClient.post`: one JSON request, retried on connection errors, resets, timeouts, 408, 429 and 5xx with
  exponential backoff and jitter (`backoff_s * 2**attempt * U(0.5, 1.5)`, capped at `max_backoff_s`); a
  `Retry-After` (or `retry-after-ms`) header is waited out instead. Counts requests, retries and statuses.
- `OpenAIClient.check`: `GET /models` once, so an unreachable server, a refused key or a model the server does
  not list is one clear line before any work.
- `DiskCache`: one JSON file per key (`DIR/<k[:2]>/<k>.json`, written atomically), so a killed run resumes
  without sending a request that was already answered.
- `OpenAIChat`: `chat(conversations, n=, temperature=, max_new_tokens=, seed=)` over a thread pool of
  `concurrency` workers; each reply is cached as soon as it arrives, keyed by model, messages and sampling.

The API key comes from the environment (`$OPENAI_API_KEY`, or the variable `api_key_env` names); it is sent
in the Authorization header and never stored, logged or written to a manifest.
"""
from __future__ import annotations

import email.utils
import http.client
import json
import os
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from judges.protocol import Reply
from pipelines.core.files import atomic_write_json, fingerprint_json

from .base import EngineError, derive_seed

DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
RETRY_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))


class APIError(Exception):
    """A request that failed. `kind` names the failure like the `openai` package does (`ConnectionError`,
    `Timeout`, `RateLimitError`, `InternalServerError`, `BadRequestError`, `NotFoundError`,
    `AuthenticationError`, `APIStatusError`, `BadResponse`); `status` is the HTTP status when there was one."""

    def __init__(self, kind: str, message: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.kind, self.status, self.retry_after = kind, status, retry_after

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


def _retry_after(headers: Any) -> float | None:
    """`retry-after-ms` (OpenAI) or `Retry-After` (seconds or an HTTP date) as seconds; None when absent."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000.0
        except ValueError:
            pass
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        try:
            return email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None


_STATUS_KINDS = {400: "BadRequestError", 401: "AuthenticationError", 403: "AuthenticationError",
                 404: "NotFoundError", 422: "BadRequestError", 429: "RateLimitError"}


class OpenAIClient:
    """HTTP to one OpenAI-compatible server; thread-safe (each request is its own connection)."""

    def __init__(self, base_url: str, api_key: str | None = None, *, api_key_env: str | None = None,
                 timeout_s: float = 600.0, max_retries: int = 5, backoff_s: float = 1.0,
                 max_backoff_s: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key or api_key_from_env(api_key_env)  # kept out of repr, manifests and messages
        self.api_key_env = api_key_env or DEFAULT_API_KEY_ENV
        self.timeout_s, self.max_retries = timeout_s, max_retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.counts: Counter = Counter()  # requests, retries, status_<code>, connection_errors
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OpenAIClient({self.base_url!r})"

    def __getstate__(self) -> dict:  # a stage holding a client may be pickled; the lock and key stay behind
        state = {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_api_key")}
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._api_key = api_key_from_env(self.api_key_env)

    def _count(self, key: str) -> None:
        with self._lock:
            self.counts[key] += 1

    # ---- one request --------------------------------------------------------------------------------------------

    def _send(self, method: str, path: str, body: dict | None, timeout_s: float) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.base_url}{path}", data=data, method=method, headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {self._api_key}"})
        self._count("requests")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                raw = response.read()
                self._count(f"status_{response.status}")
        except urllib.error.HTTPError as err:
            self._count(f"status_{err.code}")
            detail = _error_message(err.read())
            kind = _STATUS_KINDS.get(err.code, "InternalServerError" if err.code >= 500 else "APIStatusError")
            raise APIError(kind, f"HTTP {err.code}: {detail}", err.code, _retry_after(err.headers)) from None
        except (TimeoutError, socket.timeout) as err:
            self._count("timeouts")
            raise APIError("Timeout", f"no answer within {timeout_s:g}s ({err})") from None
        except urllib.error.URLError as err:
            self._count("connection_errors")
            if isinstance(err.reason, (TimeoutError, socket.timeout)):
                raise APIError("Timeout", f"no answer within {timeout_s:g}s") from None
            raise APIError("ConnectionError", f"connection failed ({err.reason})") from None
        except (ConnectionError, http.client.HTTPException, OSError) as err:  # resets, a server that hung up
            self._count("connection_errors")
            raise APIError("ConnectionError", f"connection failed ({type(err).__name__}: {err})") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise APIError("BadResponse", f"the answer is not JSON: {raw[:200]!r}", status=None) from None

    def post(self, path: str, body: dict) -> dict:
        """POST `body` to `base_url + path`, retried as the module docstring says; raises the last APIError."""
        attempt = 0
        while True:
            try:
                return self._send("POST", path, body, self.timeout_s)
            except APIError as err:
                if not err.retryable or attempt >= self.max_retries:
                    err.attempts = attempt + 1  # type: ignore[attr-defined]
                    raise
                self._count("retries")
                time.sleep(backoff_delay(attempt, self.backoff_s, self.max_backoff_s, err.retry_after))
                attempt += 1

    # ---- the server -----------------------------------------------------------------------------------------------

    def models(self) -> list[str] | None:
        """The ids `GET /models` lists, or None when the server has no such endpoint."""
        try:
            answer = self._send("GET", "/models", None, min(self.timeout_s, 10.0))
        except APIError as err:
            if err.kind in ("ConnectionError", "Timeout"):
                raise EngineError(
                    f"cannot reach an OpenAI-compatible server at {self.base_url} ({err}). Start one (e.g. "
                    f"`vllm serve MODEL` or `transformers serve MODEL`) or pass the right --base-url") from None
            if err.kind == "AuthenticationError":
                raise EngineError(f"the server at {self.base_url} refused the API key: set ${self.api_key_env} "
                                  "(or name another variable with --api-key-env)") from None
            return None  # some servers have no /models; the first real request will tell
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
            answer = self.client.post("/chat/completions", body)
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
        attempts = getattr(err, "attempts", 1)
        return EngineError(f"request to {url} for model {self.model!r} failed after {attempts} attempts: "
                           f"{err.kind}: {err}. Answered requests are cached; rerun the same command to continue")

    def close(self) -> None:
        pass
