"""Math labeling throughput and agreement: prefsmith's math reward vs TRL's `accuracy_reward`, same rollouts;
and correctness on a table of verifier test cases, ours beside plain math-verify.

    .venv/bin/python bench/rewards_math.py [--prompts 200] [--k 8] [--workers 2] [--cases-only]

Case table (bench/math_cases.jsonl): ~330 (gold, completion, expected) rows in the styles of public verifier
suites (MATH golds with boxed solutions, Minerva answer lines, GSM8K `####`, intervals, sets, matrices,
percents, units, text and multiple choice, answer-only and marker-less completions; hedges that name several
candidates and their honest controls, issue 24). Printed: agreement with
the expected label and false positives (scored 1 where the expected label is wrong), for our reward and for
plain math-verify, `verify(parse(gold), parse(completion))`, with per-style counts.

Rollouts are synthetic but shaped like GRPO groups: 200 prompts with gold answers of mixed kinds (integers,
thousands, fractions, decimals, LaTeX expressions, intervals, sets, percents), 8 completions each, mixing
correct and wrong answers written in different formats (boxed, "the answer is", GSM8K `####`, no answer),
after a paragraph of reasoning. Both sides score every row in this process; ours is timed from a cold start
(worker processes started inside the timed region). TRL's function gets the gold as `$gold$` in its
`solution` column and message-list completions, as its docstring asks.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rewards.math import MathVerifier  # noqa: E402

# (gold, [equivalent correct spellings], [wrong answers])
GOLD_KINDS = [
    lambda r: (str(n := r.randint(2, 999)), [str(n), f"{n}.0", f"x = {n}"], [str(n + 1), str(n * 2), str(-n)]),
    lambda r: ("{:,}".format(n := r.randint(1000, 99999)), [str(n), "{:,}".format(n), f"\\${n}"],
               [str(n + 10), str(n // 10)]),
    lambda r: (f"\\frac{{{(a := r.randint(1, 9))}}}{{{(b := r.choice([2, 4, 5, 8]))}}}",
               [f"\\frac{{{a}}}{{{b}}}", str(a / b), f"{a}/{b}", f"\\dfrac{{{2 * a}}}{{{2 * b}}}"],
               [f"\\frac{{{b}}}{{{a}}}", str(a / b + 1)]),
    lambda r: (f"{(a := r.randint(1, 9))}\\sqrt{{{(b := r.choice([2, 3, 5]))}}}",
               [f"{a}\\sqrt{{{b}}}", f"\\sqrt{{{a * a * b}}}"], [f"{a}\\sqrt{{{b + 1}}}", str(a * b)]),
    lambda r: (f"({(a := r.randint(-5, 0))}, {(b := r.randint(1, 9))}]", [f"({a},{b}]", f"({a}, {b}]"],
               [f"[{a},{b}]", f"({a},{b})"]),
    lambda r: (f"{(a := r.randint(1, 4))}, {(b := r.randint(5, 9))}", [f"{a}, {b}", f"{b}, {a}", f"\\{{{a},{b}\\}}"],
               [str(a), f"{a}, {b}, {b + 1}"]),
    lambda r: (f"{(p := r.randint(1, 99))}\\%", [f"{p}\\%", str(p), f"{p / 100}"], [str(p + 5), f"{p + 1}\\%"]),
    lambda r: (f"x^2+{2 * (a := r.randint(1, 9))}x+{a * a}", [f"(x+{a})^2", f"x^2+{2 * a}x+{a * a}"],
               [f"(x-{a})^2", f"(x+{a + 1})^2"]),
]

REASONING = ("Let us work through the problem step by step. First we write down what is given and what is "
             "asked. Then we set up the relevant equation, simplify both sides, and check the arithmetic "
             "carefully before committing to a final result. ")


def _wrap(answer: str, r: random.Random) -> str:
    style = r.choice(["boxed", "boxed", "boxed", "answer_is", "hashes", "none"])
    body = REASONING * r.randint(1, 3)
    if style == "boxed":
        return body + f"Therefore the result is $\\boxed{{{answer}}}$."
    if style == "answer_is":
        return body + f"The final answer is ${answer}$."
    if style == "hashes":
        return body + f"\n#### {answer}"
    return body + "I am not sure how to finish this."


def make_rollouts(n_prompts: int = 200, k: int = 8, seed: int = 0) -> tuple[list[str], list[str]]:
    """(completions, golds), k completions per prompt; about half the answers correct."""
    r = random.Random(seed)
    completions, golds = [], []
    for _ in range(n_prompts):
        gold, right, wrong = r.choice(GOLD_KINDS)(r)
        for _ in range(k):
            answer = r.choice(right) if r.random() < 0.55 else r.choice(wrong)
            completions.append(_wrap(answer, r))
            golds.append(gold)
    return completions, golds


CASES_PATH = Path(__file__).resolve().parent / "math_cases.jsonl"


def load_cases(path: Path = CASES_PATH) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plain_math_verify(gold: str, completion: str) -> bool:
    from math_verify import parse, verify

    try:
        return bool(verify(parse(gold), parse(completion)))
    except Exception:  # its own timeouts raise on some inputs; a failure is a 0
        return False


def case_agreement(workers: int = 2, path: Path = CASES_PATH) -> dict:
    """Agreement and false positives on the case table: ours (default extraction) vs plain math-verify."""
    cases = load_cases(path)
    verifier = MathVerifier(workers=workers, timeout=10.0)  # generous: a shared machine must not fake a 0
    ours = [r.score == 1.0 for r in verifier.score([c["completion"] for c in cases], [c["gold"] for c in cases])]
    strict = [r.score == 1.0 for r in verifier.score([c["completion"] for c in cases], [c["gold"] for c in cases],
                                                    extraction="markers")]
    verifier.close()
    theirs = [plain_math_verify(c["gold"], c["completion"]) for c in cases]
    # the same, with a bare gold put in math mode (`$gold$`, as TRL's docs ask), so math-verify's LaTeX
    # extraction sees it: the fairer baseline
    dollar = [plain_math_verify(c["gold"] if "$" in c["gold"] or "boxed" in c["gold"] else f"${c['gold']}$",
                                c["completion"]) for c in cases]
    want = [c["expected"] is True for c in cases]  # expected null (a bad gold) must not score 1 either
    out = {}
    for name, got in (("prefsmith math", ours), ("prefsmith math:markers", strict), ("plain math-verify", theirs),
                      ("math-verify, $gold$", dollar)):
        agree = sum(g == w for g, w in zip(got, want))
        fp = sum(g and not w for g, w in zip(got, want))
        fn = sum(w and not g for g, w in zip(got, want))
        out[name] = {"agreement": agree / len(cases), "false_positives": fp, "false_negatives": fn}
        print(f"{name:24}: agreement {agree}/{len(cases)} = {agree / len(cases):.1%}, false positives {fp}, "
              f"false negatives {fn}")
    styles = sorted({c["style"] for c in cases})
    print(f"  {'style':20} {'rows':>4} {'ours':>5} {'mv':>5}")
    for style in styles:
        idx = [i for i, c in enumerate(cases) if c["style"] == style]
        print(f"  {style:20} {len(idx):4d} {sum(ours[i] == want[i] for i in idx):5d} "
              f"{sum(theirs[i] == want[i] for i in idx):5d}")
    for i, c in enumerate(cases):
        if ours[i] != want[i]:
            print(f"  ours wrong: gold={c['gold']!r} completion={c['completion'][-70:]!r} expected={want[i]}")
    return out


def _children_cpu() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cases-only", action="store_true", help="only the case table, no speed run")
    args = ap.parse_args(argv)
    if args.cases_only:
        return case_agreement(args.workers)

    import logging

    from trl.rewards import accuracy_reward

    for name in ("math_verify", "math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    completions, golds = make_rollouts(args.prompts, args.k, args.seed)
    n = len(completions)

    def trl(completions, golds):
        return accuracy_reward([[{"role": "assistant", "content": c}] for c in completions],
                               solution=[f"${g}$" for g in golds])

    cpu_trl = time.process_time()
    t0 = time.perf_counter()
    trl_scores = trl(completions, golds)
    t_trl = time.perf_counter() - t0
    cpu_trl = time.process_time() - cpu_trl

    cpu_ours, children0 = time.process_time(), _children_cpu()
    t0 = time.perf_counter()
    verifier = MathVerifier(workers=args.workers)
    ours = verifier.score(completions, golds)
    t_ours = time.perf_counter() - t0
    cpu_ours = time.process_time() - cpu_ours

    # Warm: a second, different batch (another seed) through the same verifier, as in a GRPO loop where the
    # pool lives across steps. The pair cache is cleared so this measures the warm pool, not cache hits.
    completions2, golds2 = make_rollouts(args.prompts, args.k, args.seed + 1)
    cpu = time.process_time()
    t0 = time.perf_counter()
    trl(completions2, golds2)
    t_trl2 = time.perf_counter() - t0
    cpu_trl += time.process_time() - cpu
    checks_before = verifier.checks
    verifier.clear_cache()
    cpu = time.process_time()
    t0 = time.perf_counter()
    verifier.score(completions2, golds2)
    t_ours2 = time.perf_counter() - t0
    cpu_ours += time.process_time() - cpu
    verifier.close()  # reaps the workers, so their CPU time is counted below
    cpu_ours += _children_cpu() - children0

    print(f"rows: {n} ({args.prompts} prompts x {args.k} completions), workers: {args.workers}")
    print(f"batch 1 TRL accuracy_reward : {t_trl:7.2f} s {n / t_trl:8.1f} rows/s")
    print(f"batch 1 prefsmith math      : {t_ours:7.2f} s {n / t_ours:8.1f} rows/s  (cold: includes starting "
          f"the workers; {checks_before} worker checks, the rest deduplicated or exact numbers)")
    print(f"batch 2 TRL accuracy_reward : {t_trl2:7.2f} s {n / t_trl2:8.1f} rows/s")
    print(f"batch 2 prefsmith math      : {t_ours2:7.2f} s {n / t_ours2:8.1f} rows/s  (warm pool, empty cache; "
          f"{verifier.checks - checks_before} worker checks)")
    print(f"speedup (TRL time / ours): cold {t_trl / t_ours:.2f}x, warm {t_trl2 / t_ours2:.2f}x")
    print(f"CPU seconds over both batches: TRL {cpu_trl:.2f}, ours {cpu_ours:.2f} (parent + workers, worker "
          f"start-up included): {cpu_trl / cpu_ours:.2f}x less CPU; wall-clock ratios above depend on machine load")
    our_scores = [r.score for r in ours]
    agree = sum(a == b for a, b in zip(our_scores, trl_scores)) / n
    rows = [(golds[i], ours[i].info.get("extracted"), our_scores[i], trl_scores[i], ours[i].reason,
             ours[i].info.get("method", "-")) for i in range(n)]
    boxed = [r for r in rows if r[5] == "boxed"]
    boxed_agree = sum(r[2] == r[3] for r in boxed) / max(1, len(boxed))
    disagreements = [r for r in rows if r[2] != r[3]]
    print(f"agreement: {agree:.3f} of rows get equal scores ({len(disagreements)} disagree); on the "
          f"{len(boxed)} rows whose answer is boxed (both sides read the same span): {boxed_agree:.3f}")
    by_kind: dict[tuple, list] = {}
    for r in disagreements:
        by_kind.setdefault((r[5], r[2], r[3]), []).append(r)
    for (method, mine, theirs), group in sorted(by_kind.items(), key=lambda kv: -len(kv[1])):
        print(f"  {len(group):4d} rows: answer found by {method}, ours={mine}, trl={theirs}; e.g.")
        for gold, extracted, *_ in list(dict.fromkeys((r[0], r[1]) for r in group))[:3]:
            print(f"         gold={gold!r:22} answer={extracted!r}")
    print("\n-- case table: expected labels, ours vs plain math-verify --")
    cases = case_agreement(args.workers)
    return {"rows": n, "trl_s": t_trl, "ours_s": t_ours, "ratio": t_trl / t_ours,
            "ratio_warm": t_trl2 / t_ours2, "cpu_ratio": cpu_trl / cpu_ours, "agreement": agree, "cases": cases}


if __name__ == "__main__":
    main()
