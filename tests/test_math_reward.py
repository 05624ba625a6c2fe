"""Math reward: extraction, equivalence table, reasons, hard time limits, dedup, pickling, check-gold, pool."""
from __future__ import annotations

import io
import os
import pickle
import signal
import time

import pytest

from rewards import math_reward
from rewards.extract import extract_answer, gold_text
from rewards.math import (MathVerifier, check_gold, math_last_number_reward, math_results,
                          normalize_answer)
from rewards.pool import WorkerPool

B = "\\boxed{%s}"

# (gold, completion, expected score). Completions are full texts; the extraction step is part of the case.
CASES = [
    # fractions vs decimals, LaTeX vs plain
    ("0.5", B % r"\frac{1}{2}", 1.0),
    ("1/2", "The answer is 0.5.", 1.0),
    (r"\frac{1}{2}", B % "1/2", 1.0),
    (r"\frac{1}{2}", B % r"\dfrac12", 1.0),
    (r"\frac{1}{2}", B % "0.25", 0.0),
    ("0.75", B % r"\frac{3}{4}", 1.0),
    ("3/4", B % "0.7", 0.0),
    (r"\frac{2}{3}", B % r"\frac{4}{6}", 1.0),
    ("1.5", B % r"1\frac{1}{2}", 1.0),
    ("2.50", B % "2.5", 1.0),
    ("0.333", B % r"\frac{1}{3}", 0.0),
    # thousands separators
    ("1,000", "#### 1000", 1.0),
    ("1000", B % "1,000", 1.0),
    ("1,234,567", B % "1234567", 1.0),
    ("1000", B % "1,001", 0.0),
    ("12345.5", B % "12,345.5", 1.0),
    # percent: x% accepts x, x/100 and "x percent"; a plain gold x does not accept x/100
    (r"50\%", B % "50", 1.0),
    ("50%", B % "0.5", 1.0),
    ("50%", B % r"50\%", 1.0),
    ("50", B % r"50\%", 1.0),
    ("50", "The answer is 50 percent", 1.0),
    ("50", B % "0.5", 0.0),
    (r"25\%", B % "50", 0.0),
    ("0.5", B % r"50\%", 1.0),
    # negative numbers
    ("-3", B % "-3", 1.0),
    ("-3", B % "3", 0.0),
    ("3", B % "-3", 0.0),
    ("-0.5", B % r"-\frac{1}{2}", 1.0),
    (r"-\frac{1}{2}", "Final answer: -1/2", 1.0),
    # units and currency on the answer (or the gold)
    ("5", B % r"5 \text{ cm}", 1.0),
    ("5", B % r"\$5", 1.0),
    ("5", "The answer is 5 dollars.", 1.0),
    ("5", B % r"5\text{ dollars}", 1.0),
    ("18", "She pays $18.\n#### $18", 1.0),
    ("5 cm", B % "5", 1.0),
    ("60", B % "60 miles per hour", 1.0),
    ("5", B % r"6 \text{ cm}", 0.0),
    ("3", "The answer is 3 pi", 0.0),  # "pi" is not a unit
    (r"3\pi", "The answer is 3 pi", 1.0),
    ("30", B % r"30^\circ", 1.0),
    ("30", B % "30 degrees", 1.0),
    # x = 3 vs 3
    ("3", B % "x = 3", 1.0),
    ("3", B % "x=4", 0.0),
    ("x=3", B % "3", 1.0),
    ("x=3", B % "x=3", 1.0),
    ("y=3", B % "x=3", 0.0),
    ("y = 2x + 1", B % "y=2x+1", 1.0),
    # intervals and inequalities
    ("(1,2]", B % "(1, 2]", 1.0),
    ("[1,2)", B % "(1, 2)", 0.0),
    (r"(-\infty, 3)", B % r"(-\infty,3)", 1.0),
    # math-verify's deliberate asymmetry: an interval gold rejects an inequality (it may echo the question)
    (r"[2, \infty)", B % r"x \ge 2", 0.0),
    (r"[2, \infty)", B % r"[2,\infty)", 1.0),
    ("1<x<2", B % "(1,2)", 1.0),
    # multiple answers: all of them, in any order, nothing extra
    ("2, 3", B % "3, 2", 1.0),
    ("2, 3", B % "2", 0.0),
    ("2, 3", B % "3", 0.0),
    ("2, 3", B % "2, 3, 4", 0.0),
    ("2, 3", B % r"x=2 \text{ or } x=3", 1.0),
    ("2, 3", B % r"2 \text{ and } 3", 1.0),
    (r"\{2, 3\}", B % r"\{3,2\}", 1.0),
    (r"\{2, 3\}", B % r"\{2\}", 0.0),
    ("-1, 1", B % r"\pm 1", 1.0),
    ("2021", B % r"\pm 2021", 0.0),
    ("1, 2, 3", B % "3, 1, 2", 1.0),
    # expressions equal after simplification
    ("x^2+2x+1", B % "(x+1)^2", 1.0),
    ("x^2-1", B % "(x-1)(x+1)", 1.0),
    ("x^2+1", B % "(x+1)^2", 0.0),
    (r"\frac{\sqrt{2}}{2}", B % r"\frac{1}{\sqrt{2}}", 1.0),
    (r"2\sqrt{3}", B % r"\sqrt{12}", 1.0),
    (r"\frac{\pi}{2}", "answer: pi/2", 1.0),
    (r"\frac{\pi}{2}", B % r"\dfrac{\pi}{2}", 1.0),
    (r"\pi", B % "3.14", 0.0),
    ("1024", B % "2^{10}", 1.0),
    (r"\sin^2 x + \cos^2 x", B % "1", 1.0),
    ("10^{10}", B % "10000000000", 1.0),
    ("1e5", B % "100000", 1.0),
    ("3+2i", B % "2i+3", 1.0),
    (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", B % r"\begin{pmatrix}1\\2\end{pmatrix}", 1.0),
    # text answers compare as words (not as products of symbols, where "Mondya" would equal "Monday")
    ("Monday", B % r"\text{monday}", 1.0),
    ("Monday", B % "Mondya", 0.0),
    (r"\text{even}", "The answer is even.", 1.0),
    (r"\text{(B)}", B % "B", 1.0),
    # extraction: last box wins, nested braces, \fbox, answer phrase, GSM8K ####
    ("7", r"First \boxed{3}, corrected: \boxed{7}", 1.0),
    ("7", r"First \boxed{7}, corrected: \boxed{3}", 0.0),
    (r"\frac{1}{2}", r"so $\boxed{\frac{1}{2}}$.", 1.0),
    ("12", r"\fbox{12}", 1.0),
    ("12", r"\boxed 12", 1.0),
    ("72", "She sold 48/2 = 24 clips in May.\n#### 72", 1.0),
    ("72", "The final answer is $72$.", 1.0),
    ("72", "**Final Answer:** 72", 1.0),
    ("72", "I think the answer is 71 because 72 is too big.", 0.0),
    # a gold that is a whole solution: its boxed / #### part is the gold
    ("Natalia sold 48/2 = 24 clips.\n#### 72", B % "72", 1.0),
    (r"Thus the area is $\boxed{16\pi}$.", B % r"16\pi", 1.0),
]


@pytest.fixture(scope="module")
def verifier():
    v = MathVerifier(timeout=30.0, workers=2)  # generous: this machine is shared; timeouts are tested apart
    yield v
    v.close()


def test_table_size():
    assert len(CASES) >= 80


@pytest.mark.parametrize("gold,completion,want", CASES, ids=[f"{i}:{g[:20]}" for i, (g, _, _) in enumerate(CASES)])
def test_equivalence_case(verifier, gold, completion, want):
    [r] = verifier.score([completion], [gold])
    assert (r.score, r.reason) == (want, "correct" if want == 1.0 else "wrong"), r.info


def test_equivalence_table_in_one_batch():
    """The whole table in one batch through a fresh pool: same scores as case by case."""
    verifier = MathVerifier(timeout=30.0, workers=2)
    results = verifier.score([c for _, c, _ in CASES], [g for g, _, _ in CASES])
    bad = [(g, c, want, r) for (g, c, want), r in zip(CASES, results) if r.score != want]
    assert not bad, "\n".join(map(repr, bad))
    verifier.close()


@pytest.mark.parametrize("gold,completion,want", CASES[:12])
def test_math_reward_trl_signature(gold, completion, want):
    """Through the public TRL-style entry point, one case at a time (the default, shared verifier)."""
    assert math_reward(prompts=["q"], completions=[completion], answer=[gold]) == [want]


def test_accepts_the_extra_arguments_trl_passes():
    """GRPOTrainer calls reward funcs with completion_ids, trainer_state, log_extra, log_metric and all columns."""
    out = math_reward(prompts=["q", "q"], completions=[[{"role": "assistant", "content": B % "4"}]] * 2,
                      completion_ids=[[1, 2], [3]], trainer_state=None, log_extra=None, log_metric=None,
                      answer=["4", "5"], id=["a", "b"])
    assert out == [1.0, 0.0]


BOXED_PEER_CASES = [
    (r"\frac{1}{3}", r"\frac{1}{3}"), (r"\frac{1}{3}", r"\frac{1}{2}"), ("0.5", r"\frac{1}{2}"), ("72", "72"),
    ("72", "73"), ("1,000", "1000"), ("-3", "-3"), ("-3", "3"), ("x^2+2x+1", "(x+1)^2"), ("x^2+1", "(x+1)^2"),
    (r"2\sqrt{3}", r"\sqrt{12}"), ("(1,2]", "(1, 2]"), ("(1,2]", "[1,2]"), ("2, 3", "3, 2"), ("2, 3", "2"),
    (r"50\%", "50"), ("3", "x = 3"), (r"\frac{\pi}{2}", r"\dfrac{\pi}{2}"),
]


def test_agrees_with_trl_accuracy_reward_on_boxed_answers(verifier):
    """Where both read the same boxed span, our verdicts equal TRL's math-verify reward (the peer)."""
    trl_rewards = pytest.importorskip("trl.rewards")
    comps = [f"Work... so the answer is $\\boxed{{{a}}}$." for _, a in BOXED_PEER_CASES]
    golds = [g for g, _ in BOXED_PEER_CASES]
    theirs = trl_rewards.accuracy_reward([[{"role": "assistant", "content": c}] for c in comps],
                                         solution=[f"${g}$" for g in golds])
    ours = [r.score for r in verifier.score(comps, golds)]
    assert ours == theirs
    assert ours.count(1.0) == 12 and ours.count(0.0) == 6


def test_reasons_for_unscorable_and_missing(verifier):
    golds = ["}{", r"\frac{1}{", "", None, float("nan"), "3", "3", "3"]
    comps = [B % "3", B % "1", B % "3", B % "3", B % "3", "I don't know", r"\boxed{3", "no box but 3 at the end"]
    rs = verifier.score(comps, golds, extraction="markers")
    assert [(r.score, r.reason) for r in rs] == [
        (None, "bad_gold"), (None, "bad_gold"), (None, "bad_gold"),
        (None, "bad_gold"), (None, "bad_gold"),
        (0.0, "no_answer"), (0.0, "no_answer"), (0.0, "no_answer")]
    # by default a completion without a marker is read as math-verify reads it: its last math
    rs = verifier.score(comps[5:], golds[5:])
    assert [r.score for r in rs] == [0.0, 1.0, 1.0] and rs[2].info["method"] == "mathverify"


def test_unparseable_gold_never_scores_one_even_for_identical_text(verifier):
    rs = verifier.score([B % "}{", "The answer is ???"], ["}{", "???"])
    assert [r.score for r in rs] == [None, None]


def test_last_number_fallback_is_opt_in(verifier):
    comps = ["so she has 3 + 4 = 7 apples", "so she has 3 + 4 = 8 apples"]
    strict = verifier.score(comps, ["7", "7"], extraction="markers")
    assert [r.reason for r in strict] == ["no_answer", "no_answer"]
    rs = verifier.score(comps, ["7", "7"], last_number_fallback=True, extraction="markers")
    assert [(r.score, r.reason) for r in rs] == [(1.0, "correct"), (0.0, "wrong")]
    assert rs[0].info["method"] == "last_number"
    assert math_last_number_reward(None, comps, answer=["7", "7"]) == [1.0, 0.0]
    assert math_results(None, comps, answer=["7", "7"], last_number_fallback=True)[0].score == 1.0


def test_gold_is_parsed_first():
    """verify() is asymmetric: an interval gold rejects an inequality answer, the reverse accepts.

    We must score as verify(gold, answer); swapping the arguments would flip both rows.
    """
    from math_verify import parse, verify

    def p(s):
        return parse("$" + s + "$", parsing_timeout=None)

    assert verify(p("(1,2)"), p("1<x<2"), timeout_seconds=None) is False
    assert verify(p("1<x<2"), p("(1,2)"), timeout_seconds=None) is True
    rs = math_results(None, [B % "1<x<2", B % "(1,2)"], answer=["(1,2)", "1<x<2"])
    assert [r.score for r in rs] == [0.0, 1.0]


def test_message_list_completions():
    comps = [[{"role": "assistant", "content": r"It is \boxed{4}."}],
             [{"role": "user", "content": "hi"}, {"role": "assistant", "content": r"\boxed{5}"}],
             {"role": "assistant", "content": "The answer is 4"}]
    assert math_reward(prompts=[[{"role": "user", "content": "2+2?"}]] * 3, completions=comps,
                       answer=["4", "4", "4"]) == [1.0, 0.0, 1.0]


def test_missing_answer_column_is_one_clear_error_and_solution_is_accepted():
    with pytest.raises(ValueError, match="`answer` column"):
        math_reward(["q"], [B % "1"], tests=["x"])
    # open-r1 layout: the gold is a full solution in `solution`
    assert math_reward(["q"], [B % "4"], solution=[r"2+2 is $\boxed{4}$"]) == [1.0]


def test_forked_child_gets_its_own_workers():
    """A fork (e.g. a DataLoader worker) must not share the parent's worker pipes."""
    v = MathVerifier(timeout=30.0, workers=1)
    try:
        assert v.score([B % r"\sqrt{4}"], ["2"])[0].score == 1.0
        parent_workers = [w.pid for w in v._pool._workers]
        pid = os.fork()
        if pid == 0:
            code = 0 if v.score([B % r"\sqrt{9}"], ["3"])[0].score == 1.0 else 1
            code |= 0 if [w.pid for w in v._pool._workers] != parent_workers else 2
            v.close()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        # the parent's workers are intact after the child ran and closed its pool
        assert [w.pid for w in v._pool._workers] == parent_workers
        assert v.score([B % r"\sqrt{16}"], ["4"])[0].score == 1.0
    finally:
        v.close()


def test_bad_completion_is_a_row_null_not_a_crash(verifier):
    rs = verifier.score([12345, B % "4"], ["4", "4"])
    assert (rs[0].score, rs[0].reason) == (None, "bad_completion")
    assert rs[1].score == 1.0


def test_length_mismatch_names_the_column(verifier):
    with pytest.raises(ValueError, match="answer"):
        verifier.score([B % "1", B % "2"], ["1"])


def test_identical_pairs_checked_once():
    v = MathVerifier(timeout=30.0, workers=2)
    try:
        comps = [B % r"\sqrt{2}", "So the answer is $\\sqrt{2}$.", B % r"\sqrt 2", B % "2^{1/2}", B % "7"]
        # 4 distinct pairs go to workers: \sqrt{2} (boxed and in a phrase), \sqrt 2, 2^{1/2}, 7.
        rs = v.score(comps * 10, [r"\sqrt{2}"] * 50)
        assert [r.score for r in rs[:5]] == [1.0, 1.0, 1.0, 1.0, 0.0]
        assert [r.score for r in rs] == [r.score for r in rs[:5]] * 10
        assert v.checks == 4
        rs2 = v.score(comps, [r"\sqrt{2}"] * 5)  # the next batch hits the cache
        assert v.checks == 4 and [r.score for r in rs2] == [r.score for r in rs[:5]]
        # exact numbers, fractions and percents compare in the parent, no worker check at all
        rs3 = v.score([B % "1,000", "#### 1000", B % "999", B % r"\frac{1}{2}", B % r"50\%", B % "x = 1/2"],
                      ["1000", "1000", "1000", "0.5", "0.5", "0.5"])
        assert [r.score for r in rs3] == [1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
        assert {r.info["rule"] for r in rs3} == {"number"}
        assert v.checks == 4
    finally:
        v.close()


def test_adversarial_answers_score_zero_and_do_not_hold_other_rows():
    v = MathVerifier(timeout=2.0, workers=2)
    try:
        big = "+".join(["x^{2}"] * 20000)  # ~100 kB: too large to parse at all
        comps = [B % "9^{9^{9^{9^{9}}}}", B % big, B % "4", "The answer is 5", B % r"\frac{8}{2}"]
        rs = v.score(comps, ["3", "2", "4", "4", "4"])
        assert [(r.score, r.reason) for r in rs] == [
            (0.0, "timeout"), (0.0, "too_large"), (1.0, "correct"), (0.0, "wrong"), (1.0, "correct")]
        assert rs[0].info["limit_s"] == 2.0 and rs[1].info["chars"] > 100_000
        # the pool survives and keeps scoring
        assert [r.score for r in v.score([B % r"\sqrt{4}"], ["2"])] == [1.0]
        assert v._pool.stats.timeouts == 1
        # for audits: the same rows null
        rs = v.score(comps[:2], ["3", "2"], null_on_timeout=True)
        assert [(r.score, r.reason) for r in rs] == [(None, "timeout"), (None, "too_large")]
    finally:
        v.close()


def test_reward_is_picklable_and_works_in_a_worker_process():
    assert pickle.loads(pickle.dumps(math_reward)) is math_reward
    assert pickle.loads(pickle.dumps(math_last_number_reward)) is math_last_number_reward
    with WorkerPool(workers=1, timeout=30) as pool:
        [out] = pool.map(_call_math_reward, [(B % "6", "6")])
    assert out.status == "ok" and out.value == [1.0]


def _call_math_reward(pair):
    completion, gold = pair
    return math_reward(None, [completion], answer=[gold], workers=1)


# ----------------------------------------------------------------------------------------------- extraction

@pytest.mark.parametrize("text,want", [
    (r"\boxed{\frac{a}{\sqrt{b}}}", (r"\frac{a}{\sqrt{b}}", "boxed")),
    (r"\boxed{\{1,2\}} then \fbox{3}", ("3", "boxed")),
    (r"\boxed{\frac{1}{2}", None),
    ("The answer is: $x=2$.", ("x=2", "answer_is")),
    ("Answer: 12 because 3*4", ("12", "answer_is")),
    ("text\n#### 1,000\n", ("1,000", "hashes")),
    ("nothing to see", None),
    ("The answer is:\n\n5", None),
    ("The answer isn't clear", None),
])
def test_extract_answer(text, want):
    got = extract_answer(text)
    assert (got.text, got.method) == want if want else got is None


def test_hostile_completions_are_read_in_one_pass(verifier):
    """Extraction runs in the parent with no time limit, so its regexes must stay linear on hostile text.

    Each of these would take minutes with a backtracking pattern; here the batch simply has to finish.
    """
    hostile = ["\\boxed{" * 100_000, "answer is" + " " * 100_000, "answer is " + "\n" * 100_000,
               "#### " + " " * 100_000, "\\boxed" + " " * 100_000, "The answer is 5" + " a" * 50_000 + "!",
               "\n" * 200_000 + "x"]
    rs = verifier.score(hostile, ["5"] * len(hostile), extraction="markers")
    assert [r.reason for r in rs] == ["no_answer"] * 5 + ["wrong", "no_answer"]
    assert [r.score for r in verifier.score(hostile, ["5"] * len(hostile))] == [0.0] * len(hostile)


def test_gold_text_and_normalize():
    assert gold_text("work\n#### 72") == "72"
    assert gold_text(r"So $\boxed{\frac{1}{2}}$") == r"\frac{1}{2}"
    assert gold_text("2, 3") == "2, 3"
    assert normalize_answer(r"$\$1,000$") == "1000"
    assert normalize_answer("5 dollars") == "5"
    assert normalize_answer("50 percent") == r"50\%"
    assert normalize_answer("2, 3") == "2, 3"


# ----------------------------------------------------------------------------------------------- check-gold

def test_check_gold_lists_unparseable_rows():
    problems = check_gold(["72", "}{", r"\frac{1}{2}", None, "Monday", "#### 5"])
    assert [(p.row, p.reason) for p in problems] == [(1, "bad_gold"), (3, "bad_gold")]


# ----------------------------------------------------------------------------------------------- pool

def _square(x):
    if x == "raise":
        raise ValueError("bad item")
    if x == "die":
        os._exit(3)
    if x == "sleep":
        time.sleep(60)
    if x == "stubborn":  # ignores the soft SIGALRM, as C code holding the GIL would: needs the hard kill
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(60)
    return x * x


def test_pool_results_in_order_with_failures_isolated():
    with WorkerPool(workers=2, timeout=2.0) as pool:
        outs = pool.map(_square, [1, "sleep", 2, "raise", "stubborn", 3, "die", 4])
        assert [o.status for o in outs] == ["ok", "timeout", "ok", "error", "timeout", "ok", "crashed", "ok"]
        assert [o.value for o in outs if o.status == "ok"] == [1, 4, 9, 16]
        assert "bad item" in outs[3].error
        # "stubborn" ignores the soft alarm, so its worker is killed; "sleep" normally ends on the soft alarm
        # (killed too if this shared machine is too loaded to answer in time). "die" crashed its worker, and
        # the fresh worker it was run again on (a worker that dies under an item gets the item once more).
        assert pool.stats.killed >= 1 and pool.stats.crashed == 2 and pool.stats.retried == 1
        # reusable across batches; killed / crashed workers were replaced
        assert [o.value for o in pool.map(_square, range(50))] == [i * i for i in range(50)]
        assert pool.stats.started == 2 + pool.stats.killed + pool.stats.crashed


def test_pool_survives_its_template_dying():
    with WorkerPool(workers=1, timeout=5.0) as pool:
        assert pool.map(_square, [3])[0].value == 9
        os.kill(pool._template.proc.pid, signal.SIGKILL)
        pool._template.proc.wait()
        # the live worker still serves; replacing the crashed one needs a new template, started on demand
        outs = pool.map(_square, [2, "die", 5])
        assert [o.status for o in outs] == ["ok", "crashed", "ok"] and outs[2].value == 25
        assert pool._template.proc.poll() is None


def test_pool_rejects_bad_settings():
    with pytest.raises(ValueError):
        WorkerPool(workers=0)
    with pytest.raises(ValueError):
        WorkerPool(timeout=0)
