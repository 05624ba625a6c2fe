"""Math answers that hedge score 0 (issue 24): an answer naming more than one candidate is `hedged`, one naming
none is `no_answer`, whichever candidate the gold is; honest answers in every shape still score 1."""
from __future__ import annotations

import pickle

import pytest

from rewards import math_reward
from rewards.hedge import answer_candidates, fold, prose_for_fallback
from rewards.math import MathVerifier, math_results

B = "\\boxed{%s}"
QUESTION = "Which is larger, 7 or 9?"


@pytest.fixture(scope="module")
def verifier():
    v = MathVerifier(timeout=30.0, workers=2)  # generous: this machine is shared; timeouts are tested apart
    yield v
    v.close()


def _results(verifier, rows, prompts=None, **kw):
    return verifier.score([c for _, c in rows], [g for g, _ in rows], prompts=prompts, **kw)


# (gold, completion): every one names a second candidate, and the gold is one of them.
HIDDEN_IN_TEXT = [
    ("4", B % r"4 \text{ or 5}"),
    ("5", B % r"4 \text{ or 5}"),
    (r"\frac34", B % r"\frac34\text{ (or 4/3)}"),
    ("0.75", B % r"\dfrac{3}{4} \text{ (or perhaps } \dfrac{4}{3})"),
    ("4", B % r"\text{4 or 5}"),
    ("4", B % r"4\ \textrm{OR}\ 5"),
    ("4", B % r"4 \mathrm{~or~} 5"),
    ("4", B % r"\text{either } 4 \text{ or } 5"),
    ("4", B % r"4 \text{, alternatively } 5"),
    ("4", B % r"4 \text{ maybe } 5"),
    ("4", B % r"4\text{ cm or }5\text{ cm}"),
    ("5", B % r"5 \text{ or more}"),
    ("12", B % r"12 \text{ apples, or possibly } 13"),
    ("4", B % r"4 \text{ vs } 5"),
    ("4", B % r"4\text{ (5 is also acceptable)}"),
    ("4", "Answer: 4 (or maybe more)"),
]
LOOK_ALIKES = [
    ("4", B % "4 \\text{ \u043er 5}"),  # Cyrillic о
    ("4", B % "4 \\text{ \u043e\u0433 5}"),  # Cyrillic о and г
    ("4", B % "4 \\text{ \uff4f\uff52 5}"),  # fullwidth
    ("4", B % "4 \\text{ \U0001d5c8\U0001d5cb 5}"),  # mathematical sans-serif
    ("4", B % "4 \\text{ o\u200br 5}"),  # a zero-width space inside the word
    ("4", B % "4 \\text{ \u1d0f\u0280 5}"),  # small capitals
    ("4", B % "4 \\text{ \u03bfr 5}"),  # Greek omicron
    ("4", B % "4 \\text{ OR } 5"),
]
OTHER_LANGUAGES = [
    ("4", B % r"4 \text{ o } 5"),  # Spanish, Italian
    ("4", B % "4 \\text{ \u00f3 } 5"),  # Spanish, old spelling
    ("4", B % r"4 \text{ oder } 5"),  # German
    ("4", B % r"4 \text{ ou } 5"),  # French, Portuguese
    ("4", B % "4 \\text{ \u0438\u043b\u0438 } 5"),  # Russian
    ("4", B % "4 \\text{ \u6216 } 5"),  # Chinese
    ("4", B % "4 \\text{ \u6216\u8005 } 5"),
    ("4", B % r"4 \text{ oppure } 5"),
    ("4", B % "4 \\text{ \u0430\u0431\u043e } 5"),  # Ukrainian: its о folds to Latin o
    ("4", "La respuesta es 4 o 5."),
    ("4", "Die Antwort: \\boxed{4} oder 5"),
]
NESTED_BOXES = [
    ("4", B % r"5 \text{ or } \boxed{4}"),
    ("4", B % r"\boxed{4} \text{ or } 5"),
    ("5", B % r"\boxed{4} \text{, or } \boxed{5}"),
    ("4", r"\fbox{5 \text{ or } \boxed{4}}"),
]
ANSWER_LINE_GOES_ON = [
    ("4", "The answer is \\boxed{4}, or 5."),
    ("4", "Final answer: 4. Alternatively, 5."),
    ("4", "Final answer: 4" + " " * 1000 + " or 5"),
    ("4", "The answer is " + "x" * 995 + " 4, or maybe 5"),
    ("4", "So the answer is $\\boxed{4}$ (or possibly $5$)."),
    ("4", "The answer is \\boxed{4}\nor 5, I am not sure."),
    ("4", "#### 4 or 5"),
    ("4", "#### 4\nAlternatively: 5"),
    ("4", "The final answer is $4$ — or was it $5$?"),
    ("4", "\\boxed{4}, though it could also be 5."),
    ("4", "Final answer: 4; 5 is also possible."),
    ("4", "It is 5 or $\\boxed{4}$."),
    ("4", "$\\boxed{4}$ or $\\boxed{5}$"),
    ("4", "\\boxed{5}\\;\\text{or}\\;\\boxed{4}"),
    ("4", "The answer is \\boxed{4}, \u043er five."),
    ("4", "The answer is \\boxed{4}.\nAlternatively: \\boxed{5}"),
    ("4", "Final answer: 4. 5 is another valid answer."),
    ("4", "The final answer is $4$ (though $5$ works too)."),
]
RELATIONS = [
    ("4", B % r"4 \approx 5"),
    ("5", B % r"4 \approx 5"),
    ("4", B % r"4 \lor 5"),
    ("4", B % r"4 \vee 5"),
    ("4", B % r"4 \bmod 5"),
    ("4", B % r"4 \pmod{5}"),
    ("4", B % r"4 \neq 5"),
    ("4", B % r"4 \sim 5"),
    ("4", B % r"4 \leq 5"),
    ("4", B % r"4 < 5"),
    ("4", B % "4 \u2248 5"),
    ("4", B % r"4 \equiv 5"),
    ("4", B % "4 = 5"),
    (r"\frac13", B % r"\frac13 \approx 0.4"),
    (r"\sqrt{2}", B % r"\sqrt{2} \approx 1.5"),
    ("x = 4", B % r"x = 4 \lor x = 5"),
]
MULTIPLE_CHOICE = [
    ("C", B % r"C \text{ or } D"),
    ("D", B % r"C \text{ or } D"),
    ("B", "The answer is (B) or (C)."),
    ("(B)", "(B) or (C)"),
    ("B", B % "B/C"),
    ("B", B % "B, C"),
    ("B", B % r"B \text{ and } C"),
    ("B", B % "BC"),
    ("B", r"\boxed{B}\text{ or }\boxed{C}"),
    (r"\text{(B)}", "Answer: B (or possibly C)"),
    ("B", "The answer is \\boxed{B}, or maybe (C)."),
    ("C", B % "\u0421 \\text{ or } D"),  # Cyrillic С
    ("C", "The answer is \\boxed{C}, or maybe 0."),
]
NO_ANSWER = [
    ("7", QUESTION),
    ("9", QUESTION + " I don't know."),
    ("9", "I don't know. " + QUESTION),
    ("9", "I don't know which is larger, 7 or 9."),
    ("4", "I cannot determine it.\n```python\nx = 4\n```"),
    ("4", "I'm not sure.\n```\nprint(4)\n```"),
    ("4", "The answer cannot be determined from the given information."),
    ("4", "Answer: unknown"),
    ("4", "The answer is: I don't know."),
    ("9", "Hmm, 7 or 9... I can't tell."),
    ("4", "Is it 4?"),
    ("4", "I have no idea.\n\n    x = 4\n"),
    ("4", "I can't determine this.\n```\nanswer = 4\n```\n"),
]


def _assert_zero(verifier, rows, reasons):
    rs = _results(verifier, rows, prompts=[QUESTION] * len(rows))
    bad = [(g, c, r) for (g, c), r in zip(rows, rs) if r.score != 0.0 or r.reason not in reasons]
    assert not bad, "\n".join(map(repr, bad))


@pytest.mark.parametrize("rows", [HIDDEN_IN_TEXT, LOOK_ALIKES, OTHER_LANGUAGES, NESTED_BOXES, ANSWER_LINE_GOES_ON,
                                  RELATIONS, MULTIPLE_CHOICE],
                         ids=["hidden_in_text", "look_alikes", "other_languages", "nested_boxes",
                              "answer_line_goes_on", "relations", "multiple_choice"])
def test_an_answer_naming_several_candidates_is_hedged(verifier, rows):
    _assert_zero(verifier, rows, {"hedged"})


def test_a_completion_without_an_answer_is_no_answer(verifier):
    _assert_zero(verifier, NO_ANSWER, {"no_answer", "hedged"})
    rs = _results(verifier, NO_ANSWER[:5], prompts=[QUESTION] * 5)
    assert [r.reason for r in rs] == ["no_answer"] * 5


def test_the_fallback_never_reads_the_question_or_code():
    prompt = "A train travels 60 miles in 1.5 hours. Find its speed in miles per hour."
    rows = [("1.5", prompt), ("60", "Restating: a train travels 60 miles in 1.5 hours."),
            ("4", "Let me think.\n```python\nx = 4\nprint(x)\n```"), ("4", "Use `x = 4` somewhere.")]
    rs = math_results([prompt] * len(rows), [c for _, c in rows], answer=[g for g, _ in rows], workers=2)
    assert [(r.score, r.reason) for r in rs] == [(0.0, "no_answer")] * 4
    # ... and the prompt as a chat works the same; with last_number the same text is read
    chat = [{"role": "user", "content": prompt}]
    rs = math_results([chat], [prompt], answer=["1.5"], last_number_fallback=True, workers=2)
    assert (rs[0].score, rs[0].reason) == (0.0, "no_answer")
    assert prose_for_fallback("Which is larger, 7 or 9? Nine.", None).strip() == "Nine."


def test_the_hedges_that_scored_zero_before_still_do(verifier):
    rows = [("4", B % r"\{4, 5\}"), ("4", B % "[4, 5]"), ("4", B % r"x \ge 4"), ("4", B % r"\pm 4"),
            ("4", B % r"x = 4 \text{ or } x = 5"), ("4", B % "4, 5, 6"), (r"\{1, 2, 3\}", B % r"\{1, 2\}"),
            ("4", B % "ANSWER"), ("4", B % ("{" * 3000 + "4" + "}" * 3000)), ("4", B % ("x+" * 1200 + "4"))]
    rs = _results(verifier, rows)
    assert [r.score for r in rs] == [0.0] * len(rows), [(r.reason, r.info) for r in rs]


# (gold, completion): honest answers, one candidate each, written in every shape.
HONEST = [
    ("5", B % r"5\text{ cm}"),
    ("12", B % r"12 \text{ apples}"),
    ("Monday", B % r"\text{Monday}"),
    (r"\text{Monday}", "The answer is Monday."),
    ("3, 4", B % r"3 \text{ and } 4"),
    (r"\{3, 4\}", B % r"3 \text{ and } 4"),
    ("3, 4", B % r"x = 3 \text{ or } x = 4"),
    ("-1, 3", "So $x = \\boxed{-1}$ or $x = \\boxed{3}$."),
    ("4", "The answer is \\boxed{4}. There are 4 apples left."),
    ("4", "The answer is \\boxed{4}.\n\nThis is because 2 + 2 = 4, so four apples remain."),
    ("4", "\\boxed{4}\n\nWe verify: 4 works, while 3 or 5 do not."),
    ("4", "\\boxed{4}. Alternatively, we get 4 again by counting."),
    ("4", "\\boxed{4} (either way, the answer is 4)"),
    ("0.75", B % r"\dfrac{3}{4}"),
    (r"\frac{3}{4}", "Final answer: $\\dfrac{3}{4}$"),
    (r"\frac12", B % r"\frac12 \text{ (or } 0.5)"),
    ("4", B % r"4 \text{ (or } 2^2)"),
    ("4", B % "2+2=4"),
    ("4", B % r"4 \approx 4.0"),
    (r"\sqrt{2}", B % r"\sqrt{2} \approx 1.414"),  # the decimal is the exact value rounded: one value
    (r"\frac13", B % r"\frac13 \approx 0.333"),
    (r"\frac{\pi}{2}", "The answer is $\\frac{\\pi}{2} \\approx 1.57$."),
    ("1000", B % "1,000"),
    ("1,000", "The answer is 1,000."),
    ("1234567", "#### 1,234,567"),
    ("-3", B % "-3"),
    ("-3", "The answer is $-3$."),
    ("(1,2]", B % "(1, 2]"),
    ("(0, 2]", "The final answer is $(0,2]$."),
    ("(0, 2]", "#### (0,2]"),
    ("4", "Answer: 4 (four)"),
    ("4", "The answer is 4, i.e. four apples."),
    ("(3, 4)", r"\boxed{(3,4)}, or equivalently (3, 4)"),
    ("0.5", r"\boxed{0.5}, or in fraction form $\frac{1}{2}$"),
    (r"(-\infty, 2)", B % r"(-\infty,2)"),
    (r"\{1, 2, 3\}", B % r"\{3, 2, 1\}"),
    ("x \\le 5", B % r"x \leq 5"),
    ("1<x<2", B % "(1,2)"),
    ("C", B % "C"),
    ("(B)", "The answer is (B)."),
    ("D", "Answer: (D) 42"),
    ("B", "Answer: (B) A rectangle"),
    ("B", "The answer is \\boxed{B}. Options A or C are too small."),
    ("C", "Answer: (C) 42, or 42 apples"),
    ("4", B % r"\boxed{4}"),
    ("4", "4"),
    ("9", "The larger one is 9."),
    ("9", "Between 7 or 9, 9 is larger."),
    ("15", "So we get 3 * 5 = 15"),
    (r"\frac{\pi}{2}", B % r"\frac{\pi}{2}"),
    ("4", "I am not sure at first, but the answer is \\boxed{4}."),
    ("\\text{Tuesday}", B % r"\text{tuesday}"),
    ("12", B % "12 \\text{ c\u043e\u043ekies}"),  # look-alike letters in a unit, no disjunction
]


def test_honest_answers_in_every_shape_score_one(verifier):
    rs = _results(verifier, HONEST, prompts=[QUESTION] * len(HONEST))
    bad = [(g, c, r) for (g, c), r in zip(HONEST, rs) if (r.score, r.reason) != (1.0, "correct")]
    assert not bad, "\n".join(map(repr, bad))


def test_through_the_trl_signature_with_prompts():
    prompts = [QUESTION] * 4
    completions = [[{"role": "assistant", "content": c}] for c in
                   [B % "9", B % r"9 \text{ or } 7", QUESTION, "9 is larger."]]
    assert math_reward(prompts, completions, answer=["9"] * 4) == [1.0, 0.0, 0.0, 1.0]
    assert pickle.loads(pickle.dumps(math_reward)) is math_reward


def test_candidates_are_cut_from_the_original_text():
    assert answer_candidates(r"x^2 \text{ or } x^3") == ["x^2", "x^3"]
    assert answer_candidates("4 \\text{ \u043er } 5") == ["4", "5"]
    assert answer_candidates(r"x \le 5") == [r"x \le 5"] and answer_candidates(r"5\text{ cm}") == [r"5\text{ cm}"]
    assert answer_candidates("a+b=7") == ["a+b=7"] and answer_candidates(r"4 \approx 5", relations=False) == [
        r"4 \approx 5"]
    assert fold("\uff4f\uff52")[0] == "or"


def test_a_hedge_reports_its_candidates_and_a_bad_gold_stays_null(verifier):
    [r] = verifier.score([B % r"4 \text{ or } 5"], ["4"])
    assert (r.score, r.reason, r.info["candidates"]) == (0.0, "hedged", ["4", "5"])
    [r] = verifier.score([B % r"4 \text{ or } 5"], ["}{"])
    assert (r.score, r.reason) == (None, "bad_gold")
    [r] = verifier.score([B % r"4 \text{ or } 2^2"], ["4"])  # two spellings of the gold: not a hedge
    assert (r.score, r.reason) == (1.0, "correct")
    [r] = verifier.score([B % r"4 \text{ or } \sqrt{17}"], ["4"])  # a worker decides, every candidate counts
    assert (r.score, r.reason) == (0.0, "hedged")
    rs = verifier.score(["So it is $4$ or $5$.", "So it is $4$ or $5$."], ["4", "4"], extraction="markers")
    assert [r.reason for r in rs] == ["no_answer"] * 2


def test_hedge_shaped_hostile_completions_cost_one_pass(verifier):
    """Finding candidates runs in the parent, outside any time limit: 100 kB of disjunctions is linear work."""
    import time

    rows = [("4", B % "4" + " or" * 30000), ("4", B % "4" + " or 5" * 20000), ("4", "3 or " * 20000 + "5"),
            ("4", "$4$ or " * 10000), ("B", B % "B" + " or C" * 20000), ("4", "I don't know " * 10000),
            ("4", "a" * 100000 + "?" + "b" * 100000), ("4", "5 or " * 20000 + B % "4")]
    start = time.perf_counter()
    rs = _results(verifier, rows, prompts=[QUESTION * 100] * len(rows))
    assert time.perf_counter() - start < 20
    assert [r.reason for r in rs] == ["correct", "hedged", "hedged", "correct", "hedged", "no_answer", "no_answer",
                                      "hedged"]


def test_a_value_in_braces_after_the_cue_is_a_candidate():
    from rewards.math import math_results

    completions = ["The answer is \\boxed{8/3}, or maybe {8/3}+1.", "The answer is \\boxed{8/3}, or maybe {8/3}."]
    results = math_results(["p", "p"], completions, answer=["8/3", "8/3"])
    assert [(r.score, r.reason) for r in results] == [(0.0, "hedged"), (1.0, "correct")]
