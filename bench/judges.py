"""Benchmark: the judge client's throughput against a local server, and the embedded model's position bias.

    .venv/bin/python bench/judges.py [--rows 256] [--delay-ms 100] [--concurrency 1 8 32]
                                     [--distilabel-python /tmp/dlvenv/bin/python]
                                     [--pairs 40] [--model PATH] [--skip-swap] [--out runs/bench_judges]

1. Throughput. A loopback OpenAI-compatible server runs in its own process (so it does not share the client's
   interpreter) and answers every chat request after a fixed delay, `--delay-ms`: a hosted model's latency
   without a local model's CPU use, so what is measured is the client (bounded concurrency, retries, parsing,
   writing the stage). `prefsmith judge --mode pointwise` (the `judge` stage, no reply cache) judges `--rows`
   rows at each `--concurrency`. Printed: requests the server answered, requests/s over the server's span
   (first request in to last reply out) and over the whole call (start-up and writing included), and the
   ideal, concurrency / delay. With `--distilabel-python` (a Python with `distilabel[openai]` installed; it
   pins its own dependencies, so give it its own venv), distilabel's `ChatGeneration` sends the same messages
   to the same server with `input_batch_size` = the concurrency (its unit of concurrent requests) and no
   cache, in the same run, and the table adds its figures and the ratio ours / distilabel's.
2. Position bias. The embedded model (SmolLM2-135M-Instruct unless `--model`) judges a fixed pair set
   pairwise, in both orders, with the built-in `correctness` rubric (reference-guided): the first `--pairs`
   problems of data/math/heldout.jsonl, each a one-line answer with the gold number against the same line
   with the gold + 1, the correct one first in half the pairs. Printed: the share of pairs whose two orders
   disagree (`position_inconsistent`), unreadable after retries, consistent; among consistent ones, how many
   picked the correct answer; and the share of readable verdicts that said "A" (0.5 for an unbiased judge).

Everything talks to 127.0.0.1 only. The report is written to `--out`/report.json.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_MODEL = Path("~/.cache/prefsmith/models/smollm2-135m-instruct").expanduser()
SERVED = "bench-judge"
REPLY = 'The response states the final answer clearly and it is consistent.\n{"score": 8}'


# ------------------------------------------------------------------------------------- the delay server
class _Stats:
    def __init__(self, delay_s: float):
        self.delay_s, self.lock = delay_s, threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.answered, self.first_in, self.last_out, self.peak, self.in_flight = 0, None, None, 0, 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        s = self.server.stats
        if self.path.rstrip("/") == "/v1/models":
            return self._json({"object": "list", "data": [{"id": SERVED, "object": "model"}]})
        if self.path == "/stats":
            with s.lock:
                return self._json({"answered": s.answered, "first_in": s.first_in, "last_out": s.last_out,
                                   "peak_in_flight": s.peak})
        self._json({"error": {"message": "no such route"}}, 404)

    def do_POST(self):
        s = self.server.stats
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        if self.path == "/reset":
            with s.lock:
                s.reset()
            return self._json({"ok": True})
        with s.lock:
            s.first_in = s.first_in or time.time()
            s.in_flight += 1
            s.peak = max(s.peak, s.in_flight)
        time.sleep(s.delay_s)
        if body.get("model") != SERVED:
            code, payload = 404, {"error": {"message": f"model {body.get('model')} does not exist"}}
        else:
            code, payload = 200, {
                "id": "b", "object": "chat.completion", "created": 0, "model": SERVED,
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": REPLY}}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}}
        self._json(payload, code)
        with s.lock:
            s.in_flight -= 1
            s.answered += code == 200
            s.last_out = time.time()

    def _json(self, payload: dict, code: int = 200) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # listen() backlog: the default 5 drops connections at concurrency 32 (1 s SYN retry)


def serve(delay_ms: float) -> None:
    """`--serve`: listen on a free loopback port, print it, serve until killed."""
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.stats = _Stats(delay_ms / 1000)  # type: ignore[attr-defined]
    print(httpd.server_address[1], flush=True)
    httpd.serve_forever()


def _call(url: str, path: str, post: bool = False) -> dict:
    import urllib.request

    req = urllib.request.Request(url + path, data=b"{}" if post else None, method="POST" if post else "GET")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


# ------------------------------------------------------------------------------------------- throughput
def bench_rows(n: int) -> list[dict]:
    return [{"prompt": f"What is {i} + {i + 1}?", "completion": f"{i} + {i + 1} = {2 * i + 1}. The answer is "
             f"\\boxed{{{2 * i + 1}}}.", "answer": str(2 * i + 1), "prompt_id": f"q{i}"} for i in range(n)]


def ours(url: str, rows_file: Path, out: Path, concurrency: int) -> dict:
    from pipelines.stages.judge import JudgeStageConfig, judge

    cfg = JudgeStageConfig(model=SERVED, base_url=url + "/v1", cache_dir=None, concurrency=concurrency)
    shutil.rmtree(out, ignore_errors=True)  # a finished stage would be resumed, not rerun
    _call(url, "/reset", post=True)
    t0 = time.time()
    result = judge(str(rows_file), str(out), cfg, progress=False, out=sys.stderr)
    wall = time.time() - t0
    stats = _call(url, "/stats")
    scored = result.summary.get("scored")
    return {**_rates(stats, wall), "scored": scored}


def distilabel(python: str, url: str, messages_file: Path, out: Path, concurrency: int) -> dict:
    _call(url, "/reset", post=True)
    t0 = time.time()
    proc = subprocess.run([python, str(ROOT / "bench/judges_distilabel.py"), "--base-url", url + "/v1",
                           "--model", SERVED, "--messages", str(messages_file), "--batch", str(concurrency),
                           "--out", str(out)], capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"}
    stats = _call(url, "/stats")
    from judges.verdicts import parse_score

    replies = json.loads(out.read_text())
    scored = sum(parse_score(r or "", (1, 10)) is not None for r in replies)
    return {**_rates(stats, wall), "scored": scored}


def _rates(stats: dict, wall: float) -> dict:
    span = (stats["last_out"] - stats["first_in"]) if stats["first_in"] else None
    return {"answered": stats["answered"], "peak_in_flight": stats["peak_in_flight"],
            "req_per_s_span": round(stats["answered"] / span, 2) if span else None,
            "req_per_s_wall": round(stats["answered"] / wall, 2), "wall_s": round(wall, 2)}


def throughput(args, work: Path) -> list[dict]:
    from judges.prompts import pointwise_messages
    from judges.rubrics import load_rubric

    rows = bench_rows(args.rows)
    rows_file = work / "rows.jsonl"
    rows_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rubric = load_rubric("helpfulness")
    messages_file = work / "messages.json"
    messages_file.write_text(json.dumps([pointwise_messages(rubric, r["prompt"], r["completion"]) for r in rows]))
    server = subprocess.Popen([sys.executable, __file__, "--serve", "--delay-ms", str(args.delay_ms)],
                              stdout=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{int(server.stdout.readline())}"
        table = []
        for c in args.concurrency:
            row = {"concurrency": c, "ideal_req_per_s": round(c / (args.delay_ms / 1000), 2),
                   "prefsmith": ours(url, rows_file, work / f"ours-{c}", c)}
            if args.distilabel_python:
                row["distilabel"] = distilabel(args.distilabel_python, url, messages_file, work / f"dl-{c}.json", c)
            table.append(row)
            print(json.dumps(row), flush=True)
        return table
    finally:
        server.kill()


# --------------------------------------------------------------------------------------------- position bias
def swap_pairs(n: int) -> list[dict]:
    """The fixed pair set: prompt, answer (gold), and two completions of which `correct` (0 or 1) is right."""
    lines = (ROOT / "data/math/heldout.jsonl").read_text().splitlines()[:n]
    out = []
    for i, line in enumerate(lines):
        p = json.loads(line)
        right, wrong = f"The answer is {p['answer']}.", f"The answer is {_plus_one(p['answer'])}."
        first, second = (right, wrong) if i % 2 == 0 else (wrong, right)
        out.append({"prompt": p["prompt"], "answer": p["answer"], "first": first, "second": second,
                    "correct": i % 2})
    return out


def _plus_one(answer: str) -> str:
    try:
        x = float(answer)
        return str(int(x) + 1) if x == int(x) else f"{x + 1:g}"
    except ValueError:
        return answer + "1"


def position_bias(args) -> dict:
    from judges.pairwise import PairwiseJudge
    from judges.rubrics import load_rubric
    from judges.verdicts import JudgeConfig
    from pipelines.engines import load_engine
    from pipelines.engines.chat import EngineChat

    pairs = swap_pairs(args.pairs)
    model = EngineChat(load_engine("hf", args.model))
    judge = PairwiseJudge(model, load_rubric("correctness"),
                          JudgeConfig(retries=args.retries, max_new_tokens=args.judge_max_new_tokens))
    t0 = time.time()
    results = judge.judge([p["prompt"] for p in pairs], [p["first"] for p in pairs],
                          [p["second"] for p in pairs], [p["answer"] for p in pairs])
    wall = time.time() - t0
    reasons = [r.reason for r in results]
    consistent = [(r, p) for r, p in zip(results, pairs) if r.reason in ("first", "second", "tie")]
    right = sum((r.reason == "first") == (p["correct"] == 0) and r.reason != "tie" for r, p in consistent)
    letters = [v for r in results for v in (r.info.get("verdicts") or []) if v is not None]
    n = len(pairs)
    return {"pairs": n, "model": args.model, "rubric": "correctness", "wall_s": round(wall, 1),
            "position_inconsistent": round(reasons.count("position_inconsistent") / n, 4),
            "unparseable": round(reasons.count("unparseable") / n, 4),
            "consistent": round(len(consistent) / n, 4), "ties": reasons.count("tie"),
            "consistent_and_correct": right, "readable_verdicts": len(letters),
            "share_A": round(letters.count("A") / len(letters), 4) if letters else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--delay-ms", type=float, default=100.0, help="the server's latency per request")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--distilabel-python", default=None, help="a Python with distilabel[openai] (its own venv)")
    p.add_argument("--pairs", type=int, default=40)
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument("--retries", type=int, default=1)
    p.add_argument("--judge-max-new-tokens", type=int, default=160)
    p.add_argument("--skip-swap", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--out", default="runs/bench_judges")
    args = p.parse_args()
    if args.serve:
        return serve(args.delay_ms)
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {}
    if not args.skip_throughput:
        report["throughput"] = throughput(args, work)
        print(f"\nthroughput: {args.rows} pointwise requests, server delay {args.delay_ms:g} ms")
        print(f"{'conc':>5} {'ideal':>7} {'ours span':>10} {'ours wall':>10} {'dl span':>8} {'dl wall':>8} "
              f"{'ratio span':>10} {'ratio wall':>10}")
        for row in report["throughput"]:
            o, d = row["prefsmith"], row.get("distilabel") or {}
            ratio = lambda k: (round(o[k] / d[k], 2) if d.get(k) and o.get(k) else "-")  # noqa: E731
            print(f"{row['concurrency']:>5} {row['ideal_req_per_s']:>7} {o['req_per_s_span']!s:>10} "
                  f"{o['req_per_s_wall']!s:>10} {d.get('req_per_s_span', '-')!s:>8} {d.get('req_per_s_wall', '-')!s:>8} "
                  f"{ratio('req_per_s_span')!s:>10} {ratio('req_per_s_wall')!s:>10}")
    if not args.skip_swap:
        if not Path(args.model).is_dir():
            sys.exit(f"no model folder at {args.model}: run `prefsmith models fetch-default` or pass --model")
        b = report["position_bias"] = position_bias(args)
        print(f"\nposition bias: {b['pairs']} pairs, {b['model']}, rubric {b['rubric']}, {b['wall_s']} s")
        print(f"  orders disagree (position_inconsistent) {b['position_inconsistent']}, unreadable "
              f"{b['unparseable']}, consistent {b['consistent']} ({b['consistent_and_correct']} picked the right "
              f"answer, {b['ties']} ties); share of readable verdicts saying A: {b['share_A']}")
    (work / "report.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {work / 'report.json'}")


if __name__ == "__main__":
    main()
