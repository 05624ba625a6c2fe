"""The `openai` engine against a real `transformers serve` on loopback, started here on the tiny model."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from test_engines import CHAT, make_stopping_model, rescore

from pipelines.engines import EngineError, SamplingConfig, load_engine
from pipelines.engines.base import derive_seed, render_prompt_ids

pytest.importorskip("fastapi", reason="transformers serve needs fastapi and uvicorn")
pytest.importorskip("uvicorn", reason="transformers serve needs fastapi and uvicorn")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served_model(tiny_model, tmp_path_factory) -> Path:
    """The stopping tiny model with `do_sample` on in its generation config: `transformers serve` samples only
    then, with the same warpers as the hf engine (top_k off)."""
    from transformers import GenerationConfig

    path = make_stopping_model(tiny_model, tmp_path_factory.mktemp("served") / "m")
    config = GenerationConfig.from_pretrained(path)
    config.do_sample, config.top_k = True, 0
    config.save_pretrained(path)
    return path


@contextlib.contextmanager
def serving(command: list[str], port: int, log: Path, startup_s: float = 180):
    """Run a server command on a loopback port until the block ends; wait (bounded) for GET /health."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1")
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.time() + startup_s
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"{command[:3]} did not start:\n{log.read_text()[-3000:]}")
                time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def server(served_model, tmp_path_factory):
    """`transformers serve` on a free loopback port; yields (base_url, log file)."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    exe = str(Path(sys.executable).with_name("transformers"))
    command = [exe, "serve", str(served_model), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
               "--log-level", "info"]
    with serving(command, port, log) as url:
        yield url, log


def engine(server, served_model, **options):
    options = {"cache_dir": None, "max_concurrency": 1, **options}
    return load_engine("openai", str(served_model), base_url=server[0], **options)


def test_openai_reproduces_the_hf_engine_sample_by_sample(server, served_model):
    """`transformers serve` ignores `n`: the engine asks once per sample with derived seeds. The samples are
    reproducible and distinct; greedy answers equal the hf engine's exactly (same model, same template)."""
    sampling = SamplingConfig(n=3, temperature=1.0, max_new_tokens=6)
    prompts, seeds = [CHAT, "Once upon a time", "The answer is"], [5, 6, 7]
    client = engine(server, served_model)
    result = client.generate(prompts, sampling, seeds)
    assert client.honours_n is False
    again = engine(server, served_model).generate(prompts, sampling, seeds)
    assert [[s.text for s in p] for p in again] == [[s.text for s in p] for p in result]
    assert any(len({s.text for s in samples}) > 1 for samples in result)  # derived seeds differ per sample
    hf = load_engine("hf", str(served_model), device="cpu")
    greedy = SamplingConfig(n=1, temperature=0.0, max_new_tokens=6)
    for prompt, ours, ref in zip(prompts, client.generate(prompts, greedy, seeds), hf.generate(prompts, greedy, seeds)):
        assert (ours[0].text, ours[0].finish_reason) == (ref[0].text, ref[0].finish_reason)
    reasons = []
    for samples in result:
        assert len(samples) == 3
        for s in samples:
            assert s.logprobs is None  # transformers serve reports none
            # ids re-tokenized from the text, only when that reproduces the text (else None)
            assert s.token_ids is None or hf.tokenizer.decode(s.token_ids, skip_special_tokens=True) == s.text
            reasons.append(s.finish_reason)
    assert set(reasons) == {"stop", "length"}
    assert any(s.token_ids is not None for samples in result for s in samples)


def test_openai_seed_determinism(server, served_model):
    client = engine(server, served_model)
    sampling = SamplingConfig(n=2, max_new_tokens=8)
    texts = lambda seed: [s.text for s in client.generate([CHAT], sampling, [seed])[0]]  # noqa: E731
    first = texts(11)
    assert texts(11) == first
    assert texts(12) != first
    assert first[0] != first[1]


def test_openai_cache_makes_a_rerun_free(server, served_model, tmp_path):
    sampling = SamplingConfig(n=2, max_new_tokens=4)
    posts = lambda: server[1].read_text().count("POST /v1/")  # noqa: E731
    first = engine(server, served_model, cache_dir=tmp_path, max_concurrency=4).generate([CHAT, "Hello"], sampling, [1, 2])
    assert len(list(tmp_path.rglob("*.json"))) == 4  # one file per (prompt, sample)
    before = posts()
    again = engine(server, served_model, cache_dir=tmp_path).generate([CHAT, "Hello"], sampling, [1, 2])
    assert posts() == before and again == first
    engine(server, served_model, cache_dir=tmp_path).generate([CHAT], SamplingConfig(n=2, max_new_tokens=5), [1])
    assert posts() > before  # other sampling params: other keys, new requests
    assert len(list(tmp_path.rglob("*.json"))) == 6


def test_openai_unreachable_server_and_wrong_model_fail_clearly(server, served_model):
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(EngineError, match=f"cannot reach an OpenAI-compatible server at {url}"):
        load_engine("openai", "m", base_url=url)
    client = load_engine("openai", "not-the-served-model", base_url=server[0], cache_dir=None)
    with pytest.raises(EngineError, match="rejected the request for model 'not-the-served-model'"):
        client.generate([CHAT], SamplingConfig(max_new_tokens=2), [0])


class FlakyServer(BaseHTTPRequestHandler):
    """Answers 503 to the first `failures` completion requests, then a one-choice completion with vLLM-style
    token ids and log-probs: enough to watch retries and the server-reported ids and log-probs being used."""

    failures = 2
    calls: list[dict] = []

    def do_GET(self):  # /v1/models
        self._reply(200, {"object": "list", "data": []})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FlakyServer.calls.append(body)
        if len(FlakyServer.calls) <= FlakyServer.failures:
            return self._reply(503, {"error": {"message": "overloaded"}})
        choice = {"index": 0, "text": " four", "finish_reason": "stop", "token_ids": [7, 8, 2],
                  "logprobs": {"tokens": ["a", "b", "c"], "token_logprobs": [-0.5, -0.25, -0.125],
                               "top_logprobs": None, "text_offset": [0, 1, 2]}}
        self._reply(200, {"id": "x", "object": "text_completion", "created": 0, "model": body["model"],
                          "choices": [choice]})

    def _reply(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_openai_retries_5xx_and_uses_server_token_ids():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FlakyServer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
        client = load_engine("openai", "m", base_url=url, cache_dir=None, backoff_s=0.01)
        [[s]] = client.generate(["2 + 2 ="], SamplingConfig(n=1, max_new_tokens=3), [9])
        assert len(FlakyServer.calls) == 3  # two 503s, then the answer
        assert FlakyServer.calls[-1]["seed"] == 9 and FlakyServer.calls[-1]["return_token_ids"] is True
        assert (s.text, s.token_ids, s.logprobs, s.finish_reason) == (" four", [7, 8, 2], [-0.5, -0.25, -0.125], "stop")
        FlakyServer.failures, FlakyServer.calls = 10, []
        give_up = load_engine("openai", "m", base_url=url, cache_dir=None, backoff_s=0.01, max_retries=1)
        with pytest.raises(EngineError, match="failed after 2 attempts"):
            give_up.generate(["x"], SamplingConfig(max_new_tokens=1), [0])
        marked = load_engine("openai", "m", base_url=url, cache_dir=None, backoff_s=0.01, max_retries=0, on_error="sample")
        [[bad]] = marked.generate(["x"], SamplingConfig(max_new_tokens=1), [0])
        assert bad.finish_reason.startswith("error:InternalServerError") and bad.text == ""
    finally:
        httpd.shutdown()


def test_openai_against_vllm_server_uses_its_ids_and_processed_logprobs(served_model, tmp_path):
    """vLLM's OpenAI server honours n and seeds and returns token ids; started with
    `--logprobs-mode processed_logprobs`, its log-probs are the sampling ones, like the offline engine's."""
    pytest.importorskip("vllm", reason="vllm is not installed")
    port = free_port()
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(served_model),
               "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "256",
               "--enforce-eager", "--logprobs-mode", "processed_logprobs"]
    with serving(command, port, tmp_path / "vllm.log") as url:
        client = load_engine("openai", str(served_model), base_url=url, cache_dir=None)
        prompts = [CHAT, "The answer is"]
        sampling = SamplingConfig(n=3, temperature=0.9, top_p=0.95, max_new_tokens=8)
        result = client.generate(prompts, sampling, [1, 2])
        again = client.generate(prompts, sampling, [1, 2])
    assert client.honours_n is True and client.optional_fields == {"logprobs", "return_token_ids"}
    assert result == again
    assert (tmp_path / "vllm.log").read_text().count("POST /v1/") == 4  # one request per prompt and run
    for prompt, samples in zip(prompts, result):
        assert len(samples) == 3
        prompt_ids = render_prompt_ids(client.tokenizer, prompt)  # what the server renders too
        for s in samples:
            assert s.finish_reason in ("stop", "length") and len(s.token_ids) == len(s.logprobs) <= 8
            assert s.logprobs == pytest.approx(rescore(served_model, prompt_ids, s.token_ids, 0.9, 0.95), abs=1e-4)
            assert s.prompt_ids == prompt_ids  # the server's own ids (return_token_ids), equal to our rendering
    assert [s.token_ids for s in result[1]] == [[2]] * 3  # this prompt makes the stopping model stop at once


# ------------------------------------------------------------------------------------------- the SDK transport
class Answering(BaseHTTPRequestHandler):
    """GET /v1/models lists "m"; a POST is recorded (body, headers) and answered as `server.answer(body)` says:
    `(delay_s, payload)`, the payload a dict (sent as JSON) or bytes (sent as they are, as HTML)."""

    def do_GET(self):
        self._send(json.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]}).encode(), "application/json")

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((body, {k.lower(): v for k, v in self.headers.items()}))
        delay_s, payload = self.server.answer(body)
        time.sleep(delay_s)
        if isinstance(payload, bytes):
            return self._send(payload, "text/html")
        self._send(json.dumps({"id": "x", "object": "x", "created": 0, "model": "m", **payload}).encode(),
                   "application/json")

    def _send(self, data: bytes, content_type: str):
        try:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up waiting (the timeout test)
            pass

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def answering(answer):
    """An `Answering` server on a free loopback port; yields (base_url, requests)."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Answering)
    httpd.daemon_threads = True
    httpd.answer, httpd.requests = answer, []
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", httpd.requests
    finally:
        httpd.shutdown()
        httpd.server_close()


def choices(texts: list[str], chat: bool, **fields) -> list[dict]:
    content = (lambda t: {"message": {"role": "assistant", "content": t}}) if chat else (lambda t: {"text": t})
    return [{"index": j, "finish_reason": "stop", **content(t), **fields} for j, t in enumerate(texts)]


def test_openai_warns_once_when_a_server_returns_identical_samples(capsys):
    """A server that honours n but sends n copies (a prompt saying "copy" here) is named once per engine, in one
    line on stderr with how many prompts; greedy sampling, distinct samples or a minority of identical groups
    (a confident model) say nothing."""
    def answer(body):
        prompt = json.dumps(body.get("messages") or body.get("prompt"))
        n = body["n"]
        texts = ["same"] * n if "copy" in prompt else [f"seed {body['seed']} sample {j}" for j in range(n)]
        return 0.0, {"choices": choices(texts, "messages" in body)}

    copies = [[{"role": "user", "content": f"copy {i}"}] for i in range(3)]
    sampling = SamplingConfig(n=4, temperature=1.0, max_new_tokens=4)
    with answering(answer) as (url, requests):
        engine = load_engine("openai", "m", base_url=url, cache_dir=None)
        [samples, *_] = engine.generate(copies, sampling, [0, 1, 2])
        assert [s.text for s in samples] == ["same"] * 4 and engine.honours_n is True and len(requests) == 3
        assert capsys.readouterr().err == (
            f"[openai] warning: the server at {url} returned 4 identical samples for 3 of 3 prompts at temperature "
            "1: it ignores the seed or the temperature (transformers serve samples only when the model's "
            "generation_config.json has do_sample: true)\n")
        engine.generate(copies, sampling, [3, 4, 5])
        assert capsys.readouterr().err == ""  # once per engine
        fresh = lambda: load_engine("openai", "m", base_url=url, cache_dir=None)  # noqa: E731
        fresh().generate(copies, SamplingConfig(n=4, temperature=0.0, max_new_tokens=4), [0, 1, 2])  # greedy
        fresh().generate(["two", "distinct"], sampling, [0, 1])  # /completions, distinct samples
        fresh().generate([copies[0], "a", "b"], sampling, [0, 1, 2])  # 1 of 3 identical: no majority
        assert capsys.readouterr().err == ""
        fresh().generate([copies[0], copies[1], "b"], sampling, [0, 1, 2])
        assert "returned 4 identical samples for 2 of 3 prompts" in capsys.readouterr().err


def test_openai_engine_on_the_sdk_timeouts_bad_answers_and_server_prompt_ids():
    """The requests are the SDK's (its version header; vLLM's return_token_ids merged into the JSON by extra_body).
    vLLM's prompt_token_ids become `Sample.prompt_ids` (per choice for /completions, per answer for chat). A
    server slower than timeout_s is retried by the SDK, each try counted, then one clear line; an answer that is
    not JSON is not retried and says what came back."""
    mode = {"now": "vllm"}

    def answer(body):
        chat = "messages" in body
        if mode["now"] == "slow":
            return 2.0, {"choices": choices(["late"], chat)}
        if mode["now"] == "html":
            return 0.0, b"<html>busy</html>"
        if chat:
            return 0.0, {"choices": choices(["4"], True, token_ids=[5, 2]), "prompt_token_ids": [1, 8, 9]}
        return 0.0, {"choices": choices([" 4"], False, token_ids=[5, 2], prompt_token_ids=[1, 7])}

    import openai

    with answering(answer) as (url, requests):
        engine = load_engine("openai", "m", base_url=url, cache_dir=None, timeout_s=0.5, max_retries=1,
                             backoff_s=0.01)
        [[text], [chat]] = engine.generate(["2 + 2 =", [{"role": "user", "content": "2 + 2?"}]],
                                           SamplingConfig(n=1, max_new_tokens=2), [0, 1])
        assert (text.text, text.token_ids, text.prompt_ids) == (" 4", [5, 2], [1, 7])
        assert (chat.text, chat.token_ids, chat.prompt_ids) == ("4", [5, 2], [1, 8, 9])
        for body, headers in requests:
            assert headers["x-stainless-package-version"] == openai.__version__ and body["return_token_ids"] is True
        assert engine.client.counts["status_200"] == 3  # GET /models and the two completions

        mode["now"], before = "slow", len(requests)
        t0 = time.time()
        with pytest.raises(EngineError, match=r"failed after 2 attempts: Timeout: no answer within 0.5s"):
            engine.generate(["slow"], SamplingConfig(n=1, max_new_tokens=2), [0])
        assert time.time() - t0 < 1.9  # two tries of 0.5 s, not the server's 2 s
        assert len(requests) - before == 2
        assert (engine.client.counts["timeouts"], engine.client.counts["retries"]) == (2, 1)

        mode["now"], before = "html", len(requests)
        with pytest.raises(EngineError, match=r"failed after 1 attempts: BadResponse: the answer is not JSON: "
                                              r"b'<html>busy</html>'"):
            engine.generate(["html"], SamplingConfig(n=1, max_new_tokens=2), [0])
        assert len(requests) - before == 1  # a 200 that is not JSON is not retried
