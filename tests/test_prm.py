"""Process rewards end to end: `prm-label` (mc and binary-search) through the openai engine against a scripted
policy server on loopback, the hf engine's plumbing on the tiny model, `train prm` against TRL's PRM loss,
and the trained PRM as a reward (`label --reward prm:DIR`) and a best-of-N ranker (`select --by prm:DIR`).

The chains are arithmetic: "Start with 3.\\n\\nAdd 4: 7.\\n\\n...\\n\\nThe answer is \\\\boxed{5}." with one planted
wrong value whose later steps continue from it. The server's policy continues any prefix correctly from the
last value it states, so a prefix can still reach the gold answer exactly when every step in it is right:
the labels are known in advance, step by step.
"""
from __future__ import annotations

import json
import math
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from pipelines.cli import main as cli
from pipelines.core import dataset as ds
from rewards.prm import parse_reason, split_steps, step_inputs

K = 3  # continuations per prefix


# ------------------------------------------------------------------------------------------------ the data
def chain(start: int, ops: list[int], error_at: int | None = None, delta: int = 1) -> tuple[str, str, list[str], int]:
    """(question, gold, steps, first bad step index or -1). `error_at` is a step index (1..len(ops) for an
    operation, len(ops) + 1 for the answer line); the value stated there is off by `delta`."""
    words = ", ".join(f"add {v}" if v >= 0 else f"subtract {-v}" for v in ops)
    question = f"Start with {start}. Then {words}. What is the result? Put the answer in \\boxed{{}}."
    steps, value, truth = [f"Start with {start}."], start, start
    for k, v in enumerate(ops, start=1):
        value, truth = value + v, truth + v
        if k == error_at:
            value += delta
        steps.append(f"{'Add' if v >= 0 else 'Subtract'} {abs(v)}: {value}.")
    answer = value + (delta if error_at == len(ops) + 1 else 0)
    steps.append(f"The answer is \\boxed{{{answer}}}.")
    return question, str(truth), steps, (error_at if error_at is not None else -1)


CHAINS = [  # (start, ops, planted error step)
    (3, [4, 2, -5, 1], 2), (7, [1, 1, 1], 1), (2, [5, -3, 4, 2, 6, -1], 5), (10, [-4, 3], None),
    (5, [2, 2, 2, 2, 2, 2, 2], 7), (1, [3, 4], 3), (6, [1, -2, 3, -4, 5], 4),
]


def chain_rows() -> list[dict]:
    rows = []
    for i, (start, ops, err) in enumerate(CHAINS):
        question, gold, steps, first_bad = chain(start, ops, err)
        rows.append({"id": f"c{i}", "prompt": question, "completion": "\n\n".join(steps), "answer": gold,
                     "first_bad": first_bad})
    q, _, steps, _ = chain(4, [1, 2])
    rows.append({"id": "badgold", "prompt": q, "completion": "\n\n".join(steps), "answer": "", "first_bad": -1})
    return rows


@pytest.fixture(scope="module")
def chains(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("chains") / "chains.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in chain_rows()))
    return path


# ------------------------------------------------------------------------------------------------ the policy
def continue_solution(prefix: str) -> str:
    """The scripted policy: the rest of the solution from the last value the prefix states, done right."""
    user, _, assistant = prefix.partition("<|im_start|>assistant\n")
    start = int(re.search(r"Start with (-?\d+)\.", user).group(1))
    ops = [int(v) if w == "add" else -int(v) for w, v in re.findall(r"(add|subtract) (\d+)", user)]
    done = re.findall(r"(?:Add|Subtract) \d+: (-?\d+)\.", assistant)
    stated = re.search(r"Start with (-?\d+)\.", assistant)
    value = int(done[-1]) if done else int(stated.group(1)) if stated else start
    lines = [] if stated else [f"Start with {start}."]
    for v in ops[len(done):]:
        value += v
        lines.append(f"{'Add' if v >= 0 else 'Subtract'} {abs(v)}: {value}.")
    lines.append(f"The answer is \\boxed{{{value}}}.")
    return "\n\n".join(lines)


class PolicyServer:
    """An OpenAI-compatible server (GET /v1/models, POST /v1/completions) whose model is `continue_solution`;
    it honours `n` and records every request's prompt and n."""

    def __init__(self, model: str) -> None:
        self.model, self.requests = model, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, body: dict, status: int = 200) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._send({"object": "list", "data": [{"id": server.model, "object": "model", "created": 0,
                                                         "owned_by": "test"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not self.path.endswith("/completions") or "prompt" not in body:
                    return self._send({"error": {"message": "only /v1/completions with a text prompt"}}, 400)
                server.requests.append((body["prompt"], body.get("n", 1)))
                text = continue_solution(body["prompt"])
                self._send({"id": "cmpl-1", "object": "text_completion", "created": 0, "model": server.model,
                            "choices": [{"index": j, "text": text, "finish_reason": "stop", "logprobs": None}
                                        for j in range(body.get("n", 1))],
                            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}})

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{port}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def policy(tiny_model):
    server = PolicyServer(str(tiny_model))
    yield server
    server.close()


def prm_args(model, src, out, method, url=None, extra=()):
    engine = ["--engine", "openai", "--base-url", url, "--engine-option", "cache_dir=null"] if url else []
    return ["prm-label", "--input", str(src), "--output", str(out), "--model", str(model), "--method", method,
            "--rollouts-per-step", str(K), "--shard-size", "3", *engine, *extra]


@pytest.fixture(scope="module")
def labeled(tiny_model, chains, policy, tmp_path_factory) -> dict[str, Path]:
    """Both methods over the same chains: {"mc": DIR, "binary-search": DIR}, and the server's requests per method."""
    root = tmp_path_factory.mktemp("prm")
    out, requests = {}, {}
    for method in ("mc", "binary-search"):
        before = len(policy.requests)
        assert cli(prm_args(tiny_model, chains, root / method, method, policy.url)) == 0
        out[method], requests[method] = root / method, policy.requests[before:]
    out["requests"] = requests
    return out


def by_id(directory: Path) -> dict[str, dict]:
    return {r["id"]: r for r in ds.load_rows(directory)}


# ------------------------------------------------------------------------------------------------ prm-label
def test_split_steps_keeps_the_prefix_text():
    text = "Start with 3.\n\nAdd 4: 7.\n\n\n\nThe answer is 7."
    steps = split_steps(text)
    assert [s.text for s in steps] == ["Start with 3.", "Add 4: 7.", "The answer is 7."]
    assert text[: steps[0].end] == "Start with 3.\n\n" and text[: steps[1].end] == "Start with 3.\n\nAdd 4: 7.\n\n\n\n"
    assert [s.text for s in split_steps("Step 1: a Step 2: b", regex=r"(?=Step \d+:)")] == ["Step 1: a", "Step 2: b"]


def test_mc_labels_every_step_exactly(labeled, chains, tiny_model, policy):
    rows = by_id(labeled["mc"])
    assert set(rows) == {f"c{i}" for i in range(len(CHAINS))}
    for row in rows.values():
        n, bad = len(row["completions"]), row["first_bad"]
        assert row["completions"] == row["completion"].split("\n\n")
        want = [bad < 0 or j < bad for j in range(n)]
        assert row["labels"] == want, row["id"]
        assert row["soft_labels"] == [1.0 if ok else 0.0 for ok in want]
        assert row["first_error_step"] == (bad if bad >= 0 else None)
        assert row["rollouts_used"] == K * (n - 1) and row["prefixes_evaluated"] == n
        assert row["null_rollouts"] == 0 and row["rollout_tokens"] > 0
    # one request per prefix, each asking for K continuations of the chat-rendered prompt + the steps so far
    reqs = labeled["requests"]["mc"]
    assert len(reqs) == sum(len(r["completions"]) - 1 for r in rows.values()) and {n for _, n in reqs} == {K}
    first = next(p for p, _ in reqs if "Start with 3. Then add 4" in p and p.endswith("Start with 3.\n\n"))
    assert first.startswith("<|im_start|>user\nStart with 3.") and "<|im_end|>\n<|im_start|>assistant\n" in first
    # the bad gold is not guessed: its row is set aside with the reason
    [unlabeled] = ds.load_rows(labeled["mc"] / "unlabeled")
    assert unlabeled["id"] == "badgold" and unlabeled["label_info"] == "completion_unscored: math: bad_gold"
    prm = ds.read_manifest(labeled["mc"])["prm"]
    steps = sum(len(r["completions"]) for r in rows.values())
    assert prm["method"] == "mc" and prm["labeled_steps"] == steps and prm["unlabeled_rows"] == 1
    assert prm["rollouts"] == sum(r["rollouts_used"] for r in rows.values())
    assert prm["rollouts_per_labeled_step"] == round(prm["rollouts"] / steps, 3)
    assert prm["tokens_per_labeled_step"] == round(sum(r["rollout_tokens"] for r in rows.values()) / steps, 3)
    # a finished stage is a no-op: no request is sent again
    before = len(policy.requests)
    assert cli(prm_args(tiny_model, chains, labeled["mc"], "mc", policy.url)) == 0
    assert len(policy.requests) == before


def test_binary_search_finds_the_planted_step_within_the_bound(labeled):
    mc, bs = by_id(labeled["mc"]), by_id(labeled["binary-search"])
    per_question: dict[str, int] = {}
    for prompt, _ in labeled["requests"]["binary-search"]:
        question = prompt.split("<|im_start|>user\n")[1].split("<|im_end|>")[0]
        per_question[question] = per_question.get(question, 0) + 1
    for rid, row in bs.items():
        n = len(row["completions"])
        assert row["labels"] == mc[rid]["labels"], rid  # the deterministic policy: the methods agree
        assert row["first_error_step"] == mc[rid]["first_error_step"]
        assert row["prefixes_evaluated"] <= math.ceil(math.log2(n)) + 1
        assert row["rollouts_used"] == K * (row["prefixes_evaluated"] - 1)
        assert per_question.get(row["prompt"], 0) == row["prefixes_evaluated"] - 1
        # evaluated prefixes keep their soft value (the same as mc's), the others are null
        assert sum(v is not None for v in row["soft_labels"]) == row["prefixes_evaluated"]
        assert all(v is None or v == m for v, m in zip(row["soft_labels"], mc[rid]["soft_labels"]))
        if row["first_bad"] < 0:
            assert row["rollouts_used"] == 0  # a correct completion is good throughout
    totals = {m: ds.read_manifest(labeled[m])["prm"] for m in ("mc", "binary-search")}
    assert totals["binary-search"]["labeled_steps"] == totals["mc"]["labeled_steps"]
    assert totals["binary-search"]["rollouts"] < totals["mc"]["rollouts"] / 2


def test_hf_engine_continues_token_id_prefixes(tiny_model, chains, tmp_path):
    """A random model cannot do arithmetic: this checks the plumbing (prefix ids, counts, columns)."""
    from pipelines.engines import SamplingConfig, load_engine
    from rewards.chat import prompt_ids

    engine = load_engine("hf", str(tiny_model), device="cpu")
    messages = [{"role": "user", "content": "Start with 3."}]
    ids = prompt_ids(engine.tokenizer, messages) + engine.tokenizer("Start with 3.\n\n", add_special_tokens=False)["input_ids"]
    [[a, b]] = engine.generate([ids], SamplingConfig(n=2, max_new_tokens=5), [7])
    assert len(a.token_ids) <= 5 and a.token_ids != b.token_ids  # two continuations of the raw ids
    for method in ("mc", "binary-search"):
        out = tmp_path / method
        assert cli(prm_args(tiny_model, chains, out, method, extra=("--max-new-tokens", "4", "--limit", "3",
                                                                     "--reward", "math:markers"))) == 0
        rows = ds.load_rows(out)
        assert len(rows) == 3
        for row in rows:
            n = len(row["completions"])
            assert len(row["labels"]) == len(row["soft_labels"]) == n and row["labels"][-1] is (row["first_bad"] < 0)
            assert all(isinstance(x, bool) for x in row["labels"])
            assert 0 < row["rollout_tokens"] <= 4 * row["rollouts_used"] or row["rollouts_used"] == 0
            if method == "mc":
                assert row["rollouts_used"] == K * (n - 1)
            else:
                assert row["prefixes_evaluated"] <= math.ceil(math.log2(n)) + 1
        prm = ds.read_manifest(out)["prm"]
        assert prm["rollouts"] == sum(r["rollouts_used"] for r in rows) and prm["tokens_per_s"]


def test_vllm_engine_continues_the_same_token_id_prefixes_as_hf(tiny_model, chains, tmp_path):
    """`--engine vllm` is handed the prefix as token ids (the prompt rendered once, then the steps' text) like
    hf: greedy, both engines continue every prefix with the same tokens, so every label, soft label and token
    count agrees row by row (the fp32 tiny model's logits agree across engines to ~1e-5)."""
    pytest.importorskip("vllm", reason="vllm is not installed")
    greedy = ("--max-new-tokens", "6", "--limit", "4", "--temperature", "0", "--reward", "math:markers")
    rows = {}
    for engine, options in (("hf", ()), ("vllm", ("--engine-option", "max_model_len=512"))):
        out = tmp_path / engine
        assert cli(prm_args(tiny_model, chains, out, "mc", extra=(*greedy, "--engine", engine, *options))) == 0
        rows[engine] = ds.load_rows(out)
    keys = ("id", "completions", "labels", "soft_labels", "first_error_step", "rollouts_used", "rollout_tokens")
    assert len(rows["vllm"]) == 4
    assert [{k: r[k] for k in keys} for r in rows["vllm"]] == [{k: r[k] for k in keys} for r in rows["hf"]]
    assert all(r["rollouts_used"] == K * (len(r["completions"]) - 1) for r in rows["vllm"])


# ------------------------------------------------------------------------------------------------ train prm
def trl_tokenize_row(row: dict, tokenizer, separator: str) -> dict:
    """TRL's PRMTrainer.tokenize_row convention (trl.experimental.prm; not in the installed trl 1.16): prompt
    and each step tokenized without special tokens, the separator's ids after every step, the step's label
    on the separator's last token, -100 elsewhere, BOS first when the tokenizer has one."""
    prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
    sep = tokenizer.encode(separator, add_special_tokens=False)
    ids, labels = [], []
    for step, label in zip(row["completions"], row["labels"]):
        piece = tokenizer(step, add_special_tokens=False)["input_ids"] + sep
        ids += piece
        labels += [-100] * (len(piece) - 1) + [int(label)]
    if tokenizer.bos_token_id is not None:
        prompt = [tokenizer.bos_token_id] + prompt
    return {"input_ids": prompt + ids, "labels": [-100] * len(prompt) + labels}


def test_prm_loss_equals_trls_on_identical_inputs(tiny_model, labeled):
    from transformers import (AutoConfig, AutoModelForTokenClassification, AutoTokenizer,
                              DataCollatorForTokenClassification)

    from trainers.offline.algorithms import PRM, StepContext, prm_step_loss
    from trainers.offline.config import TrainConfig

    tok = AutoTokenizer.from_pretrained(tiny_model)
    rows = ds.load_rows(labeled["mc"])
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(tiny_model, num_labels=2)
    config.classifier_dropout = 0.0
    model = AutoModelForTokenClassification.from_pretrained(tiny_model, config=config)
    cfg = TrainConfig(algorithm="prm", model=str(tiny_model), data=str(labeled["mc"]), output="unused",
                      step_separator="\n\n")
    algo = PRM(cfg)
    examples = algo.encode(rows, tok, cfg, "rows")
    trl = [trl_tokenize_row(r, tok, "\n\n") for r in rows]
    for e, t in zip(examples, trl):
        assert e["seq"]["input_ids"] == t["input_ids"]
        assert e["seq"]["positions"] == [i for i, y in enumerate(t["labels"]) if y != -100]
    batch = DataCollatorForTokenClassification(tok)(trl)
    ref = model(**batch).loss  # what PRMTrainer.compute_loss returns: the mean over labeled tokens
    ref.backward()
    ref_grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).norm()
    model.zero_grad()
    loss_sum, stats = algo.loss(model, examples, None, StepContext(cfg=cfg, device=torch.device("cpu"),
                                                                    pad_id=tok.pad_token_id))
    ours = loss_sum / sum(e["units"] for e in examples)  # the loop divides by the step's labeled steps
    ours.backward()
    grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).norm()
    ours, ref = float(ours.detach()), float(ref.detach())
    assert abs(ours - ref) < 1e-5 and abs(float(grad) - float(ref_grad)) < 1e-5 * float(ref_grad)
    assert stats.means()["loss"] == pytest.approx(ref, abs=1e-5)
    # soft: BCE on the good-step probability softmax(logits)[1]
    logits, s = torch.tensor([[0.3, -1.2], [2.0, 0.5]]), torch.tensor([0.25, 1.0])
    p = logits.softmax(-1)[:, 1]
    assert float(prm_step_loss(logits, s, soft=True)) == pytest.approx(
        float(-(s * p.log() + (1 - s) * (1 - p).log()).sum()), abs=1e-6)


@pytest.fixture(scope="module")
def trained_prm(tiny_model, labeled, tmp_path_factory) -> Path:
    from trainers.offline.config import TrainConfig
    from trainers.offline.loop import train
    from trainers.core.metrics import read_metrics

    root = tmp_path_factory.mktemp("train_prm")
    common = dict(algorithm="prm", model=str(tiny_model), data=str(labeled["mc"]), lr=5e-3, max_steps=6,
                  batch_size=4, warmup_ratio=0.0, progress=False, plots=False)
    result = train(TrainConfig(output=str(root / "hard"), eval_data=str(labeled["mc"]), **common))
    metrics = read_metrics(root / "hard")
    train_records = [m for m in metrics if m["split"] == "train"]
    evals = [m for m in metrics if m["split"] == "eval"]  # before the first step and after the last
    assert len(train_records) == 6 and evals[-1]["eval/loss"] < evals[0]["eval/loss"]
    assert {"accuracy", "accuracy/step_1", "first_error/exact", "labels/good"} <= set(train_records[0])
    saved = json.loads((root / "hard" / "prefsmith_train.json").read_text())
    assert saved["step_separator"] == "\n\n"  # taken from the prm-label manifest
    # soft labels, through the command line (the separator typed with backslash escapes)
    assert cli(["train", "prm", "--model", str(tiny_model), "--data", str(labeled["mc"]), "--output",
                str(root / "soft"), "--soft", "--step-sep", "\\n\\n", "--max-steps", "2", "--batch-size", "4",
                "--no-plots", "--no-progress"]) == 0
    soft = json.loads((root / "soft" / "train_result.json").read_text())["train"]
    assert math.isfinite(soft["loss"]) and 0 <= soft["soft/mae"] <= 1
    assert json.loads((root / "soft" / "prefsmith_train.json").read_text())["step_separator"] == "\n\n"
    assert result.steps == 6
    return root / "hard"


def test_prm_reward_in_label_gives_per_step_scores(trained_prm, chains, tmp_path):
    from rewards.prm import ProcessRewardModel

    out = tmp_path / "scored"
    assert cli(["label", "--input", str(chains), "--output", str(out), "--reward", f"prm:{trained_prm}:min",
                "--reward", "math", "--weight", "prm=0", "--no-progress"]) == 0
    rows = ds.load_rows(out)
    prm = ProcessRewardModel(str(trained_prm), "prod", device="cpu")
    for row in rows:
        steps = parse_reason(row["reward_info"]["prm"])
        assert row["reward_info"]["prm"].startswith(f"min of {len(steps)} steps")
        assert len(steps) == len(row["completion"].split("\n\n")) and all(0 < v < 1 for v in steps)
        direct = prm.step_scores(row["prompt"], row["completion"].split("\n\n"))
        assert steps == pytest.approx(direct, abs=1e-4)
        assert row["rewards"]["prm"] == pytest.approx(min(direct), abs=1e-6)
        assert row["reward"] == row["rewards"]["math"]  # weight 0: recorded, not counted
    [score] = prm.results([rows[0]["prompt"]], [rows[0]["completion"]])
    assert score.score == pytest.approx(math.prod(parse_reason(score.reason)), rel=1e-3)


def test_select_by_prm_keeps_the_top_scored_completion(trained_prm, tmp_path):
    rows = []
    for p, (start, ops) in enumerate([(3, [4, 2, -5]), (8, [1, 2, 3, 4])]):
        for k, err in enumerate([None, 1, len(ops), len(ops) + 1]):
            q, gold, steps, _ = chain(start, ops, err)
            rows.append({"id": f"p{p}-{k}", "prompt_id": f"p{p}", "sample_idx": k, "prompt": q,
                         "completion": "\n\n".join(steps), "answer": gold})
    src = tmp_path / "samples.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert cli(["label", "--input", str(src), "--output", str(tmp_path / "lab"), "--reward", "math",
                "--reward", f"prm:{trained_prm}", "--weight", "prm=0", "--no-progress"]) == 0
    scored = ds.load_rows(tmp_path / "lab")
    assert cli(["select", "--input", str(tmp_path / "lab"), "--output", str(tmp_path / "best"),
                "--by", f"prm:{trained_prm}"]) == 0
    best = {r["prompt_id"]: r for r in ds.load_rows(tmp_path / "best")}
    assert set(best) == {"p0", "p1"}
    for pid, row in best.items():
        group = [r for r in scored if r["prompt_id"] == pid]
        top = max(group, key=lambda r: (r["rewards"]["prm"], -r["sample_idx"]))
        assert row["id"] == top["id"] and row["by_score"] == pytest.approx(top["rewards"]["prm"], abs=1e-5)
        assert row["reward"] == top["reward"]  # the row's correctness travels with it
    summary = ds.read_manifest(tmp_path / "best")["summary"]
    assert summary["best_of_n_accuracy"] == sum(r["reward"] for r in best.values()) / 2
    assert cli(["select", "--input", str(tmp_path / "lab"), "--output", str(tmp_path / "x"), "--by",
                f"prm:{trained_prm}", "--keep", "all-correct"]) == 2  # best-of-N keeps one per prompt


def test_bench_figures_are_computed_from_the_rows():
    """bench/prm.py's pure parts (the bench itself needs a real policy and is run by hand)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_prm", Path(__file__).resolve().parents[1] / "bench/prm.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    mc = [{"id": "a", "labels": [True, False], "first_error_step": 1},
          {"id": "b", "labels": [True, True], "first_error_step": None}]
    bs = [{"id": "a", "labels": [True, False], "first_error_step": 1},
          {"id": "b", "labels": [False, False], "first_error_step": 0}]
    assert bench.agreement(mc, bs) == {"solutions": 2, "step_agreement": 0.5, "first_error_agreement": 0.5}
    rows = [{"prompt_id": "p", "sample_idx": i, "completion": f"The answer is \\boxed{{{a}}}.",
             "rewards": {"math": float(a == 5), "prm": s}} for i, (a, s) in enumerate([(4, 0.9), (5, 0.2), (4, 0.1)])]
    figures = bench.best_of_n(rows, "prm-dir", seed=0, n=3)
    assert figures["prm"] == 0.0 and figures["majority"] == 0.0 and figures["pass@n"] == 1.0
    assert figures["random (expected)"] == round(1 / 3, 4) and figures["prompts"] == 1
    # N = 2 takes each prompt's first two samples: the PRM's pick (0.9) is wrong, the vote ties to the first
    two = bench.best_of_n(list(reversed(rows)), "prm-dir", seed=0, n=2)
    assert two["prm"] == 0.0 and two["random (expected)"] == 0.5 and two["pass@n"] == 1.0 and two["n"] == 2


FLAKY = '''
import re


def flaky_math(prompts, completions, answer, **columns):
    """The boxed number against the gold, from a checker that fails (None) on every second continuation and on
    every continuation of the gold-10 problem; the rows' own completions (one batch of 2) always score."""
    out = []
    for i, (text, gold) in enumerate(zip(completions, answer)):
        found = re.search(r"\\\\boxed\\{(-?\\d+)\\}", text)
        out.append(None if len(completions) > 2 and (gold == "10" or i % 2) else float(bool(found) and found.group(1) == gold))
    return out
'''


def test_null_continuations_are_counted_not_guessed(tiny_model, chains, policy, tmp_path):
    plugin = tmp_path / "flaky.py"
    plugin.write_text(FLAKY)
    out = tmp_path / "steps"
    assert cli(prm_args(tiny_model, chains, out, "mc", policy.url,
                        extra=("--limit", "2", "--reward", f"{plugin}:flaky_math"))) == 0
    [row] = ds.load_rows(out)  # c0: some continuations unscored, the fractions over the scored ones
    assert row["id"] == "c0" and row["labels"] == [True, True, False, False, False, False]
    assert row["soft_labels"] == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert row["rollouts_used"] == 15 and row["null_rollouts"] == 7  # odd positions of 15 continuations
    [skipped] = ds.load_rows(out / "unlabeled")  # c1: every continuation of a prefix unscored: no label made up
    assert skipped["id"] == "c1" and skipped["null_rollouts"] == 12
    assert skipped["label_info"] == ("null_rollouts: all 3 continuations of prefix 1 unscored "
                                     "(flaky_math: returned_none)")
    assert ds.read_manifest(out)["prm"]["null_rollouts"] == 19
