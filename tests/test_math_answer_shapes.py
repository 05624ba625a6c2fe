"""Math reward on answers as models and gold columns write them (issue 8): one test per answer shape, several
examples each, plus hostile answers scoring 0 (not null) and bad golds scoring null."""
from __future__ import annotations

import pytest

from rewards.extract import extract_answer, whole_answer
from rewards.math import MathVerifier, math_results
from rewards.pool import Outcome

B = "\\boxed{%s}"
MINERVA = "Final Answer: The final answer is $%s$. I hope it is correct."


@pytest.fixture(scope="module")
def verifier():
    v = MathVerifier(timeout=30.0, workers=2)  # generous: this machine is shared; timeouts are tested apart
    yield v
    v.close()


def _scores(verifier, rows, **kw):
    rs = verifier.score([c for _, c in rows], [g for g, _ in rows], **kw)
    return [r.score for r in rs]


def test_minerva_answer_line_is_the_math_in_it(verifier):
    rows = [("5", MINERVA % "5"), (r"\frac{3}{4}", MINERVA % "0.75"), ("y=2x-3", MINERVA % "y = 2x - 3"),
            ("34", "Final Answer: The largest $n$ is 34."), ("6", "Final Answer: There are $6$ ways."),
            ("3", "Final Answer: The value of $x$ is $3$. I hope it is correct."),
            ("5", MINERVA % "6"), ("34", "Final Answer: The largest $n$ is 35.")]
    assert _scores(verifier, rows) == [1.0] * 6 + [0.0] * 2
    assert extract_answer(MINERVA % r"\frac{1}{2}").text == r"\frac{1}{2}"
    assert extract_answer("Final Answer: The probability is $\\frac{1}{4}$.").text == r"\frac{1}{4}"


def test_the_last_marker_wins_whichever_kind(verifier):
    early_box = "First guess $\\boxed{5}$, but checking again.\nThe answer is 7."
    early_line = "The answer is 4? No. Recheck: $\\boxed{9}$"
    minerva_after_box = "Intermediate: $\\boxed{12}$.\n" + MINERVA % "7"
    hashes_after_box = "$\\boxed{3}$\n\nWait, redo: 5 + 3 = 8.\n#### 8"
    rows = [("7", early_box), ("5", early_box), ("9", early_line), ("4", early_line),
            ("7", minerva_after_box), ("12", minerva_after_box), ("8", hashes_after_box), ("3", hashes_after_box)]
    assert _scores(verifier, rows) == [1.0, 0.0] * 4
    assert extract_answer(early_box).method == "answer_is" and extract_answer(early_line).method == "boxed"


@pytest.mark.parametrize("written", [r"10,\!000", "10{,}000", r"10\,000", r"10\ 000", "10,000", "10000"])
def test_latex_thousands_separators_are_one_number(verifier, written):
    assert _scores(verifier, [("10000", B % written), (written, B % "10000"), (written, "#### 10000"),
                              ("10000", B % (written + ".5"))]) == [1.0, 1.0, 1.0, 0.0]


def test_a_leading_zero_group_is_not_thousands(verifier):
    assert _scores(verifier, [("111", B % "0,111"), ("1234567", B % r"1\,234\,567"),
                              ("1000", B % r"1,\!000.5")]) == [0.0, 1.0, 0.0]


def test_several_boxes_are_one_answer_set(verifier):
    rows = [("1, 2", "$\\boxed{1}, \\boxed{2}$"), ("1, 2", "$\\boxed{2}$ and $\\boxed{1}$"),
            ("(2,2), (6,2)", "$\\boxed{(2,2)} \\text{ and } \\boxed{(6,2)}$"),
            ("-1, 3", "So $x = \\boxed{-1}$ or $x = \\boxed{3}$."),
            (r"$\boxed{(2,2)} \text{ and } \boxed{(6,2)}$", B % "(6,2), (2,2)"),  # ... in golds too
            (r"$\boxed{3}, \boxed{5}$", B % r"\{3, 5\}"),
            ("1, 2", "$\\boxed{1}$"), (r"$\boxed{3}, \boxed{5}$", B % "3"),
            # a box far before the last one, with prose between, is an earlier attempt, not part of the set
            ("3", "First $\\boxed{2}$. Then we redo the whole computation and get $\\boxed{3}$.")]
    assert _scores(verifier, rows) == [1.0] * 6 + [0.0] * 2 + [1.0]


def test_an_empty_trailing_box_does_not_hide_the_answer(verifier):
    assert _scores(verifier, [("5", "The answer is $\\boxed{5}$. $\\boxed{}$"), ("5", "$\\boxed{5}$ \\boxed{ }"),
                              ("6", "$\\boxed{5}$ \\boxed{}")]) == [1.0, 1.0, 0.0]


def test_a_completion_that_is_only_the_answer(verifier):
    rows = [("-5", "-5"), (r"\frac{1}{3}", "$\\frac13$"), ("[0,1)", "$[0,1)$"), (r"28\%", "28 percent"),
            ("12", "12 cm"), ("Monday", "Monday"), ("-5", "5"), ("[0,1)", "$[0,1]$"), ("Monday", "Tuesday")]
    assert _scores(verifier, rows) == [1.0] * 6 + [0.0] * 3
    assert whole_answer("We find that $x < 3$.") is None and whole_answer("Answer $9$") is None
    assert whole_answer("I think 5") is None and whole_answer("60 miles per hour") is None


def test_prose_without_a_marker_follows_math_verify_by_default_and_markers_is_strict(verifier):
    rows = [("9", "Answer $9$"), ("x<3", "We find that $x < 3$."), (r"\frac{1}{2}", r"The probability is \(\frac12\)."),
            ("32", "Therefore, the total cost is \\$32."), ("15", "So we get 3 * 5 = 15"),
            ("9", "Answer $8$"), ("x<3", "We find that $x > 3$."), ("5", "I could not solve this problem.")]
    assert _scores(verifier, rows) == [1.0] * 5 + [0.0] * 3
    rs = verifier.score([c for _, c in rows], [g for g, _ in rows], extraction="markers")
    assert {(r.score, r.reason) for r in rs} == {(0.0, "no_answer")}
    rs = math_results(None, ["Answer $9$"], answer=["9"], extraction="mathverify", workers=1)
    assert (rs[0].score, rs[0].info["method"], rs[0].info["extracted"]) == (1.0, "mathverify", "9")
    with pytest.raises(ValueError, match="extraction"):
        verifier.score(["1"], ["1"], extraction="last")


def test_number_words_and_unparseable_golds_are_null_bad_gold(verifier):
    golds = ["forty two", "one hundred and five", r"\text{twelve}", "}{", "", None]
    rs = verifier.score([B % "42", B % "105", B % "12", B % "1", B % "1", B % "1"], golds)
    assert [(r.score, r.reason) for r in rs] == [(None, "bad_gold")] * 6
    assert rs[0].info["detail"] == "number_words"


def test_word_and_choice_golds_still_score(verifier):
    rows = [("Monday", B % r"\text{monday}"), (r"\text{even}", "The answer is even."), ("no", B % r"\text{no}"),
            ("(A)", B % "A"), (r"\text{(C)}", B % "C"), ("D", "Answer: (D) 42"), ("D", "The answer is D."),
            ("Monday", B % "Mondya"), ("(A)", B % "B"), ("D", "Answer: (B) 42"), ("no", B % "yes")]
    assert _scores(verifier, rows) == [1.0] * 7 + [0.0] * 4


def test_latex_spellings_in_golds_and_answers(verifier):
    rows = [(r"\mathrm{e}^{2}", B % "e^2"), ("e^2", B % r"\mathrm{e}^2"), (r"\dfrac{7}{2}", B % "3.5"),
            ("3.5", B % r"\tfrac72"), (r"\left( 2, -1 \right)", B % "(2,-1)"), ("(2,-1)", B % r"\left(2,-1\right)"),
            (r"15\text{ cm}", B % "15"), ("15", B % r"15\mbox{ cm}^2"), (r"20\%", B % "0.2"), ("20", B % r"20\%"),
            (r"45^\circ", B % "45"), (r"\frac{7}{3}", B % r"2.\overline{3}"), (r"\emptyset", B % r"\varnothing"),
            (r"\left( 2, -1 \right)", B % "(-1,2)"), (r"20\%", B % r"25\%"), ("15", B % r"16\text{ m}")]
    assert _scores(verifier, rows) == [1.0] * 13 + [0.0] * 3


# ------------------------------------------------------------------------- hostile answers: 0, not null

def test_hostile_answers_score_zero_and_a_slow_gold_is_bad_gold():
    v = MathVerifier(timeout=2.0, workers=2)
    try:
        tower = "9^{9^{9^{9^{9}}}}"
        rows = [("3", B % tower), ("2", B % ("x+" * 2000 + "1")), (tower, B % "3"), ("4", B % "4")]
        rs = v.score([c for _, c in rows], [g for g, _ in rows])
        assert [(r.score, r.reason) for r in rs] == [(0.0, "timeout"), (0.0, "too_large"), (None, "bad_gold"),
                                                      (1.0, "correct")]
        assert rs[0].info["limit_s"] == 2.0 and rs[1].info["limit"] == 2000 and rs[2].info["detail"] == "timeout"
        audit = MathVerifier(timeout=2.0, workers=1, null_on_timeout=True)
        try:
            rs = audit.score([c for _, c in rows], [g for g, _ in rows])
            assert [(r.score, r.reason) for r in rs] == [(None, "timeout"), (None, "too_large"), (None, "bad_gold"),
                                                          (1.0, "correct")]
        finally:
            audit.close()
    finally:
        v.close()


def test_too_large_answer_against_a_bad_gold_is_bad_gold(verifier):
    [r] = verifier.score([B % ("x+" * 2000 + "1")], ["}{"])
    assert (r.score, r.reason) == (None, "bad_gold")


class _CrashingPool:
    """Stands in for the worker pool: every answer check kills its worker; gold-only checks succeed,
    except for the gold `bad`, whose check crashes too."""

    def map(self, fn, keys):
        return [Outcome("ok", value=(0.0, "no_answer", {})) if k[1] is None and k[0] != "bad"
                else Outcome("crashed", error="worker process died") for k in keys]


def test_a_checker_crash_on_the_answer_is_zero_and_on_the_gold_is_null():
    v = MathVerifier(workers=1)
    v._pool = _CrashingPool()
    rs = v.score([B % "x^x^x", B % "x^x^x"], ["y", "bad"])
    assert [(r.score, r.reason) for r in rs] == [(0.0, "crashed"), (None, "bad_gold")]
    assert "died" in rs[0].info["error"]
    assert [r.score for r in v.score([B % "x^x^x"], ["z"], null_on_timeout=True)] == [None]


def test_commentary_after_a_box_is_not_a_later_answer(verifier):
    rows = [("12", "$\\boxed{12}$\n\nNote: the answer is an integer because 12 = 3 * 4."),
            ("12", "$\\boxed{12}$. We double-checked, and the answer is correct as computed above."),
            ("7", "First $\\boxed{5}$. The answer is 7."), (r"\text{even}", "$\\boxed{3}$ so the answer is even")]
    assert _scores(verifier, rows) == [1.0, 1.0, 1.0, 1.0]


def test_decimals_follow_math_verify_rounding(verifier):
    """From 6 decimal places math-verify rounds (`0.333333` = 1/3); fewer places compare exactly."""
    rows = [(r"\frac{1}{3}", B % "0.333333"), (r"\frac{2}{3}", B % "0.666667"), (r"\frac{1}{3}", B % "0.3333"),
            (r"\frac{2}{3}", B % "0.67"), ("0.5", B % ".5"), (r"\text{5 dollars}", B % "5")]
    assert _scores(verifier, rows) == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0]


def test_golds_as_columns_write_them(verifier):
    rows = [("$5$ dollars", B % "5"), ("We get $x=5$.", B % "5"), ("The answer is $\\frac12$", B % "0.5"),
            ("So $a=1$ and the answer is $4$.", B % "4"), ("$\\{1,2\\}$", B % "\\{2,1\\}"),
            ("$9$ and $10$", B % "10, 9"),
            ("We get $x=5$.", B % "6"), ("So $a=1$ and the answer is $4$.", B % "1")]
    assert _scores(verifier, rows) == [1.0] * 6 + [0.0] * 2


def test_check_gold_lists_number_words_and_slow_golds():
    from rewards.math import check_gold

    golds = ["72", "forty two", "9^{9^{9^{9^{9}}}}", "Monday", "$9$ and $10$", r"\text{(A)}"]
    assert [(p.row, p.reason) for p in check_gold(golds, timeout=2.0, workers=2)] == [(1, "bad_gold"),
                                                                                       (2, "bad_gold")]
