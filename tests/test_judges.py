"""judges/ and `prefsmith judge`, against a scripted OpenAI-compatible server of our own on loopback.

The server (`Scripted`) answers `/v1/chat/completions` with whatever a test's `answer(body)` says: a reply
text, or a `Fail` (an HTTP status with headers, or a dropped connection). It records every request, so a test
can count what reached it: retries, and what a resumed run sends again (nothing already answered).
"""
from __future__ import annotations

import doctest
import json
import pickle
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import pytest

import judges.pairwise
import judges.protocol
import judges.verdicts
from judges.pairwise import PairwiseJudge, swap_rule
from judges.pointwise import PointwiseJudge
from judges.protocol import ChatModel, Reply
from judges.rubrics import Rubric, RubricError, builtin_rubrics, load_rubric
from judges.verdicts import JudgeConfig, parse_score, parse_winner
from pipelines.cli import main
from pipelines.core import dataset as ds
from pipelines.engines import EngineError, SamplingConfig, load_engine
from pipelines.engines.openai_client import OpenAIChat, OpenAIClient, backoff_delay
from pipelines.stages.judge import JudgeStageConfig, judge, parse_reward_spec

MODEL = "judge-1"


@pytest.fixture(autouse=True)
def _private_reply_cache(tmp_path, monkeypatch):
    """No test reads or writes the user's ~/.cache/prefsmith/chat."""
    monkeypatch.setenv("PREFSMITH_CHAT_CACHE", str(tmp_path / "chat-cache"))


# ------------------------------------------------------------------------------------------- the scripted server
@dataclass
class Fail:
    status: int | None = None  # None: drop the connection without answering (a reset)
    headers: dict = field(default_factory=dict)


class Scripted:
    """An OpenAI-compatible server on 127.0.0.1 whose answers a test scripts. `budget`: after that many answered
    requests the server kills itself (stops listening) as if the process died."""

    def __init__(self, answer: Callable[[dict], "str | Fail"], models=(MODEL,), port: int = 0,
                 budget: int | None = None, delay_s: float = 0.0):
        self.answer, self.budget, self.delay_s = answer, budget, delay_s
        self.models = list(models)  # what GET /models lists
        self.serves = list(models)  # what POST accepts (others: 404)
        self.requests: list[dict] = []  # every POST body received
        self.answered: list[dict] = []  # bodies answered with 200
        self.auth: list[str] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        self.dead = False
        self.closed = threading.Event()  # set once the port is free again
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.script = self  # type: ignore[attr-defined]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def kill(self) -> None:
        self.dead = True
        self.httpd.shutdown()
        self.httpd.server_close()
        self.closed.set()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if not self.dead:
            self.kill()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        s = self.server.script
        if self.path.rstrip("/") == "/v1/models":
            return self._reply(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in s.models]})
        self._reply(404, {"error": {"message": "no such route"}})

    def do_POST(self):
        s = self.server.script
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with s.lock:  # decide under the lock, drop outside it (_drop takes the lock to release the count)
            dead = s.dead
            if not dead:
                s.requests.append(body)
                s.auth.append(self.headers.get("Authorization", ""))
                s.in_flight += 1
                s.max_in_flight = max(s.max_in_flight, s.in_flight)
        if dead:
            return self._drop()
        self._counted = True
        try:
            time.sleep(s.delay_s)
            if body.get("model") not in s.serves:
                return self._reply(404, {"error": {"message": f"model {body.get('model')} does not exist"}})
            answer = s.answer(body)
            if isinstance(answer, Fail):
                return self._drop() if answer.status is None else self._reply(
                    answer.status, {"error": {"message": f"scripted {answer.status}"}}, answer.headers)
            with s.lock:
                dead = s.dead
                if not dead:
                    s.answered.append(body)
                    kill = s.budget is not None and len(s.answered) >= s.budget
                    s.dead = kill  # requests still in flight are dropped from now on
            if dead:
                return self._drop()
            self._reply(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                              "choices": [{"index": 0, "finish_reason": "stop",
                                           "message": {"role": "assistant", "content": answer}}],
                              "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}})
            if kill:
                threading.Thread(target=s.kill, daemon=True).start()
        finally:
            self._leave()

    def _leave(self):
        # a request stops counting as in flight before its reply is written: once the client holds the reply it
        # may send its next request, which must not be counted beside this one
        if getattr(self, "_counted", False):
            self._counted = False
            with self.server.script.lock:
                self.server.script.in_flight -= 1

    def _drop(self):
        self._leave()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def _reply(self, status, payload, headers=None):
        self._leave()
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


# what the judge is shown, read back out of the prompt
def user_text(body: dict) -> str:
    return body["messages"][-1]["content"]


def response_of(body: dict) -> str:
    return re.search(r"\[Response\]\n(.*?)\n\nRate the response", user_text(body), re.S).group(1)


def responses_ab(body: dict) -> tuple[str, str]:
    m = re.search(r"\[Response A\]\n(.*?)\n\n\[Response B\]\n(.*?)\n\nCompare", user_text(body), re.S)
    return m.group(1), m.group(2)


def scorer(body: dict) -> str:
    """good -> 9, bad -> 2, garbled -> never a score, flaky -> a score only when asked again (seed > 0)."""
    text = response_of(body)
    if "garbled" in text:
        return "It reads fine to me."
    if "flaky" in text and body["seed"] == 0:
        return "Hmm, hard to say."
    score = 9 if "good" in text else 6 if "flaky" in text else 2
    return f'The response is {"strong" if score > 5 else "weak"}.\n{{"score": {score}}}'


def fair(body: dict) -> str:
    a, b = responses_ab(body)
    winner = "A" if "good" in a and "good" not in b else "B" if "good" in b and "good" not in a else "tie"
    return f'Compared.\n{{"winner": "{winner}"}}'


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def config(server: Scripted, tmp_path: Path, **kw) -> JudgeStageConfig:
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    return JudgeStageConfig(model=MODEL, base_url=server.url, backoff_s=0.001, **kw)


POINTWISE_ROWS = [{"prompt": f"Question {i}?", "completion": c, "answer": str(i)}
                  for i, c in enumerate(["a good answer", "a bad answer", "garbled text", "flaky but fine"])]


# ------------------------------------------------------------------------------------------- pure pieces
def test_docstring_examples():
    import judges.rubrics  # noqa: F401
    import pipelines.engines.openai_client
    import pipelines.stages.judge

    for module in (judges.verdicts, judges.pairwise, judges.protocol, pipelines.engines.openai_client,
                   pipelines.stages.judge):
        assert doctest.testmod(module).failed == 0, module.__name__


def test_verdict_parsing():
    scale = (1.0, 10.0)
    assert parse_score('Good.\n{"reasoning": "x", "score": 7}', scale) == 7.0
    assert parse_score('{"score": 3} at first, but on reflection {"score": 8}', scale) == 8.0  # the last one
    assert parse_score("**Score:** 6.5", scale) == 6.5
    assert parse_score("Score: 0", scale) is None and parse_score('{"score": "high"}', scale) is None
    assert parse_score("I like it", scale) is None and parse_score('{"score": true}', scale) is None
    assert parse_winner('{"winner": "Response B"}') == "B"
    assert parse_winner("Verdict: A") == "A" and parse_winner("[[B]]") == "B" and parse_winner("[[C]]") == "tie"
    assert parse_winner('{"winner": "tie"}', ties=False) is None
    assert parse_winner("Both have merits.") is None
    assert [swap_rule(*v) for v in [("A", "B"), ("B", "A"), ("tie", "tie"), ("A", "A"), ("B", "B"),
                                     ("tie", "A"), (None, "A")]] == [
        (1.0, "first"), (0.0, "second"), (0.5, "tie"), (None, "position_inconsistent"),
        (None, "position_inconsistent"), (None, "position_inconsistent"), (None, "unparseable")]


def test_backoff_is_exponential_jittered_capped_and_yields_to_retry_after():
    assert [backoff_delay(a, 1.0, 60.0, None, rng=lambda: 0.5) for a in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff_delay(2, 1.0, 60.0, None, rng=lambda: 0.0) == 2.0  # jitter spans [0.5, 1.5) x
    assert backoff_delay(2, 1.0, 60.0, None, rng=lambda: 0.999) == pytest.approx(5.996)
    assert backoff_delay(0, 1.0, 60.0, 7.0) == 7.0 and backoff_delay(0, 1.0, 60.0, 900.0) == 60.0


def test_rubrics_builtin_and_user_files(tmp_path):
    assert builtin_rubrics() == ["correctness", "harmlessness", "helpfulness"]
    assert load_rubric("correctness").reference and not load_rubric("helpfulness").reference
    assert load_rubric("helpfulness").scale == (1.0, 10.0)
    mine = tmp_path / "concise.yaml"
    mine.write_text("name: concise\ncriteria: Shorter is better.\nscale: [0, 5]\nties: false\n")
    assert load_rubric(str(mine)) == Rubric("concise", "Shorter is better.", (0.0, 5.0), ties=False)
    with pytest.raises(RubricError, match="unknown rubric 'helpfull'"):
        load_rubric("helpfull")
    mine.write_text("name: x\ncriteria: y\nscale: [5, 1]\n")
    with pytest.raises(RubricError, match="LOW < HIGH"):
        load_rubric(str(mine))
    mine.write_text("criteria: y\nscore: [1, 5]\n")
    with pytest.raises(RubricError, match="unknown field"):
        load_rubric(str(mine))


def test_judges_import_no_engine():
    import test_layering

    test_layering.test_dependencies_point_one_way()
    assert isinstance(OpenAIChat(OpenAIClient("http://127.0.0.1:9/v1"), MODEL, cache_dir=None), ChatModel)


# ------------------------------------------------------------------------------------------- pointwise
def test_pointwise_stage_scores_retries_malformed_and_keeps_the_key_out(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-123")
    rows = write_jsonl(tmp_path / "rows.jsonl", POINTWISE_ROWS)
    with Scripted(scorer) as server:
        result = judge(rows, str(tmp_path / "out"), config(server, tmp_path, concurrency=3), progress=False)
        out = ds.load_rows(str(tmp_path / "out"))
        assert [r["judge_score"] for r in out] == [9.0, 2.0, None, 6.0]
        assert [r["judge_reason"] for r in out] == ["ok", "ok", "unparseable", "ok"]
        assert out[0]["judge_raw"] == 'The response is strong.\n{"score": 9}' and out[0]["answer"] == "0"
        assert out[2]["judge_raw"] == "It reads fine to me."
        assert [r["judge_tokens"] for r in out] == [12, 12, 36, 24]  # every attempt counted
        # garbled: asked 1 + 2 retries; flaky: parsed on its first retry. Retries sample (seed+k, temperature 0.7)
        asked = [(response_of(b), b["seed"], b["temperature"]) for b in server.requests]
        assert sorted(a for a in asked if a[0] == "garbled text") == [("garbled text", 0, 0.0),
                                                                     ("garbled text", 1, 0.7), ("garbled text", 2, 0.7)]
        assert sorted(a for a in asked if a[0] == "flaky but fine") == [("flaky but fine", 0, 0.0),
                                                                       ("flaky but fine", 1, 0.7)]
        assert len(server.requests) == 7 and result.summary["requests"] == 7
        assert result.summary["null_reasons"] == {"unparseable": 1} and result.summary["mean"] == pytest.approx(17 / 3)
        # the judge saw the rubric, the question and the response; the key went only into the header
        first = next(b for b in server.requests if response_of(b) == "a good answer")
        assert "Rubric: helpfulness" in user_text(first) and "[Question]\nQuestion 0?" in user_text(first)
        assert "[Reference answer]" not in user_text(first)
        assert set(server.auth) == {"Bearer sk-test-secret-123"}
        written = "".join(p.read_text() for p in (tmp_path / "out").rglob("*.json"))
        assert "sk-test-secret" not in written and '"api_key_env": "OPENAI_API_KEY"' in written

        again = judge(rows, str(tmp_path / "out"), config(server, tmp_path), progress=False)
        assert again.skipped and len(server.requests) == 7  # a finished stage is a no-op
        redo = judge(rows, str(tmp_path / "out2"), config(server, tmp_path), progress=False)
        assert len(server.requests) == 7 and redo.summary["replies_cached"] == 7  # every reply came from the cache
        assert ds.load_rows(str(tmp_path / "out2")) == out
        assert server.max_in_flight <= 3


def test_reference_guided_rubric_shows_the_gold_answer_and_nulls_rows_without_one(tmp_path):
    rows = [{"prompt": "2 + 2?", "completion": "a good 4", "answer": "4"},
            {"prompt": "3 + 3?", "completion": "a bad 7", "answer": None}]
    with Scripted(scorer) as server:
        chat = OpenAIChat(OpenAIClient(server.url), MODEL, cache_dir=None)
        results = PointwiseJudge(chat, load_rubric("correctness"))([r["prompt"] for r in rows],
                                                                 [r["completion"] for r in rows],
                                                                 answer=[r["answer"] for r in rows])
        assert [(r.score, r.reason) for r in results] == [(9.0, "ok"), (None, "no_reference")]
        assert len(server.requests) == 1 and "[Reference answer]\n4\n" in user_text(server.requests[0])


# ------------------------------------------------------------------------------------------- pairwise
def rollouts(tmp_path: Path) -> str:
    texts = {"p0": ["a good one", "a bad one", "another bad one", "a bad one "],  # the last: a duplicate text
             "p1": ["bad", "good stuff", "meh"]}
    return write_jsonl(tmp_path / "rollouts.jsonl", [
        {"prompt": f"Prompt {p}", "prompt_id": p, "sample_idx": k, "id": f"{p}-{k}", "completion": c, "answer": "x"}
        for p, cs in texts.items() for k, c in enumerate(cs)])


def test_a_judge_that_always_prefers_position_a_decides_nothing(tmp_path):
    with Scripted(lambda body: 'A is clearly better.\n{"winner": "A"}') as server:
        result = judge(rollouts(tmp_path), str(tmp_path / "out"), config(server, tmp_path, mode="pairwise"),
                       progress=False)
        assert result.summary["preference_rows"] == 0 and result.summary["pairs_judged"] == 6
        assert result.summary["skipped"] == {"position_inconsistent": 6}
        assert result.summary["position_consistency"] == 0.0
        assert len(server.requests) == 12  # 3 + 3 pairs, both orders
        skipped = ds.load_rows(str(tmp_path / "out" / "skipped"))
        first = skipped[0]
        assert (first["first_id"], first["second_id"], first["reason"]) == ("p0-0", "p0-1", "position_inconsistent")
        assert [(o["a"], o["b"], o["winner"]) for o in first["judge_verdicts"]] == [("p0-0", "p0-1", "A"),
                                                                                    ("p0-1", "p0-0", "A")]


def test_a_consistent_judge_writes_preference_rows_and_ties_are_skipped(tmp_path):
    with Scripted(fair) as server:
        judge(rollouts(tmp_path), str(tmp_path / "out"), config(server, tmp_path, mode="pairwise"), progress=False)
        prefs = ds.load_rows(str(tmp_path / "out"))
        assert [(r["prompt_id"], r["chosen_id"], r["rejected_id"]) for r in prefs] == [
            ("p0", "p0-0", "p0-1"), ("p0", "p0-0", "p0-2"), ("p1", "p1-1", "p1-0"), ("p1", "p1-1", "p1-2")]
        assert prefs[0]["chosen"] == "a good one" and prefs[0]["rejected"] == "a bad one"
        assert prefs[0]["score_chosen"] == 1.0 and prefs[0]["score_rejected"] == 0.25  # a loss and a tie
        assert prefs[0]["answer"] == "x" and prefs[0]["rubric"] == "helpfulness" and prefs[0]["judge"] == f"openai:{MODEL}"
        assert [o["winner"] for o in prefs[0]["judge_verdicts"]] == ["A", "B"]
        skipped = ds.load_rows(str(tmp_path / "out" / "skipped"))
        assert [(s["first_id"], s["second_id"], s["reason"]) for s in skipped] == [("p0-1", "p0-2", "tie"),
                                                                                   ("p1-0", "p1-2", "tie")]
        # a rubric without ties: "tie" does not parse, is asked again, and ends unparseable
        no_ties = Rubric("strict", "Pick the better one.", ties=False)
        chat = OpenAIChat(OpenAIClient(server.url), MODEL, cache_dir=None)
        [tied] = PairwiseJudge(chat, no_ties, JudgeConfig(retries=1)).judge(["q"], ["bad"], ["meh"])
        assert (tied.score, tied.reason, tied.info["attempts"]) == (None, "unparseable", [2, 2])
        assert "a tie is not allowed" in user_text(server.requests[-1])


def test_pairwise_preferences_train_in_the_sampled_context(tmp_path):
    """The judge reads the raw question; the preference rows carry the context the policy sampled in (the
    rollouts' `sampled_prompt`), in TRL's conversational format."""
    context = lambda p: [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Prompt {p} now."}]  # noqa: E731
    rows = [{**r, "sampled_prompt": context(r["prompt_id"])} for r in ds.load_rows(rollouts(tmp_path))]
    with Scripted(fair) as server:
        judge(write_jsonl(tmp_path / "sampled.jsonl", rows), str(tmp_path / "out"),
              config(server, tmp_path, mode="pairwise"), progress=False)
        assert all("Prompt p" in user_text(body) and "now." not in user_text(body) for body in server.requests)
    prefs = ds.load_rows(str(tmp_path / "out"))
    assert prefs and all(r["prompt"] == context(r["prompt_id"]) for r in prefs)
    assert prefs[0]["chosen"] == [{"role": "assistant", "content": "a good one"}]


# ------------------------------------------------------------------------------------------- the client
def test_429_with_retry_after_500_and_a_reset_are_retried_and_counted(tmp_path):
    script = iter([Fail(429, {"Retry-After": "0.4"}), Fail(500), Fail(None)])
    with Scripted(lambda body: next(script, None) or '{"score": 5}') as server:
        client = OpenAIClient(server.url, backoff_s=0.001, max_retries=3)
        chat = OpenAIChat(client, MODEL, cache_dir=None)
        t0 = time.time()
        [[reply]] = chat.chat([[{"role": "user", "content": "hi"}]])
        assert time.time() - t0 >= 0.4  # Retry-After was waited out (the backoff alone is ~1 ms)
        assert reply == '{"score": 5}' and isinstance(reply, Reply) and reply.tokens == 12
        assert len(server.requests) == 4
        assert (client.counts["retries"], client.counts["status_429"], client.counts["status_500"],
                client.counts["connection_errors"], client.counts["status_200"]) == (3, 1, 1, 1, 1)
        # retries run out: one line naming the URL, the attempts and what to do
        script = iter([Fail(503)] * 10)
        give_up = OpenAIChat(OpenAIClient(server.url, backoff_s=0.001, max_retries=2), MODEL, cache_dir=None)
        with pytest.raises(EngineError, match=r"failed after 3 attempts: InternalServerError: HTTP 503.*rerun"):
            give_up.chat([[{"role": "user", "content": "hi"}]])
        # a 400 is not retried
        script = iter([Fail(400)])
        with pytest.raises(EngineError, match=f"rejected the request for model '{MODEL}'.*HTTP 400"):
            give_up.chat([[{"role": "user", "content": "hello"}]])


def test_concurrency_is_bounded_and_the_engine_shares_the_client(tmp_path):
    with Scripted(lambda body: "ok", delay_s=0.05) as server:
        chat = OpenAIChat(OpenAIClient(server.url), MODEL, concurrency=3, cache_dir=None)
        chat.chat([[{"role": "user", "content": f"q{i}"}] for i in range(12)])
        assert server.max_in_flight == 3
        # `generate --engine openai` goes through the same client: retries with Retry-After, bounded concurrency
        script = iter([Fail(429, {"Retry-After": "0"})])
        server.answer = lambda body: next(script, None) or "four"
        server.max_in_flight = 0
        engine = load_engine("openai", MODEL, base_url=server.url, cache_dir=str(tmp_path / "c"), backoff_s=0.001,
                             max_concurrency=2)
        prompts = [[{"role": "user", "content": f"2 + {i}?"}] for i in range(6)]
        samples = engine.generate(prompts, SamplingConfig(n=1, max_new_tokens=4), list(range(6)))
        assert [s[0].text for s in samples] == ["four"] * 6 and engine.client.counts["retries"] == 1
        assert server.max_in_flight == 2
        assert server.requests[-1]["return_token_ids"] is True  # our scripted server accepts the vLLM fields


def test_the_openai_engine_keeps_its_rules_on_the_shared_client(tmp_path):
    """n ignored -> one request per missing sample with derived seeds; a server rejecting the optional fields is
    asked without them; samples are cached one file each; on_error="sample" marks a failed sample."""
    from pipelines.engines.base import derive_seed

    def strict(body: dict) -> "str | Fail":
        if "logprobs" in body or "return_token_ids" in body:
            return Fail(400)
        return f"seed {body['seed']}"

    chat = [{"role": "user", "content": "hi"}]
    with Scripted(strict) as server:
        engine = load_engine("openai", MODEL, base_url=server.url, cache_dir=str(tmp_path / "c"), backoff_s=0.001)
        [samples] = engine.generate([chat], SamplingConfig(n=3, max_new_tokens=4), [7])
        assert engine.optional_fields == set() and engine.honours_n is False
        assert [(s.text, s.finish_reason) for s in samples] == [(f"seed {derive_seed(7, j)}", "stop") for j in range(3)]
        assert [b["n"] for b in server.requests] == [3, 3, 1, 1]  # rejected, answered with 1 choice, the rest
        assert engine.generate([chat], SamplingConfig(n=3, max_new_tokens=4), [7]) == [samples]
        assert len(server.requests) == 4 and len(list((tmp_path / "c").rglob("*.json"))) == 3
        server.answer = lambda body: Fail(503)
        marked = load_engine("openai", MODEL, base_url=server.url, cache_dir=None, backoff_s=0.001, max_retries=1,
                             on_error="sample")
        [[bad]] = marked.generate([chat], SamplingConfig(max_new_tokens=1), [0])
        assert bad.finish_reason.startswith("error:InternalServerError") and bad.text == ""


def test_the_client_pickles_without_its_key_or_connections(monkeypatch):
    """A stage holding a client may be shipped to a worker: the pickle holds neither the key nor the SDK's
    connections; the copy reads the key from the environment again and keeps counting. A closed client opens
    new connections when asked again."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-first-key")
    hi = [[{"role": "user", "content": "hi"}]]
    with Scripted(lambda body: "ok") as server:
        client = OpenAIClient(server.url)
        OpenAIChat(client, MODEL, cache_dir=None).chat(hi)
        blob = pickle.dumps(client)
        assert b"sk-first-key" not in blob
        monkeypatch.setenv("OPENAI_API_KEY", "sk-second-key")
        copy = pickle.loads(blob)
        [[reply]] = OpenAIChat(copy, MODEL, cache_dir=None).chat(hi)
        assert reply == "ok" and copy.counts["requests"] == 2 and client.counts["requests"] == 1
        client.close()
        OpenAIChat(client, MODEL, cache_dir=None).chat(hi)
        assert server.auth == ["Bearer sk-first-key", "Bearer sk-second-key", "Bearer sk-first-key"]


def test_a_killed_server_and_a_rerun_send_no_answered_request_again(tmp_path):
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": f"Q{i}?", "completion": f"a good answer {i}"}
                                                 for i in range(12)])
    out = str(tmp_path / "out")
    server = Scripted(scorer, budget=5, delay_s=0.01)
    port = server.port
    cfg = config(server, tmp_path, concurrency=2, shard_size=4, max_retries=1)
    with pytest.raises(EngineError, match=f"request to {re.escape(server.url)} .* failed after 2 attempts"):
        judge(rows, out, cfg, progress=False)
    first = [json.dumps(b, sort_keys=True) for b in server.answered]
    assert len(first) == 5 and server.closed.wait(10)
    assert 1 <= len(list((Path(out) / ".shards").glob("*.done"))) <= 2  # the first shard finished

    with Scripted(scorer, port=port) as restarted:  # the same server, back up
        judge(rows, out, cfg, progress=False)
        second = [json.dumps(b, sort_keys=True) for b in restarted.requests]
    assert not set(first) & set(second)  # nothing answered before was asked again
    assert len(first) + len(second) == 12 and len(set(first) | set(second)) == 12
    done = ds.load_rows(out)
    assert [r["judge_score"] for r in done] == [9.0] * 12 and [r["prompt"] for r in done] == [f"Q{i}?" for i in range(12)]


def test_unreachable_server_wrong_model_and_missing_key_fail_in_one_line(tmp_path, capsys):
    rows = write_jsonl(tmp_path / "rows.jsonl", POINTWISE_ROWS)
    args = ["judge", "--input", rows, "--output", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c")]
    with Scripted(scorer) as server:
        dead_url = f"http://127.0.0.1:{server.port}/v1"
        assert main([*args, "--model", "other-model", "--base-url", server.url]) == 2
        err = capsys.readouterr().err
        assert err == (f"prefsmith judge: error: the server at {server.url} does not serve model 'other-model' "
                       f"(GET /models lists '{MODEL}'): pass one of these as --model\n")
        assert main([*args, "--model", MODEL, "--base-url", server.url, "--api-key-env", "PREFSMITH_NO_SUCH_KEY"]) == 2
        assert "environment variable PREFSMITH_NO_SUCH_KEY is not set" in capsys.readouterr().err
        server.models = []  # a server that lists nothing: the first request says the model is unknown (404)
        chat = OpenAIChat(OpenAIClient(server.url), "other-model", cache_dir=None)
        with pytest.raises(EngineError, match=f"does not serve model 'other-model'.*GET {re.escape(server.url)}/models"):
            chat.chat([[{"role": "user", "content": "hi"}]])
        assert [b["model"] for b in server.requests] == ["other-model"]  # a 404 is not retried
    assert main([*args, "--model", MODEL, "--base-url", dead_url]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"prefsmith judge: error: cannot reach an OpenAI-compatible server at {dead_url}")
    assert err.count("\n") == 1
    assert not (tmp_path / "out" / "data").exists()


# ------------------------------------------------------------------------------------------- rewards and KTO
def test_judge_reward_in_label_and_kto_from_the_judge_score(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PREFSMITH_CHAT_CACHE", str(tmp_path / "reward-cache"))
    rows = write_jsonl(tmp_path / "rows.jsonl", POINTWISE_ROWS)
    assert parse_reward_spec(f"judge:helpfulness@http://h:1/v1#{MODEL}") == ("helpfulness", "http://h:1/v1", MODEL)
    with Scripted(scorer) as server:
        spec = f"judge:helpfulness@{server.url}#{MODEL}"
        assert main(["label", "--input", rows, "--output", str(tmp_path / "labeled"), "--reward", spec,
                     "--no-progress"]) == 0
        labeled = ds.load_rows(str(tmp_path / "labeled"))
        assert [r["rewards"]["judge"] for r in labeled] == [9.0, 2.0, None, 6.0]
        assert [r["reward_info"]["judge"] for r in labeled] == ["ok", "ok", "unparseable", "ok"]
        assert main(["label", "--input", rows, "--output", str(tmp_path / "l2"), "--reward", "judge:helpfulness"]) == 2
        assert "write judge:RUBRIC@URL#MODEL" in capsys.readouterr().err

        assert main(["judge", "--input", rows, "--output", str(tmp_path / "judged"), "--model", MODEL,
                     "--base-url", server.url, "--cache-dir", str(tmp_path / "cache"), "--no-progress"]) == 0
        assert "4 rows, 3 scored, mean 5.667, 1 null (unparseable: 1)" in capsys.readouterr().out
    assert main(["kto", "--input", str(tmp_path / "judged"), "--output", str(tmp_path / "kto"),
                 "--from-column", "judge_score", "--threshold", "5"]) == 0
    kto = ds.load_rows(str(tmp_path / "kto"))
    assert [(r["completion"], r["label"]) for r in kto] == [("a good answer", True), ("a bad answer", False),
                                                            ("flaky but fine", True)]
    assert "judge_score is null: unparseable: 1" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------- critique-revise
def test_critique_revise_rounds_trace_preferences_and_resume(tmp_path, tiny_model):
    from judges.constitutional import CRITIQUE_SUFFIX, REVISION_SUFFIX, draw_principle, load_constitution

    def reviser(body: dict) -> str:
        last = user_text(body)
        if last.endswith(CRITIQUE_SUFFIX):
            return "It is too terse."
        if last.endswith(REVISION_SUFFIX):
            return f"a fuller answer ({len(body['messages'])} messages in)"
        return "a first answer"

    rows = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Explain rain.", "id": "q0", "completion": "Water."},
                                                    {"prompt": "Explain snow.", "id": "q1", "completion": None}])
    with Scripted(reviser) as server:
        args = ["critique-revise", "--input", rows, "--model", MODEL, "--base-url", server.url, "--rounds", "2",
                "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
        assert main([*args, "--output", str(tmp_path / "out")]) == 0
        assert len(server.requests) == 1 + 2 * 2 * 2  # q1's first answer, then critique + revision x 2 rounds x 2
        out = ds.load_rows(str(tmp_path / "out"))
        assert [r["original_completion"] for r in out] == ["Water.", "a first answer"]
        assert [r["completion"] for r in out] == ["a fuller answer (9 messages in)"] * 2
        constitution = load_constitution("default")
        assert [[t["principle"] for t in r["trace"]] for r in out] == [
            [draw_principle(constitution, 0, key, k).name for k in (1, 2)] for key in ("q0", "q1")]
        assert out[0]["trace"][0] == {"round": 1, "principle": out[0]["trace"][0]["principle"],
                                      "critique": "It is too terse.", "revision": "a fuller answer (5 messages in)"}
        # round 2 continues the conversation: it sees round 1's critique and revision
        last = server.requests[-1]["messages"]
        assert [m["role"] for m in last] == ["user", "assistant"] * 4 + ["user"]
        prefs = ds.load_rows(str(tmp_path / "out" / "preferences"))
        assert [(p["prompt_id"], p["chosen"], p["rejected"]) for p in prefs] == [
            ("q0", "a fuller answer (9 messages in)", "Water."), ("q1", "a fuller answer (9 messages in)", "a first answer")]
        assert main([*args, "--output", str(tmp_path / "again")]) == 0
        assert len(server.requests) == 9  # every reply came from the cache
        assert ds.load_rows(str(tmp_path / "again")) == out
    # the preference rows are DPO-ready as written
    run = tmp_path / "dpo"
    assert main(["train", "dpo", "--model", str(tiny_model), "--data", str(tmp_path / "out" / "preferences"),
                 "--output", str(run), "--batch-size", "2", "--max-steps", "2", "--no-progress", "--no-plots"]) == 0
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if r.get("split") == "train"] == [1, 2]
    assert all(r["loss"] > 0 for r in steps if r.get("split") == "train")


def test_a_local_hf_model_as_the_judge(tiny_model, tmp_path):
    """`--engine hf`: any prefsmith engine judges through EngineChat. The tiny random model never writes a
    score, so every row ends `unparseable` after its retry, with the raw reply kept and no token usage."""
    rows = write_jsonl(tmp_path / "rows.jsonl", POINTWISE_ROWS[:2])
    cfg = JudgeStageConfig(model=str(tiny_model), engine="hf", sampling=JudgeConfig(retries=1, max_new_tokens=4))
    result = judge(rows, str(tmp_path / "out"), cfg, progress=False)
    out = ds.load_rows(str(tmp_path / "out"))
    assert [r["judge_reason"] for r in out] == ["unparseable"] * 2 and [r["judge_score"] for r in out] == [None] * 2
    assert all(isinstance(r["judge_raw"], str) for r in out) and [r["judge_tokens"] for r in out] == [None] * 2
    assert result.summary["requests"] == 0  # no server involved


def test_against_transformers_serve_on_the_tiny_model(tiny_model, tmp_path):
    """A real OpenAI-compatible server: `transformers serve` lists only its hub cache, so the local folder it
    serves passes the model check; its replies are cached, and a rerun into another folder sends nothing."""
    pytest.importorskip("fastapi", reason="transformers serve needs fastapi and uvicorn")
    pytest.importorskip("uvicorn", reason="transformers serve needs fastapi and uvicorn")
    import sys

    from test_engine_openai import free_port, serving

    port, log = free_port(), tmp_path / "serve.log"
    command = [str(Path(sys.executable).with_name("transformers")), "serve", str(tiny_model), "--host", "127.0.0.1",
               "--port", str(port), "--device", "cpu", "--log-level", "info"]
    rows = write_jsonl(tmp_path / "rows.jsonl", POINTWISE_ROWS[:2])
    with serving(command, port, log) as url:
        cfg = JudgeStageConfig(model=str(tiny_model), base_url=url, cache_dir=str(tmp_path / "cache"),
                               sampling=JudgeConfig(retries=1, max_new_tokens=4), concurrency=1)
        first = judge(rows, str(tmp_path / "out"), cfg, progress=False)
        posts = log.read_text().count("POST /v1/chat/completions")
        assert posts == 4  # 2 rows x (1 + 1 retry): the tiny model never writes a score
        again = judge(rows, str(tmp_path / "out2"), cfg, progress=False)
        assert log.read_text().count("POST /v1/chat/completions") == posts
        # the openai engine on the same client and server: n ignored, greedy text equal to the hf engine's
        engine = load_engine("openai", str(tiny_model), base_url=url, cache_dir=None, max_concurrency=1)
        chat = [{"role": "user", "content": "What is 2 + 2?"}]
        [samples] = engine.generate([chat], SamplingConfig(n=2, temperature=0.0, max_new_tokens=5), [3])
        assert engine.honours_n is False and len(samples) == 2
    hf = load_engine("hf", str(tiny_model), device="cpu")
    [[ref]] = hf.generate([chat], SamplingConfig(n=1, temperature=0.0, max_new_tokens=5), [3])
    assert samples[0].text == samples[1].text == ref.text
    assert first.summary["requests"] == 4 and again.summary["replies_cached"] == 4  # 2 rows x (1 + 1 retry)
    out = ds.load_rows(str(tmp_path / "out"))
    assert [r["judge_reason"] for r in out] == ["unparseable"] * 2 and out == ds.load_rows(str(tmp_path / "out2"))


def test_against_vllms_openai_server_on_the_tiny_model(tiny_model, tmp_path):
    """vLLM's OpenAI server, started here on the tiny model: it lists the folder it serves, so the model check
    passes; pointwise and pairwise judging send each conversation once (plus retries), counted in the server's
    log; a rerun into another folder is answered from the cache; critique-revise runs its rounds against it.
    A row too long for the server's context (HTTP 400 from vLLM) is that row's null `too_long`, asked once:
    the other rows are judged and nothing crashes."""
    pytest.importorskip("vllm", reason="vllm is not installed")
    import sys

    from test_engine_openai import free_port, serving

    port, log = free_port(), tmp_path / "vllm.log"
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_model),
               "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "1024",
               "--enforce-eager"]
    posts = lambda: log.read_text().count("POST /v1/chat/completions")  # noqa: E731
    long_row = {"prompt": "Summarize.", "completion": "word " * 1500, "answer": "x"}
    points = write_jsonl(tmp_path / "rows.jsonl", [*POINTWISE_ROWS[:2], long_row])
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": "Say hi.", "prompt_id": "p0", "sample_idx": i, "completion": c} for i, c in enumerate(["Hi.", "Hello!"])])
    with serving(command, port, log) as url:
        common = dict(model=str(tiny_model), base_url=url, cache_dir=str(tmp_path / "cache"), concurrency=4,
                      sampling=JudgeConfig(retries=1, max_new_tokens=8))
        first = judge(points, str(tmp_path / "points"), JudgeStageConfig(**common), progress=False)
        # 2 rows x (1 + 1 retry): the tiny model writes no score; the long row is refused once, not retried
        assert first.summary["requests"] == posts() == 5 and first.summary["null_reasons"]["unparseable"] == 2
        again = judge(points, str(tmp_path / "points2"), JudgeStageConfig(**common), progress=False)
        assert again.summary["replies_cached"] == 4 and posts() == 6  # the refusal is not cached
        paired = judge(pairs, str(tmp_path / "pairs"), JudgeStageConfig(mode="pairwise", **common), progress=False)
        assert paired.summary["pairs_judged"] == 1 and paired.summary["skipped"] == {"unparseable": 1}
        assert posts() == 6 + 2 * 2  # both orders, each retried once
        cr = ["critique-revise", "--input", points, "--model", str(tiny_model), "--base-url", url, "--rounds", "1",
              "--max-new-tokens", "8", "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
        assert main([*cr, "--output", str(tmp_path / "cai")]) == 0
        assert posts() == 10 + 2 * 2 + 1  # a critique and a revision per short row; the long row's critique refused
    out = ds.load_rows(str(tmp_path / "points"))
    assert [r["judge_reason"] for r in out[:2]] == ["unparseable"] * 2 and out == ds.load_rows(str(tmp_path / "points2"))
    assert out[2]["judge_score"] is None and out[2]["judge_reason"].startswith("too_long: ")
    assert "maximum context length" in out[2]["judge_reason"]
    skipped = ds.load_rows(str(tmp_path / "pairs" / "skipped"))
    assert [[o["a"] for o in s["judge_verdicts"]] for s in skipped] == [[skipped[0]["first_id"], skipped[0]["second_id"]]]
    cai = ds.load_rows(str(tmp_path / "cai"))
    assert [len(r["trace"]) for r in cai] == [1, 1, 0] and all(isinstance(r["trace"][0]["critique"], str) for r in cai[:2])
    assert [r["original_completion"] for r in cai] == [r["completion"] for r in (*POINTWISE_ROWS[:2], long_row)]
    assert [r["critique_error"] is None for r in cai] == [True, True, False] and cai[2]["completion"] == long_row["completion"]


def test_bench_pair_set_and_delay_server():
    """bench/judges.py's fixed pair set (right one first in every other pair, wrong = gold + 1) and its delay
    server's counts, read through the bench's own client code (the benchmark itself is run by hand)."""
    import importlib.util
    import subprocess
    import sys

    path = Path(__file__).resolve().parents[1] / "bench/judges.py"
    spec = importlib.util.spec_from_file_location("bench_judges", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    pairs = bench.swap_pairs(4)
    assert [p["correct"] for p in pairs] == [0, 1, 0, 1]
    for p in pairs:
        right = p["first"] if p["correct"] == 0 else p["second"]
        wrong = p["second"] if p["correct"] == 0 else p["first"]
        assert right == f"The answer is {p['answer']}." and wrong != right and wrong.startswith("The answer is ")
    assert bench._plus_one("7") == "8" and bench._plus_one("2.5") == "3.5" and bench._plus_one("x") == "x1"
    server = subprocess.Popen([sys.executable, str(path), "--serve", "--delay-ms", "1"], stdout=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{int(server.stdout.readline())}"
        model = OpenAIChat(OpenAIClient(url + "/v1", backoff_s=0.001), bench.SERVED, concurrency=4, cache_dir=None)
        replies = model.chat([[{"role": "user", "content": f"q{i}"}] for i in range(6)])
        assert all(parse_score(r[0], (1, 10)) == 8 for r in replies)
        stats = bench._call(url, "/stats")
        assert stats["answered"] == 6 and 1 <= stats["peak_in_flight"] <= 4
        bench._call(url, "/reset", post=True)
        assert bench._call(url, "/stats")["answered"] == 0
    finally:
        server.kill()
